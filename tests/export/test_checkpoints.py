"""Checkpoints load as tensors only; anything needing arbitrary unpickling, or not fitting the
architecture, is refused with a message that says exactly why."""

from __future__ import annotations

import collections

import pytest
import torch
import torchvision

from export.checkpoints import CheckpointError, load_checkpoint, read_state_dict
from export.models import build_model, get_model_spec


class Payload:
    """A custom class: unpickling it could run arbitrary code (its __reduce__ could be anything)."""

    def __init__(self):
        self.note = "not a tensor"


def _assert_same_weights(model, state):
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_a_pickled_custom_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": build_model("simple_cnn").state_dict(), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused: loading it needs arbitrary unpickling.*Payload"):
        load_checkpoint(build_model("simple_cnn"), path)


def test_a_whole_pickled_module_is_refused_with_advice(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(build_model("simple_cnn"), path)
    with pytest.raises(CheckpointError, match=r"save `model.state_dict\(\)` instead"):
        load_checkpoint(build_model("simple_cnn"), path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = build_model("simple_cnn").state_dict()
    state.pop("classifier.3.bias")
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "keys.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(build_model("simple_cnn"), path)
    message = str(error.value)
    assert "missing keys: classifier.3.bias" in message
    assert "unexpected keys: head.weight" in message


def test_shape_mismatches_are_named_with_both_shapes(tmp_path):
    path = tmp_path / "ten_classes.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(build_model("resnet18"), path)  # 1,000 classes
    message = str(error.value)
    assert "fc.weight (checkpoint (10, 512), model (1000, 512))" in message
    assert "fc.bias (checkpoint (10,), model (1000,))" in message
    assert "missing keys" not in message


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "ddp"])
def test_a_torchvision_state_dict_loads_in_every_common_wrapping(tmp_path, wrap):
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None, num_classes=7).state_dict()
    saved = {
        "raw": state,
        "state_dict": {"state_dict": state, "epoch": 3},
        "model": {"model": state, "optimizer": {"lr": torch.tensor(0.1)}},
        "ddp": collections.OrderedDict((f"module.{k}", v) for k, v in state.items()),
    }[wrap]
    path = tmp_path / "resnet18.pth"
    torch.save(saved, path)
    model = build_model("resnet18", num_classes=7)
    load_checkpoint(model, path)
    _assert_same_weights(model, state)


@pytest.mark.parametrize("with_aux", [True, False])
def test_googlenet_loads_with_or_without_its_training_only_heads(tmp_path, with_aux):
    torch.manual_seed(2)
    source = torchvision.models.googlenet(weights=None, aux_logits=with_aux, init_weights=True, num_classes=5)
    path = tmp_path / "googlenet.pth"
    torch.save(source.state_dict(), path)
    spec = get_model_spec("googlenet")
    model = spec.build(num_classes=5)
    load_checkpoint(model, path, spec.training_only_prefixes)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(path)
    (tmp_path / "garbage.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        read_state_dict(tmp_path / "garbage.pt")
