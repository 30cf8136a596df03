"""`convserve serve` as a child process on loopback port 0: the one implementation the benchmark,
the soak and the integration tests (tests/testkit.py) start servers with.

Why a child process: the benchmark must see what the server alone costs (CPU seconds per request,
memory over time, from /proc), not a mixture with the load tool or the benchmark's own Python; the
tests must see what a user sees (flags, JSON log on stderr, signals, exit status). The ports the
server chose come from its `server_started` log event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """The server on `repo` (extra flags in `args`); ports from its JSON log.

    Returns once the server logged `wait_for`: "server_started" (listening; models may still be
    loading) or "server_ready" (every model loaded; a model_load_failed event is an error then).
    `keep_log=False` drops log lines after start-up (a long soak must not hold every line).
    `source` is the checkout whose code runs (another one, e.g. a `git worktree` of an older
    commit, for before/after comparisons; this environment's packages either way).
    """

    def __init__(
        self,
        repo: Path,
        *args: str,
        env: dict | None = None,
        wait_for: str = "server_started",
        keep_log: bool = True,
        timeout: float = 120,
        source: Path = REPO_ROOT,
    ):
        command = [
            sys.executable,
            "-m",
            "entrypoint",
            "serve",
            "--model-repo",
            str(repo),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--http-port",
            "-1",
            "--providers",
            "cpu",
            "--log-format",
            "json",
            *args,
        ]
        self.proc = subprocess.Popen(
            command,
            cwd=source,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.log_lines: list[str] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None  # when started with --http-port 0 (or another port)
        self._keep_log = keep_log
        try:
            self._read_until(wait_for, timeout)
        except BaseException:
            self.kill()
            raise
        threading.Thread(target=self._drain, daemon=True).start()

    def _read_until(self, wanted: str, timeout: float) -> None:
        give_up = time.monotonic() + timeout
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(
                    f"server exited before {wanted} (code {self.proc.wait()}): {''.join(self.log_lines)[-3000:]}"
                )
            self.log_lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "server_started":
                self.port, self.metrics_port = event["port"], event.get("metrics_port")
                self.http_port = event.get("http_port")
            if event.get("event") == "model_load_failed" and wanted == "server_ready":
                raise RuntimeError(f"server did not get ready: {event}")
            if event.get("event") == wanted:
                return
            if time.monotonic() > give_up:
                raise RuntimeError(f"server did not log {wanted} in {timeout:g} s")

    def _drain(self) -> None:
        for line in self.proc.stderr:
            if self._keep_log:
                self.log_lines.append(line)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict]:
        """Every JSON log line so far (non-JSON lines skipped)."""
        parsed = []
        for line in list(self.log_lines):
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pass
        return parsed

    def wait_serving(self, timeout: float = 120) -> None:
        """Poll grpc.health.v1 until the server reports SERVING."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        give_up = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < give_up:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"server not SERVING after {timeout} s")

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole server process (all threads) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    def thread_cpu(self) -> dict[int, float]:
        """CPU seconds per thread id (for 'where does the CPU go')."""
        seconds = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds[int(task.name)] = (int(fields[11]) + int(fields[12])) / _TICK
        return seconds

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Graceful stop for the benchmarks: SIGTERM, then SIGKILL after 60 s."""
        try:
            self.terminate(60)
        except subprocess.TimeoutExpired:
            self.kill()


def served_models(repo: Path, *args: str, source: Path = REPO_ROOT) -> ServerProcess:
    """The benchmark's server: every model loaded before it returns, no metrics listener unless `args`
    ask for one (`--metrics-port 0`), log lines after start-up not kept; `source` as in ServerProcess."""
    return ServerProcess(
        repo, "--metrics-port", "-1", *args, wait_for="server_ready", keep_log=False, timeout=600, source=source
    )


def system_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (from /proc/stat), to gauge other load."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK
