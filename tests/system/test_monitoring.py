"""deploy/monitoring: the alert and recording rules under `promtool test rules`, the compose profile and the Kubernetes
copies wired to files that exist, and every dashboard panel's query answered by a real Prometheus (Debian's
`prometheus` package on loopback) scraping a real `python -m app` (the shipped model) under load.

The tests that need prometheus or promtool skip without them, unless CVAE_REQUIRE_PROMETHEUS=1 (as .ci/run sets it).
CVAE_DASHBOARD_PICTURE=PATH saves the picture of the panels (tests/system/dashboard_picture.py) there, else into the
test's temporary folder:
    CVAE_DASHBOARD_PICTURE=docs/img/dashboard.png bash tests/run.sh tests/system/test_monitoring.py -k real_prometheus
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import drawing, encoded, free_port, wait_for, wait_ready
from tests.system import dashboard_picture
from tests.system.prometheus_tools import binary

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "prometheus" / "rules.yml"
DASHBOARD = json.loads((MONITORING / "grafana" / "dashboards" / "cvae-digits.json").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OPERATING = ROOT / "docs" / "operating.md"
JOB = "cvae-digits"
INFERENCE_RSS = "cvae_inference_process_resident_memory_bytes"


def panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def recording_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r]


def as_queried(expr: str, job: str, rate_interval: str, time_range: str) -> str:
    """A panel's query with Grafana's variables filled in as Grafana would."""
    return expr.replace("$__rate_interval", rate_interval).replace("$__range", time_range).replace("$job", job)


# --- the files ------------------------------------------------------------------------------------------------


def test_the_rules_pass_their_unit_tests():
    promtool = binary("promtool")
    tests = MONITORING / "prometheus" / "rules.test.yml"
    result = subprocess.run([promtool, "test", "rules", tests.name], cwd=tests.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_has_a_runbook():
    tested = {t["alertname"] for group in yaml.safe_load((RULES.parent / "rules.test.yml").read_text())["tests"]
              for t in group.get("alert_rule_test", [])}  # fmt: skip
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATING.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in alerts():
        assert rule["alert"] in tested
        assert rule["labels"]["severity"] in {"page", "ticket"}
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert (ROOT / path).resolve() == OPERATING and anchor in headings, rule["alert"]


def test_the_prometheus_config_and_its_rules_pass_promtool_check():
    promtool = binary("promtool")
    config = MONITORING / "prometheus" / "prometheus.yml"
    result = subprocess.run(
        [promtool, "check", "config", config.name], cwd=config.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_panel_query_parses(tmp_path: Path):
    """Quicker than the real Prometheus below, and without the slow marker: promtool parses each query as a rule."""
    promtool = binary("promtool")
    rules = [{"record": f"panel_{p['id']}_{t['refId']}", "expr": as_queried(t["expr"], JOB, "1m", "1h")}
             for p in panels() for t in p["targets"]]  # fmt: skip
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", "panels.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_operators_prometheus_rule_carries_the_same_groups():
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["prometheusrule.yaml"]
    (dashboard,) = kustomization["configMapGenerator"]
    assert dashboard["options"]["labels"] == {"grafana_dashboard": "1"}
    assert all((MONITORING / f).is_file() for f in dashboard["files"])


def test_the_service_monitor_names_the_job_the_dashboard_and_compose_use():
    """The operator names a ServiceMonitor's job after the Service; compose's scrape job has the same name."""
    service = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "service.yaml").read_text())
    monitor = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "optional" / "servicemonitor.yaml").read_text())
    assert service["metadata"]["name"] == JOB
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {p["name"] for p in service["spec"]["ports"]}
    config = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    assert set(job["dns_sd_configs"][0]["names"]) == {"api", "api-replica"} <= COMPOSE["services"].keys()
    assert job["dns_sd_configs"][0]["port"] == 8000  # the API's port in its container


def test_the_compose_profile_pins_its_images_and_mounts_what_exists():
    services = {name: s for name, s in COMPOSE["services"].items() if "monitoring" in s.get("profiles", [])}
    assert set(services) == {"prometheus", "grafana"}
    for s in services.values():
        assert re.fullmatch(r"[a-z/]+:v?\d+\.\d+\.\d+", s["image"]), s["image"]  # a version, never `latest`
        assert all(p.startswith("127.0.0.1:") for p in s["ports"])  # loopback: Grafana's first login is admin's
        for volume in s["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), source
    grafana = services["grafana"]
    mounts = dict(v.split(":")[1::-1] for v in grafana["volumes"])  # target -> source
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/cvae-digits.yml").read_text())
    dashboards = ROOT / mounts[provider["providers"][0]["options"]["path"]]
    assert (dashboards / "cvae-digits.json").is_file()
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert ROOT / mounts[str(home.parent)] / home.name == dashboards / "cvae-digits.json"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/monitoring/grafana/provisioning"
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert services["prometheus"]["volumes"][0] == "./deploy/monitoring/prometheus:/etc/prometheus:ro"


def test_every_panel_queries_through_the_dashboards_variables():
    seen_ids = set()
    for p in panels():
        assert p["id"] not in seen_ids
        seen_ids.add(p["id"])
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p["targets"]:
            # every selector is the job's (a cvae_* name alone would also catch a second deployment's)
            selectors = re.findall(r"\b[a-z_:]+\{([^}]*)\}", t["expr"])
            assert selectors and all('job=~"$job"' in s for s in selectors), (p["title"], t["expr"])
    covered = " ".join(t["expr"] for p in panels() for t in p["targets"])
    for name in ["cvae_http_requests_total", "cvae_http_request_duration_seconds_bucket", "cvae_batch_queue_wait",
                 "cvae_queue_events_total", "cvae_batch_size_requests", "cvae_batch_size_samples",
                 "cvae_inference_duration_seconds", "process_resident_memory_bytes", "process_cpu_seconds_total",
                 "cvae_inference_process_resident_memory_bytes", "cvae_inference_process_cpu_seconds_total",
                 "cvae_inference_process_restarts_total", "cvae_ready", "cvae_model_info", "cvae_reloads_total",
                 "cvae_model_answers_total"]:  # fmt: skip
        assert name in covered, name


# --- against a real Prometheus --------------------------------------------------------------------------------


@contextlib.contextmanager
def prometheus(target: str, workdir: Path) -> Iterator[str]:
    """Debian's prometheus on loopback scraping `target` every second with the project's rules
    -> its base URL."""
    exe = binary("prometheus")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    cmd = [exe, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    with open(workdir / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (workdir / "prometheus.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            return False

        wait_for(ready, 30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


KEYS = [f"monitoring-client-{i:02d}" for i in range(6)]  # one per client: each has its own rate-limit bucket


@dataclass
class Load:
    """Clients POSTing /generate (several sizes) and /encode over keep-alive connections until stopped, each with its
    own API key; after a refusal a client waits a little, as one honouring Retry-After would (less long). One more,
    greedy, client sends small /generate requests every 5 ms whatever the answer: over its rate limit (10 a second)
    on any machine that answers a 429 in under 95 ms, so the 429s do not depend on the machine's speed. The 503s come
    from the queue's limit and, whatever the speed, from the inference process the test kills."""

    port: int
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    failures: list[str] = field(default_factory=list)

    def _client(self, path: str, bodies: list[tuple[bytes, str]], key: str, patient: bool = True) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        k = 0
        while not self.stop.is_set():
            body, content_type = bodies[k % len(bodies)]
            k += 1
            try:
                conn.request("POST", path, body, {"Content-Type": content_type, "X-API-Key": key})
                response = conn.getresponse()
                response.read()
                self.statuses[path, response.status] += 1
                if response.status in (429, 503) or not patient:
                    time.sleep(0.05 if patient else 0.005)
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(f"{path}: {type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        generate = [(json.dumps({"digit": d, "n": n, "seed": d}).encode(), "application/json")
                    for d, n in zip(range(10), [1, 8, 64, 200, 4, 1, 16, 100, 2, 32], strict=True)]  # fmt: skip
        boundary = "cvae-boundary"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n\r\n'
        upload = head.encode() + encoded(drawing()) + f"\r\n--{boundary}--\r\n".encode()
        encode = [(upload, f"multipart/form-data; boundary={boundary}")]
        clients = [("/generate", generate)] * 3 + [("/encode", encode)] * 2
        threads = [threading.Thread(target=self._client, args=(path, bodies, key))
                   for (path, bodies), key in zip(clients, KEYS[:-1], strict=True)]  # fmt: skip
        small = [(json.dumps({"digit": 1}).encode(), "application/json")]
        threads.append(threading.Thread(target=self._client, args=("/generate", small, KEYS[-1], False)))
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self.stop.set()
            for t in threads:
                t.join(30)


def query(url: str, expr: str, **params: Any) -> list[dict[str, Any]]:
    """The result of an instant query (or of a range query, given start, end and step); fails on any error."""
    api = "query_range" if "step" in params else "query"
    r = httpx.get(f"{url}/api/v1/{api}", params={"query": expr, **params}, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body.get('error', r.text)}"
    return body["data"]["result"]


def inference_child(pid: int) -> int:
    (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(child)


@pytest.mark.slow
def test_every_panel_returns_data_from_a_real_prometheus_scraping_the_service(tmp_path: Path):
    binary("prometheus")
    port = free_port()
    # Limits low enough that the load meets every refusal: 429 (the rate limit) and the queue's 503s (a request is
    # refused when the work queued before it is estimated at over 10 ms: one 200-tile /generate).
    env = {**os.environ, "CVAE_ACCESS_LOG": "false", "CVAE_LOG_LEVEL": "warning", "CVAE_API_KEYS": ",".join(KEYS),
           "CVAE_RATE_LIMIT": "10", "CVAE_RATE_BURST": "10", "CVAE_MAX_QUEUE_WAIT_S": "0.01"}  # fmt: skip
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        app = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                               stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_ready(port, app, lambda: log.read_text()[-3000:], timeout_s=120)
        with prometheus(f"127.0.0.1:{port}", tmp_path / "prometheus") as url, Load(port).running() as load:
            started = time.time()
            time.sleep(8)
            os.kill(inference_child(app.pid), signal.SIGKILL)  # a restart, for the restart series and its alert
            wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 60)
            time.sleep(8)
            elapsed = time.time() - started
            time_range = f"{math.ceil(elapsed)}s"  # Grafana's $__range: the whole run
            firing = lambda: any(  # noqa: E731
                a["labels"]["alertname"] == "CvaeDigitsInferenceProcessRestarting" and a["state"] == "firing"
                for a in httpx.get(f"{url}/api/v1/alerts").json()["data"]["alerts"]
            )
            wait_for(firing, 15)
            answered = []
            for p in panels():  # while the load still runs: every rate has samples in its window
                for t in p["targets"]:
                    expr = as_queried(t["expr"], JOB, "5s", time_range)
                    result = query(url, expr)
                    values = [float(s["value"][1]) for s in result]
                    assert any(math.isfinite(v) for v in values), f"{p['title']}: {expr} -> {result}"
                    answered.append(expr)
            ended = time.time()
            rules = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
            recorded = {r["record"]: query(url, r["record"]) for r in recording_rules()}
            both = query(url, f'sum({{__name__=~"process_resident_memory_bytes|{INFERENCE_RSS}", job="{JOB}"}})')
            picture = [
                dashboard_picture.Panel(
                    p["title"], p["fieldConfig"]["defaults"]["unit"], p["type"],
                    [dashboard_picture.Series(legend(t["legendFormat"], s["metric"]),
                                              [(float(x), float(v)) for x, v in s["values"]])
                     for t in p["targets"]
                     for s in query(url, as_queried(t["expr"], JOB, "5s", time_range), start=started, end=ended,
                                    step=1)],
                )
                for p in panels()
            ]  # fmt: skip
        assert not load.failures, load.failures[:5]
        statuses = {status for _, status in load.statuses}
        assert {200, 429, 503} <= statuses, load.statuses
    finally:
        app.kill()
        app.wait(10)
    assert len(answered) == sum(len(p["targets"]) for p in panels())
    every_rule = [r for g in rules for r in g["rules"]]
    assert len(every_rule) == sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
    assert all(r["health"] == "ok" for r in every_rule), [(r["name"], r.get("lastError")) for r in every_rule]
    # Every recording rule has data, but the server errors' ratio: there were no faults to count (503s are refusals).
    assert [name for name, result in recorded.items() if not result] == ["job:cvae_http_errors:ratio_rate5m"]
    (memory,) = recorded["instance:cvae_resident_memory_bytes:sum"]  # the two processes of the one replica
    assert memory["metric"] == {"__name__": "instance:cvae_resident_memory_bytes:sum", "job": JOB,
                                "instance": f"127.0.0.1:{port}"}  # fmt: skip
    assert float(memory["value"][1]) == pytest.approx(float(both[0]["value"][1]), rel=0.05)
    out = Path(os.environ.get("CVAE_DASHBOARD_PICTURE") or tmp_path / "dashboard.png")
    dashboard_picture.draw(picture, f"cvae-digits dashboard: {elapsed:.0f} s of load, one SIGKILL", out)
    assert out.stat().st_size > 10_000


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
