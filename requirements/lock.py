"""The lock: exact versions with hashes of everything the project installs but torch, resolved from pyproject.toml.

- requirements/app.txt: the service and the trainer (`.[train]`): what the Docker image installs.
- requirements/dev.txt: the same versions plus the dev extra: what tests/run.sh (and so CI) installs.
- requirements/kserve.txt: kserve's client, resolved from requirements/kserve.in alone (its own versions: kserve
  pins protobuf<7, and its uvicorn[standard] brings uvloop into the service under test); tests/run.sh installs it
  into a venv of its own, which tests/system/test_oip_clients.py runs as a client.

torch is left out of both (pip-tools' --unsafe-package): its build differs by platform (the CPU wheel, a CUDA
build), so it is installed by itself, at the version pyproject.toml pins, before the lock. Its own dependencies
(sympy, networkx, ...) are locked, resolved against the CPU build.

    python3 requirements/lock.py                  re-lock after editing pyproject.toml, keeping every pin that fits
    python3 requirements/lock.py --upgrade        every pin to the newest release pyproject.toml allows
    python3 requirements/lock.py --upgrade-package uvicorn
    python3 requirements/lock.py --check          the locks match pyproject.toml (CI; needs `packaging`)

Locking runs pip-tools (PIP_TOOLS, installed into .ci-work/lock-tools) and reaches the package index. torch is
resolved from TORCH_INDEX_URL (default PyTorch's CPU index), so that no CUDA package enters the lock; set it empty
to use pip's own configuration only (where a CPU wheel of torch lies in pip's find-links, as on the project's
machines).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PIP_TOOLS = "pip-tools==7.6.2"
TORCH = "torch"  # installed by itself, never from the lock
CUDA_PACKAGES = re.compile(r"^(nvidia-|triton$|cuda-)")  # in a lock, a sign that torch resolved to a CUDA build

# lock file -> the extras it covers, besides the main dependencies
LOCKS = {"requirements/dev.txt": ("train", "otel", "dev"), "requirements/app.txt": ("train", "otel")}
# lock file -> the requirements file it is resolved from, by itself: a client the tests run in a venv of its own
CLIENT_LOCKS = {"requirements/kserve.txt": "requirements/kserve.in"}


def stamp(source: str) -> str:
    """The start of the line each lock carries: what it was resolved from (then that input's digest)."""
    return f"# {source} inputs sha256:"


def inputs_digest(pyproject: dict[str, Any]) -> str:
    """sha256 of what a lock is resolved from: Python's bound, the dependencies and every extra (order ignored)."""
    project = pyproject["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": sorted(project.get("dependencies", [])),
        "optional-dependencies": {k: sorted(v) for k, v in project.get("optional-dependencies", {}).items()},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def requirement_lines(text: str) -> list[str]:
    """A requirements file's requirements, without comments and blank lines."""
    return [line for line in (raw.split("#")[0].strip() for raw in text.splitlines()) if line]


def client_digest(text: str) -> str:
    """sha256 of what a client's lock is resolved from: its requirements (order, comments ignored)."""
    return hashlib.sha256(json.dumps(sorted(requirement_lines(text))).encode()).hexdigest()


def read_pins(text: str) -> dict[str, tuple[str, int]]:
    """A pip-compile output's pins: normalised name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    name = None
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            name = normalise(m[1])
            pins[name] = (m[2], 0)
        elif name is not None and line.strip().startswith("--hash="):
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
        elif not line.startswith(" "):
            name = None
    return pins


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check(root: Path = ROOT) -> list[str]:
    """What is wrong with the locks against root/pyproject.toml: one line each; empty when they match."""
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    digest = inputs_digest(pyproject)
    project = pyproject["project"]
    problems: list[str] = []
    locked: dict[str, dict[str, tuple[str, int]]] = {}
    sources = {path: ("pyproject.toml", digest) for path in LOCKS}
    for path, source in CLIENT_LOCKS.items():
        sources[path] = (source, client_digest((root / source).read_text()) if (root / source).is_file() else "")
    for path, (source, source_digest) in sources.items():
        lock = root / path
        if not lock.is_file():
            problems.append(f"{path} is missing: run python3 requirements/lock.py")
            continue
        text = lock.read_text()
        if f"{stamp(source)} {source_digest}" not in text:
            problems.append(f"{path} was not resolved from {source} as it is: run python3 requirements/lock.py")
        pins = locked[path] = read_pins(text)
        if path in LOCKS:
            extras = LOCKS[path]
            wanted = [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]
        else:
            wanted = requirement_lines((root / source).read_text())
        for line in wanted:
            req = Requirement(line)
            name = normalise(req.name)
            if name == TORCH or (req.marker is not None and not req.marker.evaluate()):
                continue
            if name not in pins:
                problems.append(f"{path}: {req.name} is not locked")
            elif not req.specifier.contains(pins[name][0], prereleases=True):
                problems.append(f"{path}: {req.name}=={pins[name][0]} is outside {source}'s {req.specifier}")
        for name, (version, hashes) in pins.items():
            if hashes == 0:
                problems.append(f"{path}: {name}=={version} has no hash")
            if name == TORCH or CUDA_PACKAGES.match(name):
                problems.append(f"{path}: {name} is locked: torch and its CUDA packages are installed by themselves")
    app, dev = locked.get("requirements/app.txt", {}), locked.get("requirements/dev.txt", {})
    for name, (version, _) in app.items():
        if name in dev and dev[name][0] != version:
            problems.append(f"{name}: {version} in requirements/app.txt, {dev[name][0]} in requirements/dev.txt")
    return problems


def pip_compile() -> Path:
    """pip-compile from a private virtual environment holding PIP_TOOLS (made on first use)."""
    venv = ROOT / ".ci-work" / "lock-tools"
    stamp = venv / ".pip-tools"
    if not stamp.is_file() or stamp.read_text() != PIP_TOOLS:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", PIP_TOOLS], check=True)
        stamp.write_text(PIP_TOOLS)
    return venv / "bin" / "pip-compile"


def lock(upgrade: list[str]) -> None:
    """Resolve the locks: dev.txt first (every extra), then app.txt constrained to dev.txt's versions, then each
    client's from its own requirements file."""
    digest = inputs_digest(tomllib.loads((ROOT / "pyproject.toml").read_text()))
    torch_index = os.environ.get("TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu")
    common = ["--generate-hashes", f"--unsafe-package={TORCH}", "--strip-extras", "--no-emit-find-links"]
    common += ["--no-emit-index-url", "--quiet", *([f"--extra-index-url={torch_index}"] if torch_index else [])]
    tool = str(pip_compile())
    commands = {}
    for path, extras in LOCKS.items():
        command = [tool, "pyproject.toml", *common, *(f"--extra={e}" for e in extras), f"--output-file={path}"]
        if path == "requirements/dev.txt":
            command += upgrade
        else:
            command += ["--constraint=requirements/dev.txt"]
        commands[path] = (command, "pyproject.toml", digest)
    for path, source in CLIENT_LOCKS.items():
        command = [tool, source, *common, f"--output-file={path}", *upgrade]
        commands[path] = (command, source, client_digest((ROOT / source).read_text()))
    for path, (command, source, source_digest) in commands.items():
        # the header's "to regenerate, run" line names this script, not pip-compile's own options
        subprocess.run(
            command, cwd=ROOT, check=True, env={**os.environ, "CUSTOM_COMPILE_COMMAND": "python3 requirements/lock.py"}
        )
        lock_file = ROOT / path
        text = lock_file.read_text()
        text = "\n".join(line for line in text.splitlines() if not line.startswith(stamp(source))) + "\n"
        lock_file.write_text(f"{stamp(source)} {source_digest} (python3 requirements/lock.py --check)\n{text}")
        cuda = [name for name in read_pins(text) if CUDA_PACKAGES.match(name)]
        if cuda:
            names = ", ".join(cuda)
            raise SystemExit(f"{path}: torch resolved to a CUDA build ({names}): set TORCH_INDEX_URL to a CPU index")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the locks match pyproject.toml")
    parser.add_argument("--upgrade", action="store_true", help="every pin to the newest release allowed")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME", help="that one to its newest")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(f"requirements/lock.py --check: {problem}", file=sys.stderr)
        return 1 if problems else 0
    lock(["--upgrade"] * args.upgrade + [f"--upgrade-package={name}" for name in args.upgrade_package])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
