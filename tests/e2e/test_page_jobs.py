"""The page's "Checkpoint jobs" section in headless Chromium (Debian's, driven by Playwright): a job submitted
through the API is seen running, its progress followed by server-sent events, then succeeded with its files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from quant_core.checkpoint import DEFAULT_EXCLUDE
from tests.checkpoints import write_llama_checkpoint
from tests.e2e.conftest import start_server
from tests.e2e.test_page_tasks import axe_source, open_page
from tests.e2e.test_web_page import ARTIFACTS, CHROMIUM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium (/usr/bin/chromium) is not installed"),
]


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("page-jobs")
    write_llama_checkpoint(root / "data" / "llama", shards=3, layers=24)  # 168 tensors: a second or more of work
    env = {"NIBBLE_STATE_DIR": str(root / "state"), "NIBBLE_DATA_DIR": str(root / "data"),
           "NIBBLE_POOL_KIND": "thread", "NIBBLE_JOB_TENSOR_CONCURRENCY": "1"}
    with start_server(env) as base_url:
        yield base_url


def test_a_job_submitted_through_the_api_is_followed_on_the_page_until_it_succeeds(
        browser: Any, jobs_server: str) -> None:
    page = open_page(browser, jobs_server)
    page.wait_for_selector("#jobs-empty:visible")
    streams: list[str] = []
    page.on("request", lambda request: streams.append(request.url) if request.url.endswith("/events") else None)
    # k_proj left out alone: vLLM would refuse each layer's qkv_proj, and the page says so from the first status
    job = httpx.post(f"{jobs_server}/v1/jobs", json={"source": {"path": "llama"}, "method": "hqq",
                                                     "max_shard_bytes": 200_000,
                                                     "exclude": [*DEFAULT_EXCLUDE, "*k_proj*"]}, timeout=60).json()
    page.click("#jobs-refresh")
    item = f"#jobs-list li[data-id='{job['id']}']"
    page.wait_for_selector(f"{item}[data-state='running']")
    assert page.is_visible(f"{item} .job-cancel") and page.is_hidden("#jobs-empty")
    # the list's summaries carry no notes: the first status of the job's event stream brings them, which under load
    # can come after the list has drawn the job running
    page.wait_for_selector(f"{item} .job-notes li")
    assert page.eval_on_selector_all(f"{item} .job-notes li", "(items) => items.map((li) => li.textContent)") \
        == job["engine_notes"]
    assert job["engine_notes"][0].startswith("model.layers.{0..23}.self_attn: k_proj passed through")

    page.wait_for_selector(f"{item}[data-state='succeeded'] .job-files a", timeout=180_000)
    assert streams == [f"{jobs_server}/v1/jobs/{job['id']}/events"]  # followed by its event stream, not polled
    assert page.inner_text(f"{item} .job-state") == "succeeded"
    assert page.is_hidden(f"{item} .job-cancel")
    total = job["progress"]["tensors_total"]
    assert page.inner_text(f"{item} .job-progress").startswith(f"{total} of {total} tensors")
    assert page.evaluate(f"(() => {{ const bar = document.querySelector(\"{item} progress\"); "
                         "return bar.value === bar.max; })()")
    status = httpx.get(f"{jobs_server}{job['url']}").json()
    links = page.eval_on_selector_all(f"{item} .job-files a", "(links) => links.map((a) => a.getAttribute('href'))")
    assert links == [entry["url"] for entry in status["result"]["files"]]
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#jobs-title").scroll_into_view_if_needed()
    page.locator("section:has(#jobs-title)").screenshot(path=str(ARTIFACTS / "page-jobs.png"))
    page.add_script_tag(content=axe_source())
    violations = page.evaluate("async () => (await axe.run(document)).violations.map((v) => ({ id: v.id, "
                               "impact: v.impact }))")
    assert [v for v in violations if v["impact"] in ("serious", "critical")] == []
    page.close()
