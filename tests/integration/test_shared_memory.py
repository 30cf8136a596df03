"""Triton's system shared-memory extension, driven by tritonclient's own shared-memory utilities.

Regions are real POSIX shared-memory objects made by `tritonclient.utils.shared_memory`; the
server maps them and the results must equal the plain (raw gRPC) path bit for bit. Every bad
region is refused with a status and a message naming the problem, and the server keeps serving.
"""

from __future__ import annotations

import os
import uuid

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from service.shared_memory import SHM_DIR

BATCH = 3
INPUT_BYTES = BATCH * 1 * 8 * 8 * 4
OUTPUT_BYTES = BATCH * 3 * 4


@pytest.fixture
def client(tiny_server):
    client = triton.InferenceServerClient(tiny_server.address)
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def region():
    """A fresh shared-memory object (unique key), destroyed after the test."""
    made = []

    def make(byte_size: int, name: str = "") -> tuple[str, str, object]:
        key = f"/convserve_test_{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name or key[1:], key, byte_size)
        made.append(handle)
        return name or key[1:], key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(BATCH, 1, 8, 8)).astype(np.float32)


def plain_logits(client, data: np.ndarray) -> np.ndarray:
    tensor = triton.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return client.infer("tiny", [tensor]).as_numpy("logits")


def shm_infer(
    client,
    input_region,
    output_region,
    input_bytes=INPUT_BYTES,
    output_bytes=OUTPUT_BYTES,
    input_offset=0,
    output_offset=0,
):
    tensor = triton.InferInput("input", [BATCH, 1, 8, 8], "FP32")
    tensor.set_shared_memory(input_region, input_bytes, input_offset)
    outputs = []
    if output_region:
        output = triton.InferRequestedOutput("logits")
        output.set_shared_memory(output_region, output_bytes, output_offset)
        outputs.append(output)
    return client.infer("tiny", [tensor], outputs=outputs or None)


def refused(call, code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{code.name}", caught.value.message()
    for fragment in fragments:
        assert fragment in caught.value.message(), caught.value.message()


def test_register_status_unregister(client, region):
    name_a, key_a, _ = region(4096)
    name_b, key_b, _ = region(4096)
    client.register_system_shared_memory(name_a, key_a, 1024, offset=512)
    client.register_system_shared_memory(name_b, key_b, 4096)
    status = client.get_system_shared_memory_status()
    assert {r.name: (r.key, r.offset, r.byte_size) for r in status.regions.values()} == {
        name_a: (key_a, 512, 1024),
        name_b: (key_b, 0, 4096),
    }
    (only,) = client.get_system_shared_memory_status(name_a).regions.values()
    assert only.byte_size == 1024
    client.unregister_system_shared_memory(name_a)
    assert set(client.get_system_shared_memory_status().regions) == {name_b}
    client.unregister_system_shared_memory()  # empty name: every region
    assert not client.get_system_shared_memory_status().regions
    client.unregister_system_shared_memory("never-registered")  # idempotent, as in Triton
    assert "system_shared_memory" in client.get_server_metadata().extensions


def test_inference_through_shared_memory_equals_the_plain_path(client, region, tiny_server):
    data = images()
    in_name, in_key, in_handle = region(INPUT_BYTES)
    out_name, out_key, out_handle = region(OUTPUT_BYTES + 64)
    shm.set_shared_memory_region(in_handle, [data])
    client.register_system_shared_memory(in_name, in_key, INPUT_BYTES)
    client.register_system_shared_memory(out_name, out_key, OUTPUT_BYTES + 64)

    result = shm_infer(client, in_name, out_name, output_offset=64)
    assert result.get_response().raw_output_contents == [b""]  # the output went to shared memory only
    output = result.get_output("logits")
    read = shm.get_contents_as_numpy(out_handle, np.float32, list(output.shape), offset=64)
    np.testing.assert_array_equal(read, plain_logits(client, data))

    raw_out = shm_infer(client, in_name, None)  # input from shared memory, output over gRPC
    np.testing.assert_array_equal(raw_out.as_numpy("logits"), plain_logits(client, data))
    served = tiny_server.running.metrics.registry.get_sample_value(
        "convserve_shared_memory_requests_total", {"model": "tiny"}
    )
    assert served >= 2
    assert (
        tiny_server.running.metrics.registry.get_sample_value("convserve_shared_memory_regions", {"kind": "system"})
        == 2
    )


def test_offsets_within_one_region(client, region):
    """Two batches side by side in one region, outputs after them: each read from its own offset."""
    first, second = images(1), images(2)
    name, key, handle = region(2 * INPUT_BYTES + 2 * OUTPUT_BYTES)
    shm.set_shared_memory_region(handle, [first, second])
    client.register_system_shared_memory(name, key, 2 * INPUT_BYTES + 2 * OUTPUT_BYTES)
    for index, data in enumerate((first, second)):
        out_at = 2 * INPUT_BYTES + index * OUTPUT_BYTES
        shm_infer(client, name, name, input_offset=index * INPUT_BYTES, output_offset=out_at)
        read = shm.get_contents_as_numpy(handle, np.float32, [BATCH, 3], offset=out_at)
        np.testing.assert_array_equal(read, plain_logits(client, data))


def test_bad_registrations_are_refused_precisely(client, region):
    name, key, _ = region(1024)
    refused(
        lambda: client.register_system_shared_memory(name, key, 1024, offset=1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "past the end",
        "holds 1024 bytes",
    )
    refused(
        lambda: client.register_system_shared_memory(name, key, 2048), grpc.StatusCode.INVALID_ARGUMENT, "past the end"
    )
    refused(
        lambda: client.register_system_shared_memory(name, key, 0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "byte_size must be > 0",
    )
    refused(
        lambda: client.register_system_shared_memory("", key, 16), grpc.StatusCode.INVALID_ARGUMENT, "name is empty"
    )
    refused(
        lambda: client.register_system_shared_memory("x" * 300, key, 16),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 256",
    )
    for bad_key in ("/../etc/passwd", "/a/b", "..", "/", ""):
        refused(
            lambda bad_key=bad_key: client.register_system_shared_memory(name, bad_key, 16),
            grpc.StatusCode.INVALID_ARGUMENT,
            "shared-memory key",
        )
    refused(
        lambda: client.register_system_shared_memory(name, "/convserve_no_such_object", 16),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no shared-memory object",
    )
    client.register_system_shared_memory(name, key, 1024)
    refused(
        lambda: client.register_system_shared_memory(name, key, 512),
        grpc.StatusCode.ALREADY_EXISTS,
        f"'{name}' is already registered",
    )
    refused(
        lambda: client.get_system_shared_memory_status("nope"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no system shared-memory region 'nope'",
    )


def test_symlink_in_shm_dir_is_not_followed(client, tmp_path):
    target = tmp_path / "secret"
    target.write_bytes(b"\0" * 64)
    link = SHM_DIR / f"convserve_link_{uuid.uuid4().hex[:12]}"
    os.symlink(target, link)
    try:
        refused(
            lambda: client.register_system_shared_memory("link", "/" + link.name, 64),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cannot open",
        )
    finally:
        link.unlink()


def test_bad_tensor_regions_are_refused_precisely(client, region):
    data = images()
    in_name, in_key, in_handle = region(INPUT_BYTES + 128)
    out_name, out_key, _ = region(OUTPUT_BYTES)
    shm.set_shared_memory_region(in_handle, [data])
    client.register_system_shared_memory(in_name, in_key, INPUT_BYTES + 128)
    client.register_system_shared_memory(out_name, out_key, OUTPUT_BYTES)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    refused(
        lambda: shm_infer(client, "unregistered", None),
        invalid,
        "input 'input'",
        "no shared-memory region 'unregistered' is registered",
    )
    refused(lambda: shm_infer(client, in_name, None, input_offset=256), invalid, "past the end of region")
    refused(
        lambda: shm_infer(client, in_name, None, input_bytes=INPUT_BYTES - 4),
        invalid,
        f"shared_memory_byte_size is {INPUT_BYTES - 4}",
        f"needs {INPUT_BYTES} bytes",
    )
    refused(
        lambda: shm_infer(client, in_name, "unregistered-out"),
        invalid,
        "output 'logits'",
        "no shared-memory region 'unregistered-out'",
    )
    refused(
        lambda: shm_infer(client, in_name, out_name, output_bytes=OUTPUT_BYTES - 4),
        invalid,
        "output 'logits'",
        f"needs {OUTPUT_BYTES} bytes",
        f"is {OUTPUT_BYTES - 4}",
    )
    refused(lambda: shm_infer(client, in_name, out_name, output_offset=8), invalid, "past the end of region")
    # and the server still serves both paths afterwards
    np.testing.assert_array_equal(shm_infer(client, in_name, None).as_numpy("logits"), plain_logits(client, data))


def test_truncated_object_is_refused_not_a_crash(client, region):
    name, key, handle = region(INPUT_BYTES)
    shm.set_shared_memory_region(handle, [images()])
    client.register_system_shared_memory(name, key, INPUT_BYTES)
    os.truncate(SHM_DIR / key[1:], 16)  # a client shrinks its object after registering it
    refused(lambda: shm_infer(client, name, None), grpc.StatusCode.INVALID_ARGUMENT, "shrank to 16 bytes")


def test_cuda_shared_memory_is_refused_clearly(client):
    assert not client.get_cuda_shared_memory_status().regions
    refused(
        lambda: client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64),
        grpc.StatusCode.UNIMPLEMENTED,
        "CUDA shared memory needs a GPU build",
    )
    client.unregister_cuda_shared_memory()


def test_encoded_images_as_a_bytes_input_in_shared_memory(client, region):
    """A BYTES input (length-prefixed encoded images) read from a region is preprocessed like the
    same bytes sent over gRPC."""
    import cv2
    from tritonclient.utils import serialize_byte_tensor

    rng = np.random.default_rng(5)
    encoded = [cv2.imencode(".png", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))[1].tobytes() for _ in range(2)]
    payload = serialize_byte_tensor(np.array(encoded, dtype=np.object_)).item()  # length-prefixed bytes
    name, key, handle = region(len(payload) + 24)
    shm.set_shared_memory_region(handle, [np.frombuffer(payload, dtype=np.uint8)])
    client.register_system_shared_memory(name, key, len(payload) + 24)

    plain = triton.InferInput("input", [2], "BYTES")
    plain.set_data_from_numpy(np.array(encoded, dtype=np.object_))
    expected = client.infer("tiny", [plain]).as_numpy("logits")

    tensor = triton.InferInput("input", [2], "BYTES")
    tensor.set_shared_memory(name, len(payload))
    output = triton.InferRequestedOutput("logits")
    output.set_shared_memory(name, 24, offset=len(payload))
    client.infer("tiny", [tensor], outputs=[output])
    np.testing.assert_array_equal(shm.get_contents_as_numpy(handle, np.float32, [2, 3], offset=len(payload)), expected)
    refused(
        lambda: client.infer("tiny", [tensor.set_shared_memory(name, len(payload) - 3)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BYTES element 1 declares",
    )


def test_stream_requests_read_and_write_shared_memory(client, region):
    """ModelStreamInfer takes the same parameters: each streamed request reads its own offset."""
    import queue

    batches = [images(seed) for seed in (7, 8)]
    name, key, handle = region(2 * INPUT_BYTES + 2 * OUTPUT_BYTES)
    shm.set_shared_memory_region(handle, batches)
    client.register_system_shared_memory(name, key, 2 * INPUT_BYTES + 2 * OUTPUT_BYTES)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for index in range(2):
            tensor = triton.InferInput("input", [BATCH, 1, 8, 8], "FP32")
            tensor.set_shared_memory(name, INPUT_BYTES, index * INPUT_BYTES)
            output = triton.InferRequestedOutput("logits")
            output.set_shared_memory(name, OUTPUT_BYTES, 2 * INPUT_BYTES + index * OUTPUT_BYTES)
            client.async_stream_infer("tiny", [tensor], outputs=[output], request_id=str(index))
        for _ in range(2):
            result, error = answers.get(timeout=30)
            assert error is None, error
    finally:
        client.stop_stream()
    for index, data in enumerate(batches):
        read = shm.get_contents_as_numpy(handle, np.float32, [BATCH, 3], offset=2 * INPUT_BYTES + index * OUTPUT_BYTES)
        np.testing.assert_array_equal(read, plain_logits(client, data))


def test_shutdown_unmaps_every_region(tiny_repo, region):
    from testkit import ServerThread, test_settings

    name, key, _ = region(4096)
    server = ServerThread(test_settings(tiny_repo)).start()
    own = triton.InferenceServerClient(server.address)
    own.register_system_shared_memory(name, key, 4096)
    mapped = server.running.shared_memory.get(name, "test")
    own.close()
    server.stop()
    assert mapped.closed and not server.running.shared_memory
    assert (
        server.running.metrics.registry.get_sample_value("convserve_shared_memory_mapped_bytes", {"kind": "system"})
        == 0
    )
    assert os.path.exists(SHM_DIR / key[1:])  # the client's object is the client's: never unlinked
