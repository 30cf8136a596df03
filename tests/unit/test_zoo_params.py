"""The zoo against the lecture's tables: parameter counts per layer, and ResNet multiply-adds.

References: cnn-lecture.txt's Keras summaries (Simple-CNN, the BatchNorm example, the 180×180
flowers model), LeNet-5's paper table, torchvision's published parameter counts, and the ResNet
paper's FLOPs row (multiply-adds) as reproduced in the lecture.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from export.model_stats import count_macs, count_parameters
from export.models import build_model, get_model_spec, list_models
from export.models.lenet5 import C3_CONNECTIONS, c3_connection_mask


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layers(model: nn.Module, kinds) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kinds)]


def test_every_builder_is_registered_with_a_consistent_input_spec():
    expected = {"simple_cnn", "bn_cnn", "lenet5", "flowers_cnn", "alexnet", "vgg16", "googlenet"}
    expected |= {"resnet18", "resnet34", "resnet50"}
    assert expected <= set(list_models())
    for name in expected:
        spec = get_model_spec(name)
        pre = spec.preprocessing
        assert pre.input_hw == spec.input.hw, name
        assert pre.channels == spec.input.channels, name


def test_simple_cnn_matches_the_lecture_table_per_layer():
    model = build_model("simple_cnn", num_classes=10)
    per_layer = [_param_count(m) for m in _layers(model, (nn.Conv2d, nn.Linear))]
    assert per_layer == [80, 1168, 2320, 16448, 650]
    assert count_parameters(model).trainable == 20_666


def test_bn_cnn_matches_the_lecture_table_per_layer():
    model = build_model("bn_cnn", num_classes=10)
    assert [_param_count(m) for m in _layers(model, nn.Conv2d)] == [160, 8256, 32896, 16416, 8256, 32896]
    # Keras lists 4 values per channel for BatchNormalization: γ, β (trainable), mean, variance (not).
    batch_norms = _layers(model, nn.BatchNorm2d)
    keras_bn = [_param_count(m) + m.running_mean.numel() + m.running_var.numel() for m in batch_norms]
    assert keras_bn == [128, 256, 512, 128, 256, 512]
    assert [_param_count(m) for m in _layers(model, nn.Linear)] == [409728, 1290]
    counts = count_parameters(model)
    assert (counts.trainable, counts.buffers, counts.trainable + counts.buffers) == (510_794, 896, 511_690)


def test_flowers_cnn_matches_the_lecture_table_per_layer():
    model = build_model("flowers_cnn")
    per_layer = [_param_count(m) for m in _layers(model, (nn.Conv2d, nn.Linear))]
    assert per_layer == [448, 4640, 18496, 3965056, 645]
    assert count_parameters(model).trainable == 3_989_285


def test_lenet5_connection_table_has_the_papers_shape():
    sizes = sorted(len(c) for c in C3_CONNECTIONS)
    assert sizes == [3] * 6 + [4] * 9 + [6]
    mask = c3_connection_mask()[:, :, 0, 0]
    assert mask.sum() == 60
    assert mask.sum(dim=0).tolist() == [10.0] * 6  # every S2 map feeds ten C3 maps
    for j in range(6):  # maps 0–5 read 3 cyclically contiguous S2 maps, 6–11 read 4
        assert set(C3_CONNECTIONS[j]) == {(j + k) % 6 for k in range(3)}
        assert set(C3_CONNECTIONS[6 + j]) == {(j + k) % 6 for k in range(4)}
    assert [set(c) for c in C3_CONNECTIONS[12:15]] == [{0, 1, 3, 4}, {1, 2, 4, 5}, {0, 2, 3, 5}]


def test_lenet5_parameter_counts_per_layer():
    model = build_model("lenet5", num_classes=10)
    stored = {name: _param_count(getattr(model, name)) for name in ("c1", "s2", "c3", "s4", "c5", "f6", "output")}
    assert stored == {"c1": 156, "s2": 12, "c3": 2416, "s4": 32, "c5": 48120, "f6": 10164, "output": 850}
    assert count_parameters(model.c3).trainable == 1516  # 60 connections × 25 + 16 biases
    counts = count_parameters(model)
    assert (counts.trainable, counts.stored) == (60_850, 61_750)


def test_lenet5_masked_weights_never_reach_the_output():
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.c3.weight[0, 5] += 10.0  # C3 map 0 does not read S2 map 5
        unchanged = model(x)
        model.c3.weight[0, 0] += 10.0  # ... but does read S2 map 0
        changed = model(x)
    assert torch.equal(before, unchanged)
    assert not torch.allclose(before, changed)
    model = build_model("lenet5").train()  # fresh weights: the +10 above saturates tanh
    model(x).sum().backward()
    assert float(model.c3.weight.grad[0, 5].abs().sum()) == 0.0
    assert float(model.c3.weight.grad[0, 0].abs().sum()) > 0.0


@pytest.mark.parametrize(
    "name, expected",
    [
        ("alexnet", 61_100_840),
        ("vgg16", 138_357_544),
        ("googlenet", 6_624_904),  # exported graph; the training-only auxiliary heads excluded
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
    ],
)
def test_torchvision_architectures_have_the_published_parameter_counts(name, expected):
    spec = get_model_spec(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = spec.build()
    assert count_parameters(model, spec.training_only_prefixes).trainable == expected


def test_mac_counter_matches_a_hand_count():
    with torch.device("meta"):  # the meta-device shortcut the ResNet test relies on agrees
        assert count_macs(build_model("simple_cnn"), (1, 28, 28)) == 276_224
    # Simple-CNN: conv 28²·8·9 + 12²·16·72 + 4²·16·144, dense 256·64 + 64·10.
    assert count_macs(build_model("simple_cnn"), (1, 28, 28)) == 56_448 + 165_888 + 36_864 + 16_384 + 640
    # LeNet-5: C1 28²·6·25, S2 14²·6, C3 10²·60·25 (only the table's connections), S4 5²·16,
    # C5 120·400, F6 120·84, output 84·10.
    assert count_macs(build_model("lenet5"), (1, 32, 32)) == 117_600 + 1_176 + 150_000 + 400 + 48_000 + 10_080 + 840


@pytest.mark.parametrize("name, lecture_gmacs", [("resnet18", 1.8), ("resnet34", 3.6), ("resnet50", 3.8)])
def test_resnet_multiply_adds_match_the_lecture_table(name, lecture_gmacs):
    with torch.device("meta"):
        model = build_model(name)
    macs = count_macs(model, (3, 224, 224))
    assert abs(macs / 1e9 - lecture_gmacs) / lecture_gmacs < 0.10
