"""`convserve serve` as a child process, so its CPU time and RSS can be read from /proc.

Why a child process: the benchmark must see what the server alone costs (CPU seconds per request,
memory over time), not a mixture with the load tool or the benchmark's own Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


class ServedModels:
    """The server on `repo`, bound to a free loopback port; stop() ends it with SIGTERM."""

    def __init__(self, repo: Path, *extra: str, tree: Path = REPO_ROOT):
        """`tree`: the source tree to serve from (another checkout, for before/after comparisons)."""
        command = [sys.executable, "-m", "entrypoint", "serve", "--model-repo", str(repo), "--host", "127.0.0.1",
                   "--port", "0", "--metrics-port", "-1", "--http-port", "-1", "--providers", "cpu",
                   "--log-format", "json", *extra]
        self.proc = subprocess.Popen(command, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.port: int | None = None
        self.metrics_port: int | None = None  # when started with --metrics-port 0 (or another port)
        ready = self._read_until("server_ready", timeout=600)
        failed = [e for e in self.events if e.get("event") == "model_load_failed"]
        if failed or not ready:
            self.stop()
            raise RuntimeError(f"server did not get ready: {failed or self.events[-3:]}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _read_until(self, event: str, timeout: float) -> bool:
        give_up = time.monotonic() + timeout
        for line in self.proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.events.append(record)
            if record.get("event") == "server_started":
                self.port = record["port"]
                self.metrics_port = record.get("metrics_port")
            if record.get("event") == event:
                return True
            if time.monotonic() > give_up:
                return False
        return False

    def _drain(self) -> None:
        for _ in self.proc.stderr:
            pass

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def system_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy so far (from /proc/stat), to gauge other load."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK
