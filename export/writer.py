"""The one writer of model versions: every exporter (classifiers, the CAM model, the detector, the
segmenter, fine-tuned zoo models) ends in `write_model_version`.

An exporter builds a `VersionFiles` in memory: the ONNX bytes, the serving config, the parity
report it measured (torch vs ONNX Runtime) and its own model-card fields. The writer then, in
this order and before anything reaches the disk:

1. refuses the version when the parity report exceeds its tolerance (ParityError): no exporter
   can write a graph that computes something other than its torch model;
2. runs the ONNX checker (full check), the opset floor and the dynamic-batch check (ExportError);
3. stamps the ONNX metadata (`convserve.model_name`, `convserve.version`, the exporter's facts);

and then writes `<repo>/<name>/<version>/{model.onnx, model_card.json}` into a staging directory
renamed into place, so a failed export never leaves a partial version, followed by `config.yaml`
(keeping an operator's `default_version` pin and `runtime` section), `labels.txt` and `README.md` beside it, each
replaced atomically. The card gains `version`, `onnx` (file, sha256, bytes, library versions) and
`written_on` (the machine: figures in the card were measured there).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from export.exporter import OPSET, ExportError, verify_onnx, with_metadata
from export.parity import ParityReport
from service.config import ModelConfig, dump_model_config, load_model_config
from service.errors import ConfigError

LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class VersionFiles:
    """One model version, verified by its exporter and held in memory until written.

    `card` holds the exporter's model-card fields (training, evaluation, architecture; the writer adds
    `version`, `onnx` and `written_on`); `readme(version)` the model's README.md text, or None to leave
    an existing README alone (the detector's and segmenter's READMEs are written by their evaluation
    scripts). `metadata` holds extra ONNX metadata_props. `min_opset` is the opset the graph must at
    least use; `dynamic_batch` False accepts a fixed batch axis (a graph from elsewhere rewritten,
    never one exported here).
    """

    config: ModelConfig
    onnx_bytes: bytes
    parity: ParityReport
    card: dict
    labels: tuple[str, ...] | None = None
    readme: Callable[[int], str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    min_opset: int = OPSET
    dynamic_batch: bool = True


def next_version(model_dir: Path) -> int:
    """One more than the highest numeric version directory (1 for a new model)."""
    if not model_dir.is_dir():
        return 1
    return max((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), default=0) + 1


def write_model_version(
    files: VersionFiles, repo: Path, *, version: int | None = None, overwrite: bool = False
) -> Path:
    """Gate, verify and write `files` as `<repo>/<config.name>/<version>`; returns that directory.

    `version` None takes the next free number; an existing version is replaced only with `overwrite`.
    """
    if version is not None and version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    files.parity.check()
    verify_onnx(files.onnx_bytes, files.min_opset, files.dynamic_batch)
    model_dir = Path(repo) / files.config.name
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    version = version if version is not None else next_version(model_dir)
    onnx_bytes = with_metadata(
        files.onnx_bytes,
        {**files.metadata, "convserve.model_name": files.config.name, "convserve.version": str(version)},
    )
    card = {
        "name": files.config.name,
        "version": version,
        **files.card,
        "onnx": _onnx_facts(files.card, onnx_bytes),
        "written_on": _machine(),
    }
    card_text = json.dumps(card, indent=2, ensure_ascii=False) + "\n"
    try:
        version_dir = install_version_dir(
            model_dir, version, {"model.onnx": onnx_bytes, "model_card.json": card_text.encode()}, overwrite
        )
    except BaseException:
        if created and not any(model_dir.iterdir()):
            model_dir.rmdir()
        raise
    write_model_files(model_dir, files.config, files.labels)
    if files.readme is not None:
        write_atomically(model_dir / "README.md", files.readme(version).encode())
    return version_dir


def write_model_files(model_dir: Path, config: ModelConfig, labels: tuple[str, ...] | None) -> None:
    """config.yaml (keeping an operator's `default_version` pin and `runtime` section) and labels.txt,
    each replaced atomically."""
    config_path = model_dir / "config.yaml"
    config = _keep_operator_settings(config, config_path)
    staging = config_path.with_name(".config.yaml.tmp")
    dump_model_config(config, staging)
    os.replace(staging, config_path)
    if labels is not None:
        write_atomically(model_dir / LABELS_FILE, ("\n".join(labels) + "\n").encode())


def _onnx_facts(card: dict, onnx_bytes: bytes) -> dict:
    """The card's `onnx` section: the exporter's facts (opset, exporter) plus what identifies the file."""
    import onnx
    import onnxruntime
    import torch

    return {
        **card.get("onnx", {}),
        "file": "model.onnx",
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "bytes": len(onnx_bytes),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }


def _machine() -> dict:
    from export.throughput import machine_description

    described = machine_description()
    described.pop("loadavg", None)
    return described


def write_atomically(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


def install_version_dir(model_dir: Path, version: int, files: dict[str, bytes], overwrite: bool) -> Path:
    """Write `files` into a staging directory and rename it to `<model_dir>/<version>`."""
    final = model_dir / str(version)
    if final.exists() and not overwrite:
        raise ExportError(f"{final} already exists (choose another --version or pass --overwrite)")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=model_dir))
    try:
        staging.chmod(0o755)  # mkdtemp makes it owner-only; a server running as another user must read it
        for filename, data in files.items():
            (staging / filename).write_bytes(data)
        if final.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{version}.replaced-", dir=model_dir))
            os.replace(final, retired / "old")
            os.replace(staging, final)
            shutil.rmtree(retired)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return final


def _keep_operator_settings(config: ModelConfig, existing: Path) -> ModelConfig:
    """Carry over what an operator set in the config being replaced: the `default_version` pin (as
    long as that version still exists: exporting a new version must not silently change what is
    served) and the `runtime` section (threads, memory policy: choices about the host, not the graph,
    e.g. lenet5's one intra-op thread, docs/load-testing.md)."""
    try:
        previous = load_model_config(existing)
    except ConfigError:
        return config
    update = {}
    if previous.default_version is not None and (existing.parent / str(previous.default_version)).is_dir():
        update["default_version"] = previous.default_version
    if "runtime" in previous.model_fields_set:
        update["runtime"] = previous.runtime
    return config.model_copy(update=update) if update else config
