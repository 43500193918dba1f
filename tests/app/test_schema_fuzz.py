"""Schema fuzzing (issue 6): schemathesis drives every operation of the served OpenAPI spec.

The schema is loaded from the app itself (``/openapi.json`` over ASGI), so the
spec that is fuzzed is the spec clients read.  Each operation gets
`EXAMPLES_PER_OPERATION` generated cases (valid and invalid bodies, paths and
form fields, derandomized so a failure reproduces), and every answer must:
- not be a 5xx (`not_a_server_error`);
- have a status code the spec declares for that operation;
- have the content type the spec declares for that status;
- have a body that validates against the declared schema (problem+json for errors).

The last test checks the run really reached `MIN_TOTAL_CASES` generated cases
(issue 6 asks for at least 1,000 in CI).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.app.conftest import make_settings

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 100  # 11 operations, plus schemathesis' coverage cases; GET /healthz ends early
MIN_TOTAL_CASES = 1_000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Small limits so that generated uploads and bodies also exercise the refusals (413) cheaply.
APP = create_app(make_settings(max_upload_bytes=256 * 1024, max_elements_per_tensor=65_536,
                               request_time_limit_seconds=30.0))


@schemathesis.serializer("application/offset+octet-stream")
def tus_patch_body(context: Any, value: Any) -> bytes:
    """A tus PATCH body (app/tus.py) is raw bytes: a generated binary string as it is."""
    return value if isinstance(value, bytes) else str(value).encode()


schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
CASES_RUN: Counter[str] = Counter()


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_never_a_server_error(case: Any) -> None:
    CASES_RUN[case.operation.label] += 1  # also counts its unsupported-method probes
    case.call_and_validate(checks=CHECKS)


def test_schema_fuzzing_ran_at_least_1000_cases(request: pytest.FixtureRequest) -> None:
    fuzzed = [item for item in request.session.items if item.originalname == "test_every_answer_is_documented"
              "_and_never_a_server_error"]
    operations = sum(1 for path in schema.raw_schema["paths"].values() for _ in path)
    if len(fuzzed) < operations:
        pytest.skip(f"only {len(fuzzed)} of {operations} operations were selected in this run")
    total = sum(CASES_RUN.values())
    assert len(CASES_RUN) == operations, f"operations that ran no case: {CASES_RUN}"
    assert total >= MIN_TOTAL_CASES, f"{total} cases in all: {dict(CASES_RUN)}"
