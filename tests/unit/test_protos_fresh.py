"""The committed stubs in service/api/ are exactly what `make protos` generates from protos/, they
import, and the `inference` protocol is wire-identical to what tritonclient 2.73 was built from."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

REPO = Path(__file__).resolve().parents[2]
API = REPO / "service" / "api"
GENERATOR = REPO / "scripts" / "generate_protos.py"

# The RPCs tritonclient's gRPC client and perf_analyzer use; all must be in our service.
REQUIRED_RPCS = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
}


def tree(root: Path) -> dict[str, bytes]:
    """{relative path: content} of every file under root, ignoring bytecode caches."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def generated_modules() -> list[str]:
    return sorted(
        "service.api" + ("." + ".".join(p.relative_to(API).with_suffix("").parts)).removesuffix(".__init__")
        for p in API.rglob("*.py")
        if "__pycache__" not in p.parts
    )


def test_committed_stubs_match_the_protos(tmp_path):
    out = tmp_path / "api"
    run = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, f"generator failed:\n{run.stdout}\n{run.stderr}"
    fresh, committed = tree(out), tree(API)
    stale = sorted(n for n in fresh.keys() & committed.keys() if fresh[n] != committed[n])
    missing = sorted(fresh.keys() - committed.keys())
    extra = sorted(committed.keys() - fresh.keys())
    assert not (stale or missing or extra), (
        "service/api/ is out of date with protos/ - run `make protos` "
        "(.venv/bin/python scripts/generate_protos.py) and commit the result.\n"
        f"  stale: {stale}\n  missing: {missing}\n  not generated (remove): {extra}\n"
        f"  grpcio-tools installed: {importlib.metadata.version('grpcio-tools')}"
    )


@pytest.mark.parametrize("module", generated_modules())
def test_every_generated_module_imports(module):
    importlib.import_module(module)


def _our_inference_files():
    from service.api.inference import grpc_service_pb2, model_config_pb2

    return [model_config_pb2.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR]


def _walk_messages(messages):
    for message in messages:
        yield message
        yield from _walk_messages(message.nested_types)


def _field_signature(field) -> tuple:
    """What decides a field's wire format and generated API: number, type, arity, target, oneof."""
    target = field.message_type or field.enum_type
    oneof = field.containing_oneof
    return (
        field.number,
        field.type,
        field.is_repeated,
        target.full_name if target else None,
        oneof.name if oneof else None,
    )


def test_inference_protocol_is_wire_identical_to_tritonclient():
    import tritonclient.grpc  # noqa: F401  registers tritonclient's descriptors

    theirs = descriptor_pool.Default()
    problems = []
    for file in _our_inference_files():
        for message in _walk_messages(file.message_types_by_name.values()):
            other = theirs.FindMessageTypeByName(message.full_name)
            for field in message.fields:
                twin = other.fields_by_name.get(field.name)
                if twin is None or _field_signature(twin) != _field_signature(field):
                    problems.append(
                        f"{message.full_name}.{field.name}: ours "
                        f"{_field_signature(field)}, tritonclient "
                        f"{twin and _field_signature(twin)}"
                    )
        for enum in list(file.enum_types_by_name.values()) + [
            e for m in _walk_messages(file.message_types_by_name.values()) for e in m.enum_types
        ]:
            other = theirs.FindEnumTypeByName(enum.full_name)
            for value in enum.values:
                twin = other.values_by_name.get(value.name)
                if twin is None or twin.number != value.number:
                    problems.append(f"{enum.full_name}.{value.name} = {value.number}")
    assert not problems, "\n".join(problems)


def test_service_offers_every_rpc_tritonclient_uses_with_its_signature():
    import tritonclient.grpc  # noqa: F401

    from service.api.inference import grpc_service_pb2

    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = descriptor_pool.Default().FindServiceByName("inference.GRPCInferenceService")
    assert REQUIRED_RPCS <= set(ours.methods_by_name)
    for method in ours.methods:
        twin = theirs.methods_by_name[method.name]
        assert (
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        ) == (twin.input_type.full_name, twin.output_type.full_name, twin.client_streaming, twin.server_streaming), (
            method.name
        )


@pytest.mark.parametrize(
    "first,second",
    [
        ("tritonclient.grpc", "service.api.inference.grpc_service_pb2"),
        ("service.api.inference.grpc_service_pb2", "tritonclient.grpc"),
    ],
)
def test_stubs_and_tritonclient_share_one_process(first, second):
    """Both define inference.* messages; our private descriptor pool keeps them from clashing."""
    code = (
        f"import {first}, {second}, service.api.convserve.v1.vision_pb2_grpc; "
        "from service.api.inference import grpc_service_pb2 as ours; "
        "from tritonclient.grpc import service_pb2 as theirs; "
        "r = theirs.ModelInferRequest(model_name='m', raw_input_contents=[b'x']); "
        "assert ours.ModelInferRequest.FromString(r.SerializeToString()).model_name == 'm'"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_vision_service_declares_the_documented_rpcs():
    from service.api.convserve.v1 import vision_pb2

    service = vision_pb2.DESCRIPTOR.services_by_name["VisionService"]
    streaming = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert streaming == {
        "Classify": (False, False),
        "Detect": (False, False),
        "Segment": (False, False),
        "Explain": (False, False),
        "StreamDetect": (True, True),
        "StreamClassify": (True, True),
    }
    frame_result = vision_pb2.DetectFrameResult.DESCRIPTOR
    assert [f.name for f in frame_result.oneofs_by_name["outcome"].fields] == ["result", "error"]
