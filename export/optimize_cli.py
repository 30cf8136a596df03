"""`convserve optimize`: write an INT8 (or FP16, or pre-optimised) copy of a model as a new version.

    convserve optimize --repo model_repo --model yolo_grid [--version 1] --quantize int8
    convserve optimize --repo model_repo --model lenet5 --precision fp16
    convserve optimize --repo model_repo --model lenet5 --optimized-graph
    convserve optimize --repo model_repo --model lenet5 --expose-features   # writes model lenet5_cam

The new version (next integer) gets a model card with the calibration set, the held-out metric of
the source (fp32) and of the new file, measured here with the model's own evaluator, their
throughput measured side by side (interleaved runs, ratio of medians, explicit thread count) and
their session start-up times. The model's config.yaml is shared by all versions; inputs and
outputs keep float32 at the boundary, so it stays valid unchanged, except for `default_version`:

- `--default pin` (the default): `default_version` is set to the source version, so clients that
  do not name a version keep getting the fp32 model. Why: one model repository serves CPU and GPU
  deployments, and on CUDA a QDQ INT8 graph runs dequantised (slower than fp32/fp16).
- `--default auto`: the new version becomes the default only when its metric drop is within the
  model's tolerance and it is faster; otherwise the source stays pinned.

Exit status: 0 written, 1 refused (e.g. a variant of a variant), 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from export.exporter import ExportError
from export.expose_features import AUTO, ExposeRequest, expose_features
from export.optimize_version import OptimizeRequest, build_variant, install_version, measure_variant
from service.cli_help import DefaultsHelpFormatter
from service.errors import ConfigError

DEFAULT_BATCH_SIZES = (1, 8, 32)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convserve optimize",
        description=__doc__.splitlines()[0],
        formatter_class=DefaultsHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--repo", type=Path, default=Path("model_repo"), help="model repository (default model_repo)")
    parser.add_argument("--model", required=True, help="model name (a directory of the repository)")
    parser.add_argument("--version", type=int, help="source version (default: the model's default version)")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--quantize", choices=["int8"], help="static INT8 quantisation (QDQ; weight scales: see --weights)"
    )
    kind.add_argument("--precision", choices=["fp16"], help="half precision inside, float32 inputs/outputs")
    kind.add_argument(
        "--expose-features",
        nargs="?",
        const=AUTO,
        metavar="TENSOR",
        help="write a copy with the last convolutional feature map as output `features` and "
        "postprocessing.cam set, as a new model (--name), so Explain works on it; the map is found "
        "before global pooling where there is one, else after the last convolution (or name TENSOR)",
    )
    kind.add_argument(
        "--optimized-graph",
        action="store_true",
        help="save ONNX Runtime's optimised graph as the new version (see --graph-level)",
    )
    parser.add_argument(
        "--graph-level",
        choices=["extended", "all"],
        default="extended",
        help="with --optimized-graph: 'extended' (portable) or 'all' (adds layouts for this CPU type only; "
        "load it with runtime.graph_optimization_level: disable)",
    )
    parser.add_argument(
        "--weights",
        choices=["per-channel", "per-tensor"],
        default="per-channel",
        help="int8 weight scales (default per-channel; per-tensor saturates less on AVX2 CPUs without VNNI)",
    )
    parser.add_argument(
        "--float-first-conv",
        action="store_true",
        help="int8: keep the first convolution (of every pass over the input) in float32 "
        "(it sees the raw pixels through a few filters "
        "that one int8 scale fits badly; it costs little time)",
    )
    parser.add_argument("--name", help="with --expose-features: the new model's name (default: <model>_cam)")
    parser.add_argument("--max-maps", type=int, help="with --expose-features, score_cam: maps per image (default: 32)")
    parser.add_argument("--overwrite", action="store_true", help="with --expose-features: replace that version")
    parser.add_argument("--calibration-size", type=int, default=256, help="calibration samples (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for the timings (default 1)")
    parser.add_argument(
        "--batch-sizes",
        default=",".join(map(str, DEFAULT_BATCH_SIZES)),
        help="batch sizes timed, capped at the model's max_batch_size (default 1,8,32)",
    )
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds per batch size (default 15)")
    parser.add_argument(
        "--min-seconds", type=float, default=3.0, help="least timing seconds per batch size (default 3)"
    )
    parser.add_argument(
        "--default",
        choices=["pin", "auto"],
        default="pin",
        dest="default_policy",
        help="which version clients get by default afterwards (see below; default pin)",
    )
    parser.add_argument(
        "--skip-full-evaluation",
        action="store_true",
        help="evaluate on the fast test subset only (the full held-out split is left out)",
    )
    return parser


def _request(args: argparse.Namespace) -> OptimizeRequest:
    variant = args.quantize or args.precision or "graph"
    try:
        batches = tuple(sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()}))
    except ValueError:
        raise SystemExit(
            f"convserve optimize: --batch-sizes must be integers separated by commas, got {args.batch_sizes!r}"
        ) from None
    if not batches or min(batches) < 1 or args.calibration_size < 1 or args.threads < 1 or args.rounds < 1:
        raise SystemExit("convserve optimize: batch sizes, --calibration-size, --threads and --rounds must be positive")
    return OptimizeRequest(
        repo=args.repo,
        model=args.model,
        source_version=args.version,
        variant=variant,
        calibration_size=args.calibration_size,
        threads=args.threads,
        batch_sizes=batches,
        rounds=args.rounds,
        min_seconds=args.min_seconds,
        default_policy=args.default_policy,
        full_evaluation=not args.skip_full_evaluation,
        graph_level=args.graph_level,
        per_channel=args.weights == "per-channel",
        float_first_conv=args.float_first_conv,
    )


def _expose(args: argparse.Namespace) -> int:
    """--expose-features: a new model with the feature output (export/expose_features.py)."""
    if args.max_maps is not None and args.max_maps < 1:
        print("convserve optimize: --max-maps must be positive", file=sys.stderr)
        return 2
    request = ExposeRequest(
        repo=args.repo,
        model=args.model,
        source_version=args.version,
        tensor=args.expose_features,
        name=args.name,
        max_maps=args.max_maps,
        overwrite=args.overwrite,
    )
    try:
        version_dir, choice = expose_features(request)
    except (ConfigError, ExportError, FileNotFoundError, ValueError) as exc:
        print(f"convserve optimize: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    summary = {
        "version_dir": str(version_dir),
        "method": choice.method,
        "features": choice.tensor,
        "dims": list(choice.dims),
        "why": choice.reason,
    }
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.expose_features is not None:
        return _expose(args)
    try:
        request = _request(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="convserve-optimize-") as scratch:
            built = build_variant(request, Path(scratch))
            measured = measure_variant(request, built)
            version_dir = install_version(request, built, measured)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"convserve optimize: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    card = json.loads((version_dir / "model_card.json").read_text())
    print(
        json.dumps(
            {
                "version_dir": str(version_dir),
                "evaluation": card["evaluation"],
                "throughput_speedup": card["throughput"]["speedup_by_batch"],
                "default_version": card["serving"]["default_version"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
