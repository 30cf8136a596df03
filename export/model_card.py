"""Model cards: what a model version is, how it was made and how well it does.

`model_card.json` (machine-readable, one per version) and a short `README.md` per model for
people. The ONNX file carries the key facts too (metadata_props), so a copied model.onnx still
says where it came from and how closely it matched torch.
"""

from __future__ import annotations

from export.prepared_version import PreparedVersion

EXPORTER = "torch.onnx.export (TorchScript-based, dynamo=False)"


def onnx_metadata(prepared: PreparedVersion) -> dict[str, str]:
    """Key facts stored in the ONNX file's metadata_props (string values; the writer adds name and version)."""
    parity = prepared.parity
    props = {
        "convserve.architecture": prepared.spec.name,
        "convserve.exporter": EXPORTER,
        "convserve.parity_tolerance": repr(parity.tolerance),
        "convserve.parity_seed": str(parity.seed),
    }
    for batch, diff in parity.max_abs_diff.items():
        props[f"convserve.parity_max_abs_diff_batch{batch}"] = repr(diff)
    return props


def model_card(prepared: PreparedVersion, training: dict | None) -> dict:
    """The version's model_card.json fields (the writer adds the version, the file's sha256, size and
    library versions, and the machine)."""
    graph, config = prepared.graph, prepared.config
    return {
        "name": config.name,
        "architecture": prepared.spec.name,
        "summary": prepared.spec.summary,
        "task": config.task,
        "input": {"name": graph.input_name, "shape": [-1, *graph.input_shape]},
        "outputs": [{"name": n, "shape": [-1, *s]} for n, s in zip(graph.output_names, graph.output_shapes)],
        "preprocessing": config.preprocessing.model_dump(mode="json") if config.preprocessing else None,
        "labels": list(prepared.labels) if prepared.labels is not None else None,
        "parameters": {
            "trainable": prepared.parameters.trainable,
            "stored": prepared.parameters.stored,
            "buffers": prepared.parameters.buffers,
        },
        "macs": prepared.macs,
        "onnx": {"opset": graph.opset, "exporter": EXPORTER, "adaptive_pools_as_matmul": list(graph.matmul_pools)},
        "parity": prepared.parity.as_dict(),
        "weights": prepared.weights,
        "training": training,
    }


def _training_lines(training: dict | None) -> list[str]:
    if not training:
        return ["Weights: not trained by convserve (see model_card.json → weights)."]
    metrics = training.get("metrics", {})
    lines = [f"Trained on {training.get('data', '?')}; split: {training.get('split', {}).get('description', '?')}."]
    for key, label in (("heldout_accuracy", "held-out accuracy"), ("sklearn_digits_accuracy", "sklearn digits")):
        if key in metrics:
            lines.append(f"- {label}: {metrics[key]:.4f}")
    if training.get("reproduce"):
        lines.append(f"\nReproduce: `{training['reproduce']}`")
    return lines


def model_readme(prepared: PreparedVersion, version: int, training: dict | None) -> str:
    """A short human summary for model_repo/<name>/README.md (the newest written version)."""
    graph, config, pre = prepared.graph, prepared.config, prepared.config.preprocessing
    shape = "×".join(str(d) for d in graph.input_shape)
    lines = [
        f"# {config.name}",
        "",
        prepared.spec.summary,
        "",
        f"- architecture: `{prepared.spec.name}`; version {version} (`{version}/model.onnx`, opset {graph.opset})",
        f"- input `{graph.input_name}`: N×{shape} float32"
        + (f" ({pre.color_order}, resize {pre.resize} to {pre.size[0]}×{pre.size[1]}" if pre and pre.size else "")
        + (f", padding {pre.padding}" if pre and pre.padding else "")
        + (")" if pre and pre.size else ""),
        f"- outputs: {', '.join(f'`{n}`' for n in graph.output_names)} ({config.postprocessing.scores})",
        f"- parameters: {prepared.parameters.trainable:,} trainable; {prepared.macs:,} multiply-adds per image",
        "- parity with torch (max abs diff): "
        + ", ".join(f"batch {b}: {d:.2e}" for b, d in prepared.parity.max_abs_diff.items()),
        "",
        *_training_lines(training),
        "",
        f"Details: `{version}/model_card.json`.",
        "",
    ]
    return "\n".join(lines)
