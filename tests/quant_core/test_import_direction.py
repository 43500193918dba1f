"""quant_core is the domain: it never imports the web layer (app, FastAPI, Pydantic) nor reads env vars."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "quant_core"
FORBIDDEN = ("app", "fastapi", "pydantic", "pydantic_settings", "starlette", "uvicorn")
SOURCES = sorted(CORE.rglob("*.py"))


def imported_modules(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_the_core_has_source_files_to_check() -> None:
    assert len(SOURCES) >= 5


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(CORE)) for p in SOURCES])
def test_core_module_imports_neither_app_fastapi_nor_pydantic(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [name for name in imported_modules(tree) if name.split(".")[0] in FORBIDDEN]
    assert bad == [], f"{path.relative_to(CORE)} imports {bad}"


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(CORE)) for p in SOURCES])
def test_core_module_reads_no_environment_variables(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    uses = [node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb")]
    assert uses == [], f"{path.relative_to(CORE)} reads the environment"


def test_the_scan_catches_a_forbidden_import() -> None:
    tree = ast.parse("import os\nfrom fastapi import FastAPI\nimport pydantic.fields\n")
    assert [name for name in imported_modules(tree) if name.split(".")[0] in FORBIDDEN] == [
        "fastapi", "pydantic.fields"]
