"""The house rules of model/: it imports neither the service nor training (both import it), and its modules stay
small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[2] / "model"
MODULES = sorted(MODEL.rglob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_model_imports_neither_the_service_nor_training(path: Path) -> None:
    assert not imported(path) & {"app", "training", "tests"}, path


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_model_modules_stay_under_400_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400, path
