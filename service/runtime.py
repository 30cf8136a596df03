"""ONNX Runtime sessions for one model version: providers, threads, warm-up, runs.

Why a class of its own: the provider a session *really* got can differ from the one asked for
(onnxruntime-gpu without CUDA libraries quietly runs on the CPU), so it is read back from the
session and reported, never assumed. Runs are synchronous and release the GIL; the batcher calls
`run` from a thread pool.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.config import ModelConfig, RuntimeConfig
from service.dtypes import NUMPY_OF_ONNX
from service.errors import RuntimeMissing

log = logging.getLogger("convserve.runtime")

PROVIDER_NAMES = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
_SHORT_NAMES = {v: k for k, v in PROVIDER_NAMES.items()}
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def import_onnxruntime():
    """The onnxruntime module, or a clear error naming the extras that provide it."""
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeMissing(
            "ONNX Runtime is not installed: install exactly one build, "
            "`pip install 'convserve[cpu]'` (onnxruntime) or `pip install 'convserve[gpu]'` (onnxruntime-gpu)"
        ) from None
    return onnxruntime


class ProviderUnavailable(RuntimeError):
    """CUDA was required (--require-gpu) but the session did not get it."""


@dataclass(frozen=True)
class GraphSignature:
    """Names, ONNX element types and shapes (None or a string for free axes) of a graph's tensors."""

    inputs: tuple[tuple[str, str, tuple], ...]
    outputs: tuple[tuple[str, str, tuple], ...]

    def describe(self) -> str:
        def one(items):
            return ", ".join(f"{n}:{t.removeprefix('tensor(').rstrip(')')}{list(s)}" for n, t, s in items)

        return f"inputs[{one(self.inputs)}] outputs[{one(self.outputs)}]"


def cpu_count() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup v2 CPU quota (a container limit).

    Why: on a 64-core node a pod limited to 2 CPUs must not start 64 ONNX Runtime threads.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def _cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> int | None:
    """CPUs allowed by cgroup v2 `cpu.max` ("max 100000" = unlimited), rounded up; None if unlimited/absent."""
    try:
        quota, period = open(path, encoding="ascii").read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


def resolve_providers(requested: tuple[str, ...], cfg: RuntimeConfig) -> list:
    """Provider list for InferenceSession, with CUDA options from the model config."""
    providers = []
    for short in requested:
        if short == "cuda":
            cuda = cfg.cuda
            options = {
                "device_id": cuda.device_id,
                "arena_extend_strategy": cuda.arena_extend_strategy,
                "cudnn_conv_algo_search": cuda.cudnn_conv_algo_search,
                "do_copy_in_default_stream": int(cuda.do_copy_in_default_stream),
            }
            if cuda.gpu_mem_limit is not None:
                options["gpu_mem_limit"] = cuda.gpu_mem_limit
            providers.append((PROVIDER_NAMES["cuda"], options))
        else:
            providers.append(PROVIDER_NAMES["cpu"])
    return providers


def cpu_memory_mode(config: ModelConfig) -> str:
    """runtime.cpu_memory, with auto resolved: "shrink" for a model with a free non-batch input axis.

    Why: the arena keeps the largest activations it ever allocated. For fixed shapes that is one
    batch's worth, reused; for a fully convolutional model it is whatever the largest image cost
    (fcn8s: 1024x1024 left 307 MiB resident; with shrinkage 149 MiB; `python -m bench.ort_memory`).
    """
    mode = config.runtime.cpu_memory
    if mode != "auto":
        return mode
    variable = any(d == -1 for spec in config.inputs for d in spec.dims[1:])
    return "shrink" if variable else "arena"


class ModelRuntime:
    """`instances` ONNX Runtime sessions of one model version, used by one batcher."""

    def __init__(self, model_path: Path, config: ModelConfig, providers: tuple[str, ...], require_gpu: bool = False):
        ort = import_onnxruntime()
        self.config = config
        requested = config.runtime.providers or providers
        instances = config.batching.instances
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPT_LEVELS[config.runtime.graph_optimization_level]
        )
        options.intra_op_num_threads = config.runtime.intra_op_threads or max(1, cpu_count() // instances)
        options.inter_op_num_threads = config.runtime.inter_op_threads
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if config.runtime.intra_op_spinning else "0"
        )
        options.log_severity_level = 3
        self.cpu_memory = cpu_memory_mode(config)
        options.enable_cpu_mem_arena = self.cpu_memory != "no_arena"
        self._run_options = ort.RunOptions()
        if self.cpu_memory == "shrink":  # unused arena chunks go back to the system after every run
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        available = set(ort.get_available_providers())
        wanted = [p for p in requested if PROVIDER_NAMES[p] in available]
        self.missing_providers = tuple(p for p in requested if PROVIDER_NAMES[p] not in available)
        if not wanted:
            wanted = ["cpu"]
        provider_list = resolve_providers(tuple(wanted), config.runtime)
        self._sessions = [
            ort.InferenceSession(str(model_path), sess_options=options, providers=provider_list)
            for _ in range(instances)
        ]
        self._free = list(range(instances))
        self._lock = threading.Lock()
        actual = self._sessions[0].get_providers()
        self.provider = _SHORT_NAMES.get(actual[0], actual[0])
        self.requested_providers = tuple(requested)
        if "cuda" in requested and self.provider != "cuda" and require_gpu:
            raise ProviderUnavailable(
                f"CUDA was required but the session runs on {actual[0]} "
                f"(available providers: {sorted(available)}); check the CUDA/cuDNN libraries"
            )
        session = self._sessions[0]
        self.signature = GraphSignature(
            inputs=tuple((i.name, i.type, tuple(i.shape)) for i in session.get_inputs()),
            outputs=tuple((o.name, o.type, tuple(o.shape)) for o in session.get_outputs()),
        )
        self.output_names = tuple(name for name, _, _ in self.signature.outputs)
        binding = config.runtime.io_binding
        self.io_binding = binding == "on" or (binding == "auto" and self.provider == "cuda")
        self.input_dtypes = {name: NUMPY_OF_ONNX.get(t, np.float32) for name, t, _ in self.signature.inputs}

    @property
    def cuda_fallback(self) -> bool:
        """CUDA was asked for but this model runs elsewhere: reported loudly by the server."""
        return "cuda" in self.requested_providers and self.provider != "cuda"

    def run(self, inputs: dict[str, np.ndarray], output_names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Run one batch on a free session; blocking, call from a worker thread."""
        with self._lock:
            index = self._free.pop()
        try:
            names = list(output_names or self.output_names)
            session = self._sessions[index]
            if self.io_binding:
                values = _run_bound(session, names, inputs, self._run_options)
            else:
                values = session.run(names, inputs, self._run_options)
        finally:
            with self._lock:
                self._free.append(index)
        return dict(zip(names, values))

    def warmup_batch_sizes(self) -> list[int]:
        """On CUDA every size the batcher can form (no request pays a cuDNN search); else 1, preferred, max."""
        batching = self.config.batching
        if self.provider == "cuda":
            return list(range(1, min(batching.max_batch_size, 64) + 1))
        return sorted({1, *batching.preferred_batch_sizes, batching.max_batch_size})

    def warmup_inputs(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zero inputs of the configured shapes: free axes 32 (a multiple of preprocessing.stride
        with resize native), the image axes from preprocessing's size."""
        pre = self.config.preprocessing
        free = -(-32 // pre.stride) * pre.stride if pre is not None and pre.input_hw is None else 32
        inputs = {}
        for spec in self.config.inputs:
            shape = [batch_size] + [d if d > 0 else free for d in spec.dims[1:]]
            if pre is not None and pre.input_hw is not None and len(shape) == 4:
                shape[2:] = pre.input_hw
            inputs[spec.name] = np.zeros(shape, dtype=self.input_dtypes.get(spec.name, np.float32))
        return inputs

    def warm_up_run(self, batch_size: int) -> tuple[float, dict[str, np.ndarray]]:
        """Run once at `batch_size` on `warmup_inputs`; returns (seconds, outputs)."""
        inputs = self.warmup_inputs(batch_size)
        started = time.perf_counter()
        outputs = self.run(inputs)
        return time.perf_counter() - started, outputs

    def warm_up(self, batch_size: int) -> float:
        """Run once at `batch_size` with zero inputs of the configured shapes; returns seconds."""
        return self.warm_up_run(batch_size)[0]


def _run_bound(session, names: list[str], inputs: dict[str, np.ndarray], run_options) -> list[np.ndarray]:
    """Run with IO binding: each input is copied to the device once, outputs are bound by name.

    Why: on CUDA a plain run copies inputs through an extra staging step per call; binding lets ONNX
    Runtime place them directly. Outputs come back to host memory once, at the end.
    """
    binding = session.io_binding()
    for name, array in inputs.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    for name in names:
        binding.bind_output(name)
    session.run_with_iobinding(binding, run_options)
    return binding.copy_outputs_to_cpu()
