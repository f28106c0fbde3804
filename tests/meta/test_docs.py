"""Every command in README.md and docs/*.md, run, so that the documents cannot rot.

A command is a line of a ```bash block (continuation lines joined, a trailing comment dropped). Each is handled by the
first rule its text matches, and a command that matches none fails `test_every_command_has_a_rule`: a new kind of
command needs a rule here. The rules, and what each substitutes:

- curl: run as written, against a real `python -m app` with the shipped model, in one shell per document (so a file
  one command writes, or a variable it sets, the next one reads), in a folder holding `my_digit.jpg` (a fixture
  digit, black on white), with `$ADMIN_KEY` one of the server's CVAE_ADMIN_API_KEYS. Substituted: `localhost:8000`
  -> the test server's port, and curl fails on an HTTP error.
- serve (`python -m app`): started with its environment and must answer /readyz 200, then stop on SIGTERM with exit
  status 0. Substituted: the interpreter, `--host`/`--port` (loopback, a free port), and a model directory that
  does not exist yet (`runs/...`, trained by a command further on; in CVAE_MODEL_DIR or an entry of CVAE_MODELS) ->
  a copy of the shipped model.
- train (`python -m training` on the CPU): run, shortened: one epoch on the committed 1,000-digit fixture
  (`--data-dir`; `--dataset mnist` dropped: it downloads), with a 200-digit held-out split, a 50-component prior
  (the fixture has 80 digits a class) and `--no-evaluate` (the judge's figures take minutes). Outputs go to a
  temporary folder, never the checkout's.
- parse: commands that need a GPU (`--device cuda`) or several machines (`torchrun`): not run; their training options
  must parse (training.config.parse_config) and torchrun's must be in `torchrun --help`.
- help: commands that take minutes (the benchmarks `python -m tests.bench.*`, `python -m training.evaluation`, which
  trains its judge first): `--help` must succeed and list every option the command uses.
- suite (`bash tests/run.sh ARGS`): this suite's own command; ARGS must select at least one test
  (`pytest --collect-only ARGS`). .ci/run runs the command itself.
- static (`docker`, `kubectl`, `kustomize`): need an engine, a cluster or a registry; not run. What they name must
  exist: compose services, profiles and variables in docker-compose.yml, build arguments in the Dockerfile, folders
  and files in the checkout, the kustomization's image. .ci/compose runs the image and the compose profiles for real.
- as written: `python3 requirements/lock.py --help`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image, ImageOps

from tests.conftest import free_port, wait_ready
from training.config import parse_config

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIXTURE = ROOT / "tests" / "fixtures" / "mnist-1000"
SHIPPED = ROOT / "artifacts" / "default"
ENV_PREFIX = re.compile(r"^((?:[A-Z_][A-Z0-9_]*=\S*\s+)*)(.*)$")
ADMIN_KEY = "documents-admin-key-0123456789"  # the curl commands' $ADMIN_KEY, the service's CVAE_ADMIN_API_KEYS
SHORT_TRAINING = ["--epochs", "1", "--val-size", "200", "--prior-components", "50", "--no-evaluate", "--threads", "1"]


@dataclass(frozen=True)
class Command:
    doc: str  # the document, relative to the checkout
    line: int
    text: str

    @property
    def env(self) -> dict[str, str]:
        prefix = ENV_PREFIX.match(self.text)[1]  # type: ignore[index]
        return dict(item.split("=", 1) for item in prefix.split())

    @property
    def argv(self) -> list[str]:
        return shlex.split(ENV_PREFIX.match(self.text)[2])  # type: ignore[index]

    @property
    def kind(self) -> str:
        body = ENV_PREFIX.match(self.text)[2]  # type: ignore[index]
        rules = [
            ("curl", r"^(\w+=\$\()?curl\b"),
            ("serve", r"^(\.venv/bin/)?python3? -m app\b"),
            ("parse", r"^(\.venv/bin/)?python3? -m training .*--device cuda\b|^torchrun\b"),
            ("train", r"^(\.venv/bin/)?python3? -m training\b(?!\.)"),
            ("help", r"^(\.venv/bin/)?python3? -m (tests\.bench\.\w+|training\.evaluation)\b"),
            ("suite", r"^bash tests/run\.sh\b"),
            ("static", r"^(docker|kubectl|cd deploy/)"),
            ("as written", r"^python3 requirements/lock\.py --help$"),
        ]
        return next((kind for kind, pattern in rules if re.match(pattern, body)), "unknown")

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a # outside quotes, after a space)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def read_commands() -> list[Command]:
    found = []
    for doc in DOCS:
        fence: str | None = None
        pending, start = "", 0
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if fence is None:
                if line.startswith("```"):
                    fence = line[3:].strip()
                continue
            if line.startswith("```"):
                fence = None
                continue
            if fence != "bash":
                continue
            if not pending:
                start = number
            if line.endswith("\\"):
                pending += line[:-1]
                continue
            text = " ".join(strip_comment(pending + line).split())
            pending = ""
            if text:
                found.append(Command(str(doc.relative_to(ROOT)), start, text))
    return found


COMMANDS = read_commands()


def of_kind(kind: str) -> list[Any]:
    """The commands of one kind, each once (the same command in two documents runs once), as pytest params."""
    unique = {c.text: c for c in reversed([c for c in COMMANDS if c.kind == kind])}
    return [pytest.param(c, id=f"{c.doc}:{c.line}") for c in reversed(unique.values())]


def test_the_documents_hold_commands_of_every_kind() -> None:
    kinds = {c.kind for c in COMMANDS}
    assert {"curl", "serve", "train", "parse", "help", "suite", "static"} <= kinds


def test_every_command_has_a_rule() -> None:
    unknown = [str(c) for c in COMMANDS if c.kind == "unknown"]
    assert not unknown, "commands no rule of tests/meta/test_docs.py covers:\n" + "\n".join(unknown)


def test_the_readme_is_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_link_between_the_documents_resolves() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
    linked = set(re.findall(r"\(docs/([\w-]+\.md)\)", (ROOT / "README.md").read_text()))
    assert linked == {d.name for d in DOCS[1:]}, "every document in docs/ is linked from the README"


# --- static: what the command names must exist --------------------------------------------------------------------


def check_static(argv: list[str], env: dict[str, str]) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose_text = (ROOT / "docker-compose.yml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in env:
        assert f"${{{name}" in compose_text, f"docker-compose.yml reads no {name}"
    if argv[:2] == ["docker", "compose"]:
        profiles = {p for service in compose["services"].values() for p in service.get("profiles", [])}
        args = argv[2:]
        while args and args[0] == "--profile":
            assert args[1] in profiles, f"no compose profile {args[1]}"
            args = args[2:]
        subcommand, rest = args[0], args[1:]
        services = [a for a in rest if not a.startswith("-") and a in compose["services"]]
        positional = [a for a in rest if not a.startswith("-")]
        if subcommand == "run":
            assert positional and positional[0] in compose["services"], f"no compose service {positional[:1]}"
        else:
            assert services == positional, f"no compose service among {positional}"
    elif argv[:2] == ["docker", "build"]:
        for i, arg in enumerate(argv):
            if arg == "--build-arg":
                name = argv[i + 1].split("=", 1)[0]
                assert re.search(rf"^ARG {name}\b", dockerfile, re.M), f"the Dockerfile has no ARG {name}"
        assert (ROOT / argv[-1]).is_dir()
    elif argv[:2] == ["docker", "run"]:
        for i, arg in enumerate(argv):
            if arg == "-p":
                assert f"EXPOSE {argv[i + 1].rsplit(':', 1)[1]}" in dockerfile
    elif argv[:2] == ["docker", "push"]:
        pass  # a registry of the reader's
    elif argv[0] == "cd":
        assert (ROOT / argv[1]).is_dir() or argv[1] == "-"
    elif argv[0] == "kustomize":
        assert argv[1:4] == ["edit", "set", "image"]
        image = argv[4].split("=", 1)[0]
        kustomization = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())
        assert image in [i["name"] for i in kustomization["images"]]
    elif argv[0] == "kubectl":
        assert argv[1] == "apply"
        if argv[2] == "-k":
            assert (ROOT / argv[3] / "kustomization.yaml").is_file()
        else:
            assert argv[2] == "-f" and (ROOT / argv[3]).is_file()
    else:
        raise AssertionError(f"no static check for {shlex.join(argv)}")


@pytest.mark.parametrize("command", of_kind("static"))
def test_static_commands_name_what_exists(command: Command) -> None:
    parts = [shlex.split(p) for p in ENV_PREFIX.match(command.text)[2].split("&&")]  # type: ignore[index]
    for argv in parts:
        check_static(argv, command.env)


# --- parse: GPU and multi-machine commands ------------------------------------------------------------------------


@pytest.mark.parametrize("command", of_kind("parse"))
def test_gpu_and_multi_machine_commands_parse(command: Command) -> None:
    argv = command.argv
    training_args = argv[argv.index("training") + 1 :]
    parse_config(training_args)  # SystemExit (argparse) on an unknown option or a bad value
    if argv[0] == "torchrun":
        help_text = run([sys.executable, "-m", "torch.distributed.run", "--help"]).stdout
        for option in argv[1 : argv.index("-m")]:
            if option.startswith("--"):
                assert option in help_text or option.replace("-", "_") in help_text, f"torchrun has no {option}"


# --- help: commands that take minutes ------------------------------------------------------------------------------


def run(argv: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    result = subprocess.run(
        argv, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
@pytest.mark.parametrize("command", of_kind("help"))
def test_long_commands_know_their_options(command: Command) -> None:
    argv = command.argv
    module = argv[argv.index("-m") + 1]
    help_text = run([sys.executable, "-m", module, "--help"]).stdout
    for option in (a for a in argv if a.startswith("--")):
        assert option in help_text, f"python -m {module} has no {option}"


@pytest.mark.slow
@pytest.mark.parametrize("command", of_kind("as written"))
def test_commands_run_as_written(command: Command) -> None:
    run(command.argv)


# --- suite ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", of_kind("suite"))
def test_suite_commands_select_tests(command: Command) -> None:
    args = command.argv[2:]
    out = run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args]).stdout
    assert re.search(r"^\d+ tests? collected", out, re.M) or re.search(r"^\d+/\d+ tests collected", out, re.M), out


# --- train, serve, curl: run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the documents' commands run: a copy of the shipped model as artifacts/default, and my_digit.jpg."""
    work = tmp_path_factory.mktemp("docs")
    shutil.copytree(SHIPPED, work / "artifacts" / "default")
    from training.data import load_data_dir

    digit = load_data_dir(FIXTURE, val_size=200, seed=0).val.images[0].numpy()
    image = ImageOps.invert(Image.fromarray(digit)).resize((200, 200), Image.Resampling.BICUBIC)
    image.convert("RGB").save(work / "my_digit.jpg", quality=90)
    return work


def short_training(argv: list[str]) -> list[str]:
    """The training command as the train rule runs it (see the module's docstring)."""
    out, args = [sys.executable, "-m", "training"], argv[argv.index("training") + 1 :]
    skip = {"--dataset", "--data-dir", "--epochs", "--threads"}
    i = 0
    while i < len(args):
        if args[i] in skip:
            i += 2
            continue
        out.append(args[i])
        i += 1
    return [*out, "--data-dir", str(FIXTURE), *SHORT_TRAINING]


@pytest.mark.slow
@pytest.mark.parametrize("command", of_kind("train"))
def test_training_commands_run_short(command: Command, workdir: Path) -> None:
    argv = short_training(command.argv)
    out = Path(argv[argv.index("--out") + 1])
    run(argv, cwd=workdir, env=command.env)
    assert (workdir / out / "manifest.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("command", of_kind("serve"))
def test_server_commands_start_and_stop_cleanly(command: Command, workdir: Path) -> None:
    env = dict(command.env)
    if "CVAE_MODEL_DIR" in env and not (workdir / env["CVAE_MODEL_DIR"]).is_dir():
        env["CVAE_MODEL_DIR"] = "artifacts/default"
    if "=" in env.get("CVAE_MODELS", ""):  # NAME=DIRECTORY entries: each missing directory the shipped model
        entries = [entry.split("=", 1) for entry in env["CVAE_MODELS"].split(",")]
        env["CVAE_MODELS"] = ",".join(
            f"{name}={d if (workdir / d).is_dir() else 'artifacts/default'}" for name, d in entries
        )
    argv, port = command.argv, free_port()
    for option in ("--host", "--port"):
        if option in argv:
            i = argv.index(option)
            argv = argv[:i] + argv[i + 2 :]
    argv = [sys.executable, *argv[1:], "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / f"serve-{port}.log"
    with open(log, "w") as output:
        proc = subprocess.Popen(
            argv, cwd=workdir, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, stdout=output, stderr=output
        )
        try:
            wait_ready(port, proc, log.read_text, timeout_s=120)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def service(workdir: Path) -> Iterator[int]:
    """`python -m app` with the shipped model, for the curl commands: its port."""
    port = free_port()
    log = workdir / "service.log"
    with open(log, "w") as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT, stdout=output, stderr=output,
            env={**os.environ, "CVAE_MODEL_DIR": str(SHIPPED), "CVAE_SHUTDOWN_DELAY_S": "0",
                 "CVAE_ADMIN_API_KEYS": ADMIN_KEY},
        )  # fmt: skip
        try:
            wait_ready(port, proc, log.read_text, timeout_s=120)
            yield port
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("doc", sorted({c.doc for c in COMMANDS if c.kind == "curl"}))
def test_curl_commands_run_against_the_service(doc: str, service: int, workdir: Path) -> None:
    if shutil.which("curl") is None:  # the docs' commands are curl's: without it they cannot run as written
        pytest.skip("curl is not installed (apt-get install curl)")
    commands = [
        c.text.replace("localhost:8000", f"127.0.0.1:{service}") for c in COMMANDS if c.doc == doc and c.kind == "curl"
    ]
    wrapper = 'curl() { command curl --fail --show-error --max-time 60 "$@"; }'  # an HTTP error fails the command
    script = "\n".join(["set -euo pipefail", wrapper, *commands])
    run(["bash", "-c", script], cwd=workdir, env={"ADMIN_KEY": ADMIN_KEY})
