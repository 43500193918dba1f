"""The page as a person meets it (issue 20), in headless Chromium (Debian's, driven by Playwright).

Each test is one task people bring, with the fault found there and the fixed
behaviour asserted: no stale plan after an error, errors on their field in the
units typed, "8k" as 8,192 tokens, chart labels off the lines (from element
boxes), points past the trained context not marked as fitting, per-device
figures without hover, tables not clipped at 1280 and 390 px, GGUF download
with the defaults, no stale download link, a link that replans, a CSV export
that parses, devices side by side, GB/GiB, dark mode, no 404s, keyboard use,
and axe-core finding no serious or critical violation.  Screenshots at 1280
and 390 px, light and dark, go to tests/e2e/artifacts/ (git-ignored).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as save_safetensors

from quant_core.tensorio import write_importance_dat
from tests.e2e.test_web_page import ARTIFACTS, CHROMIUM, TIMEOUT_MS

AXE_VERSION = "4.14.1"  # axe-core from npm (MPL-2.0), installed on first use into a git-ignored folder
AXE_DIR = Path(__file__).resolve().parent / ".axe"
WIDTHS = (1280, 390)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium (/usr/bin/chromium) is not installed"),
]
sync_api = pytest.importorskip("playwright.sync_api")


def open_page(browser: Any, base: str, path: str = "/", width: int = 1280, scheme: str = "light") -> Any:
    page = browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(base + path)
    page.wait_for_selector("body[data-ready='true']")
    return page


def plan_and_wait(page: Any, context_text: str, expected_tokens: int) -> None:
    page.fill("#context", context_text)
    page.click("#plan-button")
    page.wait_for_selector(f"#verdict >> text={expected_tokens:,} tokens")
    page.wait_for_selector("#sweep svg polyline")


def field_error(page: Any, input_id: str) -> str:
    page.wait_for_selector(f"#err-{input_id}:not(:empty)")
    return str(page.inner_text(f"#err-{input_id}"))


# --- errors: never a stale plan, always on their field, in the user's terms ------------------------


def test_a_failed_plan_clears_the_previous_one_and_says_why_on_the_field(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server)
    page.select_option("#model-preset", "llama-3.1-70b")
    plan_and_wait(page, "4096", 4096)
    assert "llama-3.1-70b fits only at INT4" in page.inner_text("#verdict")
    page.select_option("#model-preset", "gpt-oss-120b")
    page.fill("#tensor", "3")  # the API refuses it: tensor x pipeline must equal the device count (1)
    page.click("#plan-button")
    message = field_error(page, "tensor")
    assert "must equal the device count" in message
    assert page.get_attribute("#tensor", "aria-invalid") == "true"
    assert page.is_hidden("#plan-result")
    assert "llama-3.1-70b" not in page.inner_text("body")
    assert page.is_hidden("#export-json") and page.is_disabled("#copy-link")

    page.fill("#tensor", "")
    page.select_option("#model-preset", "llama-3.1-70b")
    plan_and_wait(page, "4096", 4096)  # back to a plan, then a bad pasted config
    page.check("input[name='model-source'][value='config']")
    page.fill("#model-config", '{"hidden_size": 5120,')
    page.click("#plan-button")
    assert field_error(page, "model-config").startswith("not valid JSON")
    assert page.get_attribute("#model-config", "aria-invalid") == "true"
    assert page.inner_text("#plan-error") == "Invalid input: see the highlighted field."
    assert "Error: Error" not in page.inner_text("body")
    assert page.is_hidden("#plan-result")
    page.close()


def test_an_api_error_speaks_in_the_units_the_user_typed(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server)
    page.check("input[name='hardware-source'][value='memory']")
    page.fill("#memory", "-80GiB")
    page.click("#plan-button")
    assert field_error(page, "memory") == "“-80GiB”: must be positive"
    page.fill("#memory", "2000TiB")  # over the API's 2^50-byte limit
    page.click("#plan-button")
    message = field_error(page, "memory")
    assert message == "“2000TiB”: is over the maximum of 1048576.00 GiB"
    assert "memory_bytes" not in page.inner_text("body") and "1125899906842624" not in page.inner_text("body")
    page.fill("#memory", "eighty")
    page.click("#plan-button")
    assert field_error(page, "memory") == "“eighty” is not a size (examples: 80GiB, 80GB, 24)"
    page.close()


def test_a_pasted_config_missing_a_key_names_the_key_on_the_field(browser: Any, live_server: str) -> None:
    # the page cut "num_hidden_layers=None: " off the API's message as it does for a one-value field, so the box of
    # many keys said "required by model_type 'llama' but missing" without saying which
    page = open_page(browser, live_server)
    page.check("input[name='model-source'][value='config']")
    page.fill("#model-config", json.dumps({"model_type": "llama", "hidden_size": 4096}))
    page.click("#plan-button")
    assert field_error(page, "model-config") == "num_hidden_layers=None: required by model_type 'llama' but missing"
    assert page.get_attribute("#model-config", "aria-invalid") == "true"
    page.close()


def test_no_mix_that_fits_is_said_in_the_unit_shown_not_in_bytes(browser: Any, live_server: str) -> None:
    # Llama-3.1-405B on one H100: not even every quantized tensor at int4 fits; the reason came as raw byte counts
    # ("needs 144958428545 bytes more (221407772672 used of 76449344127 usable)") on a page that shows GiB or GB
    page = open_page(browser, live_server, "/?model=llama-3.1-405b&device=h100-80gb&count=1&ctx=4096")
    page.wait_for_selector("#verdict p[data-format='fit']")
    text = str(page.inner_text("#verdict p[data-format='fit']"))
    assert text.startswith("No mix of int4, int8 and 16-bit fits: the model does not fit even with every quantized")
    assert re.search(r"device 0 needs \d+\.\d\d GiB more \(\d+\.\d\d GiB used of 71\.20 GiB usable\)\.$", text), text
    assert not re.search(r"\d{7,}", text)
    page.select_option("#unit", "GB")  # the unit switch redraws it in GB, without asking again
    page.wait_for_selector("#verdict p[data-format='fit'] >> text=76.45 GB usable")
    page.close()


def test_human_units_in_the_inputs_never_plan_8_tokens_for_8k(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server)
    plan_and_wait(page, "8k", 8192)
    plan_and_wait(page, "128K", 131072)
    page.check("input[name='hardware-source'][value='memory']")
    page.fill("#memory", "80GB")
    plan_and_wait(page, "8k", 8192)
    assert "(74.51 GiB each" in page.inner_text("#verdict")  # 80 x 10^9 bytes = 74.51 x 2^30
    page.close()


def test_a_device_given_by_memory_takes_its_sm_count_to_the_plan_and_the_link(browser: Any,
                                                                            live_server: str) -> None:
    page = open_page(browser, live_server)
    page.select_option("#model-preset", "llama-3.1-8b")
    page.check("input[name='hardware-source'][value='memory']")
    page.fill("#memory", "24GiB")
    page.fill("#compute-units", "58")  # an L4's: vLLM 0.19's Triton top-k/top-p buffer is 58 rows, not 142
    plan_and_wait(page, "8k", 8192)
    assert "sms=58" in page.url
    with page.expect_download() as json_info:
        page.click("#export-json")
    answer = json.loads(Path(json_info.value.path()).read_text())
    assert answer["hardware"]["compute_units"] == 58 and "58 SMs" in answer["activation"]["basis"]
    page.fill("#compute-units", "0")
    page.click("#plan-button")
    assert field_error(page, "compute-units") == "must be an integer in [1, 10000]"
    page.close()


def test_an_empty_method_list_is_an_error_on_the_methods(browser: Any, live_server: str, tmp_path: Path) -> None:
    upload = tmp_path / "layer.npy"
    np.save(upload, np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32))
    page = open_page(browser, live_server)
    page.set_input_files("#q-file", str(upload))
    for box in page.locator("#q-methods input[type='checkbox']").all():
        box.uncheck()
    page.click("#compare-button")
    assert field_error(page, "q-methods") == "choose at least one method"
    assert page.inner_text("#quant-error") == "Invalid input: see the highlighted field."
    assert page.get_attribute("#q-methods input[value='rtn']", "aria-invalid") == "true"
    page.close()


# --- the charts and tables -------------------------------------------------------------------------


BOXES = """(selector) => {
  const svg = document.querySelector(selector);
  const box = (el) => { const b = el.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height]; };
  return { plot: box(svg.querySelector('.plot-area')),
           texts: [...svg.querySelectorAll('text')].map((t) => ({ text: t.textContent, box: box(t) })) };
}"""


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("width", WIDTHS)
def test_context_chart_labels_stay_off_its_lines(browser: Any, live_server: str, width: int) -> None:
    """Every line of the context chart lies in its plot area; no text box enters it (boxes from getBBox)."""
    page = open_page(browser, live_server, "/?model=llama-3.1-70b&device=h100-80gb&ctx=4096", width)
    page.wait_for_selector("#sweep svg polyline")
    boxes = page.evaluate(BOXES, "#sweep svg")
    assert len(boxes["texts"]) >= 8
    inside = [t["text"] for t in boxes["texts"] if overlaps(t["box"], boxes["plot"])]
    assert inside == []
    legend = page.inner_text("#sweep-legend")
    assert "INT4 (group 128): fits up to" in legend and "Usable 71.20 GiB" in legend
    page.close()


def test_points_past_the_trained_context_are_not_marked_fitting(browser: Any, live_server: str) -> None:
    # Qwen3-235B-A22B: max_position_embeddings 40,960 (its config.json); 8 x H100 hold far more at INT4
    page = open_page(browser, live_server, "/?model=qwen3-235b-a22b&device=h100-80gb&count=8&ctx=32k&seq=8")
    page.wait_for_selector("#sweep svg circle")
    states = page.evaluate("""() => [...document.querySelectorAll('#sweep circle[data-format="int4"]')]
        .map((c) => [Number(c.dataset.context), c.dataset.state])""")
    assert all(state != "fits" for context, state in states if context > 40960)
    assert any(state == "beyond" for context, state in states if context > 40960)
    assert all(state == "fits" for context, state in states if context <= 40960)
    legend = page.inner_text("#sweep-legend")
    assert "fits up to 40,960 tokens (limit set by the model's trained context, not memory)" in legend
    assert "Past the model's trained context (not a fit)" in legend
    assert "40,960 (the model's trained context)" in page.inner_text("#limits")
    page.click("#sweep-details summary")  # the same points as a table, no hover needed
    beyond = page.locator("#sweep-table tbody tr", has_text="65,536").filter(has_text="INT4").first
    assert beyond.locator("td").last.inner_text() == "no: past the model's trained context"
    # 8 devices, 4 KV heads: the page says the KV cache is replicated
    warnings = page.inner_text("#warnings")
    assert "The KV cache is replicated: 8 devices in tensor parallel share the model's 4" in warnings
    page.close()


def test_per_device_figures_are_visible_without_hover_and_labelled(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server, "/?model=llama-3.1-70b&device=h100-80gb&count=2&ctx=32k&seq=8")
    page.wait_for_selector("#per-device tbody tr")
    answer = httpx.post(live_server + "/v1/plan", timeout=30, json={
        "model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2},
        "workload": {"context_length": 32768, "concurrent_sequences": 8}}).json()
    device = answer["comparison"]["int4"]["devices"][0]
    row = page.locator("#per-device tbody tr", has_text="INT4").first
    cells = [cell.inner_text() for cell in row.locator("td").all()]
    assert cells[0] == "devices 0–1"
    assert cells[1:5] == [f"{device[key] / 2**30:.2f}" for key in
                          ("weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes")]
    assert page.is_visible("#per-device td >> nth=2")
    assert "Per device (GiB)" in page.inner_text("#per-device caption")
    assert "Weights, all devices (GiB)" in page.inner_text("#limits thead")
    assert "per device" in page.inner_text("#plan-result figcaption >> nth=0")
    page.close()


def compare_upload(page: Any, tmp_path: Path) -> None:
    upload = tmp_path / "layer.npy"
    np.save(upload, np.random.default_rng(5).standard_normal((64, 256)).astype(np.float32))
    page.set_input_files("#q-file", str(upload))
    page.click("#compare-button")
    page.wait_for_selector("#compare-table tbody tr")


NOT_CLIPPED = """(id) => {
  const table = document.getElementById(id);
  const scroller = table.closest('.table-scroll');
  const viewport = document.documentElement.clientWidth;
  const right = (el) => el.getBoundingClientRect().right;
  const cells = [...table.querySelectorAll('caption, th, td')].filter((el) => el.offsetParent !== null);
  return { scroll: scroller.scrollWidth - scroller.clientWidth,
           beyond: cells.filter((el) => right(el) > viewport + 0.5).map((el) => el.textContent.slice(0, 30)),
           page: document.documentElement.scrollWidth - viewport };
}"""


@pytest.mark.parametrize("width", WIDTHS)
def test_tables_are_not_clipped(browser: Any, live_server: str, tmp_path: Path, width: int) -> None:
    page = open_page(browser, live_server, "/?model=llama-3.1-70b&device=h100-80gb&count=2&ctx=8k&seq=4", width)
    page.wait_for_selector("#per-device tbody tr")
    compare_upload(page, tmp_path)
    for table in ("compare-table", "per-device", "limits", "speed-table"):
        result = page.evaluate(NOT_CLIPPED, table)
        assert result == {"scroll": 0, "beyond": [], "page": 0}, (table, result)
    assert page.is_visible("#compare-table caption")
    max_error = page.locator("#compare-table tbody tr >> nth=0").locator("td").last
    assert max_error.is_visible() and float(max_error.inner_text()) > 0
    page.close()


def test_importance_statistics_and_a_budget_show_the_weighted_error_and_each_tensors_format(
        browser: Any, live_server: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    tensors = {"a.weight": rng.standard_normal((64, 256)).astype(np.float32),
               "b.weight": (3 * rng.standard_normal((128, 256))).astype(np.float32)}
    (tmp_path / "m.safetensors").write_bytes(save_safetensors(tensors))
    write_importance_dat(tmp_path / "imatrix.dat",
                        {name: np.exp(2 * rng.standard_normal(256)).astype(np.float32) for name in tensors})
    page = open_page(browser, live_server)
    page.set_input_files("#q-file", str(tmp_path / "m.safetensors"))
    page.set_input_files("#q-importance", str(tmp_path / "imatrix.dat"))
    page.fill("#q-bits", "4.5")
    page.click("#compare-button")
    page.wait_for_selector("#compare-table tbody tr")
    rows = page.locator("#compare-table tbody tr")
    assert rows.count() == 6  # two tensors x rtn, clip, hqq
    cells = [[rows.nth(i).locator("td").nth(j).inner_text() for j in range(7)] for i in range(6)]
    assert all(" · int4-" in row[0] or " · int8" in row[0] or " · bf16" in row[0] for row in cells), cells
    weighted = [row[5] for row in cells]
    assert all(text.endswith("(minimised)") and 0 < float(text.split(" ")[0]) < 1 for text in weighted), weighted
    bits = [float(row[2]) for row in cells]
    sizes = [int(row[1].replace(",", "")) for row in cells]
    for method in range(3):  # each method's mix keeps to the budget over both tensors
        assert (sizes[method] + sizes[3 + method]) * 8 <= 4.5 * (64 + 128) * 256, (sizes, bits)

    page.fill("#q-bits", "four")
    page.click("#compare-button")
    page.wait_for_selector("#err-q-bits:not(:empty)")
    assert "number of bits per weight" in page.inner_text("#err-q-bits")
    page.close()


# --- downloads and exports -------------------------------------------------------------------------


def test_gguf_download_works_with_the_form_defaults_and_no_stale_link_stays(browser: Any, live_server: str,
                                                                            tmp_path: Path) -> None:
    page = open_page(browser, live_server)
    compare_upload(page, tmp_path)
    page.select_option("#d-output", "gguf")
    assert page.input_value("#q-group-size") == "32" and page.is_checked("#q-symmetric")
    assert "group size is set to 32" in page.inner_text("#d-output-note")
    with page.expect_download() as download_info:
        page.click("#download-button")
    download = download_info.value
    assert download.suggested_filename.endswith(".gguf")
    assert Path(download.path()).read_bytes()[:4] == b"GGUF"
    assert page.is_visible("#download-link")

    not_a_tensor = tmp_path / "notes.npy"
    not_a_tensor.write_bytes(b"this is not a tensor file")
    page.set_input_files("#q-file", str(not_a_tensor))
    page.click("#download-button")
    page.wait_for_selector("#download-error:not(:empty)")
    assert page.is_hidden("#download-link")
    assert page.get_attribute("#download-link", "href") is None
    page.close()


def test_the_url_reproduces_a_plan_and_the_exports_parse(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server)
    page.select_option("#model-preset", "llama-3.1-70b")
    page.fill("#count", "2")
    page.fill("#sequences", "8")
    page.fill("#utilization", "95")
    plan_and_wait(page, "32k", 32768)
    assert "95% usable" in page.inner_text("#verdict")
    link = page.url
    assert "ctx=32k" in link and "model=llama-3.1-70b" in link and "util=95" in link
    verdict = page.inner_text("#verdict")

    with page.expect_download() as json_info:
        page.click("#export-json")
    answer = json.loads(Path(json_info.value.path()).read_text())
    assert answer["workload"] == {"context_length": 32768, "concurrent_sequences": 8}
    assert answer["memory_utilization"] == 0.95
    with page.expect_download() as csv_info:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(csv_info.value.path()).read_text())))
    assert len(rows) == 2 * len(answer["comparison"])  # one row per device and format
    by_key = {(row["format"], int(row["device"])): row for row in rows}
    for name, result in answer["comparison"].items():
        for device in result["devices"]:
            row = by_key[(name, device["index"])]
            assert int(row["kv_cache_bytes"]) == device["kv_cache_bytes"]
            assert int(row["used_bytes"]) == device["used_bytes"]
            assert row["fits"] == str(device["fits"]).lower()

    again = browser.new_page(viewport={"width": 1280, "height": 900})
    again.goto(link)  # opening the link plans again, with nothing clicked
    again.wait_for_selector("#verdict >> text=32,768 tokens")
    assert again.inner_text("#verdict") == verdict
    again.close()
    page.close()


def test_the_context_chart_says_refused_for_a_format_the_engine_refuses(browser: Any, live_server: str) -> None:
    # vLLM 0.33 has no GGUF: the chosen Q4_K_M is refused while 16-bit and INT4 are planned; its line in the context
    # chart said "no context fits" and its points "does not fit" at 23 GiB of 35 usable, a memory story the verdict
    # does not tell
    page = open_page(browser, live_server,
                     "/?model=llama-3.1-70b&device=a100-40gb&count=2&ctx=8k&engine=0.33&format=gguf-q4_k_m")
    page.wait_for_selector("#sweep svg polyline[data-format='gguf-q4_k_m']")
    assert page.inner_text("#verdict p[data-format='gguf-q4_k_m']").startswith(
        "GGUF Q4_K_M: refused by the engine: vLLM 0.33 cannot load gguf-q4_k_m weights on any device")
    assert page.inner_text("#sweep-legend li[data-format='gguf-q4_k_m']") == (
        "GGUF Q4_K_M: refused by the engine (the verdict says why)")
    titles = page.eval_on_selector_all("#sweep circle[data-format='gguf-q4_k_m'] title",
                                       "titles => titles.map(t => t.textContent)")
    assert titles and all(title.endswith("(refused by the engine)") for title in titles)
    cells = page.eval_on_selector_all("#sweep-table tbody tr", "rows => rows.filter(r => r.cells[1].textContent === "
                                      "'GGUF Q4_K_M').map(r => r.cells[3].textContent)")
    assert cells == ["no: refused by the engine"] * len(titles)
    page.close()


def test_the_csv_of_a_refused_plan_says_refused_beside_each_devices_memory_fit(browser: Any, live_server: str) -> None:
    # vLLM 0.19 runs no fp8 KV cache on a V100: Llama-3.1-8B's memory fits there (fits true on every device, as the
    # API's device fits is memory only), and the CSV said nothing more, so it read as deployable
    page = open_page(browser, live_server, "/?model=llama-3.1-8b&device=v100-32gb&count=1&kv=fp8")
    page.wait_for_selector("#verdict p.refusal")
    with page.expect_download() as csv_info:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(csv_info.value.path()).read_text())))
    assert [row["format"] for row in rows] == ["bf16", "int4"]
    refusal = page.inner_text("#verdict p.refusal").removeprefix("KV cache dtype (fp8) is refused: ").removesuffix(".")
    assert refusal.startswith("vLLM 0.19 cannot run the fp8 KV cache (fp8_e4m3) of llama-3.1-8b on a device of")
    assert [(row["fits"], row["refusal"]) for row in rows] == [("true", refusal), ("true", refusal)]
    page.close()


def test_a_pasted_config_is_named_after_its_model_and_its_unused_keys_are_noted(browser: Any,
                                                                                live_server: str) -> None:
    config = {"_name_or_path": "my-org/my-8b", "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_kv_heads": 8, "intermediate_size": 14336, "vocab_size": 128256}
    page = open_page(browser, live_server)
    page.check("input[name='model-source'][value='config']")
    page.fill("#model-config", json.dumps(config))
    plan_and_wait(page, "4096", 4096)
    assert page.inner_text("#verdict .verdict-head").startswith("my-org/my-8b fits")
    warnings = page.inner_text("#warnings")
    assert "not used to size the model" in warnings and "num_kv_heads" in warnings
    assert "#config=" in page.url  # the pasted config travels in the link's fragment
    page.close()


def test_the_kv_cache_dtype_defaults_to_the_engines_auto_as_the_api_does(browser: Any, live_server: str) -> None:
    # the page sent bf16 whatever the checkpoint said; "auto" sends no dtype, so a ModelOpt FP8 checkpoint whose
    # config quantizes the KV cache gets vLLM 0.19's fp8 cache, and a dtype the user picks is kept
    config = {"_name_or_path": "my-org/my-8b-fp8", "model_type": "llama", "hidden_size": 4096,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "intermediate_size": 14336, "vocab_size": 128256, "torch_dtype": "bfloat16",
              "quantization_config": {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                                      "exclude_modules": ["lm_head"]}}
    page = open_page(browser, live_server)
    assert page.eval_on_selector("#kv-dtype", "element => element.value") == ""
    # the page plans for vLLM, which runs no int8/int4 cache of nibble's layout: only the caches it runs are offered,
    # those /v1/models/inspect lists for the model (vLLM 0.33's per-token-head ones included)
    assert page.eval_on_selector_all("#kv-dtype option", "options => options.map(o => o.value)") == [
        "", "bf16", "fp16", "fp8", "int8_per_token_head", "int4_per_token_head", "fp8_per_token_head"]
    page.check("input[name='model-source'][value='config']")
    page.fill("#model-config", json.dumps(config))
    plan_and_wait(page, "4096", 4096)
    assert "KV cache fp8, 65,536 bytes per token" in page.inner_text("#verdict")
    assert "kv=" not in page.url
    page.select_option("#kv-dtype", "bf16")
    plan_and_wait(page, "4096", 4096)  # the earlier plan's 4,096 tokens are on screen until the new one lands
    page.wait_for_selector("#verdict >> text=KV cache bf16, 131,072 bytes per token")
    assert "kv=bf16" in page.url
    page.close()


OPTION_VALUES = "options => options.map(o => o.value)"


def plan_request(page: Any) -> dict[str, Any]:
    """Click Plan; the body of the POST /v1/plan the page sent (the first: the sweeps follow it)."""
    with page.expect_request(lambda request: request.method == "POST" and request.url.endswith("/v1/plan")) as sent:
        page.click("#plan-button")
    body: dict[str, Any] = sent.value.post_data_json
    return body


def choose_llama_8b_on_one_h100(page: Any) -> None:
    page.select_option("#model-preset", "llama-3.1-8b")
    page.select_option("#device", "h100-80gb")
    page.fill("#count", "1")
    page.fill("#sequences", "1")
    page.fill("#context", "4096")


def test_vllm_0_33_and_its_int4_per_token_head_cache_go_to_the_api_and_its_figures_come_back(
        browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server)
    # the release menu is the API's runtime.engine_version enum; "default" sends none and names the API's default
    assert page.eval_on_selector_all("#engine-version option", OPTION_VALUES) == ["", "0.11", "0.19", "0.33"]
    choose_llama_8b_on_one_h100(page)
    page.select_option("#engine-version", "0.33")
    page.select_option("#kv-dtype", "int4_per_token_head")
    body = plan_request(page)
    assert body["kv_cache"] == {"dtype": "int4_per_token_head"}
    assert body["runtime"] == {"memory_utilization": 0.9, "engine_version": "0.33"}
    page.wait_for_selector("#verdict >> text=4,096 tokens")
    answer = httpx.post(live_server + "/v1/plan", json=body, timeout=30).json()
    # 32 layers x 2 (K, V) x 8 KV heads x (128 / 2 bytes of 4-bit codes + a 4-byte fp32 scale) = 34,816 bytes
    assert answer["kv_cache"]["bytes_per_token"] == 34_816 and answer["engine"]["version"] == "0.33"
    assert "KV cache int4_per_token_head, 34,816 bytes per token; planned by vLLM 0.33's rules." in page.inner_text(
        "#verdict")
    assert page.inner_text("#verdict .verdict-head") == "llama-3.1-8b fits at 16-bit and at INT4."
    kv_cache_bytes = answer["comparison"]["int4"]["devices"][0]["kv_cache_bytes"]
    assert kv_cache_bytes == 34_816 * 4096  # a 4,096-token sequence's pages, 16 tokens each: no rounding
    row = page.locator("#per-device tbody tr", has_text="INT4").first
    assert row.locator("td").nth(2).inner_text() == f"{kv_cache_bytes / 2**30:.2f}"
    assert "engine=0.33" in page.url and "kv=int4_per_token_head" in page.url
    verdict = page.inner_text("#verdict")

    again = open_page(browser, live_server, page.url.removeprefix(live_server))  # the link plans the same again
    again.wait_for_selector("#verdict >> text=4,096 tokens")
    assert again.input_value("#engine-version") == "0.33" and again.input_value("#kv-dtype") == "int4_per_token_head"
    assert again.inner_text("#verdict") == verdict
    again.close()

    page.select_option("#engine-version", "")  # default: no engine_version sent, the API's default named
    page.select_option("#kv-dtype", "")
    body = plan_request(page)
    assert "kv_cache" not in body and body["runtime"] == {"memory_utilization": 0.9}
    page.wait_for_selector("#verdict >> text=planned by vLLM 0.19's rules")
    assert page.eval_on_selector("#engine-version option[value='']", "o => o.textContent") == "default (0.19)"
    assert "engine=" not in page.url and "kv=" not in page.url
    page.close()


def test_a_kv_cache_the_chosen_vllm_release_lacks_is_refused_with_the_apis_reason(browser: Any,
                                                                                   live_server: str) -> None:
    # vLLM 0.19's --kv-cache-dtype has no fp8_per_token_head: every format is refused, whatever its memory says
    page = open_page(browser, live_server)
    choose_llama_8b_on_one_h100(page)
    page.select_option("#engine-version", "0.19")
    page.select_option("#kv-dtype", "fp8_per_token_head")
    body = plan_request(page)
    assert body["kv_cache"] == {"dtype": "fp8_per_token_head"} and body["runtime"]["engine_version"] == "0.19"
    page.wait_for_selector("#verdict >> text=4,096 tokens")
    answer = httpx.post(live_server + "/v1/plan", json=body, timeout=30).json()
    assert page.inner_text("#verdict .verdict-head") == "llama-3.1-8b: the engine refuses every format planned."
    refusal = answer["refusal"]
    assert refusal.startswith("vLLM 0.19 cannot run the fp8_per_token_head KV cache")
    # the reason once, on the field it is about; each format says it is refused and what its memory alone would do
    assert page.inner_text("#verdict p.refusal") == f"KV cache dtype (fp8_per_token_head) is refused: {refusal}."
    for name, result in answer["comparison"].items():
        assert result["refusal"] == refusal
        assert page.inner_text(f"#verdict p[data-format='{name}']").endswith(
            ": refused by the engine (the reason above); its memory alone would fit.")
    assert page.get_attribute("#kv-dtype", "aria-invalid") == "true"
    assert page.locator("#bars g.bar[data-fits='true']").count() == 0
    page.close()


@pytest.mark.parametrize(("query", "field", "named"), [
    # vLLM 0.19 runs DeepSeek-V2-Lite's MLA fp8 cache on TRITON_MLA, whose fp8 kernels Triton compiles from 8.9 only:
    # an A100 (8.0) runs it with a 16-bit cache, so the refusal is the KV cache dtype's
    ("?model=deepseek-v2-lite&device=a100-80gb&count=1&kv=fp8", "kv-dtype", "KV cache dtype (fp8)"),
    # no MLA prefill below compute capability 8.0 in any release: the refusal is the device's
    ("?model=deepseek-v2-lite&device=v100-32gb&count=1", "device", "Device (NVIDIA V100 32GB)"),
])
def test_a_refusal_of_every_format_is_said_once_on_its_field_and_nothing_more_is_asked(
        browser: Any, live_server: str, query: str, field: str, named: str) -> None:
    # the page asked the best mix of a model the engine refuses at 16-bit and the context sweep of a plan no format
    # of which runs, and showed the one refusal four times: in each format's line, in the mix's "No mix fits" line
    # and in the planner's warning
    posted: list[dict[str, Any]] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.on("request", lambda request: posted.append({"url": request.url, **request.post_data_json})
            if request.method == "POST" and "/v1/plan" in request.url else None)
    page.goto(live_server + "/" + query)
    page.wait_for_selector("#devices-chart svg")  # the last answer the page waits for
    plans = [request for request in posted if request["url"].endswith("/v1/plan")]
    assert len(plans) == 1 and "weights" in plans[0] and plans[0]["weights"]["format"] != "fit"
    answer = httpx.post(live_server + "/v1/plan", json={k: v for k, v in plans[0].items() if k != "url"},
                        timeout=30).json()
    refusal = answer["refusal"]
    assert refusal and all(result["refusal"] == refusal for result in answer["comparison"].values())
    sweeps = [request["sweep"] for request in posted if request["url"].endswith("/v1/plan/sweep")]
    assert sweeps == [{"devices": sweeps[0]["devices"]}]  # which device types run it; no context sweep
    assert page.is_hidden("#sweep-figure")
    assert page.inner_text("#plan-result").count(refusal) == 1
    line = page.locator("#verdict p.refusal")
    assert line.get_attribute("data-field") == field
    assert line.inner_text() == f"{named} is refused: {refusal}."
    assert page.get_attribute(f"#{field}", "aria-invalid") == "true"
    assert page.inner_text(f"#err-{field}") == "refused by vLLM 0.19: the verdict says why"
    assert page.locator("#verdict p[data-format='fit']").count() == 0
    # the speed bound of a format that does not run says refused, as the per-device table does, not "does not fit"
    speed_cells = [cell.inner_text() for cell in page.locator("#speed-table tbody td").all()]
    assert speed_cells and set(speed_cells) - {"refused"} == {
        cell.inner_text() for cell in page.locator("#speed-table tbody td:nth-child(4)").all()}
    page.close()


def test_a_per_token_head_cache_an_mla_model_lacks_shows_the_apis_problem_on_the_kv_field(
        browser: Any, live_server: str) -> None:
    # inspect lists no *_per_token_head cache for DeepSeek-V2-Lite's MLA latent, so neither does the menu; a pick
    # made for another model stays chosen, and the plan shows the API's 422 detail beside the field
    page = open_page(browser, live_server)
    choose_llama_8b_on_one_h100(page)
    page.select_option("#engine-version", "0.33")
    page.select_option("#kv-dtype", "int8_per_token_head")
    page.select_option("#model-preset", "deepseek-v2-lite")
    page.wait_for_selector("#kv-dtype option >> text=int8_per_token_head (not a cache of this model)", state="attached")
    assert page.eval_on_selector_all("#kv-dtype option", OPTION_VALUES) == [
        "", "bf16", "fp16", "fp8", "int8_per_token_head"]
    assert page.input_value("#kv-dtype") == "int8_per_token_head"
    body = plan_request(page)
    assert body["model"] == {"preset": "deepseek-v2-lite"} and body["kv_cache"] == {"dtype": "int8_per_token_head"}
    refused = httpx.post(live_server + "/v1/plan", json=body, timeout=30)
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["errors"][0]["field"] == "kv_cache.dtype"
    # the page drops the message's "kv_cache.dtype='int8_per_token_head': " (the field names it)
    assert field_error(page, "kv-dtype") == problem["detail"].removeprefix("kv_cache.dtype='int8_per_token_head': ")
    assert "no MLA layout" in page.inner_text("#err-kv-dtype")
    assert page.inner_text("#plan-error") == "Invalid specification: see the highlighted field."
    assert page.get_attribute("#kv-dtype", "aria-invalid") == "true"
    assert page.is_hidden("#plan-result")

    page.select_option("#model-preset", "llama-3.1-8b")  # back to a model that has it: listed again, unmarked
    page.wait_for_function("() => [...document.querySelectorAll('#kv-dtype option')].length === 7")
    assert page.input_value("#kv-dtype") == "int8_per_token_head"
    assert page.eval_on_selector("#kv-dtype", "s => s.selectedOptions[0].textContent") == "int8_per_token_head"
    page.close()


# --- devices side by side, units, themes, keyboard ------------------------------------------------


def test_devices_side_by_side_chart_shows_the_fewest_of_each_type(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server, "/?model=qwen3-235b-a22b&device=h100-80gb&count=8&ctx=32k&seq=8")
    page.wait_for_selector("#devices-chart svg g.device-bar")
    bar = "#devices-chart g.device-bar[data-device='{}'][data-format='{}']"
    # 16: on 8 ranks vLLM 0.19's 2.17 GiB of non-torch memory per rank leaves no room (tests/app/test_plans.py)
    assert page.get_attribute(bar.format("h100-80gb", "bf16"), "data-min-devices") == "16"
    assert page.get_attribute(bar.format("h100-80gb", "int4"), "data-min-devices") == "4"
    assert page.get_attribute(bar.format("h200", "int4"), "data-min-devices") == "2"
    assert page.locator("#devices-chart g.device-bar").count() >= 2 * 19
    page.click("#devices-chart summary")
    assert "NVIDIA H200 141GB: 16-bit (bf16) on 8" in page.inner_text("#devices-chart .device-list")
    page.close()


def test_the_unit_switch_redraws_in_gb_without_asking_again(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server, "/?model=llama-3.1-70b&device=h100-80gb&ctx=4096")
    page.wait_for_selector("#per-device tbody tr")
    posted: list[str] = []
    page.on("request", lambda request: posted.append(request.url) if request.method == "POST" else None)
    page.select_option("#unit", "GB")
    page.wait_for_selector("#verdict >> text=84.94 GB each")  # CUDA reports 79.11 GiB = 84.94 x 10^9 bytes
    assert posted == []
    assert page.inner_text("#per-device caption").startswith("Per device (GB)")
    assert "unit=GB" in page.url
    page.close()


def test_a_model_too_big_at_16_bit_is_offered_the_best_mix_that_fits(browser: Any, live_server: str) -> None:
    # issue 22: the page offers the planner's fit (weights.format "fit") and its /v1/quantize recipe
    page = open_page(browser, live_server, "/?model=llama-3.1-70b&device=h100-80gb&ctx=4096")
    page.wait_for_selector("#verdict p[data-format='fit']")
    text = str(page.inner_text("#verdict p[data-format='fit']"))
    assert text.startswith("Best mix that fits: ")
    assert "method=rtn budget_bytes=" in text and "include=model.layers.* output=nibble." in text
    page.select_option("#unit", "GB")  # a redraw keeps the offer without asking again
    page.wait_for_selector("#verdict >> text=84.94 GB each")
    assert page.inner_text("#verdict p[data-format='fit']").startswith("Best mix that fits: ")
    page.close()


def test_no_request_of_the_page_answers_404_and_dark_mode_follows_the_system(browser: Any,
                                                                             live_server: str) -> None:
    failures: list[tuple[str, int]] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="dark")
    page.on("response", lambda response: failures.append((response.url, response.status))
            if response.status >= 400 else None)
    page.goto(live_server + "/?model=llama-3.1-8b&device=h100-80gb")
    page.wait_for_selector("#sweep svg polyline")
    favicon = httpx.get(live_server + "/favicon.ico", timeout=30)
    assert favicon.status_code == 200 and favicon.headers["content-type"].startswith("image/svg+xml")
    # the one 404 is the page asking for jobs on a server without them (404 jobs-not-configured): it says so
    page.wait_for_selector("#jobs-note:visible")
    assert failures == [(live_server + "/v1/jobs", 404)]
    assert "not configured" in page.inner_text("#jobs-note") and page.is_hidden("#jobs-body")
    background = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    assert background == "rgb(18, 23, 27)"
    page.emulate_media(color_scheme="light")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgb(243, 245, 247)"
    page.close()


def test_keyboard_alone_plans_with_pipeline_stages(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server)
    page.focus("#count")
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    page.keyboard.press("Tab")  # -> tensor parallel
    page.keyboard.press("Tab")  # -> pipeline stages
    assert page.evaluate("document.activeElement.id") == "pipeline"
    page.keyboard.press("Control+A")
    page.keyboard.type("2")
    page.keyboard.press("Enter")
    page.wait_for_selector("#verdict >> text=tensor × pipeline = 1 × 2")
    page.wait_for_selector("#plan-button:enabled")
    page.focus("#plan-button")
    for expected in ("copy-link", "export-json", "export-csv"):
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == expected
    page.close()


# --- accessibility and screenshots ---------------------------------------------------------------


def axe_source() -> str:
    """axe-core's browser build: from $NIBBLE_AXE_JS, the git-ignored cache, or `npm install` into it."""
    configured = os.environ.get("NIBBLE_AXE_JS")
    if configured and Path(configured).is_file():
        return Path(configured).read_text(encoding="utf-8")
    script = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
    if not script.is_file():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot fetch axe-core")
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(AXE_DIR),
                                 f"axe-core@{AXE_VERSION}"], capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0 or not script.is_file():
            pytest.skip(f"npm could not install axe-core@{AXE_VERSION}: {result.stderr[-300:]}")
    return script.read_text(encoding="utf-8")


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", WIDTHS)
def test_axe_finds_no_serious_violation_and_screenshots_are_saved(browser: Any, live_server: str, tmp_path: Path,
                                                                  width: int, scheme: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, live_server, "/?model=qwen3-235b-a22b&device=h100-80gb&count=8&ctx=32k&seq=8",
                     width, scheme)
    page.wait_for_selector("#devices-chart svg g.device-bar")
    compare_upload(page, tmp_path)
    page.screenshot(path=str(ARTIFACTS / f"page-{width}-{scheme}.png"), full_page=True)
    page.add_script_tag(content=axe_source())
    results = page.evaluate("async () => (await axe.run(document)).violations.map((v) => ({ id: v.id, "
                            "impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }))")
    serious = [violation for violation in results if violation["impact"] in ("serious", "critical")]
    assert serious == []
    page.close()


# --- the API docs work offline (issue 20: /docs loaded Swagger from a CDN and was blank without internet) --------


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".swagger-ui .opblock"), ("/redoc", ".api-content")])
def test_the_api_docs_render_with_every_other_host_blocked(browser: Any, live_server: str, path: str,
                                                           rendered: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    elsewhere: list[str] = []

    def only_this_server(route: Any) -> None:
        if route.request.url.startswith(live_server):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(live_server + path)
    page.wait_for_selector(rendered)
    assert "/v1/plan" in page.inner_text("body")
    assert elsewhere == []  # nothing asked of a CDN or a font host
    page.close()
