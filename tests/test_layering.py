"""The architecture's rules: the engine imports no store or UI, the store no torch, pages no SQL or torch."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

FORBIDDEN = {
    "engine": {"db", "service", "streamlit", "sqlalchemy", "dashboard"},
    "db": {"torch", "transformers", "engine", "streamlit", "service"},
    "dashboard": {"torch", "transformers", "sqlalchemy", "db", "engine"},
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_layers_import_only_what_they_may() -> None:
    problems = []
    for folder, banned in FORBIDDEN.items():
        for path in (ROOT / folder).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() == "engine/__main__.py":
                continue  # the CLI entry point hands over to the service layer
            bad = imported_roots(path) & banned
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not problems


def test_library_code_never_prints() -> None:
    offenders = []
    for folder in ("engine", "db"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                    offenders.append(str(path.relative_to(ROOT)))
    assert not offenders
