"""Write the app's OpenAPI document to a file: ``python -m app.openapi_export openapi/openapi.json``.

The output is canonical (sorted keys, two-space indent, final newline) so the
committed file changes only when the API does; `make openapi` runs this.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from app.main import create_app
from app.settings import Settings


def canonical_openapi() -> dict[str, Any]:
    """The OpenAPI document of the app under default settings (independent of NIBBLE_* variables)."""
    document: dict[str, Any] = create_app(Settings(_env_file=None)).openapi()  # type: ignore[call-arg]
    return json.loads(json.dumps(document, sort_keys=True))  # type: ignore[no-any-return]


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m app.openapi_export PATH", file=sys.stderr)
        return 2
    target = Path(argv[1])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(canonical_openapi()), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
