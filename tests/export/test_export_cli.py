"""`convserve export`: a complete, loadable model version on success; nothing at all on refusal."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from export.cli import main
from export.exporter import example_input
from export.models import build_model, list_models
from export.parity import cpu_session
from service.config import dump_model_config, load_model_config


@pytest.fixture
def labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"digit {i}\n" for i in range(10)))
    return path


def _export(repo, *args) -> int:
    return main(["export", *args, "--repo", str(repo)])


def test_export_writes_config_labels_card_and_a_checked_graph(tmp_path, labels_file):
    repo = tmp_path / "repo"
    rc = _export(
        repo,
        "lenet5",
        "--name",
        "digits",
        "--num-classes",
        "10",
        "--labels",
        str(labels_file),
        "--input-size",
        "32",
        "32",
    )
    assert rc == 0
    model_dir = repo / "digits"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "README.md", "config.yaml", "labels.txt"]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx", "model_card.json"]
    assert (model_dir / "1").stat().st_mode & 0o055 == 0o055  # readable by a server running as another user
    assert (model_dir / "labels.txt").read_text().splitlines() == [f"digit {i}" for i in range(10)]

    config = load_model_config(model_dir / "config.yaml")
    assert (config.name, config.task, config.labels) == ("digits", "classification", "labels.txt")
    assert config.inputs[0].name == "input" and config.inputs[0].dims == (-1, 1, 32, 32)
    assert config.outputs[0].name == "logits" and config.outputs[0].dims == (-1, 10)
    pre = config.preprocessing
    assert (pre.color_order, pre.resize, pre.size, pre.padding) == ("gray", "stretch", (28, 28), 2)
    assert (config.postprocessing.scores, config.postprocessing.top_k) == ("logits", 5)

    onnx_bytes = (model_dir / "1" / "model.onnx").read_bytes()
    card = json.loads((model_dir / "1" / "model_card.json").read_text())
    assert card["architecture"] == "lenet5"
    assert card["parameters"]["trainable"] == 60_850
    assert card["macs"] == 328_096
    assert card["onnx"]["opset"] >= 17 and card["onnx"]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert card["weights"] == {"source": "random initialisation", "seed": 0}
    diffs = card["parity"]["max_abs_diff"]
    assert set(diffs) == {"1", "4"} and max(diffs.values()) <= 1e-4

    proto = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(proto, full_check=True)
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert float(metadata["convserve.parity_max_abs_diff_batch4"]) == diffs["4"]
    assert metadata["convserve.architecture"] == "lenet5"
    out = cpu_session(onnx_bytes).run(None, {"input": example_input((1, 32, 32), 2, seed=3).numpy()})[0]
    assert out.shape == (2, 10)
    assert "digits" in (model_dir / "README.md").read_text()


def test_versions_count_up_and_are_never_silently_replaced(tmp_path, capsys):
    repo = tmp_path / "repo"
    assert _export(repo, "simple_cnn") == 0
    assert _export(repo, "simple_cnn") == 0
    assert sorted(p.name for p in (repo / "simple_cnn").iterdir() if p.is_dir()) == ["1", "2"]
    before = (repo / "simple_cnn" / "1" / "model.onnx").read_bytes()
    assert _export(repo, "simple_cnn", "--version", "1") == 1
    assert "already exists" in capsys.readouterr().err
    assert _export(repo, "simple_cnn", "--version", "1", "--overwrite") == 0
    assert (repo / "simple_cnn" / "1" / "model.onnx").read_bytes() == before  # same seed, same bytes
    assert not [p for p in (repo / "simple_cnn").iterdir() if p.name.startswith(".")]  # no staging left


def test_a_new_version_keeps_the_operators_pinned_default_version(tmp_path):
    repo = tmp_path / "repo"
    assert _export(repo, "simple_cnn") == 0
    config_path = repo / "simple_cnn" / "config.yaml"
    pinned = load_model_config(config_path).model_copy(update={"default_version": 1})
    dump_model_config(pinned, config_path)
    assert _export(repo, "simple_cnn") == 0
    assert load_model_config(config_path).default_version == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["lenet5", "--tolerance", "0"], "refusing to write the model: ONNX Runtime differs from torch"),
        (["lenet5", "--input-size", "28", "28"], "only accepts 32×32 inputs"),
        (["simple_cnn", "--num-classes", "3", "--labels", "LABELS"], "10 labels given for 3 classes"),
        (["resnet18", "--input-size", "16", "16", "--checkpoint", "MISSING"], "cannot read checkpoint"),
    ],
)
def test_a_refused_export_exits_1_and_writes_nothing(tmp_path, labels_file, capsys, args, message):
    repo = tmp_path / "repo"
    args = [str(labels_file) if a == "LABELS" else str(tmp_path / "missing.pt") if a == "MISSING" else a for a in args]
    assert _export(repo, *args) == 1
    assert message in capsys.readouterr().err
    assert not repo.exists() or list(repo.iterdir()) == []


def test_an_unknown_architecture_is_a_usage_error(tmp_path, capsys):
    assert _export(tmp_path, "lenet6") == 2
    assert "unknown architecture 'lenet6'" in capsys.readouterr().err


def test_a_checkpoint_is_exported_with_its_own_weights(tmp_path):
    torch.manual_seed(5)
    source = build_model("simple_cnn").eval()
    checkpoint = tmp_path / "simple.pt"
    torch.save({"state_dict": source.state_dict()}, checkpoint)
    repo = tmp_path / "repo"
    assert _export(repo, "simple_cnn", "--checkpoint", str(checkpoint)) == 0
    card = json.loads((repo / "simple_cnn" / "1" / "model_card.json").read_text())
    assert card["weights"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    x = example_input((1, 28, 28), 3, seed=11)
    with torch.no_grad():
        expected = source(x).numpy()
    actual = cpu_session((repo / "simple_cnn" / "1" / "model.onnx").read_bytes()).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_list_shows_every_architecture(capsys):
    assert main(["export", "--list"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "20,666" in out  # simple_cnn's parameter count
