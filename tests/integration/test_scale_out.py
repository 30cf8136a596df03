"""Scale-out on one machine: round_robin over three replicas spreads load and survives a killed replica."""

from __future__ import annotations

import threading
import time
import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from testkit import ServerProcess, write_tiny_model
from service.client.vision_client import VisionClient


def _classify_count(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "convserve_requests":
            return sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels["method"] == "Classify" and s.labels["code"] == "OK"
            )
    return 0.0


def test_round_robin_spreads_load_and_survives_a_replica_kill(tmp_path):
    write_tiny_model(tmp_path / "repo")
    replicas = [ServerProcess(tmp_path / "repo") for _ in range(3)]
    try:
        for replica in replicas:
            replica.wait_serving()
        target = "ipv4:" + ",".join(replica.address for replica in replicas)
        image = np.full((1, 8, 8), 0.5, dtype=np.float32)
        failures: list[str] = []
        done = [0]
        lock = threading.Lock()
        phase_deadline = {"end": time.monotonic() + 4.0}

        with VisionClient(target, load_balancing="round_robin", retries=6, backoff=(0.05, 0.5), timeout=10) as client:

            def worker():
                while time.monotonic() < phase_deadline["end"]:
                    try:
                        reply = client.classify([image], "tiny")
                        assert reply.results[0].predictions
                        with lock:
                            done[0] += 1
                    except Exception as exc:  # any failure after retries is a lost request
                        with lock:
                            failures.append(repr(exc))

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(2.0)
            shares_before_kill = [_classify_count(r.metrics_port) for r in replicas]
            replicas[0].kill()
            served_at_kill = done[0]
            phase_deadline["end"] = time.monotonic() + 3.0
            for thread in threads:
                thread.join(60)
            survivors_after = [_classify_count(r.metrics_port) for r in replicas[1:]]

        total_before = sum(shares_before_kill)
        assert total_before > 60, f"too little load: {shares_before_kill}"
        for share in shares_before_kill:
            assert share >= 0.15 * total_before, f"load not spread across replicas: {shares_before_kill}"
        assert failures == [], f"requests failed after retries: {failures[:3]} ({len(failures)} in all)"
        assert done[0] > served_at_kill + 30, "the surviving replicas did not keep serving"
        absorbed = sum(survivors_after) - sum(shares_before_kill[1:])
        assert absorbed >= done[0] - served_at_kill - 8  # (requests in flight at the kill may have landed on replica 0)
    finally:
        for replica in replicas:
            replica.kill()
