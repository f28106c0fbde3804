"""Static checks of deploy/kubernetes against the app, its settings and the image. The manifests' schemas are checked
by .ci/run (kubernetes-validate --strict); these catch what a schema cannot: ports, paths and settings that drift."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from app.factory import create_app
from app.settings import Settings, read_keys

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENDPOINT_PROPAGATION_S = 5  # time for an endpoint removal to reach every node's proxy and ingress (a common margin)
SHUTDOWN_MARGIN_S = 5  # after the drain: the lifespan's shutdown (the inference process stops)


def load(name: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((K8S / name).read_text()))
    assert len(docs) == 1, f"{name}: one resource per file"
    return docs[0]


KUSTOMIZATION = load("kustomization.yaml")
DEPLOYMENT = load("deployment.yaml")
SETTINGS = load("configmap.yaml")
SERVICE = load("service.yaml")
POD = DEPLOYMENT["spec"]["template"]
(CONTAINER,) = POD["spec"]["containers"]


def container_port(name: str) -> int:
    return next(p["containerPort"] for p in CONTAINER["ports"] if p["name"] == name)


def image_port() -> int:
    cmd = re.search(r"^CMD \[(.*)\]$", DOCKERFILE, flags=re.M).group(1)
    args = [a.strip().strip('"') for a in cmd.split(",")]
    return int(args[args.index("--port") + 1])


def configured_env() -> dict[str, str]:
    """The container's environment: the ConfigMap it takes everything from, plus any `env` entries."""
    (source,) = CONTAINER["envFrom"]
    assert source["configMapRef"]["name"] == SETTINGS["metadata"]["name"]
    return {**SETTINGS["data"], **{e["name"]: e["value"] for e in CONTAINER.get("env", [])}}


def app_settings() -> Settings:
    env = configured_env()
    unknown = [k for k in env if k.removeprefix("CVAE_").lower() not in Settings.model_fields]
    assert all(k.startswith("CVAE_") for k in env) and not unknown, f"not settings of app/settings.py: {unknown}"
    return Settings(**{k.removeprefix("CVAE_").lower(): v for k, v in env.items()})


def test_kustomization_lists_every_manifest_beside_it() -> None:
    listed = set(KUSTOMIZATION["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert [i["name"] for i in KUSTOMIZATION["images"]] == [CONTAINER["image"]] == ["cvae-digits"]


def test_configmap_sets_only_valid_settings_of_the_app() -> None:
    settings = app_settings()  # a bad value raises ValidationError, as it would stop the service at start-up
    assert settings.model_dir == Path(re.search(r"\bCVAE_MODEL_DIR=(\S+)", DOCKERFILE).group(1))
    assert settings.torch_threads <= float(CONTAINER["resources"]["limits"]["cpu"])


def test_configmap_names_the_model_and_its_format_as_compose_does() -> None:
    # A model rolls out (and back) as a new value of these keys: each one is set here, to the default compose passes.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["api"]["environment"]
    for key in ("CVAE_MODEL_DIR", "CVAE_MODEL_FORMAT"):
        assert key in SETTINGS["data"], f"configmap.yaml does not set {key}"
        assert compose[key] == f"${{{key}:-{SETTINGS['data'][key]}}}", f"{key}: compose's default differs"


def test_ports_agree_with_the_image_and_the_service() -> None:
    assert container_port("http") == image_port() == int(re.search(r"^EXPOSE (\d+)$", DOCKERFILE, re.M).group(1))
    (port,) = SERVICE["spec"]["ports"]
    assert port["targetPort"] == "http" and port["name"] == "http"
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == container_port("http")


def test_probes_and_scrape_path_are_routes_of_the_app() -> None:
    routes = {path for path, operations in create_app().openapi()["paths"].items() if "get" in operations}
    probes = {kind: CONTAINER[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/livez"
    assert all(p["port"] == "http" for p in probes.values())
    assert {p["path"] for p in probes.values()} | {POD["metadata"]["annotations"]["prometheus.io/path"]} <= routes


def test_startup_probe_allows_several_cold_starts() -> None:
    probe = CONTAINER["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60  # several measured cold starts (docs/scaling.md)


def test_selectors_match_the_pods() -> None:
    labels = POD["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert SERVICE["spec"]["selector"].items() <= labels.items()
    assert load("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = yaml.safe_load((K8S / "optional" / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= SERVICE["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [SERVICE["spec"]["ports"][0]["name"]]


def test_autoscaler_scales_the_deployment_on_requested_cpu() -> None:
    hpa = load("hpa.yaml")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": DEPLOYMENT["metadata"]["name"],
    }
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert "cpu" in CONTAINER["resources"]["requests"]  # utilization is counted against the request
    assert hpa["minReplicas"] >= 2 and load("pdb.yaml")["spec"]["maxUnavailable"] < hpa["minReplicas"]


def test_requests_fit_within_limits() -> None:
    def quantity(text: str) -> float:
        units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
        unit = next((u for u in units if text.endswith(u)), "")
        return float(text.removesuffix(unit)) * units.get(unit, 1)

    requests, limits = CONTAINER["resources"]["requests"], CONTAINER["resources"]["limits"]
    assert requests.keys() == limits.keys() == {"cpu", "memory"}
    assert all(quantity(requests[k]) <= quantity(limits[k]) for k in requests)


def test_shutdown_keeps_serving_then_drains_within_the_grace_period() -> None:
    settings = app_settings()
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop_s = float(command[1])
    # Kubernetes sends SIGTERM after the preStop hook: until then the pod serves while it leaves the endpoints.
    assert pre_stop_s + settings.shutdown_delay_s >= ENDPOINT_PROPAGATION_S
    needed = pre_stop_s + settings.shutdown_delay_s + settings.graceful_shutdown_s + SHUTDOWN_MARGIN_S
    assert POD["spec"]["terminationGracePeriodSeconds"] >= needed


def test_pod_runs_as_the_images_unprivileged_user_on_a_read_only_root() -> None:
    uid = int(re.findall(r"^USER (\d+)", DOCKERFILE, flags=re.M)[-1])
    security = POD["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == uid != 0
    container = CONTAINER["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"] and "add" not in container["capabilities"]
    # Starlette spools uploads over 1 MB to temporary files: with a read-only root, /tmp must be a volume (measured:
    # a 1.4 MB upload is answered 400 in a read-only container without one).
    mounts = {m["mountPath"]: m["name"] for m in CONTAINER["volumeMounts"]}
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_no_service_links_that_could_shadow_settings() -> None:
    # A Service named `cvae` would inject CVAE_PORT=tcp://10.0.0.1:80 into every pod, and the service would read it.
    with pytest.raises(ValidationError):
        Settings(port="tcp://10.0.0.1:80")
    assert POD["spec"]["enableServiceLinks"] is False


def test_api_keys_come_from_an_optional_secret_mounted_as_files_never_from_the_environment() -> None:
    secret = yaml.safe_load((K8S / "optional" / "api-keys-secret.yaml").read_text())
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    mount = next(m for m in CONTAINER["volumeMounts"] if volumes[m["name"]].get("secret"))
    volume = volumes[mount["name"]]["secret"]
    assert volume["secretName"] == secret["metadata"]["name"] and volume["optional"] is True
    assert mount["readOnly"] is True
    # configmap.yaml shows how to turn them on: the paths it names are the Secret's entries under the mount.
    text = (K8S / "configmap.yaml").read_text()
    named = dict(re.findall(r"^\s*#\s+(CVAE_\w*API_KEYS): (\S+)$", text, flags=re.M))
    assert named == {"CVAE_API_KEYS": f"{mount['mountPath']}/api-keys",
                     "CVAE_METRICS_API_KEYS": f"{mount['mountPath']}/metrics-api-keys",
                     "CVAE_ADMIN_API_KEYS": f"{mount['mountPath']}/admin-api-keys"}  # fmt: skip
    assert set(secret["stringData"]) == {"api-keys", "metrics-api-keys", "admin-api-keys"}
    for placeholder in secret["stringData"].values():  # never usable as they are
        with pytest.raises(ValueError):
            read_keys(placeholder, "CVAE_API_KEYS")
    assert not [k for k in configured_env() if "KEY" in k]  # off by default, and never a key in the environment


def test_the_kserve_inference_service_runs_the_image_on_the_protocol_s_routes() -> None:
    """optional/inferenceservice.yaml: a custom predictor running the image's command on KServe's port, probed on
    /v2 routes the app answers, with settings the app has."""
    from app.factory import create_app

    service = yaml.safe_load((K8S / "optional" / "inferenceservice.yaml").read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    (container,) = service["spec"]["predictor"]["containers"]
    port = container["ports"][0]["containerPort"]
    assert container["args"][:3] == ["python", "-m", "app"] and container["args"][-1] == str(port)
    routes = set(create_app().openapi()["paths"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes and container[probe]["httpGet"]["port"] == port
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PROTOCOL"] == "v2"
    settings = {k.removeprefix("CVAE_").lower(): v for k, v in env.items() if k.startswith("CVAE_")}
    assert settings and set(settings) <= set(Settings.model_fields)
    Settings(**settings)
