"""ModelMetadata, ModelConfig, ModelStatistics and RepositoryIndex messages from our own types.

Kept apart from the servicer so the mapping from convserve's config onto Triton's ModelConfig
(which perf_analyzer reads to shape its requests) is one readable function each.
"""

from __future__ import annotations

from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import model_config_pb2 as mc
from service.dtypes import v2_of_config
from service.metrics import ModelStats
from service.models import LoadedVersion, ModelEntry

PLATFORM = "onnxruntime_onnx"


def config_type(dtype: str) -> int:
    """Triton's ModelConfig DataType of a config `dtype`: TYPE_ and the V2 datatype (BYTES is TYPE_STRING)."""
    v2 = v2_of_config(dtype)
    return mc.DataType.Value("TYPE_STRING" if v2 == "BYTES" else f"TYPE_{v2}")


def model_metadata(entry: ModelEntry, loaded: LoadedVersion) -> pb.ModelMetadataResponse:
    config = loaded.config
    response = pb.ModelMetadataResponse(
        name=loaded.name, versions=[str(v) for v in sorted(entry.versions)], platform=PLATFORM
    )
    for spec in config.inputs:
        response.inputs.add(name=spec.name, datatype=v2_of_config(spec.dtype), shape=list(spec.dims))
    for spec in config.outputs:
        response.outputs.add(name=spec.name, datatype=v2_of_config(spec.dtype), shape=list(spec.dims))
    return response


def model_config(loaded: LoadedVersion) -> pb.ModelConfigResponse:
    """Triton's ModelConfig: with max_batch_size > 0 the dims leave out the batch axis."""
    config = loaded.config
    batching = config.batching
    message = mc.ModelConfig(
        name=loaded.name,
        platform=PLATFORM,
        backend="onnxruntime",
        max_batch_size=batching.max_batch_size,
        default_model_filename="model.onnx",
    )
    for spec in config.inputs:
        message.input.add(
            name=spec.name,
            data_type=config_type(spec.dtype),
            dims=list(spec.dims[1:]),
            format=mc.ModelInput.FORMAT_NCHW if len(spec.dims) == 4 else mc.ModelInput.FORMAT_NONE,
        )
    for spec in config.outputs:
        output = message.output.add(name=spec.name, data_type=config_type(spec.dtype), dims=list(spec.dims[1:]))
        if config.labels and spec.name == config.answer_output and config.task == "classification":
            output.label_filename = config.labels
    message.dynamic_batching.preferred_batch_size.extend(batching.preferred_batch_sizes)
    message.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_us
    message.dynamic_batching.default_queue_policy.max_queue_size = batching.max_queue_size
    provider = loaded.runtime.provider
    kind = mc.ModelInstanceGroup.KIND_GPU if provider == "cuda" else mc.ModelInstanceGroup.KIND_CPU
    message.instance_group.add(name=f"{loaded.name}_0", kind=kind, count=batching.instances)
    message.version_policy.specific.versions.append(loaded.version)
    parameters = {
        "execution_provider": provider,
        "requested_providers": ",".join(loaded.runtime.requested_providers),
        "task": config.task,
    }
    for key, value in parameters.items():
        message.parameters[key].string_value = value
    return pb.ModelConfigResponse(config=message)


def _duration(pair: tuple[int, float]) -> pb.StatisticDuration:
    count, seconds = pair
    return pb.StatisticDuration(count=count, ns=int(seconds * 1e9))


def model_statistics(name: str, version: str, stats: ModelStats, last_inference_ms: int) -> pb.ModelStatistics:
    """Triton's per-model statistics; batch_stats: per batch size, merging the requests' inputs
    (compute_input), the model run (compute_infer) and splitting the outputs back (compute_output)."""
    total_count, total_seconds = stats.total
    batch_stats = [
        pb.InferBatchStatistics(
            batch_size=size,
            compute_input=_duration((count, merge)),
            compute_infer=_duration((count, run)),
            compute_output=_duration((count, split)),
        )
        for size, count, merge, run, split in stats.batch_stats
    ]
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration((stats.success_count, total_seconds)),
            fail=pb.StatisticDuration(count=stats.fail_count),
            queue=_duration(stats.queue),
            compute_input=_duration(stats.compute_input),
            compute_infer=_duration(stats.compute_infer),
            compute_output=_duration(stats.compute_output),
        ),
        batch_stats=batch_stats,
    )


def repository_index(entries: dict[str, ModelEntry], ready_only: bool) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    for name in sorted(entries):
        entry = entries[name]
        if ready_only and entry.state != "READY":
            continue
        if entry.versions:
            for version in sorted(entry.versions):
                response.models.add(name=name, version=str(version), state=entry.state, reason=entry.reason)
        else:
            response.models.add(name=name, state=entry.state, reason=entry.reason)
    return response
