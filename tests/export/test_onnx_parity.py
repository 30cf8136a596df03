"""Every zoo architecture exports to a valid ONNX graph that ONNX Runtime runs like torch does.

A parity check on outputs that do not depend on the input proves nothing, and freshly
initialised networks can be nearly input-independent: GoogLeNet's 0.01-std init gives the same
logits for every image, AlexNet's default init tiny ones, BN-CNN's sigmoids feed BatchNorm layers
whose untouched running statistics (mean 0, variance 1) do not re-scale them. So each case names
the weight state that makes its outputs depend on the input, and the parity test asserts that
they do:
  "init"        the builder's own initialisation (torchvision's ResNets already carry signal;
                re-initialising them without BatchNorm statistics to match makes logits explode)
  "kaiming"     Kaiming-normal conv/linear weights
  "calibrated"  Kaiming-normal weights and BatchNorm statistics measured on random batches
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from export.adaptive_pool import MatmulAdaptiveAvgPool2d
from export.exporter import INPUT_NAME, example_input, export_onnx, verify_onnx
from export.model_version import prepare_version
from export.models import build_model, get_model_spec
from export.models.registry import InputSpec, ModelSpec
from export.parity import DEFAULT_TOLERANCE, ParityError, check_parity, cpu_session, measure_parity
from service.config import PreprocessingConfig

# (architecture, input size, weight state). The big ones run at small inputs they accept:
# AlexNet needs ≥ 63 px (the paper's AlexNet exactly 227); VGG-16, GoogLeNet and the ResNets take 32 px.
CASES = [
    ("simple_cnn", 28, "kaiming"),
    ("bn_cnn", 28, "calibrated"),
    ("lenet5", 32, "kaiming"),
    ("flowers_cnn", 180, "kaiming"),
    ("googlenet", 32, "kaiming"),
    ("resnet18", 32, "init"),
    ("resnet34", 32, "init"),
    ("resnet50", 32, "init"),
    ("alexnet", 64, "kaiming"),
    ("googlenet_v1", 32, "kaiming"),  # true 5×5 branches and LRN
    ("resnet50_v1", 32, "init"),  # stride on the bottleneck's first 1×1
    ("alexnet_lrn", 227, "kaiming"),  # fixed 227×227: LRN, grouped convolutions
    pytest.param(("vgg_c", 32, "kaiming"), marks=pytest.mark.slow),  # 1×1 convolutions; 134M parameters
    pytest.param(("vgg_a_lrn", 32, "kaiming"), marks=pytest.mark.slow),  # LRN
    pytest.param(("vgg16", 32, "kaiming"), marks=pytest.mark.slow),  # 550 MB of weights: ~25 s
]


def trained_like(model: nn.Module, state: str = "kaiming", input_shape: tuple[int, ...] = (), seed: int = 0):
    """Put `model` in weight state `state` (see the module docstring); returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules() if state != "init" else ():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, generator=generator)
                if hasattr(module, "weight_mask"):
                    module.weight.mul_(module.weight_mask)
            elif isinstance(module, nn.BatchNorm2d) and state == "calibrated":
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batches
        if state == "calibrated":
            model.train()
            for batch in range(2):
                model(example_input(input_shape, 16, seed=1000 + batch))
    return model.eval()


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case[0]}-{case[1]}")
def exported(request):
    name, size, state = request.param
    spec = get_model_spec(name)
    torch.manual_seed(0)
    input_shape = (spec.input.channels, size, size)
    model = trained_like(spec.build(num_classes=10), state, input_shape)
    return name, model, input_shape, export_onnx(model, input_shape, spec.output_names)


def test_graph_passes_the_full_checker_with_opset_17_and_a_dynamic_batch(exported):
    name, model, input_shape, graph = exported
    proto = verify_onnx(graph.onnx_bytes)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == ["logits"]
    for value in (*proto.graph.input, *proto.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.HasField("dim_value")
    assert graph.output_shapes == ((10,),)
    # The batch axis really is free: a batch size used neither for tracing nor for parity.
    out = cpu_session(graph.onnx_bytes).run(None, {INPUT_NAME: example_input(input_shape, 3, seed=7).numpy()})[0]
    assert out.shape == (3, 10)
    # Training-only heads (GoogLeNet's auxiliary classifiers) leave no weight in the served graph.
    prefixes = get_model_spec(name).training_only_prefixes
    assert prefixes == () or not [t.name for t in proto.graph.initializer if t.name.startswith(prefixes)]
    if name in ("alexnet", "vgg16"):  # their 6×6 / 7×7 adaptive pools cannot export at this size as is
        assert graph.matmul_pools == ("avgpool",)
        assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)  # the original layer is back
        assert "MatMul" in {n.op_type for n in proto.graph.node}


def test_onnx_runtime_matches_torch_at_batch_1_and_4(exported):
    name, model, input_shape, graph = exported
    report = check_parity(model, graph.onnx_bytes, input_shape)
    assert set(report.max_abs_diff) == {1, 4}
    assert report.worst <= DEFAULT_TOLERANCE
    with torch.no_grad():  # the comparison is meaningful: outputs depend on the input
        logits = model(example_input(input_shape, 4, seed=3))
    spread = float((logits - logits.mean(dim=0)).abs().max())
    assert spread > 100 * DEFAULT_TOLERANCE, f"{name}: outputs barely depend on the input ({spread:.2g})"


def _tampered(onnx_bytes: bytes, delta: float) -> bytes:
    """Add `delta` to the graph's last initializer with one dimension (the classifier bias)."""
    model = onnx.load_from_string(onnx_bytes)
    target = [t for t in model.graph.initializer if len(t.dims) == 1][-1]
    target.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(target) + np.float32(delta), target.name))
    return model.SerializeToString()


def test_a_tampered_graph_is_refused():
    torch.manual_seed(0)
    model = trained_like(build_model("simple_cnn"))
    graph = export_onnx(model, (1, 28, 28))
    check_parity(model, graph.onnx_bytes, (1, 28, 28))  # the untouched graph passes
    with pytest.raises(ParityError, match=r"refusing to write the model.*max abs diff batch 1: 0\.001"):
        check_parity(model, _tampered(graph.onnx_bytes, 1e-3), (1, 28, 28))


def test_the_threshold_is_applied_to_the_measured_difference():
    torch.manual_seed(0)
    model = trained_like(build_model("lenet5"))
    graph = export_onnx(model, (1, 32, 32))
    worst = max(measure_parity(model, graph.onnx_bytes, (1, 32, 32)).values())
    assert 0 < worst <= DEFAULT_TOLERANCE
    scale = check_parity(model, graph.onnx_bytes, (1, 32, 32)).scale  # the outputs' magnitude, at least 1
    check_parity(model, graph.onnx_bytes, (1, 32, 32), tolerance=worst / scale)
    with pytest.raises(ParityError):
        check_parity(model, graph.onnx_bytes, (1, 32, 32), tolerance=worst / scale / 2)


class _Loud(nn.Module):
    """Logits around 1e6, as an untrained very deep network has: float32 rounding alone differs by
    far more than 1e-4 in absolute terms."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1)) * 1e6


def test_the_tolerance_is_relative_to_large_outputs_and_still_refuses_a_wrong_graph():
    torch.manual_seed(0)
    model = _Loud().eval()
    graph = export_onnx(model, (1, 12, 12))
    report = check_parity(model, graph.onnx_bytes, (1, 12, 12))
    assert report.scale > 1e4 and report.as_dict()["scale"] == report.scale
    assert report.worst <= DEFAULT_TOLERANCE * report.scale
    with pytest.raises(ParityError, match="x output scale"):  # 1 % of the outputs' magnitude off
        check_parity(model, _tampered(graph.onnx_bytes, 1e-2), (1, 12, 12))


class TracesDifferently(nn.Module):
    """Computes one thing eagerly and another while being traced for export: the classic way a
    TorchScript export silently diverges (Python-level branching baked into the trace)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 3)

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        return logits + 0.01 if torch.jit.is_tracing() else logits


def test_a_divergent_export_is_refused():
    spec = ModelSpec(
        name="divergent",
        builder=lambda *, num_classes: TracesDifferently(),
        input=InputSpec(1, 4, 4, fixed_size=True),
        preprocessing=PreprocessingConfig(color_order="gray", size=(4, 4)),
        default_num_classes=3,
        summary="test model",
    )
    with pytest.raises(ParityError, match="refusing"):
        prepare_version(spec.build(), spec, name="divergent", num_classes=3)


@pytest.mark.parametrize("in_hw, out_hw", [((1, 1), (7, 7)), ((5, 3), (6, 6)), ((13, 10), (6, 4)), ((14, 14), (7, 7))])
def test_matmul_adaptive_pool_equals_torchs(in_hw, out_hw):
    x = example_input((3, *in_hw), 2, seed=1)
    expected = nn.functional.adaptive_avg_pool2d(x, out_hw)
    torch.testing.assert_close(MatmulAdaptiveAvgPool2d(in_hw, out_hw)(x), expected, rtol=0, atol=1e-6)
