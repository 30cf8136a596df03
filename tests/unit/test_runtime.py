"""ONNX Runtime plumbing: provider selection and fallback reporting, IO binding parity, CUDA options."""

from __future__ import annotations

import numpy as np
import pytest

from testkit import tiny_classifier_onnx
from service.config import ModelConfig, parse_model_config
from service.errors import ConfigError
from service.runtime import ModelRuntime, ProviderUnavailable, _cgroup_cpu_quota, resolve_providers


def _config(**runtime) -> ModelConfig:
    return parse_model_config(
        {
            "name": "tiny",
            "task": "classification",
            "inputs": [{"name": "input", "dims": [-1, 1, 8, 8]}],
            "outputs": [{"name": "logits", "dims": [-1, 3]}],
            "batching": {"max_batch_size": 4, "preferred_batch_sizes": [2]},
            "runtime": runtime,
        },
        "tiny/config.yaml",
    )


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    tiny_classifier_onnx(path)
    return path


def test_cuda_requested_on_a_cpu_only_host_is_reported_not_hidden(model_path):
    runtime = ModelRuntime(model_path, _config(), providers=("cuda", "cpu"))
    assert runtime.provider == "cpu"
    assert runtime.cuda_fallback
    assert runtime.missing_providers == ("cuda",)


def test_require_gpu_turns_the_fallback_into_an_error(model_path):
    with pytest.raises(ProviderUnavailable, match="CUDA was required"):
        ModelRuntime(model_path, _config(), providers=("cuda", "cpu"), require_gpu=True)


def test_cpu_only_request_is_no_fallback(model_path):
    runtime = ModelRuntime(model_path, _config(), providers=("cpu",))
    assert runtime.provider == "cpu" and not runtime.cuda_fallback
    assert runtime.warmup_batch_sizes() == [1, 2, 4]


def test_io_binding_gives_the_same_outputs(model_path):
    plain = ModelRuntime(model_path, _config(io_binding="off"), providers=("cpu",))
    bound = ModelRuntime(model_path, _config(io_binding="on"), providers=("cpu",))
    assert bound.io_binding and not plain.io_binding
    batch = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(plain.run({"input": batch})["logits"], bound.run({"input": batch})["logits"])


def test_cuda_options_reach_the_provider_list():
    config = _config(cuda={"device_id": 1, "gpu_mem_limit": 2**30, "cudnn_conv_algo_search": "HEURISTIC"})
    providers = resolve_providers(("cuda", "cpu"), config.runtime)
    name, options = providers[0]
    assert name == "CUDAExecutionProvider" and providers[1] == "CPUExecutionProvider"
    assert options == {
        "device_id": 1,
        "arena_extend_strategy": "kNextPowerOfTwo",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": 1,
        "gpu_mem_limit": 2**30,
    }


@pytest.mark.parametrize(
    "cuda,field",
    [
        ({"cudnn_conv_algo_search": "FASTEST"}, "runtime.cuda.cudnn_conv_algo_search"),
        ({"device_id": -1}, "runtime.cuda.device_id"),
        ({"gpu_mem_limit": 0}, "runtime.cuda.gpu_mem_limit"),
        ({"arena": "big"}, "runtime.cuda.arena"),
    ],
)
def test_cuda_option_errors_name_the_field(cuda, field):
    with pytest.raises(ConfigError, match=f"tiny/config.yaml: {field.replace('.', '[.]')}"):
        _config(cuda=cuda)


def test_cgroup_quota_caps_threads(tmp_path):
    (tmp_path / "limited").write_text("150000 100000\n")
    (tmp_path / "unlimited").write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path / "limited")) == 2
    assert _cgroup_cpu_quota(str(tmp_path / "unlimited")) is None
    assert _cgroup_cpu_quota(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("runtime, expected", [({}, "0"), ({"intra_op_spinning": True}, "1")])
def test_intra_op_spinning_reaches_every_session(model_path, runtime, expected):
    config = _config(**runtime).model_copy(update={"batching": _config().batching.model_copy(update={"instances": 2})})
    sessions = ModelRuntime(model_path, config, providers=("cpu",))._sessions
    assert len(sessions) == 2
    assert {s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") for s in sessions} == {
        expected
    }


def test_intra_op_spinning_must_be_a_boolean():
    with pytest.raises(ConfigError, match="tiny/config.yaml: runtime.intra_op_spinning"):
        _config(intra_op_spinning="sometimes")
