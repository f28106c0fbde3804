"""Static checks of the deployment files (Dockerfile, docker-compose.yml, .dockerignore) against the code.

The image itself is built and exercised end to end by .ci/compose; these catch drift without a Docker engine.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from pydantic import TypeAdapter

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = (ROOT / "docker-compose.yml").read_text()


def compose_env_defaults() -> dict[str, str]:
    """`CVAE_X: ${CVAE_X:-default}` lines of docker-compose.yml, as {"CVAE_X": "default"}."""
    pairs = re.findall(r"^\s+(CVAE_\w+): \$\{(CVAE_\w+):-([^}]*)\}\s*$", COMPOSE, flags=re.M)
    assert pairs, "no CVAE_* settings found in docker-compose.yml"
    for key, var, _ in pairs:
        assert key == var, f"{key} is set from ${{{var}}}"
    return {key: default for key, _, default in pairs}


def test_compose_setting_defaults_equal_the_apps_defaults() -> None:
    fields = Settings.model_fields
    for key, default in compose_env_defaults().items():
        name = key.removeprefix("CVAE_").lower()
        assert name in fields, f"docker-compose.yml sets {key}, which is not a setting of app.settings.Settings"
        if name == "model_dir":
            assert default == dockerfile_env(DOCKERFILE, "CVAE_MODEL_DIR")
            continue
        parsed = TypeAdapter(fields[name].annotation).validate_python(default)
        assert parsed == fields[name].default, f"{key}: compose default {default!r} != app default"


def dockerfile_env(dockerfile: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", dockerfile)
    assert match, f"Dockerfile sets no {name}"
    return match.group(1)


def test_the_docs_document_every_setting_with_its_default() -> None:
    # docs/configuration.md lists every setting; the README's table, the most used: each row's default the app's.
    for doc, every in (("docs/configuration.md", True), ("README.md", False)):
        text = (ROOT / doc).read_text()
        rows = dict(re.findall(r"^\| `(CVAE_\w+)` \| `([^`]*)` \|", text, flags=re.M))
        assert rows, f"{doc} has no settings table"
        for name, field in Settings.model_fields.items():
            key = f"CVAE_{name.upper()}"
            assert f"`{key}`" in text or not every, f"{doc} does not document {key}"
            if key in rows and name != "model_dir":
                parsed = TypeAdapter(field.annotation).validate_python(rows[key])
                assert parsed == field.default, f"{doc}: {key} defaults to {rows[key]!r}, the app to {field.default!r}"


def test_stop_grace_period_outlasts_the_apps_shutdown() -> None:
    grace = int(re.search(r"stop_grace_period: (\d+)s", COMPOSE).group(1))
    env = compose_env_defaults()
    assert grace > float(env["CVAE_SHUTDOWN_DELAY_S"]) + float(env["CVAE_GRACEFUL_SHUTDOWN_S"])


def test_gpu_training_launches_one_process_per_gpu_through_torchrun() -> None:
    import yaml

    train = yaml.safe_load(COMPOSE)["services"]["train"]
    launcher = train["entrypoint"][: train["entrypoint"].index("-m")]
    assert launcher == ["torchrun", "--standalone", "--nproc_per_node", "${CVAE_TRAIN_PROCESSES:-gpu}"]
    assert train["entrypoint"][len(launcher) :][:2] == ["-m", "training"]
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"


def test_image_torch_default_matches_the_pin() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("torch"))
    assert re.search(rf"^ARG TORCH_SPEC={re.escape(pin)}$", DOCKERFILE, flags=re.M), pin


def test_image_serves_the_shipped_model_as_a_non_root_user() -> None:
    model_dir = dockerfile_env(DOCKERFILE, "CVAE_MODEL_DIR")
    assert re.search(rf"^COPY artifacts/default/ {re.escape(model_dir)}/?$", DOCKERFILE, flags=re.M)
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in DOCKERFILE and "/readyz" in DOCKERFILE
    assert re.search(r'^CMD \["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"\]$', DOCKERFILE, re.M)


def test_dockerfile_builds_with_the_classic_builder() -> None:
    assert not DOCKERFILE.startswith("# syntax"), "a syntax line pulls a frontend image from Docker Hub"
    assert "--mount=" not in DOCKERFILE and "<<" not in DOCKERFILE, "BuildKit-only syntax"


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    allowed = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes) or (
            line.lstrip("!").startswith("**/") and any(fnmatch.fnmatch(p, pattern) for p in parts)
        )
        if hit:
            allowed = negate
    return allowed


LB_DOCKERFILE = (ROOT / "deploy" / "nginx" / "Dockerfile").read_text()  # the compose `lb` (same build context)


@pytest.mark.parametrize(
    "src",
    re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE + LB_DOCKERFILE, flags=re.M),
    ids=lambda s: s.replace(" ", "+"),
)
def test_dockerignore_keeps_what_the_dockerfile_copies(src: str) -> None:
    for path in src.split():
        assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is not in the repository"
        assert dockerignore_allows(path.rstrip("/") + ("/x.py" if path.endswith("/") else "")), path


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", "runs/m/x.pt", "data/mnist/x", "tests/conftest.py"])
def test_dockerignore_leaves_out(path: str) -> None:
    assert not dockerignore_allows(path)


def compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not compose_plugin(), reason="needs the docker compose plugin (no engine needed)")
def test_compose_rollback_is_the_previous_model_dir_set_again() -> None:
    # docs/operating.md: a compose rollback is CVAE_MODEL_DIR (or the image) set back, then `docker compose up -d`.
    def rendered(model_dir: str) -> dict[str, str]:
        env = {**os.environ, "CVAE_MODEL_DIR": model_dir, "CVAE_ADMIN_API_KEYS": ""}
        out = subprocess.run(["docker", "compose", "config", "--format", "json"], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return dict(json.loads(out)["services"]["api"]["environment"])

    previous, new = rendered("/models/previous"), rendered("/models/new")
    assert new["CVAE_MODEL_DIR"] == "/models/new"
    assert rendered("/models/previous") == previous and {k: v for k, v in new.items() if k != "CVAE_MODEL_DIR"} == {
        k: v for k, v in previous.items() if k != "CVAE_MODEL_DIR"
    }
