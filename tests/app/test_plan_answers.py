"""The route's caches of request values (`app.schemas.plans`: Hardware, PlanOptions, weight formats) never carry one
request's answer into another's: every answer of the spread of `tests.app.plan_answers`, asked one after the other,
is the one it gets with those caches emptied before it (a cache keyed without one of the values it is made from
would answer a later request, which differs from an earlier one in that value only, as the earlier one)."""

from __future__ import annotations

from app.schemas import plans
from tests.app.plan_answers import REQUESTS, answers


def _empty_the_caches() -> None:
    for cache in (plans._hardware, plans._plan_options, plans._weight_format):
        cache.cache_clear()


def test_every_answer_is_the_one_it_gets_with_the_request_caches_empty() -> None:
    _empty_the_caches()
    in_turn = answers(REQUESTS)
    alone = answers(REQUESTS, before_each=_empty_the_caches)
    assert in_turn.keys() == alone.keys()
    assert [name for name in in_turn if in_turn[name] != alone[name]] == []
    assert {answer["status"] for answer in in_turn.values()} == {200, 400, 413, 415, 422}
