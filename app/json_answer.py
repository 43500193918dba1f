"""The JSON response class of every answer: Starlette's, except that text no UTF-8 can carry is escaped.

JSON may spell a lone UTF-16 surrogate (``"\\ud800"``), and Python decodes it
into a string that UTF-8 cannot encode; Starlette's `JSONResponse` then fails
while rendering an answer that echoes it (a model's ``name``, a config's
``_name_or_path``), and the client gets a 500 (issue 17, item 8).  Such an
answer is rendered with JSON's own ``\\uXXXX`` escapes instead: the client gets
back exactly the string it sent, spelled as it spelled it.  Every other
answer is rendered byte for byte as Starlette renders it.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


class JSONAnswer(JSONResponse):
    """`JSONResponse` that escapes, rather than fails on, strings UTF-8 cannot encode (module docstring)."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("ascii")
