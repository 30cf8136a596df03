"""Build, measure and install a reduced-precision (or pre-optimised) version of a served model.

The steps behind `convserve optimize` (export/optimize_cli.py), kept apart from argument parsing:
`build_variant` writes the new ONNX file into a scratch directory, `measure_variant` scores it
against its source on the model's held-out data and times both side by side, `install_version`
writes `<repo>/<model>/<N>/{model.onnx, model_card.json}` and settles `default_version`, then
loads the new version the way the server does to prove the repository still serves.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.calibration import CALIBRATION_SEED, ModelData, calibration_batches, model_data
from export.optimize import convert_fp16, first_convs, quantize_int8, save_optimized_graph
from export.throughput import (
    cpu_session,
    interleaved_creation,
    interleaved_timings,
    machine_description,
    ratio_of_medians,
    tile_batch,
)
from service.config import ModelConfig, dump_model_config
from service.repository import ModelSource, check_signature, find_config, scan_model

VARIANTS = ("int8", "fp16", "graph")
QUANTIZATION = {
    "format": "QDQ (onnxruntime.quantization.quantize_static)",
    "weights": "int8, symmetric",
    "activations": "uint8, per-tensor, asymmetric",
    "calibration_method": "MinMax",
    "preprocessing": "onnxruntime.quantization.shape_inference.quant_pre_process",
}
STARTUP_REPEATS = 5


@dataclass(frozen=True)
class OptimizeRequest:
    repo: Path
    model: str
    source_version: int | None
    variant: str  # one of VARIANTS
    calibration_size: int = 256
    threads: int = 1
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    rounds: int = 15
    min_seconds: float = 3.0  # per batch size: fast models get more interleaved rounds
    default_policy: str = "pin"  # "pin" | "auto"
    full_evaluation: bool = True
    per_channel: bool = True  # int8 weights: one scale per output channel, or one per tensor
    float_first_conv: bool = False  # int8: keep the first convolution (of every pass over the input) in float32
    graph_level: str = "extended"  # variant "graph": "extended" (portable) or "all" (this CPU type only)


@dataclass(frozen=True)
class BuiltVariant:
    source: ModelSource
    source_version: int
    target: Path  # the new model.onnx, still in the scratch directory
    data: ModelData | None
    samples: np.ndarray  # float32 [n, C, H, W] real inputs, for timings and parity
    method: dict


def find_source(repo: Path, model: str, version: int | None) -> tuple[ModelSource, int]:
    """The model directory and the version asked for (default: the model's default version)."""
    source = scan_model(Path(repo) / model)
    version = version or source.default_version
    if version not in source.versions:
        raise ValueError(f"model '{model}' has no version {version} (versions: {list(source.versions)})")
    return source, version


def _resolve_source(request: OptimizeRequest) -> tuple[ModelSource, int]:
    source, version = find_source(request.repo, request.model, request.source_version)
    card_path = source.directory / str(version) / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if card.get("precision", "fp32") != "fp32" or "derived_from" in card:
        raise ValueError(
            f"version {version} of '{request.model}' is itself a {card.get('precision')} variant "
            f"of version {card.get('derived_from', {}).get('version')}: optimise the fp32 source instead"
        )
    return source, version


def build_variant(request: OptimizeRequest, scratch: Path) -> BuiltVariant:
    """Write the variant's ONNX file into `scratch`; nothing in the repository changes."""
    if request.variant not in VARIANTS:
        raise ValueError(f"unknown variant '{request.variant}' (choose from {', '.join(VARIANTS)})")
    source, version = _resolve_source(request)
    config = source.config
    data = model_data(request.model) if request.variant == "int8" else _optional_data(request.model)
    if data is not None:
        count = request.calibration_size if request.variant == "int8" else 16  # others only need timing inputs
        feeds = calibration_batches(data, config, count)
        samples = next(iter(feeds[0].values()))
    else:
        samples = _random_inputs(config)
        feeds = [{config.inputs[0].name: samples}]
    target = scratch / "model.onnx"
    src = source.model_path(version)
    if request.variant == "int8":
        float_nodes = first_convs(src) if request.float_first_conv else ()
        quantize_int8(src, target, feeds, per_channel=request.per_channel, float_nodes=float_nodes)
        _keep_cam_weights(config, target)
        weights = "per-channel" if request.per_channel else "per-tensor"
        quantization = {
            **QUANTIZATION,
            "weight_scales": weights,
            **({"float32_nodes": list(float_nodes)} if float_nodes else {}),
        }
        method = {
            "quantization": quantization,
            "calibration": {
                "source": data.calibration_source,
                "samples": sum(len(next(iter(f.values()))) for f in feeds),
                "batches": len(feeds),
                "seed": CALIBRATION_SEED,
            },
        }
    elif request.variant == "fp16":
        convert_fp16(src, target)
        method = {"conversion": "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"}
    else:
        save_optimized_graph(src, target, request.graph_level)
        method = {
            "graph_optimization": {
                "level": request.graph_level,
                "saved_with": "SessionOptions.optimized_model_filepath",
                "portable": request.graph_level != "all",
            }
        }
    return BuiltVariant(source, version, target, data, samples, method)


def sample_inputs(model: str, config: ModelConfig, count: int = 16) -> np.ndarray:
    """float32 inputs [n, C, H, W] for parity checks: the model's own data where it is a bundled
    model, seeded noise of its input shape otherwise."""
    data = _optional_data(model)
    if data is None:
        return _random_inputs(config, count)
    return next(iter(calibration_batches(data, config, count)[0].values()))


def _optional_data(name: str) -> ModelData | None:
    try:
        return model_data(name)
    except KeyError:
        return None


def _random_inputs(config: ModelConfig, count: int = 8) -> np.ndarray:
    """Seeded standard-normal inputs of the configured shape (free axes: the preprocessing size or 64)."""
    dims = list(config.inputs[0].dims[1:])
    hw = config.preprocessing.input_hw if config.preprocessing else None
    if hw is not None and len(dims) == 3:
        dims[1:] = hw
    dims = [d if d > 0 else 64 for d in dims]
    return np.random.default_rng(0).standard_normal((count, *dims)).astype(np.float32)


def _keep_cam_weights(config: ModelConfig, target: Path) -> None:
    """Put the CAM classifier weights back as a float32 initializer if quantisation renamed them.

    Why: the server reads `postprocessing.cam.weights_initializer` straight from the ONNX file to
    weight the feature maps. Quantisation replaces it by `<name>_quantized` + scale + zero point;
    the restored float copy is the dequantised int8 weights, i.e. exactly what the served logits
    use, so the maps stay consistent with the scores. Nothing in the graph reads it.
    """
    cam = config.postprocessing.cam
    if cam is None or cam.weights_initializer is None:
        return
    model = onnx.load(str(target))
    names = {i.name: i for i in model.graph.initializer}
    if cam.weights_initializer in names:
        return
    node = next(
        (
            n
            for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] == f"{cam.weights_initializer}_quantized"
        ),
        None,
    )
    if node is None:
        raise ValueError(
            f"quantised graph lost the CAM weights '{cam.weights_initializer}' and no dequantisation of them was found"
        )
    model.graph.initializer.append(onnx.numpy_helper.from_array(_dequantized(node, names), cam.weights_initializer))
    onnx.save(model, str(target))
    onnx.checker.check_model(str(target))


def _dequantized(node: onnx.NodeProto, initializers: dict) -> np.ndarray:
    """float32 value of a DequantizeLinear node on initializers: (q - zero_point) * scale along `axis`."""
    q = onnx.numpy_helper.to_array(initializers[node.input[0]]).astype(np.float32)
    scale = onnx.numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
    zero = onnx.numpy_helper.to_array(initializers[node.input[2]]).astype(np.float32) if len(node.input) > 2 else 0.0
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return ((q - zero) * scale).astype(np.float32)


def measure_variant(request: OptimizeRequest, built: BuiltVariant) -> dict:
    """Held-out metric of source and variant, interleaved throughput and session start-up times."""
    source_path = built.source.model_path(built.source_version)
    return {
        "evaluation": _evaluation(request, built, source_path),
        "throughput": _throughput(request, built, source_path),
        "startup": _startup(request, built, source_path),
    }


def _evaluation(request: OptimizeRequest, built: BuiltVariant, source_path: Path) -> dict:
    name, config, data = request.variant, built.source.config, built.data
    if data is None:
        reference = cpu_session(source_path, request.threads).run(None, {config.inputs[0].name: built.samples})
        candidate = cpu_session(built.target, request.threads).run(None, {config.inputs[0].name: built.samples})
        worst = max(float(np.max(np.abs(a - b.astype(np.float32)))) for a, b in zip(reference, candidate))
        return {"metric": "max_abs_difference on seeded random inputs", "value": worst, "holds": None}
    result = {"metric": data.metric, "heldout": data.heldout_source, "max_drop": data.max_drop}
    counts = {"test_subset": data.test_count}
    if request.full_evaluation and data.full_count != data.test_count:
        counts["full"] = data.full_count
    for label, count in counts.items():
        fp32 = data.evaluate(source_path, config, count)
        variant = data.evaluate(built.target, config, count)
        result[label] = {
            "count": count,
            "fp32": fp32.value,
            name: variant.value,
            "drop": round(fp32.value - variant.value, 6),
            "details": {"fp32": fp32.details, name: variant.details},
        }
    judged = result.get("full", result["test_subset"])
    result["holds"] = bool(judged["drop"] <= data.max_drop + 1e-9)
    return result


def _throughput(request: OptimizeRequest, built: BuiltVariant, source_path: Path) -> dict:
    config = built.source.config
    level = config.runtime.graph_optimization_level
    sessions = {
        "fp32": cpu_session(source_path, request.threads, level),
        request.variant: cpu_session(built.target, request.threads, level),
    }
    batches = [b for b in request.batch_sizes if b <= config.batching.max_batch_size] or [1]
    rows, speedups = [], {}
    for batch in batches:
        feed = {config.inputs[0].name: tile_batch(built.samples, batch)}
        timings = interleaved_timings(sessions, feed, request.rounds, min_seconds=request.min_seconds)
        speedups[str(batch)] = round(ratio_of_medians(timings["fp32"], timings[request.variant]), 3)
        rows.append({name: timing.as_dict() for name, timing in timings.items()})
    best = max(speedups, key=lambda b: rows[batches.index(int(b))][request.variant]["images_per_s"])
    return {
        "method": "interleaved runs (fp32, variant, fp32, ...) in one process on the same real inputs; "
        "speedup = ratio of median run times",
        "threads": request.threads,
        "graph_optimization_level": level,
        "min_rounds": request.rounds,
        "by_batch": rows,
        "speedup_by_batch": speedups,
        "best_batch": int(best),
        "speedup_at_best_batch": speedups[best],
        "machine": machine_description(),
    }


def _startup(request: OptimizeRequest, built: BuiltVariant, source_path: Path) -> dict:
    level = built.source.config.runtime.graph_optimization_level
    paths = {"fp32": (source_path, level), request.variant: (built.target, level)}
    if request.variant == "graph":
        paths["graph@disable"] = (built.target, "disable")
    seconds = interleaved_creation(paths, request.threads, STARTUP_REPEATS)
    return {
        "graph_optimization_level": level,
        "repeats": STARTUP_REPEATS,
        "session_creation_ms": {name: round(s * 1000, 1) for name, s in seconds.items()},
    }


def install_version(request: OptimizeRequest, built: BuiltVariant, measured: dict) -> Path:
    """Write the new version (card + ONNX with metadata), settle default_version, prove it loads."""
    from export.writer import install_version_dir, next_version

    source = built.source
    version = next_version(source.directory)
    _stamp_metadata(built.target, version, request.variant, built.source_version)
    default = _default_version(request, built, measured, version)
    onnx_bytes = built.target.read_bytes()
    card = _card(request, built, measured, version, default, onnx_bytes)
    install_version_dir(
        source.directory,
        version,
        {"model.onnx": onnx_bytes, "model_card.json": (json.dumps(card, indent=2) + "\n").encode()},
        overwrite=False,
    )
    config_path = find_config(source.directory)
    updated = source.config.model_copy(update={"default_version": default})
    temporary = config_path.with_name(".config.yaml.tmp")
    dump_model_config(updated, temporary)
    os.replace(temporary, config_path)
    check_serves(source.directory, version)
    return source.directory / str(version)


def _stamp_metadata(path: Path, version: int, variant: str, source_version: int) -> None:
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(
        {
            "convserve.version": str(version),
            "convserve.precision": variant if variant != "graph" else "fp32",
            "convserve.derived_from_version": str(source_version),
        }
    )
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def _default_version(request: OptimizeRequest, built: BuiltVariant, measured: dict, version: int) -> int:
    """pin: the source version; auto: the new one when its metric holds and it is faster."""
    if request.default_policy == "auto":
        holds = measured["evaluation"].get("holds")
        faster = measured["throughput"]["speedup_at_best_batch"] > 1.0
        if holds and faster:
            return version
    return built.source_version


def _card(
    request: OptimizeRequest, built: BuiltVariant, measured: dict, version: int, default: int, onnx_bytes: bytes
) -> dict:
    import onnxruntime

    source_path = built.source.model_path(built.source_version)
    precision = request.variant if request.variant != "graph" else "fp32"
    int8 = (
        "--quantize int8"
        + ("" if request.per_channel else " --weights per-tensor")
        + (" --float-first-conv" if request.float_first_conv else "")
    )
    flag = {"int8": int8, "fp16": "--precision fp16", "graph": "--optimized-graph"}[request.variant]
    return {
        "name": request.model,
        "version": version,
        "precision": precision,
        "variant": request.variant,
        "derived_from": {
            "version": built.source_version,
            "sha256": hashlib.sha256(source_path.read_bytes()).hexdigest(),
            "card": f"{built.source_version}/model_card.json",
        },
        **built.method,
        "evaluation": measured["evaluation"],
        "throughput": measured["throughput"],
        "startup": measured["startup"],
        "onnx": {
            "file": "model.onnx",
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "bytes": len(onnx_bytes),
            "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        },
        "serving": {
            "default_version": default,
            "policy": request.default_policy,
            "why": "pin: clients that name no version keep the fp32 source; on CUDA a QDQ INT8 graph runs "
            "dequantised, and one repository serves CPU and GPU deployments. Ask for this version "
            "by number, or rerun with --default auto to make it the default when its metric holds.",
        },
        "reproduce": (
            f"convserve optimize --repo {request.repo} --model {request.model} --version {built.source_version} {flag}"
        ),
    }


def check_serves(model_dir: Path, version: int) -> None:
    """Load the new version exactly as the server would (config, signature, one warm-up run)."""
    from service.runtime import ModelRuntime

    source = scan_model(model_dir)
    runtime = ModelRuntime(source.model_path(version), source.config, ("cpu",))
    check_signature(source, version, runtime.signature)
    runtime.warm_up(1)
