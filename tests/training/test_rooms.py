"""training/'s rooms, checked from the source: the CVAE's training (cvae/), the reader's (reader/) and the evaluation
(evaluation/: the judge, the test sets, the figures) over a ground floor of shared modules (config, data, the stroke
renderer, export). The test sets only ever test: nothing that trains imports them, and they import nothing that
trains. Modules stay under 400 lines and functions under about 60, or say why in a `# long: ...` comment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAINING = ROOT / "training"
MODULES = sorted(TRAINING.rglob("*.py"))
TRAINS = ("training.cvae", "training.reader")  # the rooms that train
TEST_SETS = ("training.evaluation.testsets", "training.evaluation.conditions")
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def reaches(name: str, seen: set[str] | None = None) -> set[str]:
    """Every training module `name` imports, directly or through others."""
    seen = set() if seen is None else seen
    path = ROOT / Path(*name.split("."))
    file = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
    if name in seen or not file.is_file():
        return seen
    seen.add(name)
    for imported in imports(file):
        if imported.startswith("training"):
            reaches(imported, seen)
    return seen


def _in(name: str, rooms: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in rooms)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TRAINING)))
def test_nothing_that_trains_reaches_the_test_sets_nor_the_evaluation(path: Path) -> None:
    if _in(module_name(path), TRAINS):
        reached = reaches(module_name(path))
        assert not [n for n in reached if _in(n, ("training.evaluation",))], sorted(reached)


@pytest.mark.parametrize("path", sorted((TRAINING / "evaluation").glob("*.py")), ids=lambda p: p.name)
def test_the_test_sets_reach_nothing_that_trains(path: Path) -> None:
    if _in(module_name(path), TEST_SETS):
        reached = reaches(module_name(path)) - {module_name(path)}
        assert not [n for n in reached if _in(n, (*TRAINS, "training.steps"))], sorted(reached)
        assert not [n for n in reached if _in(n, ("training.evaluation",)) and not _in(n, TEST_SETS)]


def test_the_cvae_and_the_reader_do_not_import_each_other() -> None:
    for room, other in (("cvae", "training.reader"), ("reader", "training.cvae")):
        for path in (TRAINING / room).glob("*.py"):
            assert not [n for n in imports(path) if _in(n, (other,))], path


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TRAINING)))
def test_modules_and_functions_are_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400
    lines = path.read_text().splitlines()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            body = lines[node.lineno - 1 : node.end_lineno]
            if not any(line.strip().startswith("# long: ") for line in body):
                assert len(body) <= MAX_FUNCTION_LINES, f"{path.name}: {node.name} has {len(body)} lines"
