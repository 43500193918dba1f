"""`JsonBodyRoute`: a lean request path for hot ``async def`` endpoints taking one JSON body model.

FastAPI's general request handling (content-type parsing through
``email.message``, ``json.loads`` then validation of the resulting dict,
dependency solving, response-model handling) costs more per request than
validating the bytes directly with Pydantic's JSON parser.  For an endpoint
shaped ``async def endpoint(body: Model, request: Request) -> Response`` (no
dependencies, answering a ready `Response`), this route class checks the API
key, validates the body with ``Model.model_validate_json`` and awaits the
endpoint itself.  The route is still declared to FastAPI as usual, so the
OpenAPI document (request body, response model, errors) is unchanged.

Every refusal is the one FastAPI would give (tests compare both routes on
malformed, missing, non-JSON and invalid bodies): the fast path is only taken
by a JSON body that validates; any other is replayed through FastAPI's own
steps (``json.loads``, then Python-mode validation).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from app.problems import is_json_media_type
from app.security import ApiKeyRoute, check_api_key

Endpoint = Callable[[Any, Request], Coroutine[Any, Any, Response]]
M = typing.TypeVar("M", bound=BaseModel)
#: FastAPI's answer when the body cannot be read or decoded at all (fastapi/routing.py).
BODY_PARSE_ERROR = "There was an error parsing the body"


def _with_body_location(errors: list[Any]) -> list[dict[str, Any]]:
    return [{**error, "loc": ("body", *error["loc"])} for error in errors]


def _validated_as_fastapi_does(model: type[BaseModel], value: Any) -> BaseModel:
    """FastAPI's validation of a decoded body: Python mode, ``from_attributes=True`` (fastapi/_compat/v2.py)."""
    try:
        return model.model_validate(value, from_attributes=True)
    except ValidationError as exc:
        raise RequestValidationError(_with_body_location(exc.errors()), body=value) from None


def _decoded_as_fastapi_does(raw: bytes) -> Any:
    """FastAPI's decoding of a JSON body: ``json.loads``, its errors as a 400 (fastapi/routing.py)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}], body=exc.doc) from exc
    except Exception as exc:  # e.g. RecursionError on absurd nesting, as FastAPI answers it
        raise HTTPException(status_code=400, detail=BODY_PARSE_ERROR) from exc


async def read_json_body(request: Request, model: type[BaseModel]) -> BaseModel:
    """The request body validated as `model`, or the `RequestValidationError`/400 FastAPI would raise.

    Only a body that validates takes the fast path (``model_validate_json``);
    a refused one is replayed through FastAPI's steps, so its problem document
    is FastAPI's to the letter (and only failing requests pay for twice).
    """
    try:
        raw = await request.body()
    except ClientDisconnect as exc:  # the body limit cut it off: BodySizeLimit answers 413 instead
        raise HTTPException(status_code=400, detail=BODY_PARSE_ERROR) from exc
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required",
                                       "input": None}])
    if not is_json_media_type(request.headers.get("content-type")):
        return _validated_as_fastapi_does(model, raw)  # FastAPI validates the undecoded bytes
    try:
        body = model.model_validate_json(raw)
    except ValidationError:  # a refused body, or one only Python's json decodes (a BOM, UTF-16 or UTF-32)
        decoded = _decoded_as_fastapi_does(raw)
        refuse_lone_surrogates(raw)  # Pydantic's parser refuses them without saying where
        body = _validated_as_fastapi_does(model, decoded)
    refuse_duplicate_keys(raw)
    return body


def validated_json(raw: bytes, model: type[M], members: dict[str, Any] | None = None) -> M:
    """`raw` (a JSON object, e.g. a multipart form's request part) with `members` added, validated as `model`;
    refused as a JSON body would be (400 for bad JSON, 422 naming the field, a repeated key or a lone surrogate).
    A member `raw` already holds is refused (422 naming it): it is given once."""
    value = _decoded_as_fastapi_does(raw)  # first: a document past json's nesting bound is a 400 here
    refuse_duplicate_keys(raw)
    for key, member in (members or {}).items():
        if isinstance(value, dict):
            if key in value:
                raise RequestValidationError([{"type": "value_error", "loc": ("body", key), "input": None,
                                               "msg": f"{key!r} is given by its own part too: send it once"}])
            value[key] = member
    body = _validated_as_fastapi_does(model, value)
    return typing.cast(M, body)


#: JSON's whitespace (RFC 8259 section 2)
_JSON_WHITESPACE = b" \t\n\r"


def _keys_all_differ(raw: bytes) -> bool:
    """Whether no two keys of the JSON document `raw`, in any of its objects, are the same bytes, where that settles
    that no object repeats a key: `raw` holds no backslash (then no quote is escaped, so the quotes pair up from the
    first, and a string's bytes are the string: equal bytes, equal keys) and no NUL byte (then it is not UTF-16 or
    UTF-32, which ``json.loads`` would decode first).  A string is a key when a colon follows it.  False (not settled
    here) for any other body, or when two keys in the document are the same (they may sit in different objects).  For
    a body that is not JSON the answer means nothing; `refuse_duplicate_keys` then passes it as before."""
    if b"\\" in raw or b"\x00" in raw:
        return False
    parts = raw.split(b'"')  # outside, string, outside, ..., outside (a string left open: not JSON)
    keys = [string for string, after in zip(parts[1::2], parts[2::2], strict=False)
            if after.lstrip(_JSON_WHITESPACE).startswith(b":")]
    return len(set(keys)) == len(keys)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members as a dict, refusing a key that appears twice (json.loads keeps the last)."""
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return members


class _Repeated:
    """Stands, while `_path_of_repeated_key` parses, for a JSON value holding a repeated key: the path to it."""

    def __init__(self, path: tuple[str | int, ...]) -> None:
        self.path = path


def _within(value: Any) -> tuple[str | int, ...] | None:
    """The path inside `value` (a parsed member) to a repeated key, if it holds one."""
    if isinstance(value, _Repeated):
        return value.path
    if isinstance(value, list):
        for index, item in enumerate(value):
            inner = _within(item)
            if inner is not None:
                return (index, *inner)
    return None


def _marking_object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Repeated:
    """A JSON object's members, or a `_Repeated` for the first repeated key in it or under it."""
    seen: set[str] = set()
    for key, value in pairs:
        inner = _within(value)
        if inner is not None:
            return _Repeated((key, *inner))
        if key in seen:
            return _Repeated((key,))
        seen.add(key)
    return dict(pairs)


def _path_of_repeated_key(raw: bytes, key: str) -> tuple[str | int, ...]:
    """Where in `raw` a key is repeated, as keys and list indices from the top (only `key` if not found)."""
    path = _within(json.loads(raw, object_pairs_hook=_marking_object))
    return path if path is not None else (key,)


def refuse_duplicate_keys(raw: bytes) -> None:
    """Raise a `RequestValidationError` (422) when a JSON object of `raw` (already valid JSON) repeats a key.

    Parsers keep one of the values without a word; which one the client meant is
    not ours to guess.  A body whose keys all differ (`_keys_all_differ`, a byte scan: ~1 us for a plan body)
    holds no repeated key; any other costs one more ``json.loads`` (~8 us for a plan body), and
    a body that does repeat a key is parsed once more to name the key's path.
    Then refuses a string that is not Unicode text (`refuse_lone_surrogates`).
    """
    if _keys_all_differ(raw):
        refuse_lone_surrogates(raw)
        return
    try:
        json.loads(raw, object_pairs_hook=_unique_object)
    except _DuplicateKey as exc:
        path = _path_of_repeated_key(raw, exc.key)
        raise RequestValidationError([{
            "type": "value_error", "loc": ("body", *path), "input": path[-1],
            "msg": f"the key {path[-1]!r} appears twice in one JSON object; send it once"}]) from None
    except ValueError:  # not JSON after all: validation has answered for it
        return
    refuse_lone_surrogates(raw)


#: a JSON body can only hold a lone UTF-16 surrogate through a ``\u`` escape, or as raw UTF-8-style bytes
#: (0xED 0xA0-0xBF ...), which Python's json decodes with ``surrogatepass``
_SURROGATE_SIGNS = (b"\\u", b"\xed")


def _first_surrogate(value: Any) -> tuple[tuple[str | int, ...], str] | None:
    """The path to the first string (key or value) under `value` that UTF-8 cannot encode, and that string."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path, item
        elif isinstance(item, dict):
            for key, member in reversed(item.items()):
                if not _encodable(key):
                    return (*path, key), key
                stack.append(((*path, key), member))
        elif isinstance(item, list):
            stack.extend(((*path, index), member) for index, member in reversed(list(enumerate(item))))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def refuse_lone_surrogates(raw: bytes) -> None:
    """Raise a `RequestValidationError` (422 naming the field) when a string of the JSON body `raw` holds a lone
    UTF-16 surrogate (``"\\ud800"``): valid JSON syntax, but not Unicode text, so no answer could echo it as
    UTF-8 (RFC 8259 section 8.2 leaves such strings' meaning open; I-JSON, RFC 7493, forbids them).

    Costs a byte search on bodies that cannot hold one (no ``\\u`` escape, no 0xED byte).
    """
    if not any(sign in raw for sign in _SURROGATE_SIGNS):
        return
    try:
        found = _first_surrogate(json.loads(raw))
    except (ValueError, RecursionError):  # not JSON after all: validation has answered for it
        return
    if found is None:
        return
    path, text = found
    position = next(index for index, character in enumerate(text) if "\ud800" <= character <= "\udfff")
    raise RequestValidationError([{
        "type": "string_unicode", "loc": ("body", *path), "input": None,
        "msg": f"holds a lone UTF-16 surrogate (U+{ord(text[position]):04X}) at character {position}, "
               "which is not Unicode text; send a valid UTF-8 string"}])


class JsonBodyRoute(ApiKeyRoute):
    """An `ApiKeyRoute` whose endpoint ``(body: Model, request: Request) -> Response`` skips FastAPI's handler.

    See the module docstring.  Use it with ``APIRouter.add_api_route(...,
    route_class_override=JsonBodyRoute)`` for endpoints with no dependencies.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Endpoint = self.endpoint
        hints = typing.get_type_hints(endpoint)
        model = hints.get("body")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{endpoint.__qualname__} needs a `body: <pydantic model>` parameter for JsonBodyRoute")
        if self.dependant.dependencies:
            raise TypeError(f"{endpoint.__qualname__} has dependencies, which JsonBodyRoute would not solve")

        async def handler(request: Request) -> Response:
            check_api_key(request)
            return await endpoint(await read_json_body(request, model), request)

        return handler
