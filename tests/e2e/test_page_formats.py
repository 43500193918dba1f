"""The page's weight formats and checkpoint headers (issue 18), in headless Chromium (Debian's, by Playwright).

The format selector lists every format /v1/models/inspect gives for the chosen model with its bits per
weight, the as-shipped one first and chosen; a plan shows it beside 16-bit and INT4.  A checkpoint chosen
on the page is read header only (File.slice) and the plan request carries those bytes (as files of the multipart
form) and nothing more.
axe-core finds no serious or critical violation with the three formats and a checkpoint read, at 390 px.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.checkpoints import LLAMA_CONFIG, deepseek_v3_headers, write_llama_checkpoint
from tests.e2e.test_page_tasks import axe_source, open_page
from tests.e2e.test_web_page import CHROMIUM
from tests.shared_fixtures import FIXTURES, needs_fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium (/usr/bin/chromium) is not installed"),
]
sync_api = pytest.importorskip("playwright.sync_api")


def format_options(page: Any) -> list[dict[str, Any]]:
    return list(page.eval_on_selector_all("#weight-format option", "options => options.map((o) => ({ "
                                          "format: o.dataset.format, text: o.textContent, selected: o.selected }))"))


#: wraps the page's fetch to keep each /v1/plan form's entries (Chromium gives Playwright no body holding a Blob)
RECORD_FORMS = """() => {
  window.sentForms = [];
  const original = window.fetch;
  window.fetch = async (url, options = {}) => {
    if (options.body instanceof FormData && String(url).endsWith("/v1/plan")) {
      const parts = [];
      for (const [name, value] of options.body.entries()) {
        const bytes = typeof value === "string" ? new TextEncoder().encode(value)
          : new Uint8Array(await value.arrayBuffer());
        parts.push([name, typeof value === "string" ? null : value.name, Array.from(bytes)]);
      }
      window.sentForms.push(parts);
    }
    return original(url, options);
  };
}"""


def planned_requests(page: Any) -> list[dict[str, Any]]:
    """Every /v1/plan JSON body the page sends from now on (with its size on the wire)."""
    sent: list[dict[str, Any]] = []
    page.on("request", lambda request: sent.append({"size": len(request.post_data_buffer or b""),
                                                    "body": json.loads(request.post_data or "{}")})
            if request.url.endswith("/v1/plan") and not request.headers.get("content-type", "").startswith(
                "multipart/") else None)
    return sent


def planned_forms(page: Any) -> list[list[tuple[str, str | None, bytes]]]:
    """Every /v1/plan multipart form the page has sent since `RECORD_FORMS`: its parts as (name, file name,
    bytes)."""
    return [[(name, filename, bytes(data)) for name, filename, data in form]
            for form in page.evaluate("() => window.sentForms")]


def test_the_selector_lists_every_inspected_format_with_its_bits(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server)
    page.select_option("#model-preset", "llama-3.1-8b")
    page.wait_for_selector("#weight-format[data-model='llama-3.1-8b']", state="attached")
    rows = httpx.post(live_server + "/v1/models/inspect", json={"preset": "llama-3.1-8b"}).json()["weight_bytes"]
    options = format_options(page)
    assert [o["format"] for o in options] == [r["format"] for r in rows]  # no as-shipped row for this model
    for option, row in zip(options, rows, strict=True):
        assert option["text"] == f"{row['format']} ({row['bits_per_weight']:.2f} bits per weight)"
    assert {"gguf-q4_0", "gguf-q4_k_s", "gguf-q4_k_m", "gguf-q5_k_m", "gguf-q6_k", "gguf-q8_0", "mxfp4",
            "nvfp4", "nf4", "fp8-block128"} <= {o["format"] for o in options}
    assert [o["format"] for o in options if o["selected"]] == ["int4-g128-asym"]  # nibble's default INT4
    page.select_option("#group-size", "64")  # the INT4 group size picks the listed INT4 format of that group
    assert [o["format"] for o in format_options(page) if o["selected"]] == ["int4-g64-asym"]

    page.select_option("#weight-format", label=next(o["text"] for o in options if o["format"] == "gguf-q4_k_m"))
    assert page.is_disabled("#group-size") and page.is_disabled("#pad")  # nibble INT4's knobs only
    sent = planned_requests(page)
    page.click("#plan-button")
    page.wait_for_selector("#verdict p[data-format='gguf-q4_k_m']")
    assert sent[0]["body"]["weights"] == {"format": "gguf-q4_k_m"}
    assert [p.get_attribute("data-format") for p in page.query_selector_all("#verdict p[data-format]")] \
        == ["bf16", "int4", "gguf-q4_k_m"]
    limits = page.inner_text("#limits tbody")
    q4_k_m = next(r for r in rows if r["format"] == "gguf-q4_k_m")
    assert f"GGUF Q4_K_M\t{q4_k_m['bytes'] / 2**30:.2f}\t{q4_k_m['bits_per_weight']:.3f}" in limits
    page.wait_for_selector("#sweep polyline[data-format='gguf-q4_k_m']")  # the sweep plans the same formats
    assert "format=gguf-q4_k_m" in page.url
    again = open_page(browser, live_server, page.url.removeprefix(live_server))  # the link plans it again
    again.wait_for_selector("#verdict p[data-format='gguf-q4_k_m']")
    assert [o["format"] for o in format_options(again) if o["selected"]] == ["gguf-q4_k_m"]
    again.close()
    page.close()


def test_gpt_oss_120b_defaults_to_as_shipped_mxfp4_and_fits_on_one_h100(browser: Any, live_server: str) -> None:
    page = open_page(browser, live_server)
    page.select_option("#model-preset", "gpt-oss-120b")
    page.wait_for_selector("#weight-format[data-model='gpt-oss-120b']", state="attached")
    options = format_options(page)
    assert options[0]["format"] == "as_shipped" and options[0]["selected"]
    assert options[0]["text"].startswith("As shipped: mxfp4 (4.47 bits per weight)")
    assert "ships it in mxfp4" in page.inner_text("#weight-format-note")
    page.select_option("#device", "h100-80gb")
    page.fill("#count", "1")
    sent = planned_requests(page)
    page.click("#plan-button")
    page.wait_for_selector("#verdict p[data-format='as_shipped']")
    assert "weights" not in sent[0]["body"]  # no weights: the API plans the checkpoint as its config ships it
    shipped = page.locator("#verdict p[data-format='as_shipped']")
    assert shipped.get_attribute("data-fits") == "true"
    assert page.inner_text("#verdict p[data-format='as_shipped']").startswith("As shipped (mxfp4): fits")
    assert page.locator("#verdict p[data-format='bf16']").get_attribute("data-fits") == "false"
    assert page.locator("#bars g.bar[data-format='as_shipped']").count() == 1  # its column beside 16-bit, INT4
    assert "As shipped (mxfp4)" in page.inner_text("#limits tbody")
    assert "format=as_shipped" not in page.url  # the default is not written into the link
    page.close()


def test_a_checkpoint_is_planned_from_its_headers_and_no_tensor_byte_is_sent(browser: Any, live_server: str,
                                                                            tmp_path: Path) -> None:
    tensors = write_llama_checkpoint(tmp_path, shards=3)
    files = sorted(tmp_path.glob("model-*.safetensors"))
    tensor_bytes = sum(int(t.nbytes) for t in tensors.values())
    page = open_page(browser, live_server)
    page.check("input[name='model-source'][value='config']")
    page.fill("#model-config", json.dumps(LLAMA_CONFIG))  # no blur: the plan refills the selector first
    page.set_input_files("#checkpoint-files", [*map(str, files), str(tmp_path / "model.safetensors.index.json")])
    page.wait_for_selector("#checkpoint-note >> text=header bytes read")
    assert page.is_disabled("#weight-format")
    page.evaluate(RECORD_FORMS)
    page.click("#plan-button")
    page.wait_for_selector("#verdict p[data-format='checkpoint']")

    (parts,) = planned_forms(page)  # the headers go as files, beside the request: the multipart form
    (request,) = [data for name, _, data in parts if name == "request"]
    body = json.loads(request)
    assert "weights" not in body and body["model"] == {"hf_config": LLAMA_CONFIG}
    assert page.get_attribute("#weight-format", "data-model") == "hf_config"  # refilled for the pasted config
    assert "checkpoint" not in body
    headers = [(filename, data) for name, filename, data in parts if name == "header"]
    assert [filename for filename, _ in headers] == [f.name for f in files]
    for (_, data), file in zip(headers, files, strict=True):
        content = file.read_bytes()
        (length,) = struct.unpack("<Q", content[:8])
        assert data == content[:8 + length]  # the header, not one byte more
    index = [data for name, _, data in parts if name == "index"]
    assert index == [(tmp_path / "model.safetensors.index.json").read_bytes()]
    assert sum(len(data) for *_, data in parts) < 16_384 < tensor_bytes
    answer = page.evaluate("() => shown.answer")
    assert answer["weights"]["bytes"] == tensor_bytes  # the checkpoint's own bytes: every tensor at bf16
    assert answer["checkpoint"]["tensors"] == len(tensors)
    assert f"{len(tensors)} tensors, {tensor_bytes:,} bytes" in page.inner_text("#checkpoint-summary")

    page.click("#checkpoint-clear")  # forgetting it plans a format again
    assert page.is_enabled("#weight-format") and page.input_value("#checkpoint-files") == ""
    page.close()


@needs_fixtures
def test_deepseek_v3s_163_shards_are_planned_from_the_page(browser: Any, live_server: str, tmp_path: Path) -> None:
    # header-only files (8 + N bytes each, as a shard starts) with DeepSeek-V3's tensor names and shapes: 12.7 MB
    # of headers and an 8.9 MB index, past the JSON body's 1 MiB; the page sends them as the multipart form
    config = json.loads((FIXTURES / "models" / "deepseek-v3.json").read_text())
    headers, index, planned = deepseek_v3_headers(config)
    for name, data in headers.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "model.safetensors.index.json").write_bytes(index)
    page = open_page(browser, live_server)
    page.check("input[name='model-source'][value='config']")
    page.fill("#model-config", json.dumps(config))
    page.set_input_files("#checkpoint-files", [str(tmp_path / name) for name in [*headers,
                                                                                 "model.safetensors.index.json"]])
    page.wait_for_selector("#checkpoint-note >> text=163 file(s)")
    page.click("#plan-button")
    page.wait_for_selector("#verdict p[data-format='checkpoint']", timeout=60_000)
    answer = page.evaluate("() => shown.answer")
    assert answer["weights"]["format"] == "checkpoint-fp8-block128" and answer["weights"]["bytes"] == planned
    assert page.inner_text("#plan-error") == ""
    page.close()


def test_an_index_naming_a_shard_not_chosen_is_refused_on_the_field(browser: Any, live_server: str,
                                                                  tmp_path: Path) -> None:
    write_llama_checkpoint(tmp_path, shards=3)
    page = open_page(browser, live_server)
    page.set_input_files("#checkpoint-files", [str(tmp_path / "model-00001-of-00003.safetensors"),
                                               str(tmp_path / "model.safetensors.index.json")])
    message = page.wait_for_selector("#err-checkpoint-files:not(:empty)").inner_text()
    assert message == ("model.safetensors.index.json names 3 shards; 2 not chosen: model-00002-of-00003.safetensors, "
                       "model-00003-of-00003.safetensors")
    page.close()


def test_a_gguf_file_is_read_up_to_its_last_tensor_record(browser: Any, live_server: str, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(16)
    writer.add_token_list([f"token-{i}" for i in range(5000)])  # an array of strings, as a tokenizer's
    writer.add_token_scores([0.5] * 5000)
    rng = np.random.default_rng(0)
    # a tensor in each of Llama-3.2-1B's 16 layers: the plan refuses headers that leave a layer out
    shapes = {"token_embd.weight": (64, 128), **{f"blk.{i}.attn_q.weight": (128, 128) for i in range(16)},
              "output.weight": (64, 128)}
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data_offset = gguf.GGUFReader(str(path)).data_offset

    page = open_page(browser, live_server, "/?model=llama-3.2-1b-instruct")
    page.set_input_files("#checkpoint-files", str(path))
    page.wait_for_selector("#checkpoint-note >> text=header bytes read")
    prefix = bytes(page.evaluate("() => Array.from(checkpointHeaders.files[0].bytes)"))
    content = path.read_bytes()
    # The tensor records end within one alignment (32 bytes) of the data area, which is not sent.
    assert content.startswith(prefix) and data_offset - 32 < len(prefix) <= data_offset
    page.click("#plan-button")
    page.wait_for_selector("#verdict p[data-format='checkpoint']")
    answer = page.evaluate("() => shown.answer")
    assert answer["checkpoint"]["tensors"] == 18
    assert answer["weights"]["bytes"] == 2 * (64 * 128 + 16 * 128 * 128 + 64 * 128)  # fp16, the file's own tensors
    page.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_serious_violation_with_three_formats_and_a_checkpoint_read(browser: Any, live_server: str,
                                                                                tmp_path: Path, scheme: str) -> None:
    write_llama_checkpoint(tmp_path, shards=1)
    page = open_page(browser, live_server, "/?model=gpt-oss-120b&device=h100-80gb&count=1", 390, scheme)
    page.wait_for_selector("#sweep polyline[data-format='as_shipped']")
    page.set_input_files("#checkpoint-files", str(tmp_path / "model-00001-of-00001.safetensors"))
    page.wait_for_selector("#checkpoint-note >> text=header bytes read")
    page.add_script_tag(content=axe_source())
    results = page.evaluate("async () => (await axe.run(document)).violations.map((v) => ({ id: v.id, "
                            "impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 5) }))")
    assert [violation for violation in results if violation["impact"] in ("serious", "critical")] == []
    page.close()
