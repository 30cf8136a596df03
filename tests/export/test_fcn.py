"""The FCN family: shapes at free input sizes, bilinear deconvolution init, ONNX export with free
height/width and torch-vs-ONNX Runtime parity, torchvision's fcn_resnet50 through the same path."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch.nn import functional as F

from export.models import build_model, get_model_spec
from export.models.fcn import MirrorAveraged, bilinear_kernel, export_segmenter_onnx, segmenter_parity, upsampler
from export.parity import ParityError, cpu_session
from service.config import load_model_config

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED = REPO_ROOT / "model_repo" / "fcn8s"


def seeded(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    with torch.no_grad():  # the skip scores start at zero; make them matter for the test
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("name", ["fcn8s", "fcn16s", "fcn32s"])
@pytest.mark.parametrize("hw", [(32, 32), (64, 160)])
def test_logits_have_the_input_size(name, hw):
    with torch.no_grad():
        out = seeded(name, num_classes=4)(torch.randn(2, 3, *hw))
    assert out.shape == (2, 4, *hw)


def test_variants_differ_only_in_skips():
    names = {n: {k for k in build_model(n).state_dict()} for n in ("fcn8s", "fcn16s", "fcn32s")}
    assert {k.split(".")[0] for k in names["fcn8s"] - names["fcn32s"]} == {
        "score_pool4",
        "score_pool3",
        "upscore2",
        "upscore_pool4",
    }
    assert {k.split(".")[0] for k in names["fcn16s"] - names["fcn32s"]} == {"score_pool4", "upscore2"}
    assert get_model_spec("fcn8s").task == "segmentation"


@pytest.mark.parametrize("factor", [2, 8])
def test_transposed_conv_starts_as_bilinear_upsampling(factor):
    """Away from the border, the initial deconvolution equals bilinear interpolation (align_corners=False)."""
    x = torch.randn(1, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        up = upsampler(3, factor)(x)
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert up.shape == reference.shape
    inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
    torch.testing.assert_close(up[inner], reference[inner], atol=1e-5, rtol=0)
    assert bilinear_kernel(2, 4)[0, 1].abs().sum() == 0  # channels never mix


def test_fcn8s_onnx_parity_at_two_sizes_and_free_axes():
    model = seeded("fcn8s")
    onnx_bytes = export_segmenter_onnx(model)
    graph = onnx.load_from_string(onnx_bytes).graph
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims[2:]] == ["height", "width"] and dims[0].dim_param == "batch"
    report = segmenter_parity(model, onnx_bytes, sizes=((96, 96), (64, 160)))
    assert set(report) == {"96x96", "64x160"} and max(report.values()) < 1e-4
    different = seeded("fcn16s")  # a graph that is not this model must fail the same check
    with pytest.raises(ParityError):
        segmenter_parity(different, onnx_bytes, sizes=((32, 32),))


def test_mirror_averaged_graph_is_the_mean_of_both_views_and_mirror_equivariant():
    """The exported scene segmenters average the logits of the image and of its mirror image: the
    ONNX graph matches torch at two sizes, its answer for a mirrored image is its answer mirrored
    (the plain network's is not), and the bundled model card says the graph does this."""
    network = seeded("fcn8s")
    averaged = MirrorAveraged(network).eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(averaged(x), (network(x) + network(x.flip(3)).flip(3)) / 2)
        torch.testing.assert_close(averaged(x.flip(3)), averaged(x).flip(3), atol=1e-5, rtol=0)
        assert (network(x.flip(3)) - network(x).flip(3)).abs().max() > 1e-3
    onnx_bytes = export_segmenter_onnx(averaged)
    assert max(segmenter_parity(averaged, onnx_bytes).values()) < 1e-4
    card = json.loads((BUNDLED / "1" / "model_card.json").read_text())
    assert card["test_time"] == {"flip_average": True}


@pytest.mark.slow
def test_fcn_resnet50_exports_out_only_and_loads_torchvision_checkpoints(tmp_path):
    import torchvision

    from export.checkpoints import load_checkpoint

    torch.manual_seed(0)
    original = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=True
    ).eval()
    torch.save(original.state_dict(), tmp_path / "fcn.pt")
    spec = get_model_spec("fcn_resnet50")
    model = spec.build(num_classes=3)
    load_checkpoint(model, tmp_path / "fcn.pt", spec.training_only_prefixes)  # aux_classifier keys are dropped
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x)["out"])
    onnx_bytes = export_segmenter_onnx(model, trace_hw=(64, 64))
    assert [o.name for o in onnx.load_from_string(onnx_bytes).graph.output] == ["logits"]
    report = segmenter_parity(model, onnx_bytes, sizes=((64, 64), (48, 80)))
    assert len(report) == 2


def test_bundled_fcn8s_runs_at_any_size():
    config = load_model_config(BUNDLED / "config.yaml")
    assert config.task == "segmentation" and config.inputs[0].dims == (-1, 3, -1, -1)
    labels = (BUNDLED / "labels.txt").read_text().split()
    assert labels[0] == "background" and len(labels) == config.outputs[0].dims[1]
    session = cpu_session((BUNDLED / "1" / "model.onnx").read_bytes())
    for hw in ((32, 64), (96, 128)):
        out = session.run(None, {"input": np.zeros((2, 3, *hw), np.float32)})[0]
        assert out.shape == (2, len(labels), *hw)


def test_iou_matches_sklearn_jaccard():
    from sklearn.metrics import jaccard_score

    from export.evaluate.segmentation_metrics import confusion_matrix, iou_per_class, mean_iou

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(30, 40))
    predicted = np.where(rng.random((30, 40)) < 0.7, truth, rng.integers(0, 4, size=(30, 40)))
    confusion = confusion_matrix(truth, predicted, 5)  # class 4 never occurs: skipped by the mean
    expected = jaccard_score(truth.ravel(), predicted.ravel(), labels=[0, 1, 2, 3], average=None)
    np.testing.assert_allclose(iou_per_class(confusion)[:4], expected)
    assert np.isnan(iou_per_class(confusion)[4])
    assert mean_iou(confusion) == pytest.approx(expected.mean())
    ignored = truth.copy()
    ignored[:5] = 255
    assert confusion_matrix(ignored, predicted, 5, ignore=255).sum() == 25 * 40


def test_training_scenes_are_prepared_as_served():
    """Training inputs are what the server feeds the network: scaled by native_scale, padded to the
    stride; their labels are the scene's label map pixel-replicated, padding ignored."""
    from export.data.scenes import make_scene
    from export.models.fcn import SCENE_PREPROCESSING
    from export.train.segmenter import IGNORE, INPUT_SIZE, SEGMENTER_SPEC, padded_scene
    from service.preprocess import preprocess_image

    scale = SCENE_PREPROCESSING.native_scale
    assert scale > 1 and INPUT_SIZE % SCENE_PREPROCESSING.stride == 0 and INPUT_SIZE >= SEGMENTER_SPEC.height[1] * scale
    scene = make_scene(np.random.default_rng(3), SEGMENTER_SPEC, "train")
    image, labels = padded_scene(scene)
    height, width = scene.label_map.shape
    rows, cols = round(height * scale), round(width * scale)
    served, info = preprocess_image(scene.image, SCENE_PREPROCESSING, source_order="rgb")
    assert image.shape[:2] == labels.shape == served.shape[1:] and info.content_window() == (0, 0, rows, cols)
    expected = cv2.resize(scene.label_map, (cols, rows), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(labels[:rows, :cols], expected)
    assert set(np.unique(expected)) == set(np.unique(scene.label_map))  # every class survives the scaling
    assert (labels[rows:] == IGNORE).all() and (labels[:, cols:] == IGNORE).all()


def test_training_crops_start_in_the_content_and_keep_padding_bottom_right():
    from export.train.segmenter import IGNORE, make_batch

    images = np.zeros((8, 64, 64, 3), np.uint8)
    labels = np.full((8, 64, 64), IGNORE, np.uint8)
    labels[:, :24, :50] = np.arange(50, dtype=np.uint8) % 6  # content 24 x 50: shorter than a crop can start below
    images[:, :24, :50] = 200
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = make_batch(images, labels, rng, crop=32)
        assert x.shape == (8, 3, 32, 32) and y.shape == (8, 32, 32)
        content = y != IGNORE
        assert content[:, 0, 0].all()  # the crop's origin is content
        # padding, where a crop reaches it, lies below or right of the content, never above or left
        rows, cols = content.any(2), content.any(1)
        assert all(np.flatnonzero(~r).min(initial=32) > np.flatnonzero(r).max() for r in rows)
        assert all(np.flatnonzero(~c).min(initial=32) > np.flatnonzero(c).max() for c in cols)
    full_x, full_y = make_batch(images, labels, None, crop=32)
    assert full_x.shape == (8, 3, 64, 64)  # no rng (evaluation): whole inputs, no crop, no flip
    np.testing.assert_array_equal(full_y.numpy(), labels)


def test_augmented_windows_are_rescaled_crops_with_padding_bottom_right():
    from export.train.segmenter import IGNORE, Augment, make_batch

    images = np.zeros((8, 96, 96, 3), np.uint8)
    labels = np.full((8, 96, 96), IGNORE, np.uint8)
    labels[:, :40, :70] = (np.arange(70, dtype=np.uint8) // 12)[None, :]  # content 40 x 70, classes 0-5
    images[:, :40, :70] = 200
    rng, augment = np.random.default_rng(1), Augment(scale=1.5, colour=0.0)
    windows = {augment.window(np.random.default_rng(seed), 32) for seed in range(40)}
    assert min(windows) >= 21 and max(windows) <= 48 and len(windows) > 5  # 32 / 1.5 .. 32 * 1.5
    for _ in range(20):
        x, y = make_batch(images, labels, rng, crop=32, augment=augment)
        assert x.shape == (8, 3, 32, 32) and y.shape == (8, 32, 32)
        assert set(np.unique(y.numpy())) <= {*range(6), IGNORE}  # nearest-neighbour labels: no blends
        content = y != IGNORE
        assert content[:, 0, 0].all()
        rows, cols = content.any(2), content.any(1)
        assert all(np.flatnonzero(~r).min(initial=32) > np.flatnonzero(r).max() for r in rows)
        assert all(np.flatnonzero(~c).min(initial=32) > np.flatnonzero(c).max() for c in cols)


def test_colour_jitter_changes_the_content_and_never_the_padding():
    from export.train.segmenter import Augment

    image = np.full((16, 16, 3), 120, np.uint8)
    image[:, :8] = 60
    content = np.zeros((16, 16), bool)
    content[:10, :12] = True
    jittered = [
        Augment(scale=1.0, colour=0.4).colours(np.random.default_rng(seed), image, content) for seed in range(8)
    ]
    assert all((j[~content] == image[~content]).all() for j in jittered)
    assert sum(not np.array_equal(j[content], image[content]) for j in jittered) >= 7
    assert Augment(scale=1.0, colour=0.0).colours(np.random.default_rng(0), image, content) is image
    with pytest.raises(ValueError, match="scale jitter must be >= 1"):
        Augment(scale=0.5, colour=0.1)
    with pytest.raises(ValueError, match="colour jitter in"):
        Augment(scale=1.0, colour=1.0)


def test_a_runs_reproduce_line_names_only_the_options_that_differ_from_the_defaults():
    from export.train.segmenter import _parser, recipe_flags

    parser = _parser()
    assert recipe_flags(parser.parse_args(["--variant", "fcn16s", "--threads", "2"])) == ""
    assert (
        recipe_flags(parser.parse_args(["--scale-jitter", "1.25", "--ema", "0.999"]))
        == " --scale-jitter 1.25 --ema 0.999"
    )
    switch = {
        dest: f" --{dest.replace('_', '-')}" if not parser.get_default(dest) else f" --no-{dest.replace('_', '-')}"
        for dest in ("patch_jitter", "hold_out_identities")
    }  # whichever form differs from the default
    named = switch["patch_jitter"] + switch["hold_out_identities"] + " --widths 4,8,16,16,24 --convs 1,1,1,2,1"
    args = parser.parse_args(named.split())
    assert recipe_flags(args) == named
    assert recipe_flags(parser.parse_args(recipe_flags(args).split())) == named  # the line reproduces itself
    assert recipe_flags(parser.parse_args(["--widths", ",".join(map(str, parser.get_default("widths")))])) == ""
    for flag in switch.values():  # switches name themselves either way from their default
        assert recipe_flags(parser.parse_args([flag.strip()])) == flag


def test_scale_sweep_scores_the_bundled_model_on_validation_scenes_only():
    from export.data.scenes import make_scenes
    from export.evaluate.segmenter import (
        HELDOUT_SEED,
        VALIDATION_SEED,
        bundled_validation_split,
        predict_onnx,
        scale_sweep,
        score,
    )
    from export.models.fcn import SCENE_PREPROCESSING
    from export.train.segmenter import LABELS, SEGMENTER_SPEC

    assert VALIDATION_SEED != HELDOUT_SEED
    bundled = SCENE_PREPROCESSING.native_scale
    swept = scale_sweep([bundled, 1.0], count=4)
    assert list(swept) == [f"{bundled:g}", "1"] and all(0.0 <= v <= 1.0 for v in swept.values())
    assert bundled_validation_split() in ("train", "validation")  # never the held-out split
    scenes = make_scenes(VALIDATION_SEED, 4, SEGMENTER_SPEC, bundled_validation_split())
    served = score(predict_onnx(BUNDLED / "1" / "model.onnx", SCENE_PREPROCESSING, scenes), scenes, LABELS)["mean_iou"]
    assert swept[f"{bundled:g}"] == served
    assert swept["1"] != served  # the scale reaches the preprocessing


def test_a_short_training_run_with_every_option_saves_what_it_validated(tmp_path, monkeypatch):
    """A few steps of the real training loop (every recipe option: scale and colour jitter, weight
    averaging, jittered face crops, identity-held-out validation, another backbone): the checkpoint
    is the averaged model that was validated, not the last step's weights (the same run without
    averaging saves different ones), it loads back in its own backbone, and training.json records
    the recipe."""
    from export.train.segmenter import _parser, load_variant, train

    monkeypatch.chdir(tmp_path)  # scene caches go to runs/segmenter/ under the working directory
    saved = {}
    recipe = (
        "--scale-jitter 1.25 --colour-jitter 0.3 --patch-jitter --hold-out-identities "
        "--widths 4,8,16,16,24 --convs 1,1,1,2,1"
    )
    defaults = _parser()
    for ema in (0.9, 0.0):
        run_dir = tmp_path / "runs" / "segmenter" / f"fcn32s_ema{ema:g}"
        run_dir.mkdir(parents=True)
        command = (
            f"--variant fcn32s --pool 24 --val 4 --batch 4 --crop 64 --steps 12 --minutes 5 {recipe} --ema {ema:g}"
        )
        kept, _ = train(_parser().parse_args(command.split()), run_dir)
        saved[ema] = load_variant("fcn32s", run_dir).state_dict()
        for name, value in kept.state_dict().items():
            torch.testing.assert_close(saved[ema][name], value)
        assert saved[ema]["to_pool3.0.0.weight"].shape[0] == 4
        training = json.loads((run_dir / "training.json").read_text())
        assert training["steps"] == 12 and training["epochs"] == 2
        assert (training["scale_jitter"], training["colour_jitter"], training["ema_decay"]) == (1.25, 0.3, ema)
        assert training["validation_split"] == "validation" and training["scene_spec"]["patch_jitter"] is True
        assert training["data"].startswith("export/data/scenes.py split 'fit' (faces 0-71, distractors 100-171")
        jitter, rest = recipe.split(" --patch-jitter --hold-out-identities")
        switches = "".join(
            f" --{name}"
            for name in ("patch-jitter", "hold-out-identities")
            if not defaults.get_default(name.replace("-", "_"))
        )  # named only when not the default
        flags = jitter + (f" --ema {ema:g}" if ema else "") + switches + rest
        assert training["reproduce"] == f"python -m export.train.segmenter --variant fcn32s {flags}"
    assert not torch.allclose(saved[0.9]["score_fr.weight"], saved[0.0]["score_fr.weight"])
    # the run's figures, beside it: the loss curve and sample predictions of the validation scenes
    from export.train.segmenter import write_run_figures

    (tmp_path / "runs" / "segmenter" / "fcn32s_ema0").rename(tmp_path / "runs" / "segmenter" / "fcn32s")
    write_run_figures("fcn32s")
    for figure in ("loss_curve.png", "samples.png"):
        image = cv2.imread(str(tmp_path / "runs" / "segmenter" / "fcn32s" / figure))
        assert image is not None and min(image.shape[:2]) > 200 and image.std() > 0
