"""The house rules of app/ (docs/architecture.md), checked from the source: which room may import which, where torch
may be imported, and that modules stay small and the top level stays short."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"
MODULES = sorted(p for p in APP.rglob("*.py"))
# room -> the rooms of app it must not import (a room is app's top-level module or package)
# Nothing imports upward, and no room is allowed a way back up: the ground floor (core: errors and their codes, and
# a batch's timed stages) imports nothing; the engine's server side (engine) and the inference side (inference) are
# separate rooms, and the engine never reaches the inference side (the factory picks a thread engine).
FORBIDDEN = {
    "core": {"*"},
    "settings": {"*"},
    "paths": {"*"},
    "operations": {"api", "serving", "engine", "inference", "http", "telemetry", "factory"},
    "http": {"api", "serving", "engine", "inference", "operations", "factory"},  # telemetry.logs: request IDs
    "telemetry": {"api", "serving", "engine", "inference", "operations", "factory"},
    "engine": {"api", "serving", "inference", "http", "telemetry", "factory"},
    "inference": {"api", "serving", "http", "factory"},
    "serving": {"api", "inference", "http", "factory"},
    "api": {"inference", "factory"},
    "oip": {"inference", "factory"},  # the Open Inference Protocol: a second API, beside api's
}
TORCH_HOME = APP / "inference" / "worker.py"  # the one module that imports torch and all of model/ at import time
MODEL = APP.parent / "model"
# model/'s torch-free modules, which any room of app may import: the manifest's checks and an upload's header.
TORCH_FREE = {"model.manifest", "model.uploads"}


def room(path: Path) -> str:
    return path.relative_to(APP).parts[0].removesuffix(".py")


def imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(APP)))
def test_each_room_imports_only_the_rooms_below_it(path: Path):
    forbidden = FORBIDDEN.get(room(path), set())
    for name in imports(path, top_level_only=False):
        parts = name.split(".")
        if parts[0] == "app" and len(parts) > 1 and parts[1] != room(path):
            assert "*" not in forbidden and parts[1] not in forbidden, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(APP)))
def test_only_the_inference_module_imports_torch_or_the_model_at_import_time(path: Path):
    heavy = {n for n in imports(path, top_level_only=True) if n.split(".")[0] in ("torch", "numpy", "model")}
    heavy -= TORCH_FREE
    assert not heavy or path == TORCH_HOME, f"{path.relative_to(APP)} imports {sorted(heavy)}"


@pytest.mark.parametrize("name", sorted(TORCH_FREE))
def test_the_torch_free_model_modules_import_only_the_standard_library_and_pillow(name: str):
    path = MODEL / f"{name.removeprefix('model.')}.py"
    allowed = set(sys.stdlib_module_names) | {"PIL"}
    for imported in imports(path, top_level_only=False):
        top = imported.split(".")[0]
        assert top in allowed or imported in TORCH_FREE, f"{path.name} imports {imported}"


def test_an_operation_is_its_module_and_one_line_of_the_registry():
    """/interpolate was added by app/operations/interpolate.py and a line of app/operations/registry.py alone."""
    mentions = {p.relative_to(APP).as_posix() for p in MODULES if "interpolate" in p.read_text()}
    assert mentions == {"operations/interpolate.py", "operations/registry.py"}


def test_modules_are_small_and_the_top_level_short():
    assert all(len(p.read_text().splitlines()) <= 400 for p in MODULES)
    assert len([p for p in APP.glob("*.py")]) <= 6


def test_no_middleware_reads_the_app_state():
    """Middleware take their configuration, and the ServiceState a reload changes, when create_app builds them: none
    reaches for scope["app"] (and through it app.state) while it answers."""
    readers = {p.relative_to(APP).as_posix() for p in MODULES if 'scope["app"]' in p.read_text()}
    assert readers == set()
