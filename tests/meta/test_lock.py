"""The locks against what they are resolved from (requirements/app.txt and dev.txt: pyproject.toml; kserve.txt:
requirements/kserve.in): requirements/lock.py --check."""

from __future__ import annotations

import shutil
from pathlib import Path

from requirements.lock import CLIENT_LOCKS, check, read_pins

ROOT = Path(__file__).parents[2]


def copy_of_project(tmp_path: Path) -> Path:
    (tmp_path / "requirements").mkdir()
    for name in (
        "pyproject.toml",
        "requirements/app.txt",
        "requirements/dev.txt",
        *CLIENT_LOCKS,
        *CLIENT_LOCKS.values(),
    ):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_locks_match_pyproject() -> None:
    assert check(ROOT) == []


def test_every_lock_pins_with_hashes_and_leaves_torch_out() -> None:
    app = read_pins((ROOT / "requirements/app.txt").read_text())
    dev = read_pins((ROOT / "requirements/dev.txt").read_text())
    assert {"fastapi", "uvicorn", "starlette", "h11", "sympy"} <= app.keys()  # sympy: a dependency of torch's
    assert {"pytest", "mypy", "ruff"} <= dev.keys() - app.keys()  # the image gets no dev tools
    assert all(hashes > 0 for _, hashes in [*app.values(), *dev.values()])
    assert "torch" not in app and "torch" not in dev


def test_a_dependency_changed_without_relocking_is_found(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"uvicorn>=0.55,<0.56"', '"uvicorn>=0.56"'))
    problems = check(root)
    assert "requirements/app.txt was not resolved from pyproject.toml as it is: run python3 requirements/lock.py" in (
        problems
    )
    assert any("uvicorn==0.55.0 is outside pyproject.toml's >=0.56" in p for p in problems)


def test_a_new_dependency_missing_from_the_lock_is_found(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"zlib-ng>=0.5",', '"zlib-ng>=0.5",\n    "orjson>=3",'))
    assert "requirements/dev.txt: orjson is not locked" in check(root)


def test_a_cuda_package_or_an_unhashed_pin_in_a_lock_is_refused(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    app = root / "requirements/app.txt"
    app.write_text(app.read_text() + "nvidia-cublas-cu12==12.8.4.1 \\\n    --hash=sha256:00\nmpmath==9.9\n")
    problems = check(root)
    assert any("nvidia-cublas-cu12 is locked" in p for p in problems)
    assert "requirements/app.txt: mpmath==9.9 has no hash" in problems
    assert "mpmath: 9.9 in requirements/app.txt, 1.3.0 in requirements/dev.txt" in problems


def test_kserve_s_client_has_a_lock_of_its_own_and_stays_out_of_the_project_s() -> None:
    """kserve pins protobuf<7 and brings uvicorn[standard]: its client's venv is locked apart (tests/run.sh)."""
    kserve = read_pins((ROOT / "requirements/kserve.txt").read_text())
    dev = read_pins((ROOT / "requirements/dev.txt").read_text())
    assert kserve["kserve"][0] == "0.21.0" and all(hashes > 0 for _, hashes in kserve.values())
    assert "torch" not in kserve and not {"kserve", "uvloop", "httptools"} & dev.keys()


def test_a_client_requirement_changed_without_relocking_is_found(tmp_path: Path) -> None:
    root = copy_of_project(tmp_path)
    wanted = root / "requirements/kserve.in"
    wanted.write_text(wanted.read_text().replace("kserve==0.21.0", "kserve>=0.22"))
    problems = check(root)
    assert (
        "requirements/kserve.txt was not resolved from requirements/kserve.in as it is: run python3 "
        "requirements/lock.py" in problems
    )
    assert "requirements/kserve.txt: kserve==0.21.0 is outside requirements/kserve.in's >=0.22" in problems
