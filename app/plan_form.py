"""The multipart form of ``/v1/plan`` and ``/v1/plan/sweep``: the request beside the checkpoint's header files.

A checkpoint's headers can outgrow a JSON body: DeepSeek-V3's 163 safetensors headers hold 12.7 MB
(17 MB as base64), its index 8.9 MB, past ``max_json_bytes`` (1 MiB).  The form carries them as they
are, streamed by `app.uploads` (python-multipart) under their own limits:

- ``request``: the JSON of the JSON form, without ``checkpoint`` (a text field or a file);
- ``header`` (repeated, one part per checkpoint file, named by its file name): a ``.safetensors``
  file's first 8 + N bytes or a ``.gguf`` file's header, never more: a part holding bytes past its
  header (tensor data) is refused, naming the part;
- ``index`` (optional): ``model.safetensors.index.json``; the headers must then be its shards and
  hold the tensors it places in them;
- ``config`` (optional): ``config.json``, the request's ``model`` as ``{"hf_config": ...}`` when the
  request gives no ``model``.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import TypeVar

from pydantic import BaseModel

from app.problems import MalformedUpload
from app.routing import validated_json
from app.schemas.plans import CheckpointHeaders, HeaderFile
from app.settings import Settings
from app.uploads import FormLimits, Upload, UploadedFile
from quant_core.errors import InvalidSpec, LimitExceeded, TensorFileError
from quant_core.tensorio.checkpoint_headers import index_weight_map
from quant_core.tensorio.safetensors_io import unique_keys

M = TypeVar("M", bound=BaseModel)
REQUEST_FIELD, HEADER_FIELD, INDEX_FIELD, CONFIG_FIELD = "request", "header", "index", "config"
FORM_FIELDS = (REQUEST_FIELD, HEADER_FIELD, INDEX_FIELD, CONFIG_FIELD)
FORM_DESCRIPTION = (
    "The checkpoint's headers as files, for headers past the JSON body's limit: `request` is the JSON body "
    "without `checkpoint`; each `header` part one file's header (a .safetensors file's first 8 + N bytes, a "
    ".gguf file's metadata and tensor records), its file name the checkpoint file's; `index` its "
    "model.safetensors.index.json, `config` its config.json (the model, when `request` gives none). A part "
    "holding bytes past its header is refused (413 naming it); see SECURITY.md for the limits.")


def form_limits(settings: Settings) -> FormLimits:
    """What the form may hold: a header or index part at most ``max_header_bytes + 8`` bytes (the request
    ``max_json_bytes``, checked once read), ``max_checkpoint_form_bytes`` in all, ``max_checkpoint_files``
    header parts (refused at the first part past them, 413 naming the setting and ``header``; and the request,
    index and config).  The parts are kept in memory up to `IN_MEMORY_FILE_BYTES` (the plan reads them whole):
    a spool file per part cost 4,096 small headers 0.5-2 s of the event loop's CPU."""
    return FormLimits(FORM_FIELDS, repeated=(HEADER_FIELD,), untyped=FORM_FIELDS,
                      max_file_bytes=settings.max_checkpoint_form_bytes, limit="max_checkpoint_form_bytes",
                      max_part_bytes=settings.max_header_bytes + 8, part_limit="max_header_bytes",
                      part_fields=(HEADER_FIELD, INDEX_FIELD),
                      max_parts=settings.max_checkpoint_files + len(FORM_FIELDS) - 1,
                      max_repeated=settings.max_checkpoint_files, repeated_limit="max_checkpoint_files",
                      in_memory=True)


def _json_object(part: UploadedFile, field: str) -> dict[str, object]:
    try:
        document = json.loads(part.read_bytes(), object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidSpec(field, part.filename or field, f"is not valid JSON: {exc}"[:300]) from None
    except TensorFileError as exc:  # a key given twice
        raise InvalidSpec(field, part.filename or field, exc.detail) from None
    if not isinstance(document, dict):
        raise InvalidSpec(field, part.filename or field, f"is a JSON {type(document).__name__}, not an object")
    return document


def _file_name(filename: str, shards: set[str]) -> str:
    """A header part's checkpoint file name: as sent when the index names it so (``sub/a.safetensors``), else its
    last path part (a client may send the path it read the file from)."""
    return filename if filename in shards else PurePosixPath(filename).name


def read_plan_form(upload: Upload, model: type[M], settings: Settings) -> tuple[M, CheckpointHeaders]:
    """The request part validated as `model` (with ``config`` as its model), and the checkpoint's headers.

    Reads the parts `receive_upload` spooled (within the form's limits); the headers are decoded
    later, by the plan (`app.schemas.plans.checkpoint_tensors`), which refuses bytes past a header.
    """
    unknown = sorted(set(upload.fields) - set(FORM_FIELDS))
    if unknown:  # as the upload routes refuse a field they do not read: a misspelt part is not silently dropped
        raise MalformedUpload(f"the form holds a field {unknown[0]!r}; a plan's form reads {list(FORM_FIELDS)} only",
                              field=unknown[0])
    request = upload.files.get(REQUEST_FIELD)
    if request is None:
        raise MalformedUpload(f"the form has no {REQUEST_FIELD!r} part (the plan's JSON)", field=REQUEST_FIELD)
    if request.size > settings.max_json_bytes:
        raise LimitExceeded("max_json_bytes", request.size, settings.max_json_bytes, field=REQUEST_FIELD)
    parts = upload.repeated.get(HEADER_FIELD, [])  # at most max_checkpoint_files (form_limits)
    if not parts:
        raise MalformedUpload(f"the form has no {HEADER_FIELD!r} part (a checkpoint file's header)",
                              field=HEADER_FIELD)
    members: dict[str, object] = {}
    config = upload.files.get(CONFIG_FIELD)
    if config is not None:
        members["model"] = {"hf_config": _json_object(config, CONFIG_FIELD)}
    body = validated_json(request.read_bytes(), model, members)
    weight_map = None
    index = upload.files.get(INDEX_FIELD)
    if index is not None:
        try:
            weight_map = index_weight_map(index.read_bytes())
        except TensorFileError as exc:
            exc.field = INDEX_FIELD
            exc.detail = f"{index.filename or INDEX_FIELD}: {exc.detail}"
            raise
    shards = set(weight_map.values()) if weight_map is not None else set()
    files = tuple(HeaderFile(_file_name(part.filename, shards) or f"{HEADER_FIELD}[{number}]",
                             f"{HEADER_FIELD}[{number}]", part.read_bytes())
                  for number, part in enumerate(parts))
    return body, CheckpointHeaders(files, weight_map, headers_only=True, max_tensors=settings.max_checkpoint_tensors)


__all__ = ["FORM_DESCRIPTION", "FORM_FIELDS", "form_limits", "read_plan_form"]
