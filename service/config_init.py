"""`convserve config init MODEL.onnx`: a first config.yaml written from the graph itself.

Why: a user with an ONNX file from elsewhere should not have to transcribe tensor names, dtypes
and axes by hand. Everything the graph states (names, dtypes, fixed and free axes, a batch axis
fixed at 1) is copied; what it cannot state (the task, the image preprocessing, the detection
layout) is guessed and every guess is reported, so the user knows what to check. The result is
validated by the same loader and signature check the server runs, before it is reported as done.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from google.protobuf.message import DecodeError

from service.cli_help import DefaultsHelpFormatter
from service.config import ModelConfig, dump_model_config, load_model_config, parse_model_config
from service.dtypes import CONFIG_DTYPES, TYPES
from service.errors import ConfigError

TASKS = ("classification", "detection", "segmentation")
LABELS_FILE = "labels.txt"
FREE_SIZE_GUESS = (224, 224)  # a classifier with free height and width still needs a resize target
_ONNX_OF_NAME = {t.name: t.onnx for t in TYPES}


@dataclass
class Draft:
    """The config being built, with the guesses and checks to tell the user about."""

    data: dict
    guesses: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


def _dtype_name(value_info: onnx.ValueInfoProto, where: str) -> str:
    elem_type = value_info.type.tensor_type.elem_type
    if elem_type == onnx.TensorProto.STRING:
        return "bytes"
    name = onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    if name not in CONFIG_DTYPES:
        raise ConfigError(where, value_info.name, f"element type {name} cannot be served (supported: {CONFIG_DTYPES})")
    return name


def _shape(value_info: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    """Fixed sizes as ints, free axes as their symbol (or None), as ONNX Runtime reports them."""
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


def read_graph(source: Path | onnx.ModelProto) -> tuple[list[tuple[str, str, tuple]], list[tuple[str, str, tuple]]]:
    """(name, config dtype, shape) of each real input (initializers excluded) and output.

    `source` is an ONNX file or an already-loaded graph (an exporter's, before it is written).
    """
    if isinstance(source, onnx.ModelProto):
        model, where = source, "the exported graph"
    else:
        model, where = onnx.load(str(source), load_external_data=False), str(source)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [(v.name, _dtype_name(v, where), _shape(v)) for v in model.graph.input if v.name not in initializers]
    outputs = [(v.name, _dtype_name(v, where), _shape(v)) for v in model.graph.output]
    for name, _, shape in inputs + outputs:
        if not shape:
            raise ConfigError(where, name, "a scalar tensor has no batch axis; convserve serves batched tensors")
    return inputs, outputs


def _config_dims(shape: tuple) -> list[int]:
    return [-1] + [d if isinstance(d, int) and d > 0 else -1 for d in shape[1:]]


def guess_task(outputs: list[tuple[str, str, tuple]]) -> str:
    """Rank 4 [N, C, H, W] → segmentation, rank 3 [N, K, D] → detection, otherwise classification."""
    rank = len(outputs[0][2])
    return "segmentation" if rank == 4 else "detection" if rank == 3 else "classification"


def _detection_section(dims: list[int], draft: Draft) -> dict:
    """yolov8 heads are [N, 4 + C, K] (channels first, K large), yolov5 [N, K, 5 + C]."""
    layout = "yolov8" if dims[1] != -1 and (dims[2] == -1 or dims[1] < dims[2]) else "yolov5"
    draft.guesses.append(f"postprocessing.detection.layout: {layout} (from the output shape {dims})")
    draft.checks.append("postprocessing.detection: check the layout and the thresholds against the model's head")
    return {"layout": layout}


def _preprocessing(dims: list[int], task: str, draft: Draft) -> dict | None:
    """An image-like input [N, 1 or 3, H, W] gets an image pipeline; others take tensors only."""
    if len(dims) != 4 or dims[1] not in (1, 3):
        draft.checks.append("no preprocessing: the input is not [N, 1|3, H, W]; the model takes tensors only")
        return None
    section: dict = {"color_order": "gray" if dims[1] == 1 else "rgb"}
    if dims[2] > 0 and dims[3] > 0:
        section.update(resize="stretch", size=[dims[2], dims[3]])
    elif task == "classification":
        section.update(resize="stretch", size=list(FREE_SIZE_GUESS))
        draft.guesses.append(f"preprocessing.size: {list(FREE_SIZE_GUESS)} (the graph leaves height and width free)")
    else:
        section.update(resize="native", stride=32)
        draft.guesses.append("preprocessing: resize native, stride 32 (the graph leaves height and width free)")
    draft.guesses.append(f"preprocessing.color_order: {section['color_order']}")
    draft.checks.append(
        "preprocessing: scale 1/255, mean 0, std 1 were assumed; set the mean/std (and rgb or bgr) the model was "
        "trained with"
    )
    return section


def draft_config(model_path: Path | onnx.ModelProto, name: str, task: str | None, labels: list[str] | None) -> Draft:
    """The config for an ONNX file or graph as a mapping, with what was guessed and what to check."""
    inputs, outputs = read_graph(model_path)
    draft = Draft(data={})
    if task is None:
        task = guess_task(outputs)
        draft.guesses.append(f"task: {task} (from the first output's shape {list(outputs[0][2])})")
    data: dict = {"name": name, "task": task}
    data["inputs"] = [{"name": n, "dtype": t, "dims": _config_dims(s)} for n, t, s in inputs]
    data["outputs"] = [{"name": n, "dtype": t, "dims": _config_dims(s)} for n, t, s in outputs]
    preprocessing = _preprocessing(data["inputs"][0]["dims"], task, draft)
    if preprocessing is not None:
        data["preprocessing"] = preprocessing
    if labels is not None:
        data["labels"] = LABELS_FILE
    fixed_batch = [n for n, _, s in inputs if isinstance(s[0], int) and s[0] > 0]
    if any(s[0] not in (1, None) and isinstance(s[0], int) and s[0] > 0 for _, _, s in inputs):
        where = str(model_path) if isinstance(model_path, Path) else name
        raise ConfigError(where, "inputs", "a batch axis fixed above 1 cannot serve single images")
    if fixed_batch:
        data["batching"] = {"max_batch_size": 1}
        draft.guesses.append(f"batching.max_batch_size: 1 (the batch axis of {fixed_batch} is fixed)")
    post: dict = {}
    if task == "classification":
        classes = data["outputs"][0]["dims"][-1]
        post["top_k"] = min(5, classes) if classes > 0 else 5
        draft.checks.append("postprocessing.scores: logits assumed (softmax applied); say probabilities if not")
    elif task == "detection":
        post["detection"] = _detection_section(data["outputs"][0]["dims"], draft)
    if post:
        data["postprocessing"] = post
    if labels is None:
        draft.checks.append("labels: none given (--labels FILE); answers will carry class indices only")
    draft.data = data
    return draft


def check_written(out_dir: Path, model_path: Path) -> ModelConfig:
    """Load the written config as the server does and check it against the graph's signature."""
    from service.repository import ModelSource, check_signature, read_labels
    from service.runtime import GraphSignature

    config_path = out_dir / "config.yaml"
    config = load_model_config(config_path)
    labels = read_labels(out_dir, config, config_path)
    inputs, outputs = read_graph(model_path)
    signature = GraphSignature(
        inputs=tuple((n, _ONNX_OF_NAME[t], s) for n, t, s in inputs),
        outputs=tuple((n, _ONNX_OF_NAME[t], s) for n, t, s in outputs),
    )
    check_signature(ModelSource(config.name, out_dir, config, labels, (1,)), 1, signature)
    return config


def default_out_dir(model_path: Path) -> Path:
    """`<repo>/<name>/<version>/model.onnx` → `<repo>/<name>`; any other file → its own directory."""
    parent = model_path.resolve().parent
    return parent.parent if parent.name.isdigit() else parent


def init_config(model_path: Path, *, task=None, labels_path=None, out_dir=None, name=None) -> tuple[Path, Draft]:
    """Write `<out_dir>/config.yaml` (and labels.txt) for the graph; returns its path and the draft."""
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(model_path)
    labels = None
    if labels_path is not None:
        labels = [line.strip() for line in Path(labels_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    draft = draft_config(model_path, name or out_dir.resolve().name, task, labels)
    config = parse_model_config(draft.data, out_dir / "config.yaml")  # refused here before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    if labels_path is not None and Path(labels_path).resolve() != (out_dir / LABELS_FILE).resolve():
        shutil.copyfile(labels_path, out_dir / LABELS_FILE)
    dump_model_config(config, out_dir / "config.yaml")
    check_written(out_dir, model_path)
    return out_dir / "config.yaml", draft


def add_config_parser(subparsers) -> None:
    parser = subparsers.add_parser("config", help="write a model config.yaml from an ONNX graph (config init)")
    actions = parser.add_subparsers(dest="action", required=True)
    init = actions.add_parser(
        "init",
        help="write a validated config.yaml from MODEL.onnx's inputs and outputs",
        formatter_class=DefaultsHelpFormatter,
    )
    init.add_argument("model", type=Path, help="the ONNX file")
    init.add_argument("--task", choices=TASKS, help="default: guessed from the first output's shape")
    init.add_argument("--labels", type=Path, help="text file, one class label per line (copied as labels.txt)")
    init.add_argument(
        "--out", type=Path, help="directory for config.yaml (default: <name>/ when MODEL is <name>/<version>/x.onnx)"
    )
    init.add_argument("--name", help="model name (default: the --out directory's name)")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    try:
        path, draft = init_config(args.model, task=args.task, labels_path=args.labels, out_dir=args.out, name=args.name)
    except (ConfigError, OSError, DecodeError, UnicodeDecodeError) as exc:
        print(f"convserve config init: refused: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} (loads and matches the graph)")
    for line in draft.guesses:
        print(f"  guessed {line}")
    for line in draft.checks:
        print(f"  check   {line}")
    return 0
