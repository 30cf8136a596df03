"""A real Prometheus scrapes a real convserve and evaluates every query of the Grafana dashboard.

Needs the `prometheus` binary (Debian/Ubuntu package `prometheus`; `scripts/ensure_prometheus.sh`
installs it, CI runs that first). Without it this test FAILS rather than skips: the dashboard and
the rules would otherwise ship unchecked.

Prometheus runs with its own config and storage in a temporary directory, scrapes the server every
second, loads deploy/prometheus/convserve-rules.yml, and answers PromQL over its HTTP API while a
background client keeps traffic (good and bad requests) flowing.

Port choice: our own server binds port 0 and reports the port it got. Prometheus cannot report the
port it bound (its log repeats the configured address), so here, and only here, the test asks the
OS for a free port, releases it and passes it to Prometheus; if Prometheus loses the race for that
port it exits at once and the test retries with another one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
import yaml

from service.api.convserve.v1 import vision_pb2 as vpb
from service.api.convserve.v1 import vision_pb2_grpc as vpb_grpc
from testkit import REPO_ROOT, ServerThread, write_tiny_model
from testkit import test_settings as settings_for

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "convserve-dashboard.json"
JOB = "convserve"
# What Grafana substitutes: $__rate_interval is max(4 x scrape interval, $__interval + scrape interval).
SUBSTITUTIONS = {"$__rate_interval": "4s", "$__interval": "1s", "$job": JOB, "$model": "tiny"}
# Queries that must return at least one finite value > 0 while traffic flows.
MUST_BE_POSITIVE = (
    "Request rate by method and code",
    "Error ratio",
    "Images per second",
    "p50 latency by stage",
    "p95 latency by stage",
    "p99 latency by stage",
    "Total latency p50 / p95 / p99 by model",
    "Batch size distribution",
    "Mean batch size and requests per batch",
    "Model ready",
    "Resident memory",
)
pytestmark = pytest.mark.slow


def prometheus_binary() -> str:
    path = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).is_file():
        pytest.fail(
            "the prometheus binary is missing: run scripts/ensure_prometheus.sh "
            "(apt-get install prometheus) or set PROMETHEUS_BIN",
            pytrace=False,
        )
    return path


def os_chosen_port() -> int:
    """A port the OS just handed out (see the module docstring for why only Prometheus gets this)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Prometheus:
    """A Prometheus server in a subprocess with its own config and storage under `workdir`."""

    def __init__(self, workdir: Path, metrics_port: int):
        self.binary = prometheus_binary()
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(self._config(metrics_port)))
        self.storage = workdir / "data"
        self.log = workdir / "prometheus.log"
        self.proc = None
        for _attempt in range(3):
            self.port = os_chosen_port()
            if self._start():
                return
        raise AssertionError(f"prometheus did not start:\n{self.log.read_text()[-3000:]}")

    @staticmethod
    def _config(metrics_port: int) -> dict:
        """The shipped deploy/prometheus/prometheus.yml, pointed at this server, scraping every second."""
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
        (job,) = config["scrape_configs"]
        assert job["job_name"] == JOB
        job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
        return config

    def _start(self) -> bool:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.storage}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                    "--storage.tsdb.retention.time=1h",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            if self.proc.poll() is not None:
                return False  # lost the port, or a bad config: the log says which
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        return False

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read())
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expression: str) -> list:
        data = self.api("query", query=expression)
        assert data["resultType"] == "vector", (expression, data["resultType"])
        return data["result"]

    def wait_for(self, expression: str, timeout: float = 30) -> list:
        give_up = time.monotonic() + timeout
        while True:
            result = self.query(expression)
            if result or time.monotonic() > give_up:
                return result
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".png", rng.integers(0, 256, (10, 10), dtype=np.uint8))
    assert ok
    return data.tobytes()


class Traffic:
    """Good (one- and three-image Classify) and bad requests (unknown model, bad image), ~30/s, until stopped."""

    def __init__(self, address: str):
        self.address = address
        self.stop_event = threading.Event()
        self.counts = {"ok": 0, "failed": 0}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            vision = vpb_grpc.VisionServiceStub(channel)
            step = 0
            while not self.stop_event.is_set():
                step += 1
                model = ("tiny", "tiny2", "nope")[step % 3] if step % 5 else "tiny"
                images = [vpb.Image(encoded=png(step + i)) for i in range(1 + 2 * (step % 2))]
                if step % 7 == 0:  # an undecodable image: INVALID_ARGUMENT on a known model
                    model, images = "tiny", [vpb.Image(encoded=b"not an image")]
                try:
                    vision.Classify(vpb.ClassifyRequest(model=vpb.ModelRef(name=model), images=images), timeout=10)
                    self.counts["ok"] += 1
                except grpc.RpcError:
                    self.counts["failed"] += 1
                time.sleep(0.025)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(server, prometheus, traffic): all three running; traffic keeps flowing during the tests."""
    prometheus_binary()  # fail fast, before starting anything
    workdir = tmp_path_factory.mktemp("prometheus")
    repo = workdir / "repo"
    write_tiny_model(repo, "tiny")
    write_tiny_model(repo, "tiny2")
    server = ServerThread(settings_for(repo)).start()
    prometheus = traffic = None
    try:
        prometheus = Prometheus(workdir, server.running.metrics_port)
        assert prometheus.wait_for(f'up{{job="{JOB}"}} == 1'), "prometheus never scraped the server"
        traffic = Traffic(server.address)
        # Enough scrapes with traffic for every rate() window of the dashboard.
        assert prometheus.wait_for(
            'sum(rate(convserve_request_duration_seconds_count{stage="total"}[4s])) > 0'
            ' and sum(rate(convserve_requests_total{code!="OK"}[4s])) > 0',
            timeout=60,
        )
        yield server, prometheus, traffic
    finally:
        if traffic is not None:
            traffic.stop()
        if prometheus is not None:
            prometheus.stop()
        server.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of the dashboard, Grafana variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expression = target["expr"]
            for variable in sorted(SUBSTITUTIONS, key=len, reverse=True):
                expression = expression.replace(variable, SUBSTITUTIONS[variable])
            assert "$" not in expression, f"unsubstituted Grafana variable in {panel['title']!r}: {expression}"
            queries.append((panel["title"], expression))
    return queries


def finite_values(result: list) -> list[float]:
    return [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]


def test_every_dashboard_query_evaluates(stack):
    _, prometheus, _ = stack
    queries = dashboard_queries()
    assert len(queries) >= 20
    empty = []
    for title, expression in queries:
        result = prometheus.query(expression)  # raises on a PromQL error
        if not result:
            empty.append(title)
        models = {r["metric"]["model"] for r in result if "model" in r["metric"]}
        assert models <= {"tiny", "_unknown"}, (title, models)  # the $model filter works
    assert not empty, f"queries that returned no series: {empty}"
    titles = {title for title, _ in queries}
    assert set(MUST_BE_POSITIVE) <= titles
    for title, expression in queries:
        if title in MUST_BE_POSITIVE:
            values = finite_values(prometheus.query(expression))
            assert values and max(values) > 0, (title, expression, values)


def test_latency_quantiles_are_plausible(stack):
    _, prometheus, _ = stack
    p99 = prometheus.query(
        "histogram_quantile(0.99, sum by (le, stage) (rate("
        'convserve_request_duration_seconds_bucket{job="convserve", model="tiny"}[4s])))'
    )
    by_stage = {r["metric"]["stage"]: float(r["value"][1]) for r in p99}
    assert set(by_stage) == {"queue", "preprocess", "inference", "postprocess", "total"}
    assert 0 < by_stage["total"] < 5, by_stage
    assert all(v <= by_stage["total"] * 1.5 for v in by_stage.values() if math.isfinite(v)), by_stage


def test_template_variables_resolve(stack):
    _, prometheus, _ = stack
    assert JOB in prometheus.api("label/job/values", **{"match[]": "convserve_model_ready"})
    models = prometheus.api("label/model/values", **{"match[]": f'convserve_model_ready{{job="{JOB}"}}'})
    assert sorted(models) == ["tiny", "tiny2"]


def test_rules_load_and_evaluate(stack):
    _, prometheus, _ = stack
    assert prometheus.wait_for("convserve:requests:rate5m", timeout=15)
    groups = prometheus.api("rules")["groups"]
    assert {g["name"] for g in groups} == {"convserve.recording", "convserve.alerts"}
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 10
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] not in ("ok", "unknown")]
    assert not bad, bad
    ratio = finite_values(prometheus.wait_for('convserve:request_errors:ratio_rate5m{model="_unknown"}'))
    assert ratio == [1.0]


def test_shipped_config_and_rules_pass_promtool():
    promtool = Path(prometheus_binary()).with_name("promtool")
    if not promtool.is_file():
        pytest.fail("promtool (shipped with prometheus) is missing: run scripts/ensure_prometheus.sh", pytrace=False)
    for command in (
        ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        ["check", "rules", str(PROMETHEUS_DIR / "convserve-rules.yml")],
    ):
        result = subprocess.run([str(promtool), *command], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
