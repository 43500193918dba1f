"""The web page in headless Chromium (Debian's, driven by Playwright) against a real uvicorn server.

Plans Llama-3.1-70B on one H100 (no fit at 16-bit, fit at INT4 at 4,096
tokens), checks the verdict and the bars, raises the context until INT4 no
longer fits, shows an API error next to its field, redraws the charts when the
window is resized (without asking the server again), uploads a small .npy and
reads the compare table; screenshots go to tests/e2e/artifacts/ (git-ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import CHROMIUM

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium (/usr/bin/chromium) is not installed"),
]
sync_api = pytest.importorskip("playwright.sync_api")


def open_page(browser: Any, live_server: str, width: int, height: int) -> Any:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(live_server + "/")
    page.wait_for_selector("body[data-ready='true']")
    return page


def plan(page: Any, context: int) -> None:
    page.fill("#context", str(context))
    page.click("#plan-button")
    page.wait_for_selector(f"#verdict >> text={context:,} tokens")


def test_llama_70b_on_one_h100_fits_only_at_int4_until_the_context_grows(browser: Any, live_server: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, live_server, 1280, 1000)
    page.select_option("#model-preset", "llama-3.1-70b")
    page.select_option("#device", "h100-80gb")
    page.fill("#count", "1")
    page.fill("#sequences", "1")
    plan(page, 4096)
    assert page.locator("#verdict p[data-format='bf16']").get_attribute("data-fits") == "false"
    assert page.locator("#verdict p[data-format='int4']").get_attribute("data-fits") == "true"
    assert "does not fit" in page.inner_text("#verdict p[data-format='bf16']")
    assert "INT4 (group 128): fits" in page.inner_text("#verdict p[data-format='int4']")
    assert page.inner_text("#verdict .verdict-head").endswith("fits only at INT4 (group 128).")
    # One bar per format (identical devices share one), each with weights, KV cache, activations, overhead.
    assert page.locator("#bars g.bar").count() == 2
    for term in ("weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes"):
        assert page.locator(f"#bars g.bar[data-format='int4'] rect[data-term='{term}']").count() == 1
    assert page.locator("#bars g.bar[data-format='int4'] rect[data-term='headroom_bytes']").count() == 1
    assert page.locator("#bars line.capacity").count() == 2
    page.wait_for_selector("#sweep polyline[data-format='int4']")
    assert page.locator("#sweep line.marker[data-format='int4']").count() == 1
    page.screenshot(path=str(ARTIFACTS / "page-fits-int4.png"), full_page=True)

    # 128 Ki tokens of bf16 KV cache, 40 GiB beside INT4's weights: 79.33 GiB of 71.20 usable (256 Ki tokens, 80 GiB
    # of KV cache on its own, is above the 131,072 vLLM derives from Llama-3.1's config: refused, not a memory miss)
    plan(page, 131072)
    assert page.locator("#verdict p[data-format='int4']").get_attribute("data-fits") == "false"
    assert "does not fit, even at INT4" in page.inner_text("#verdict .verdict-head")
    assert page.locator("#bars g.bar[data-fits='false']").count() == 2
    page.screenshot(path=str(ARTIFACTS / "page-no-fit.png"), full_page=True)

    page.fill("#context", "0")
    page.click("#plan-button")
    page.wait_for_selector("#err-context:not(:empty)")
    assert page.inner_text("#err-context") == "“0”: must be an integer in [1, 16777216]"
    assert page.get_attribute("#context", "aria-invalid") == "true"
    page.close()


def test_a_format_the_engine_refuses_is_shown_refused_not_fitting(browser: Any, live_server: str) -> None:
    # vLLM 0.19 runs no fp8 KV cache on a V100 (compute capability 7.0, below every fp8 backend's floor): both
    # formats are refused, though Llama-3.1-8B's memory fits; a device's own fits is its memory only
    page = open_page(browser, live_server, 1280, 1000)
    page.select_option("#model-preset", "llama-3.1-8b")
    page.select_option("#device", "v100-32gb")
    page.fill("#count", "1")
    page.fill("#sequences", "1")
    page.select_option("#kv-dtype", "fp8")
    plan(page, 4096)
    assert "refused by the engine" in page.inner_text("#verdict p[data-format='int4']")
    assert page.locator("#bars g.bar").count() == 2
    assert page.locator("#bars g.bar[data-fits='true']").count() == 0
    assert page.locator("#bars g.bar text.tick.bad", has_text="refused").count() == 2
    cells = [row.locator("td").last.inner_text() for row in page.locator("#per-device tbody tr").all()]
    assert cells == ["refused", "refused"]


def test_a_resized_window_redraws_the_plan_without_asking_again(browser: Any, live_server: str) -> None:
    """The charts are laid out anew for the new width from the plan on screen: no request; an error clears the
    plan (a stale answer would read as the answer to the new question) and stays through a resize."""
    page = open_page(browser, live_server, 1280, 1000)
    plan(page, 4096)
    page.wait_for_selector("#sweep polyline[data-format='int4']")
    chart_width = "document.querySelector('#bars svg').viewBox.baseVal.width"
    wide = page.evaluate(chart_width)
    posted: list[str] = []
    page.on("request", lambda request: posted.append(request.url) if request.method == "POST" else None)
    page.set_viewport_size({"width": 640, "height": 1000})
    page.wait_for_function(f"{chart_width} < {wide}")
    assert posted == []
    assert "4,096 tokens" in page.inner_text("#verdict")

    page.fill("#context", "0")
    page.click("#plan-button")
    page.wait_for_selector("#err-context:not(:empty)")
    assert page.is_hidden("#plan-result")
    posted.clear()
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.wait_for_timeout(400)  # past the redraw's 250 ms debounce
    assert posted == []
    assert page.inner_text("#err-context") == "“0”: must be an integer in [1, 16777216]"
    assert page.get_attribute("#context", "aria-invalid") == "true"
    page.close()


def test_upload_npy_shows_the_compare_table(browser: Any, live_server: str, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    weights = np.random.default_rng(5).standard_normal((64, 256)).astype(np.float32)
    upload = tmp_path / "layer.npy"
    np.save(upload, weights)
    page = open_page(browser, live_server, 1280, 1000)
    page.set_input_files("#q-file", str(upload))
    page.click("#compare-button")
    page.wait_for_selector("#compare-table tbody tr")
    rows = page.locator("#compare-table tbody tr")
    assert rows.count() == 3  # rtn, clip, hqq are ticked by default
    # the tensor is each row's header (th), then method, size, bits per weight, ... (td)
    methods = [rows.nth(i).locator("td").nth(0).inner_text().split(" ")[0] for i in range(3)]
    assert methods == ["rtn", "clip", "hqq"]
    # 64 x 256 at g128 asymmetric: 8,192 bytes of nibbles + 128 fp16 scales + 128 packed zeros = 8,512 bytes.
    assert rows.nth(0).locator("td").nth(1).inner_text() == "8,512"
    assert rows.nth(0).locator("td").nth(2).inner_text() == "4.156"
    assert rows.nth(0).locator("td").nth(5).inner_text() == "—"  # no importance statistics: no weighted error
    page.screenshot(path=str(ARTIFACTS / "page-compare.png"), full_page=True)
    with page.expect_download() as download_info:
        page.click("#download-button")
    download = download_info.value
    assert download.suggested_filename.endswith(".safetensors")
    page.close()


def test_page_is_usable_at_phone_width(browser: Any, live_server: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, live_server, 390, 844)
    page.focus("#context")
    page.keyboard.press("Control+A")
    page.keyboard.type("8192")
    page.keyboard.press("Enter")  # submits the form from the keyboard
    page.wait_for_selector("#verdict >> text=8,192 tokens")
    assert page.locator("#bars g.bar").count() >= 2
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px at 390 px wide"
    page.screenshot(path=str(ARTIFACTS / "page-phone.png"), full_page=True)
    page.close()
