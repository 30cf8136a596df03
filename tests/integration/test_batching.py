"""Dynamic batching through a real server: batches form, limits hold, failures stay isolated.

Queue states are made exact with `ModelHold`, which keeps the model's single instance thread busy
until the test lets go: the first request is dispatched and waits, everything sent after it
queues, and the test knows precisely what the next batch will hold.
"""

from __future__ import annotations

import asyncio
import threading
import time

import cv2
import grpc
import numpy as np
import pytest

from testkit import ServerThread, test_settings, write_tiny_model
from service.api.inference import grpc_service_pb2 as pb
from service.api.inference import grpc_service_pb2_grpc as pb_grpc
from service.servicers.v2_tensors import append_input
from service.settings import Limits


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("batching") / "repo"
    write_tiny_model(repo, "lone", max_batch=8, delay_us=300_000, queue=64)
    write_tiny_model(repo, "tiny", max_batch=16, delay_us=2000, queue=64)
    write_tiny_model(repo, "small_queue", max_batch=16, delay_us=2000, queue=2)
    running = ServerThread(test_settings(repo)).start()
    yield running
    running.stop()


class ModelHold:
    """Occupies the model's only instance thread until released, so everything sent meanwhile queues.

    Why this way: timing a "slow" model against client sends is a race on a busy machine; holding
    the instance's worker thread makes the queue state exact. The model itself still runs for real.
    """

    def __init__(self, server, model: str):
        loaded = server.running.registry.get(model)
        assert loaded.config.batching.instances == 1
        self.batcher = loaded.batcher
        self.release = threading.Event()
        self._held = threading.Event()
        loaded.executor.submit(self._hold)
        assert self._held.wait(10)

    def _hold(self) -> None:
        self._held.set()
        self.release.wait(30)

    async def dispatched(self) -> None:
        """Until one batch has been handed to the (held) instance and nothing else is queued."""
        await wait_for(lambda: self.batcher.running_batches == 1 and self.batcher.queued_images == 0)

    async def queued(self, images: int) -> None:
        await wait_for(lambda: self.batcher.queued_images == images)


def tensor_request(model: str, seed: int, n: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    append_input(request, "input", np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32))
    return request


def jpeg_request(model: str, data: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(data).to_bytes(4, "little") + data)
    return request


def logits(response: pb.ModelInferResponse) -> np.ndarray:
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(list(response.outputs[0].shape))


def sample(server, name: str, model: str, **labels) -> float:
    return server.running.metrics.registry.get_sample_value(name, {"model": model, **labels}) or 0.0


def batch_stats(server, model: str) -> tuple[float, float, float]:
    """(executions, images run by the model, executions of exactly one image)."""
    return (
        sample(server, "convserve_batch_size_count", model),
        sample(server, "convserve_batch_size_sum", model),
        sample(server, "convserve_batch_size_bucket", model, le="1.0"),
    )


async def call(stub, request, timeout: float = 30.0):
    """(status code name, response or None)."""
    try:
        return "OK", await stub.ModelInfer(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, None


async def wait_for(predicate, timeout: float = 10.0) -> None:
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


def with_stub(server, scenario):
    async def main():
        async with grpc.aio.insecure_channel(server.address) as channel:
            return await scenario(pb_grpc.GRPCInferenceServiceStub(channel))

    return asyncio.run(main())


def test_results_under_batching_equal_results_one_by_one_and_batches_form(server):
    requests = [tensor_request("tiny", seed, n=1 + seed % 3) for seed in range(12)]

    async def scenario(stub):
        alone = [(await call(stub, r))[1] for r in requests]
        before = batch_stats(server, "tiny")
        hold = ModelHold(server, "tiny")
        first = asyncio.ensure_future(call(stub, requests[0]))
        await hold.dispatched()
        rest = [asyncio.ensure_future(call(stub, r)) for r in requests[1:]]
        await hold.queued(sum(r.inputs[0].shape[0] for r in requests[1:]))
        hold.release.set()
        return alone, await asyncio.gather(first, *rest), before

    alone, together, before = with_stub(server, scenario)
    executions, images, singles = (a - b for a, b in zip(batch_stats(server, "tiny"), before))
    assert all(code == "OK" for code, _ in together)
    for one, (_, batched) in zip(alone, together):
        np.testing.assert_array_equal(logits(batched), logits(one))  # exactly, not approximately
    assert images == sum(r.inputs[0].shape[0] for r in requests)
    assert (executions, singles) == (3, 1), "expected the lone first request, then two full batches of 16 and 7 images"


def test_batches_form_under_plain_concurrent_load(server):
    """No hold: 32 concurrent clients; the batch-size histogram must show batches of more than one."""

    async def scenario(stub):
        before = batch_stats(server, "tiny")

        async def client(seed):
            for k in range(8):
                assert (await call(stub, tensor_request("tiny", seed * 100 + k)))[0] == "OK"

        await asyncio.gather(*(client(seed) for seed in range(32)))
        return before

    before = with_stub(server, scenario)
    executions, images, singles = (a - b for a, b in zip(batch_stats(server, "tiny"), before))
    assert images == 256
    assert executions < images and singles < executions, "every execution ran a single image"


def test_lone_request_is_not_held_for_the_queue_delay(server):
    async def scenario(stub):
        await call(stub, tensor_request("lone", 0))  # connection and first-call costs
        took = []
        for seed in range(5):
            started = time.perf_counter()
            code, _ = await call(stub, tensor_request("lone", seed))
            took.append(time.perf_counter() - started)
            assert code == "OK"
        return took

    took = with_stub(server, scenario)
    assert float(np.median(took)) < 0.1, f"lone requests took {took} with max_queue_delay_us = 300 ms"


def test_full_queue_answers_resource_exhausted_quickly(server):
    async def scenario(stub):
        hold = ModelHold(server, "small_queue")
        first = asyncio.ensure_future(call(stub, tensor_request("small_queue", 0)))
        await hold.dispatched()
        queued = asyncio.ensure_future(call(stub, tensor_request("small_queue", 1, n=2)))  # fills the 2-image queue
        await hold.queued(2)
        started = time.perf_counter()
        code, _ = await call(stub, tensor_request("small_queue", 2))
        refused_in = time.perf_counter() - started
        hold.release.set()
        return code, refused_in, await first, await queued

    code, refused_in, first, queued = with_stub(server, scenario)
    assert code == "RESOURCE_EXHAUSTED"
    assert refused_in < 0.5, f"refusal took {refused_in:.3f} s"
    assert first[0] == queued[0] == "OK"
    assert sample(server, "convserve_rejected_requests_total", "small_queue", reason="queue_full") == 1


def test_client_deadline_passing_in_the_queue_removes_the_request(server):
    async def scenario(stub):
        before = batch_stats(server, "tiny")
        hold = ModelHold(server, "tiny")
        first = asyncio.ensure_future(call(stub, tensor_request("tiny", 0)))
        await hold.dispatched()
        doomed = await call(stub, tensor_request("tiny", 1, n=3), timeout=0.2)
        await hold.queued(0)
        hold.release.set()
        return before, doomed, await first

    before, (code, _), (first_code, _) = with_stub(server, scenario)
    executions, images, _ = (a - b for a, b in zip(batch_stats(server, "tiny"), before))
    assert code == "DEADLINE_EXCEEDED" and first_code == "OK"
    assert (executions, images) == (1, 1), "the expired request reached the model"


def test_server_side_deadline_is_checked_before_the_run(tmp_path):
    """The server's own deadline (here its max_deadline_s cap) fires in the batcher, not in gRPC."""
    write_tiny_model(tmp_path / "repo", "tiny", max_batch=16)
    capped = ServerThread(test_settings(tmp_path / "repo", limits=Limits(max_deadline_s=0.2))).start()
    try:

        async def scenario(stub):
            hold = ModelHold(capped, "tiny")
            first = asyncio.ensure_future(call(stub, tensor_request("tiny", 0)))
            await hold.dispatched()
            late = asyncio.ensure_future(call(stub, tensor_request("tiny", 1, n=2), timeout=30))
            await hold.queued(2)
            await asyncio.sleep(0.3)  # past the server's deadline for `late`, while it is queued
            hold.release.set()
            return await late, await first

        (late_code, _), (first_code, _) = with_stub(capped, scenario)
        executions, images, _ = batch_stats(capped, "tiny")
        assert (late_code, first_code) == ("DEADLINE_EXCEEDED", "OK")
        assert sample(capped, "convserve_rejected_requests_total", "tiny", reason="deadline") == 1
        assert (executions, images) == (1, 1), "the expired request reached the model"
    finally:
        capped.stop()


def test_cancelled_call_is_removed_from_the_queue(server):
    async def scenario(stub):
        before = batch_stats(server, "tiny")
        hold = ModelHold(server, "tiny")
        first = asyncio.ensure_future(call(stub, tensor_request("tiny", 0)))
        await hold.dispatched()
        victim = stub.ModelInfer(tensor_request("tiny", 1, n=4), timeout=30)
        await hold.queued(4)
        victim.cancel()
        await hold.queued(0)
        hold.release.set()
        return before, await first

    before, (first_code, _) = with_stub(server, scenario)
    executions, images, _ = (a - b for a, b in zip(batch_stats(server, "tiny"), before))
    assert first_code == "OK"
    assert (executions, images) == (1, 1), "the cancelled request reached the model"


def test_a_bad_image_fails_alone_while_its_batch_mates_succeed(server):
    rng = np.random.default_rng(3)
    good = cv2.imencode(".png", rng.integers(0, 256, (8, 8), dtype=np.uint8))[1].tobytes()
    bad = b"\xff\xd8\xff\xe0 this is not really a JPEG"

    async def scenario(stub):
        reference = await call(stub, jpeg_request("tiny", good))
        before = batch_stats(server, "tiny")
        hold = ModelHold(server, "tiny")
        first = asyncio.ensure_future(call(stub, tensor_request("tiny", 0)))
        await hold.dispatched()
        good_call = asyncio.ensure_future(call(stub, jpeg_request("tiny", good)))
        other = asyncio.ensure_future(call(stub, tensor_request("tiny", 5, n=2)))
        await hold.queued(3)
        bad_result = await call(stub, jpeg_request("tiny", bad))
        hold.release.set()
        return reference, (await good_call, bad_result, await other), await first, before

    (ref_code, reference), ((good_code, good_out), (bad_code, _), (other_code, _)), _, before = with_stub(
        server, scenario
    )
    executions, images, _ = (a - b for a, b in zip(batch_stats(server, "tiny"), before))
    assert ref_code == good_code == other_code == "OK"
    assert bad_code == "INVALID_ARGUMENT"
    np.testing.assert_array_equal(logits(good_out), logits(reference))
    assert (executions, images) == (2, 4), "the good image and the tensor request should share one batch"
