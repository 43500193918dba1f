"""The attack mix of benchmarks/load_test.py (tests/hostile_requests.py), each request sent once to the app.

Each must get the answer it is in the mix for: the 4xx problem naming a field
that issue 17's fix gives it (the one 200 is the largest sweep the limits
allow), never a 5xx.  Not timed: the benchmark measures what the mix costs.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.hostile_requests import (
    BUILDERS,
    INCLUDE_MAX_CHARACTERS,
    NPY_HEADER_MAX_BYTES,
    NPY_REPEATS_WITHIN_LIMIT,
    TRICKLE_BUILDER,
    HostileRequest,
    bracket_glob,
    nested_tuple_npy,
)

PROBLEM = "application/problem+json"
MIX = [builder(index) for index, builder in enumerate((*BUILDERS, TRICKLE_BUILDER))]


@pytest.mark.parametrize("request_", MIX, ids=[request.kind for request in MIX])
def test_each_request_of_the_attack_mix_gets_its_answer_and_never_a_5xx(client: TestClient,
                                                                      request_: HostileRequest) -> None:
    response = client.request(request_.method, request_.path, content=request_.body, headers=request_.headers())
    answer = (response.status_code, response.headers.get("content-type"), response.content[:300])
    assert response.status_code < 500, answer
    assert response.status_code == request_.status, answer
    if request_.status >= 400:
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["status"] == request_.status and problem["errors"], problem
        assert all(error["field"] for error in problem["errors"])
        assert len(response.content) < 16384  # bounded, whatever the request echoes
    assert "location" not in response.headers


def test_the_mix_covers_each_repro_at_its_limit() -> None:
    kinds = {request.kind for request in MIX}
    assert len(kinds) == len(MIX), "two requests of the mix share a kind"
    assert {request.delivery for request in MIX} == {"whole", "trickle", "hang-up"}
    globs = [bracket_glob(index) for index in range(6)]
    assert {len(glob) for glob in globs} == {INCLUDE_MAX_CHARACTERS} and len(set(globs)) == len(globs)
    header_bytes = int.from_bytes(nested_tuple_npy(NPY_REPEATS_WITHIN_LIMIT)[8:12], "little")
    assert NPY_HEADER_MAX_BYTES - 6 < header_bytes <= NPY_HEADER_MAX_BYTES
