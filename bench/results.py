"""The benchmark's verdicts and its two write-ups: JSON (for machines) and markdown (for people)."""

from __future__ import annotations

import statistics
from dataclasses import asdict

from bench.load import STREAMED_TENSOR, ServedPoint
from bench.perf import perf_payload
from bench.raw import RawJpegPoint, RawPoint

DIGITS_TARGET_RPS = 2000.0  # on the 2-core AMD EPYC development machine (3,000 on the Intel Xeon one)
GRPC, SHM = perf_payload("grpc"), perf_payload("shm")
GRPC_REPEAT = GRPC + ", repeat"  # the digits c16/c64 pairs run again, alternating, for the decline check
# transport -> (c1 p50 allowance over raw batch-1 in ms, c16 share of raw best images/s)
RESNET_TARGETS = {SHM: (1.0, 0.95), GRPC: (2.0, 0.90)}
JPEG_SHARE = 0.85


def served_ratio(point: ServedPoint, raw: list[RawPoint]) -> float | None:
    best = max((p.images_per_s for p in raw), default=0.0)
    return round(point.images_per_s / best, 3) if best else None


def find(served: list[ServedPoint], model: str, payload: str, concurrency: int) -> ServedPoint | None:
    return next((p for p in served if (p.model, p.payload, p.concurrency) == (model, payload, concurrency)), None)


def evaluate_targets(
    raw: dict[str, list[RawPoint]],
    served: list[ServedPoint],
    digits: str,
    memory: ServedPoint | None,
    warmup: float,
    adjacent: dict[str, RawPoint] | None = None,
    raw_jpeg: dict[str, RawJpegPoint] | None = None,
) -> list[dict]:
    """One {target, measured, passed} per stated goal.

    The ResNet-18 goals compare against the *best* raw ONNX Runtime figure of the run: the raw
    table's or the one re-measured right after the served run (`adjacent`), whichever is faster.
    Why the best: on a shared machine other load only ever slows a measurement down, so the
    fastest raw figure is the closest to what ONNX Runtime can do here, and a target cannot pass
    because its reference happened to be measured at a busy moment.
    """
    adjacent = adjacent or {}
    targets = _resnet_targets(raw.get("resnet18", []), served, adjacent)
    jpeg = (raw_jpeg or {}).get("resnet18")
    for concurrency in (16, 1):
        point = find(served, "resnet18", "jpeg", concurrency)
        if jpeg and point:
            size = f"{jpeg.image_hw[0]}x{jpeg.image_hw[1]}"
            targets.append(
                _target(
                    f"resnet18 JPEG {size} via Classify c{concurrency} >= {JPEG_SHARE} x in-process "
                    f"decode+preprocess+raw run ({jpeg.images_per_s:.1f} img/s)",
                    f"{point.images_per_s:.1f} img/s = {point.images_per_s / jpeg.images_per_s:.2f} x",
                    point.images_per_s >= JPEG_SHARE * jpeg.images_per_s,
                )
            )
            break
    targets += _digits_targets(served, digits)
    if memory is not None:
        steady = [mb for t, mb in memory.rss_mb if t >= warmup]
        if steady:
            drift = max(abs(mb / steady[0] - 1.0) for mb in steady)
            targets.append(
                _target(
                    f"server RSS flat within ±10% over {len(steady)} s at full load ({digits} tensor c64)",
                    f"{steady[0]:.0f} -> {steady[-1]:.0f} MB (min {min(steady):.0f}, max {max(steady):.0f}; "
                    f"max drift {100 * drift:.1f}%)",
                    drift <= 0.10,
                )
            )
    return targets


def _resnet_targets(resnet_raw: list[RawPoint], served: list[ServedPoint], adjacent: dict[str, RawPoint]) -> list[dict]:
    targets = []
    best = max(
        [*resnet_raw, *([adjacent["resnet18 c16"]] if "resnet18 c16" in adjacent else [])],
        key=lambda p: p.images_per_s,
        default=None,
    )
    batch1 = [p for p in resnet_raw if p.batch == 1] + ([adjacent["resnet18 c1"]] if "resnet18 c1" in adjacent else [])
    b1 = min(batch1, key=lambda p: p.latency_ms_p50, default=None)
    for payload, (allowance, share) in RESNET_TARGETS.items():
        c1 = find(served, "resnet18", payload, 1)
        if b1 and c1 and c1.latency_ms:
            over = c1.latency_ms["p50"] - b1.latency_ms_p50
            targets.append(
                _target(
                    f"resnet18 {payload} c1 p50 <= raw batch-1 p50 + {allowance} ms ({b1.latency_ms_p50:.2f} ms)",
                    f"p50 {c1.latency_ms['p50']:.2f} ms (+{over:.2f} ms)",
                    over <= allowance,
                )
            )
        c16 = find(served, "resnet18", payload, 16)
        if best and c16:
            ratio = c16.images_per_s / best.images_per_s
            targets.append(
                _target(
                    f"resnet18 {payload} c16 >= {share} x raw best (batch {best.batch}: {best.images_per_s:.1f} img/s)",
                    f"{c16.images_per_s:.1f} img/s = {ratio:.2f} x raw",
                    ratio >= share,
                )
            )
    return targets


def _rounds(served: list[ServedPoint], digits: str, concurrency: int) -> list[float]:
    """req/s of every plain-gRPC perf_analyzer run of `digits` at this concurrency (first and repeats)."""
    return [
        p.throughput_rps
        for p in served
        if p.model == digits and p.payload in (GRPC, GRPC_REPEAT) and p.concurrency == concurrency
    ]


def _digits_targets(served: list[ServedPoint], digits: str) -> list[dict]:
    """Why medians of alternating rounds for the decline check: one c16 and one c64 run minutes
    apart differ by a few percent on a shared machine whichever is faster; alternating them and
    comparing medians lets the background load move both alike."""
    targets = []
    d16, d64 = find(served, digits, GRPC, 16), find(served, digits, GRPC, 64)
    if d16 and d64:
        better = max(d16, d64, key=lambda p: p.throughput_rps)
        r16, r64 = _rounds(served, digits, 16), _rounds(served, digits, 64)
        m16, m64 = statistics.median(r16), statistics.median(r64)
        targets.append(
            _target(
                f"{digits} {GRPC}: c64 >= c16 (no decline as concurrency grows; medians of {len(r16)} "
                "alternating rounds)",
                f"c16 {m16:,.0f} ({', '.join(f'{r:,.0f}' for r in r16)}), "
                f"c64 {m64:,.0f} ({', '.join(f'{r:,.0f}' for r in r64)}) req/s",
                m64 >= m16,
            )
        )
        targets.append(
            _target(
                f"{digits} {GRPC}: the better of c16 and c64 >= {DIGITS_TARGET_RPS:,.0f} req/s (AMD EPYC 2-core)",
                f"{better.throughput_rps:,.0f} req/s, server {better.server_cpu_us_per_request:.0f} us CPU/request",
                better.throughput_rps >= DIGITS_TARGET_RPS,
            )
        )
    stream = find(served, digits, STREAMED_TENSOR, 64)
    if stream:
        targets.append(
            _target(
                f"{digits} V2 tensor c64 >= {DIGITS_TARGET_RPS:,.0f} req/s, ModelStreamInfer, 64 streams (load tool)",
                f"{stream.throughput_rps:,.0f} req/s, server {stream.server_cpu_us_per_request:.0f} us CPU/request",
                stream.throughput_rps >= DIGITS_TARGET_RPS,
            )
        )
    return targets


def _target(name: str, measured: str, passed: bool) -> dict:
    return {"target": name, "measured": measured, "passed": bool(passed)}


def to_json(
    meta: dict,
    raw: dict[str, list[RawPoint]],
    served: list[ServedPoint],
    targets: list[dict],
    profile: dict,
    memory: ServedPoint | None,
    adjacent: dict[str, RawPoint] | None = None,
    raw_jpeg: dict[str, RawJpegPoint] | None = None,
) -> dict:
    return {
        "raw_jpeg": {key: asdict(p) for key, p in (raw_jpeg or {}).items()},
        "meta": meta,
        "raw_onnxruntime": {name: [asdict(p) for p in points] for name, points in raw.items()},
        "raw_onnxruntime_after_served": {key: asdict(p) for key, p in (adjacent or {}).items()},
        "served": [
            dict(asdict(p), served_over_raw_best=served_ratio(p, raw.get(p.model, [])), rss_mb=None) for p in served
        ],
        "targets": targets,
        "profile": profile,
        "memory": asdict(memory) if memory else None,
    }


def to_markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [
        f"# convserve benchmark ({meta['mode']})",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- load average before / after: {meta['loadavg_before']} / {meta['loadavg_after']}",
        f"- versions: {meta['versions']}",
        f"- ONNX Runtime intra-op spinning: {meta.get('intra_op_spinning', 'config')} "
        "('config': as each model's config says)",
        *[f"- note: {n}" for n in meta["notes"]],
        "",
        "## Raw ONNX Runtime (in-process, same session options as the server)",
        "",
        "| model | batch | images/s | run latency p50 (ms) |",
        "|---|---:|---:|---:|",
    ]
    for model, points in data["raw_onnxruntime"].items():
        lines += [f"| {model} | {p['batch']} | {p['images_per_s']:.1f} | {p['latency_ms_p50']:.3f} |" for p in points]
    again = data.get("raw_onnxruntime_after_served") or {}
    if again:
        lines += [
            "",
            "Raw ONNX Runtime measured again right after the served run it is compared with (the targets use the "
            "faster of this and the table above):",
            "",
        ]
        lines += [
            f"- after {key}: batch {p['batch']}, {p['images_per_s']:.1f} images/s, {p['latency_ms_p50']:.2f} ms per run"
            for key, p in again.items()
        ]
    for model, p in (data.get("raw_jpeg") or {}).items():
        size = f"{p['image_hw'][0]}x{p['image_hw'][1]}"
        lines += [
            "",
            f"In-process JPEG reference ({model}): {size} JPEGs of {p['jpeg_bytes']} bytes, "
            f"decode + preprocess {p['preprocess_ms_per_image']:.2f} ms/image (service.preprocess, one thread), "
            f"with the raw run at {p['model_images_per_s']:.1f} img/s: {p['images_per_s']:.1f} img/s",
        ]
    lines += [
        "",
        "## Served (closed loop; client on the same machine)",
        "",
        f"Clients: `{GRPC}` / `{SHM}` are Triton's perf_analyzer sending V2 FP32 tensors over plain gRPC / "
        "over system shared memory; `jpeg` is the load tool sending JPEGs to the vision API's Classify; "
        "`tensor-stream` and `tensor` are the load tool over V2 ModelStreamInfer / ModelInfer. served/raw "
        "best: images/s over the best raw ONNX Runtime images/s of the same run.",
        "",
        "| model | input | conc. | req/s | images/s | served/raw best | p50 ms | p90 ms | p99 ms | max ms | errors | "
        "server CPU us/req | client CPU us/req | others' CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for p in data["served"]:
        lat = p["latency_ms"] or {}
        errors = ", ".join(f"{k} {v}" for k, v in p["errors"].items()) or "-"
        ratio = f"{p['served_over_raw_best']:.2f}" if p["served_over_raw_best"] is not None else "-"
        lines.append(
            f"| {p['model']} | {p['payload']} | {p['concurrency']} | {p['throughput_rps']:.1f} | "
            f"{p['images_per_s']:.1f} | {ratio} | "
            f"{lat.get('p50', 0):.2f} | {lat.get('p90', 0):.2f} | {lat.get('p99', 0):.2f} | "
            f"{lat.get('max', 0):.2f} | {errors} | "
            f"{p['server_cpu_us_per_request']:.0f} | {p['client_cpu_us_per_request']:.0f} | {p['others_cpu_s']:.1f} |"
        )
    lines += ["", "## Targets", ""]
    lines += [
        f"- {'PASS' if t['passed'] else 'FAIL'}: {t['target']} — measured {t['measured']}" for t in data["targets"]
    ]
    lines += ["", "## Where the server's CPU goes (digits V2 tensor, concurrency 64)", ""] + _profile_lines(
        data["profile"]
    )
    return "\n".join(lines) + "\n"


def _profile_lines(profile: dict) -> list[str]:
    if not profile.get("available"):
        return [f"Profile not available: {profile.get('reason', 'not run')}"]
    lines = [
        "Threads (py-spy samples at 100 Hz; CPU seconds from /proc during the profiled run):",
        "",
        "| thread | samples | CPU s |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {t['thread']} | {t['samples']} | {t['cpu_s'] if t['cpu_s'] is not None else '-'} |"
        for t in profile["threads"]
    ]
    native = profile.get("native_threads_cpu_s") or {}
    if native:
        lines.append(
            f"| native threads (gRPC core, ONNX Runtime pools): {len(native)} | - | {sum(native.values()):.2f} |"
        )
    lines += ["", f"Event-loop thread ({profile['event_loop_samples']} samples) by innermost frame:", ""]
    lines += [f"- {pct:.1f}% {name}" for name, pct in profile["event_loop_by_category_pct"].items()]
    lines += ["", "Hottest convserve functions on the event loop (inclusive):", ""]
    lines += [f"- {pct:.1f}% `{name}`" for name, pct in profile["convserve_functions_inclusive_pct"].items()]
    return lines
