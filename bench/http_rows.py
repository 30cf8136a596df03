"""HTTP rows for `make bench`: the Open Inference Protocol over HTTP/REST, JSON tensors vs binary.

`tritonclient.http` is the client, as users run it: `concurrency` threads, each with its own
keep-alive connection, send batch-1 FP32 requests closed loop (standard-normal data, as the
perf_analyzer rows send) for `duration` seconds after a warm-up; once with the tensor as a JSON
list in and out (binary_data=False), once with Triton's binary tensor data extension both ways.
Server CPU per request is the server process's CPU seconds over the requests answered.

bench/run.py hook (the server must be started with an HTTP port):
    server = served_models(repo, "--http-port", "0")
    ...  run.served.extend(http_rows(server, model.name, concurrency=4, duration=plan.duration))
Alone: python -m bench.http_rows --models lenet5,resnet18 --seconds 10 --concurrency 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as triton

from bench.load import ServedPoint
from bench.server import ServerProcess, served_models, system_busy_seconds

PAYLOADS = {"http json": False, "http binary": True}  # payload name -> binary_data
WARMUP_S = 1.0


def http_port(server: ServerProcess) -> int:
    """The HTTP port the server logged at start (it must have been started with --http-port)."""
    if not server.http_port:
        raise RuntimeError("the server has no HTTP port: start it with served_models(repo, '--http-port', '0')")
    return server.http_port


def http_rows(server: ServerProcess, model: str, concurrency: int, duration: float) -> list[ServedPoint]:
    url = f"127.0.0.1:{http_port(server)}"
    return [
        _measure(server, url, model, payload, binary, concurrency, duration) for payload, binary in PAYLOADS.items()
    ]


def _request(url: str, model: str) -> tuple[str, np.ndarray, list[str]]:
    """(input name, one batch item of standard-normal data, output names) from the model's metadata."""
    with triton.InferenceServerClient(url) as client:
        metadata = client.get_model_metadata(model)
    (tensor,) = metadata["inputs"]
    dims = [1, *[int(d) for d in tensor["shape"][1:]]]
    return (
        tensor["name"],
        np.random.default_rng(0).standard_normal(dims).astype(np.float32),
        [o["name"] for o in metadata["outputs"]],
    )


def _sender(url, model, request, binary, deadline, measure_from, latencies, errors) -> None:
    name, data, output_names = request
    client = triton.InferenceServerClient(url, connection_timeout=60, network_timeout=60)
    tensor = triton.InferInput(name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=binary)
    outputs = [triton.InferRequestedOutput(o, binary_data=binary) for o in output_names]
    try:
        while (now := time.perf_counter()) < deadline:
            try:
                client.infer(model, [tensor], outputs=outputs)
            except Exception as exc:  # counted per message: a benchmark reports failures, it does not stop on one
                errors[str(exc)[:80]] = errors.get(str(exc)[:80], 0) + 1
                continue
            if now >= measure_from:
                latencies.append(time.perf_counter() - now)
    finally:
        client.close()


def _measure(server, url, model, payload, binary, concurrency, duration) -> ServedPoint:
    request = _request(url, model)
    started = time.perf_counter()
    measure_from, deadline = started + WARMUP_S, started + WARMUP_S + duration
    latencies: list[float] = []
    errors: dict[str, int] = {}
    cpu_before, busy_before, client_before = server.cpu_seconds(), system_busy_seconds(), time.process_time()
    threads = [
        threading.Thread(target=_sender, args=(url, model, request, binary, deadline, measure_from, latencies, errors))
        for _ in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server_cpu, busy = server.cpu_seconds() - cpu_before, system_busy_seconds() - busy_before
    client_cpu = time.process_time() - client_before
    total = max(1, len(latencies))
    ordered = sorted(latencies) or [float("nan")]
    pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)  # noqa: E731
    return ServedPoint(
        model=model,
        payload=payload,
        concurrency=concurrency,
        throughput_rps=round(len(latencies) / duration, 1),
        images_per_s=round(len(latencies) / duration, 1),
        latency_ms={"p50": round(1000 * statistics.median(ordered), 3), "p90": pick(0.9), "p99": pick(0.99)},
        errors=errors,
        requests_total=total,
        server_cpu_us_per_request=round(1e6 * server_cpu / total, 1),
        client_cpu_us_per_request=round(1e6 * client_cpu / total, 1),
        others_cpu_s=round(max(0.0, busy - server_cpu - client_cpu), 2),
        wall_s=round(duration, 2),
    )


def main() -> None:
    from bench.models import digits_model, export_resnet18

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet18", help="comma list: lenet5 (the digits model), resnet18")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convserve-http-bench-") as tmp:
        repo = Path(tmp)
        names = []
        for wanted in args.models.split(","):
            model = export_resnet18(repo) if wanted.strip() == "resnet18" else digits_model(repo)
            names.append(model.name)
        server = served_models(repo, "--http-port", "0")
        try:
            for name in names:
                for point in http_rows(server, name, args.concurrency, args.seconds):
                    print(
                        f"{point.model:9} {point.payload:12} c{point.concurrency}: {point.throughput_rps:8.1f} req/s  "
                        f"p50 {point.latency_ms['p50']:8.2f} ms  p99 {point.latency_ms['p99']:8.2f} ms  "
                        f"server {point.server_cpu_us_per_request:8.0f} us/req  errors {point.errors or '-'}"
                    )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
