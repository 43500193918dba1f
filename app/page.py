"""The web page: ``GET /`` answers ``static/index.html``; ``/static/*`` its script and style sheet.

Everything the page loads is served from here (no CDN, no build step), so it
works offline.  Neither route needs an API key (issue 6) nor appears in the
OpenAPI schema; the page itself calls the ``/v1`` API, so when keys are set
it asks for one and sends it as a bearer token.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"


def install_page(app: FastAPI) -> None:
    """Add ``GET /`` and the ``/static`` mount to `app` (a route and a prefix mount: /v1 is never shadowed)."""

    @app.get("/", include_in_schema=False)
    async def read_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def read_favicon() -> FileResponse:
        # Browsers ask for /favicon.ico on pages that name none (the API docs): the page's SVG icon, never a 404.
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
