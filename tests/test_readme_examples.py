"""The README's in-process Python examples print what their comments say.

Each ``# ...`` after a ``print(...)`` on its line, and each comment line right after a line that prints (a
loop's), is one line of the expected output.  The examples that need a server or the user's files (the client,
tuspy) are not run here: their figures are checked by the tests of the routes they call.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_examples() -> list[str]:
    """The README's ```python blocks that use quant_core alone (in the order they appear: later ones use the
    names the earlier define, as a reader running them in one session does)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return [block for block in blocks if "quant_core" in block and "app.client" not in block]


def expected_output(code: str) -> list[str]:
    expected: list[str] = []
    printed = False
    for line in code.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if printed:
                expected.append(stripped.removeprefix("#").strip())
            continue
        printed = "print(" in line
        if printed and "#" in line.split("print(", 1)[1]:
            expected.append(line.rsplit("#", 1)[1].strip())
    return expected


def test_the_readme_runs_its_quant_core_examples() -> None:
    assert len(python_examples()) == 2


def test_the_quant_core_examples_print_what_the_readme_says(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    output = io.StringIO()
    expected: list[str] = []
    cwd = Path.cwd()
    os.chdir(tmp_path)  # the examples write w.npy and w-int4.safetensors where they run
    try:
        for code in python_examples():
            expected += expected_output(code)
            with contextlib.redirect_stdout(output):
                exec(compile(code, str(README), "exec"), namespace)  # the README's own example
    finally:
        os.chdir(cwd)
    assert len(expected) >= 5
    assert output.getvalue().splitlines() == expected


@pytest.mark.parametrize(("code", "expected"), [
    ("print(1)   # 1\n", ["1"]),
    ("for x in (1, 2):\n    print(x)\n# 1\n# 2\ny = 3   # not output\n", ["1", "2"]),
])
def test_expected_output_reads_print_comments_and_the_comment_lines_after_a_print(code: str,
                                                                                  expected: list[str]) -> None:
    assert expected_output(code) == expected


def test_the_client_examples_plan_answers_what_the_readme_says() -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    block = next(block for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
                 if "NibbleClient(" in block)
    body = {"model": {"preset": "llama-3.1-70b"}, "hardware": {"device": "h100-80gb", "count": 2},
            "workload": {"context_length": 32768, "concurrent_sequences": 8}}
    assert repr(body).replace("'", '"').replace(": ", ":").replace(", ", ",") in \
        re.sub(r"\s+", "", block).replace("'", '"')  # the example's own request
    with TestClient(create_app()) as client:
        int4 = client.post("/v1/plan", json=body).json()["comparison"]["int4"]
    assert f"# {int4['fits']} {int4['max_context_length']}" in block
