"""``/docs`` and ``/redoc`` load everything from the server itself: no CDN (issue 17, "also worth fixing")."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

#: every URL an HTML page of FastAPI's docs names: src/href attributes, Swagger UI's ``url:``, Redoc's spec-url
REFERENCE = re.compile(r"""(?:\bsrc|\bhref|\bspec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")


@pytest.mark.parametrize(("path", "script"), [("/docs", "/docs-assets/swagger-ui-bundle.js"),
                                              ("/redoc", "/docs-assets/redoc.standalone.js")])
def test_the_docs_pages_reference_only_same_origin_urls_that_answer_200(client: TestClient, path: str,
                                                                       script: str) -> None:
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text and "//" not in page.text.replace("://", "")
    urls = {first or second for first, second in REFERENCE.findall(page.text)}
    assert script in urls and "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        answer = client.get(url)
        assert answer.status_code == 200, url
        assert len(answer.content) > 0, url


def test_the_swagger_ui_script_is_the_packaged_bundle_not_a_stub(client: TestClient) -> None:
    bundle = client.get("/docs-assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert len(bundle.content) > 500_000 and b"SwaggerUIBundle" in bundle.content


def test_the_docs_assets_stay_out_of_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(path.startswith(("/docs", "/redoc")) for path in paths)


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_forbid_the_browser_any_other_host(client: TestClient, path: str) -> None:
    # Redoc's bundle links its logo on a CDN: the policy keeps the browser from asking for it (offline, no leak)
    policy = client.get(path).headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data:" in policy
    assert "http" not in policy
