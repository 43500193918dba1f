"""The web page and the API docs, all served from here: no CDN, no build step, so they work offline.

``GET /`` answers ``static/index.html``; ``/static/*`` its script and style
sheet.  ``GET /docs`` (Swagger UI) and ``GET /redoc`` are FastAPI's own
pages (`get_swagger_ui_html`, `get_redoc_html`) pointed at the Swagger UI and
Redoc files of the ``fastapi-offline`` package (pinned in pyproject.toml),
served under ``/docs-assets``, instead of a CDN.  None of these routes needs
an API key (issue 6) or appears in the OpenAPI schema; the page itself calls
the ``/v1`` API, so when keys are set it asks for one and sends it as a bearer
token.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
DOCS_ASSETS = "/docs-assets"
#: the API docs may load nothing from another host: Redoc's bundle links a logo on its CDN, which this refuses
#: (inline script and style: FastAPI's docs pages start Swagger UI inline, Redoc styles inline; workers from blob:)
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:")


def install_page(app: FastAPI) -> None:
    """Add ``GET /``, ``/docs``, ``/redoc`` and their static mounts to `app` (build it with
    ``docs_url=None, redoc_url=None``; mounts are prefixes: /v1 is never shadowed)."""

    @app.get("/", include_in_schema=False)
    async def read_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def read_swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url=app.openapi_url or "", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png")
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def read_redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url=app.openapi_url or "", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False)
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/favicon.ico", include_in_schema=False)
    async def read_favicon() -> FileResponse:
        # Browsers ask for /favicon.ico on pages that name none (the API docs): the page's SVG icon, never a 404.
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
