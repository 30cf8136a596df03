"""The common export writer: the detector and the segmenter end in it like the zoo classifiers do.

Each exporter's version is written into a temporary repository and loaded as the server loads it;
a parity report over its tolerance is refused before anything reaches the disk.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest
import torch

from export.models import build_model
from export.models.fcn import SCENE_PREPROCESSING
from export.models.yolo_grid import build_yolo_grid
from export.parity import ParityError, ParityReport
from export.train.detector import detector_files
from export.train.segmenter import LABELS, write_segmenter
from export.writer import write_model_version
from service.repository import check_signature, scan_model
from service.runtime import ModelRuntime


def _serves(model_dir, version: int = 1) -> dict:
    """Load the version exactly as the server would; returns its card."""
    source = scan_model(model_dir)
    runtime = ModelRuntime(source.model_path(version), source.config, ("cpu",))
    check_signature(source, version, runtime.signature)
    assert runtime.warm_up(1) > 0
    return json.loads((model_dir / str(version) / "model_card.json").read_text())


def test_the_detector_is_written_through_the_staged_gated_writer(tmp_path):
    torch.manual_seed(0)
    files = detector_files(build_yolo_grid(), {"steps": 0})
    assert files.parity.max_abs_diff[3] <= files.parity.bound
    version_dir = write_model_version(files, tmp_path, version=1)
    card = _serves(version_dir.parent)
    assert (card["version"], card["training"], card["classes"][0]) == (1, {"steps": 0}, "face")
    assert card["written_on"]["cpu"] and "int8_extensions" in card["written_on"]
    graph = onnx.load(str(version_dir / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["images"] and [o.name for o in graph.graph.output] == ["grid"]
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert (metadata["convserve.model_name"], metadata["convserve.version"]) == ("yolo_grid", "1")
    assert sorted(p.name for p in tmp_path.joinpath("yolo_grid").iterdir()) == ["1", "config.yaml", "labels.txt"]
    with pytest.raises(Exception, match="already exists"):
        write_model_version(files, tmp_path, version=1)


def test_a_version_over_its_parity_tolerance_is_refused_before_anything_is_written(tmp_path):
    torch.manual_seed(0)
    files = detector_files(build_yolo_grid(), {})
    diverging = dataclasses.replace(files, parity=ParityReport({3: 0.5}, 1e-4, 0))
    with pytest.raises(ParityError, match=r"refusing to write the model.*batch 3: 0\.5"):
        write_model_version(diverging, tmp_path)
    with pytest.raises(ParityError, match="none run"):
        write_model_version(dataclasses.replace(files, parity=ParityReport({}, 1e-4, 0)), tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_segmenter_is_written_through_the_common_writer(tmp_path):
    torch.manual_seed(0)
    model = build_model("fcn32s", num_classes=len(LABELS), widths=(4, 8, 8, 8, 8), convs=(1, 1, 1, 1, 1)).eval()
    model_dir = write_segmenter(
        model,
        name="tiny_fcn",
        architecture="fcn32s",
        labels=LABELS,
        preprocessing=SCENE_PREPROCESSING,
        repo=tmp_path,
        card={"weights": {"source": "test"}},
    )
    card = _serves(model_dir)
    assert set(card["parity_max_abs_diff"]) == {"96x96", "64x160"}
    assert card["test_time"] == {"flip_average": False} and card["onnx"]["opset"] == 17
    assert (model_dir / "labels.txt").read_text().split() == list(LABELS)
    assert scan_model(model_dir).config.inputs[0].dims == (-1, 3, -1, -1)


def test_convserve_export_gives_detectors_and_segmenters_their_bundled_contract(tmp_path, capsys):
    """`convserve export yolo_grid` / `fcn8s` write what the training scripts write: same tensor names and
    dims as the bundled model (the segmenter with free height and width), through the same writer."""
    from export.cli import main as cli_main
    from service.config import load_model_config

    bundled = Path(__file__).resolve().parents[2] / "model_repo"
    for arch in ("yolo_grid", "fcn8s"):
        assert cli_main(["export", arch, "--repo", str(tmp_path)]) == 0
        written = scan_model(tmp_path / arch).config
        reference = load_model_config(bundled / arch / "config.yaml")
        assert (written.inputs, written.outputs, written.task) == (reference.inputs, reference.outputs, reference.task)
        assert written.preprocessing == reference.preprocessing
        _serves(tmp_path / arch)
    assert "wrote" in capsys.readouterr().out
    assert cli_main(["export", "fcn8s", "--repo", str(tmp_path), "--input-size", "64", "64", "--overwrite"]) == 1


def test_convserve_export_cam_gives_the_bundled_cam_contract(tmp_path):
    """`convserve export gap_cnn --cam` writes the logits + features outputs and CAM config that the
    bundled gap_cnn (export.train.gap_cnn, through export.cam_export) serves."""
    from export.cli import main as cli_main
    from service.config import load_model_config

    reference = load_model_config(Path(__file__).resolve().parents[2] / "model_repo" / "gap_cnn" / "config.yaml")
    assert cli_main(["export", "gap_cnn", "--cam", "--repo", str(tmp_path)]) == 0
    written = scan_model(tmp_path / "gap_cnn").config
    assert [o.name for o in written.outputs] == [o.name for o in reference.outputs] == ["logits", "features"]
    assert written.outputs[1].dims == reference.outputs[1].dims
    cam, bundled_cam = written.postprocessing.cam, reference.postprocessing.cam
    assert (cam.method, cam.features_output) == (bundled_cam.method, bundled_cam.features_output) == ("cam", "features")
    graph = onnx.load(str(tmp_path / "gap_cnn" / "1" / "model.onnx")).graph
    assert cam.weights_initializer in {i.name for i in graph.initializer}
    _serves(tmp_path / "gap_cnn")


def test_rewriting_a_model_keeps_the_operators_pin_and_runtime_section(tmp_path):
    """A re-export replaces the exporter's part of config.yaml, not what an operator chose for the host."""
    from service.config import dump_model_config, load_model_config

    torch.manual_seed(0)
    files = detector_files(build_yolo_grid(), {})
    write_model_version(files, tmp_path, version=1)
    config_path = tmp_path / "yolo_grid" / "config.yaml"
    chosen = load_model_config(config_path)
    runtime = chosen.runtime.model_copy(update={"intra_op_threads": 1})
    dump_model_config(chosen.model_copy(update={"default_version": 1, "runtime": runtime}), config_path)
    write_model_version(files, tmp_path, version=2)
    rewritten = load_model_config(config_path)
    assert rewritten.default_version == 1
    assert rewritten.runtime.intra_op_threads == 1
