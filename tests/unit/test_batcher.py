"""DynamicBatcher with a plain numpy function as the model: merge/split, grouping, failures, limits.

Batches are made deterministic with a gate: the first run blocks in its worker thread until the
test opens the gate, so everything submitted meanwhile is queued, and the next run takes it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import BatchPolicy, DynamicBatcher
from service.errors import DeadlineExceeded, InternalError, InvalidArgument, ResourceExhausted, Unavailable


class GatedModel:
    """y = 2x + 1 per row; records every batch; the first run waits for `gate` when `hold` is set."""

    def __init__(self, hold: bool = True, fail_width: int | None = None, wrong_batch: bool = False):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.hold = hold
        self.fail_width = fail_width
        self.wrong_batch = wrong_batch
        self.batches: list[np.ndarray] = []
        self._first = True

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.copy())
        self.started.set()
        if self._first and self.hold:
            self._first = False
            assert self.gate.wait(10), "test never opened the gate"
        if self.fail_width is not None and x.shape[1] == self.fail_width:
            raise ValueError("this shape makes the model fail")
        y = 2 * x + 1
        return {"y": y[:-1] if self.wrong_batch and len(y) > 1 else y, "rowsum": x.reshape(len(x), -1).sum(axis=1)}

    @property
    def rows_run(self) -> int:
        return sum(len(b) for b in self.batches)


class Recorder:
    def __init__(self):
        self.batches: list[tuple[int, int]] = []
        self.seconds: list[float] = []
        self.rejections: list[str] = []
        self.depths: list[int] = []

    def batch_done(self, images, requests, seconds, merge_seconds, split_seconds):
        self.batches.append((images, requests))
        self.seconds.append(seconds)

    def rejected(self, reason):
        self.rejections.append(reason)

    def queue_depth(self, images):
        self.depths.append(images)


def run(coroutine_fn, model: GatedModel, policy: BatchPolicy | None = None, observer: Recorder | None = None):
    """Run `coroutine_fn(batcher)` on a fresh loop with a started batcher; closes everything."""

    async def main():
        with ThreadPoolExecutor(max_workers=(policy or BatchPolicy()).instances) as pool:
            batcher = DynamicBatcher(model, pool, policy or BatchPolicy(max_queue_delay_s=0.0), observer)
            batcher.start()
            try:
                return await coroutine_fn(batcher)
            finally:
                model.gate.set()
                await batcher.close(drain_timeout=2.0)

    return asyncio.run(main())


async def wait_started(model: GatedModel) -> None:
    for _ in range(2000):
        if model.started.is_set():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the model never started")


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def rows(n: int, width: int = 3, start: float = 0.0) -> dict[str, np.ndarray]:
    return {"x": (start + np.arange(n * width, dtype=np.float32)).reshape(n, width)}


async def queued_behind_a_held_run(
    batcher, model: GatedModel, queued: list[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """Hold the model with a first request, queue `queued` meanwhile, release: their outputs.

    Everything queued is there when the next batch is taken, so the batches are deterministic."""
    first = asyncio.create_task(batcher.submit(rows(1, start=1000)))
    await wait_started(model)
    tasks = [asyncio.create_task(batcher.submit(x)) for x in queued]
    await settle()
    model.gate.set()
    results = await asyncio.gather(*tasks)
    await first
    return [outputs for outputs, _ in results]


def test_requests_merge_into_one_batch_and_split_back_exactly():
    model, observer = GatedModel(), Recorder()

    inputs = [rows(n, start=100 * i) for i, n in enumerate((1, 3, 2, 1))]

    async def scenario(batcher):
        return await queued_behind_a_held_run(batcher, model, inputs)

    outputs = run(scenario, model, observer=observer)
    assert [len(b) for b in model.batches] == [1, 7]
    assert observer.batches == [(1, 1), (7, 4)]
    for x, out in zip(inputs, outputs):
        np.testing.assert_array_equal(out["y"], 2 * x["x"] + 1)
        np.testing.assert_array_equal(out["rowsum"], x["x"].sum(axis=1))


def test_max_batch_size_is_never_exceeded():
    model = GatedModel()

    async def scenario(batcher):
        await queued_behind_a_held_run(batcher, model, [rows(1, start=i) for i in range(10)])

    run(scenario, model, BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0))
    assert [len(b) for b in model.batches] == [1, 4, 4, 2]


def test_different_shapes_go_in_separate_batches():
    model = GatedModel()

    shapes = [3, 5, 3, 5, 3]

    async def scenario(batcher):
        return await queued_behind_a_held_run(batcher, model, [rows(1, width=w, start=i) for i, w in enumerate(shapes)])

    results = run(scenario, model)
    assert [b.shape for b in model.batches[1:]] == [(3, 3), (2, 5)]
    for i, (w, out) in enumerate(zip(shapes, results)):
        np.testing.assert_array_equal(out["y"], 2 * rows(1, width=w, start=i)["x"] + 1)


def test_a_failed_batch_fails_only_its_own_requests():
    model = GatedModel(fail_width=5)

    async def scenario(batcher):
        first = asyncio.create_task(batcher.submit(rows(1)))
        await wait_started(model)
        bad = [asyncio.create_task(batcher.submit(rows(1, width=5))) for _ in range(2)]
        good = asyncio.create_task(batcher.submit(rows(2, width=3, start=7)))
        await settle()
        model.gate.set()
        await first
        return await asyncio.gather(*bad, return_exceptions=True), await good

    failures, (out, _) = run(scenario, model)
    assert all(isinstance(f, InternalError) and "this shape makes the model fail" in f.message for f in failures)
    np.testing.assert_array_equal(out["y"], 2 * rows(2, start=7)["x"] + 1)


class RecordingPool(ThreadPoolExecutor):
    """A thread pool that notes, in the test's event log, each batch handed to it (on the loop)."""

    def __init__(self, log: list[str]):
        super().__init__(max_workers=1)
        self.log = log

    def submit(self, fn, /, *args, **kwargs):
        self.log.append("handed to the model")
        return super().submit(fn, *args, **kwargs)


def test_the_next_queued_batch_goes_to_the_model_before_the_last_one_is_answered():
    """A finished run passes its instance straight to the queued batch: the model is not idle while
    the loop answers the finished batch's callers (and reads their next requests)."""
    model, log = GatedModel(), []

    async def answered(batcher, name: str, inputs):
        outputs, _ = await batcher.submit(inputs)
        log.append(f"{name} answered")
        return outputs

    async def main():
        with RecordingPool(log) as pool:
            batcher = DynamicBatcher(model, pool, BatchPolicy(max_queue_delay_s=0.0))
            batcher.start()
            first = asyncio.create_task(answered(batcher, "first", rows(1, start=1)))
            await wait_started(model)
            second = asyncio.create_task(answered(batcher, "second", rows(2, start=5)))
            await settle()
            model.gate.set()
            outputs = await asyncio.gather(first, second)
            await batcher.close(drain_timeout=2.0)
            return outputs

    first, second = asyncio.run(main())
    assert log == ["handed to the model", "handed to the model", "first answered", "second answered"]
    np.testing.assert_array_equal(first["y"], 2 * rows(1, start=1)["x"] + 1)
    np.testing.assert_array_equal(second["y"], 2 * rows(2, start=5)["x"] + 1)


def test_a_batch_the_model_cannot_be_handed_fails_its_requests_instead_of_hanging():
    model = GatedModel(hold=False)

    async def main():
        pool = ThreadPoolExecutor(max_workers=1)
        batcher = DynamicBatcher(model, pool, BatchPolicy(max_queue_delay_s=0.0))
        batcher.start()
        pool.shutdown()  # run_in_executor now raises: the hand-off itself fails
        try:
            for _ in range(2):  # the instance is free again after each failure
                with pytest.raises(InternalError, match="inference failed: RuntimeError"):
                    await asyncio.wait_for(batcher.submit(rows(1)), 5)
        finally:
            await batcher.close(drain_timeout=2.0)

    asyncio.run(main())
    assert model.batches == []


def test_wrong_output_batch_size_is_an_internal_error_for_that_batch():
    model = GatedModel(hold=False, wrong_batch=True)

    async def scenario(batcher):
        outputs, _ = await batcher.submit(rows(1))  # a batch of 1 is returned whole
        with pytest.raises(InternalError, match="expected 2"):
            await batcher.submit(rows(2))
        return outputs

    assert run(scenario, model)["y"].shape == (1, 3)


def test_full_queue_is_refused_at_once():
    model, observer = GatedModel(), Recorder()

    async def scenario(batcher):
        first = asyncio.create_task(batcher.submit(rows(1)))
        await wait_started(model)
        queued = [asyncio.create_task(batcher.submit(rows(2))) for _ in range(2)]
        await settle()
        started = time.perf_counter()
        with pytest.raises(ResourceExhausted, match="queue is full"):
            await batcher.submit(rows(1))
        refused_in = time.perf_counter() - started
        model.gate.set()
        await asyncio.gather(first, *queued)
        return refused_in

    refused_in = run(scenario, model, BatchPolicy(max_queue_size=4, max_queue_delay_s=0.0), observer)
    assert refused_in < 0.05
    assert observer.rejections == ["queue_full"]


def test_queue_bytes_are_bounded_beside_the_image_count():
    """Two queued requests of 24 bytes fill a 48-byte queue although images would still fit; the
    bytes come back when the queue drains."""
    model, observer = GatedModel(), Recorder()

    async def scenario(batcher):
        first = asyncio.create_task(batcher.submit(rows(1)))  # running: not counted in the queue
        await wait_started(model)
        queued = [asyncio.create_task(batcher.submit(rows(2))) for _ in range(2)]  # 2 x 2 x 3 float32
        await settle()
        assert batcher.queued_bytes == 48
        with pytest.raises(ResourceExhausted, match="48 input bytes queued, this request 12, limit 48"):
            await batcher.submit(rows(1))
        model.gate.set()
        await asyncio.gather(first, *queued)
        assert batcher.queued_bytes == 0
        await batcher.submit(rows(4))  # 48 bytes alone fit again

    run(scenario, model, BatchPolicy(max_queue_size=1024, max_queue_bytes=48, max_queue_delay_s=0.0), observer)
    assert observer.rejections == ["queue_full"]


def test_request_over_max_batch_size_is_invalid():
    async def scenario(batcher):
        with pytest.raises(InvalidArgument, match="exceeds the model's max_batch_size 4"):
            await batcher.submit(rows(5))

    run(scenario, GatedModel(hold=False), BatchPolicy(max_batch_size=4))


def test_expired_deadline_is_dropped_before_the_model_runs_it():
    model, observer = GatedModel(), Recorder()

    async def scenario(batcher):
        first = asyncio.create_task(batcher.submit(rows(1)))
        await wait_started(model)
        doomed = asyncio.create_task(batcher.submit(rows(1, start=500), deadline=time.monotonic() + 0.05))
        alive = asyncio.create_task(batcher.submit(rows(1, start=600), deadline=time.monotonic() + 30))
        await asyncio.sleep(0.1)
        model.gate.set()
        with pytest.raises(DeadlineExceeded, match="never reached the model"):
            await doomed
        await asyncio.gather(first, alive)

    run(scenario, model, observer=observer)
    assert model.rows_run == 2
    assert not any((b == 500).any() for b in model.batches)
    assert observer.rejections == ["deadline"]


def test_cancelled_request_is_removed_from_the_queue():
    model = GatedModel()

    async def scenario(batcher):
        first = asyncio.create_task(batcher.submit(rows(1)))
        await wait_started(model)
        victim = asyncio.create_task(batcher.submit(rows(3, start=500)))
        await settle()
        assert batcher.queued_images == 3
        victim.cancel()
        await settle()
        assert batcher.queued_images == 0
        model.gate.set()
        await first
        await batcher.submit(rows(1, start=700))

    run(scenario, model)
    assert model.rows_run == 2
    assert not any((b == 500).any() for b in model.batches)


def test_lone_request_does_not_wait_for_the_queue_delay():
    model = GatedModel(hold=False)

    async def scenario(batcher):
        took = []
        for _ in range(3):  # also right after a finished batch ("recent traffic")
            started = time.perf_counter()
            await batcher.submit(rows(1))
            took.append(time.perf_counter() - started)
        return took

    took = run(scenario, model, BatchPolicy(max_queue_delay_s=0.3))
    assert max(took) < 0.1, took


def test_close_drains_queued_work_then_refuses_new_requests():
    model = GatedModel()

    async def scenario(batcher):
        first = asyncio.create_task(batcher.submit(rows(1)))
        await wait_started(model)
        queued = [asyncio.create_task(batcher.submit(rows(1, start=i))) for i in range(3)]
        await settle()
        closing = asyncio.create_task(batcher.close(drain_timeout=5.0))
        await settle()
        with pytest.raises(Unavailable):
            await batcher.submit(rows(1))
        model.gate.set()
        await closing
        return await asyncio.gather(first, *queued)

    results = run(scenario, model)
    assert len(results) == 4 and model.rows_run == 4


def test_close_fails_what_cannot_drain_in_time():
    model = GatedModel()

    async def scenario(batcher):
        first = asyncio.create_task(batcher.submit(rows(1)))
        await wait_started(model)
        stuck = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        await batcher.close(drain_timeout=0.05)
        with pytest.raises(Unavailable, match="shut down"):
            await stuck
        model.gate.set()
        await first

    run(scenario, model)


def test_preferred_batch_sizes_cut_a_batch_at_the_largest_one_reached():
    """Triton's rule: of the requests that fit, the batch is cut back to the largest preferred size
    reached exactly; with none reached it is as large as fits. What is cut off runs next, in order."""
    model = GatedModel()

    inputs = [rows(n, start=100 * i) for i, n in enumerate((3, 2, 3, 1, 2, 2, 1))]

    async def scenario(batcher):
        return await queued_behind_a_held_run(batcher, model, inputs)

    outputs = run(scenario, model, BatchPolicy(max_batch_size=16, max_queue_delay_s=0.0, preferred_batch_sizes=(4, 8)))
    # queued 3+2+3+1+2+2+1: 8 is reached after three requests (cut there; 14 would fit), then
    # 1+2+2 = 5 passes 4 without hitting it exactly and the last request makes 6, below 8: all of it
    assert [len(b) for b in model.batches] == [1, 8, 6]
    np.testing.assert_array_equal(model.batches[1], np.concatenate([x["x"] for x in inputs[:3]]))
    for x, out in zip(inputs, outputs):
        np.testing.assert_array_equal(out["y"], 2 * x["x"] + 1)


def test_a_preferred_cut_keeps_the_queue_order_across_shapes():
    model = GatedModel()

    async def scenario(batcher):
        await queued_behind_a_held_run(
            batcher, model, [rows(1, width=w, start=i) for i, w in enumerate([3, 5, 3, 3, 5])]
        )

    run(scenario, model, BatchPolicy(max_batch_size=8, max_queue_delay_s=0.0, preferred_batch_sizes=(2,)))
    # width 3 first: the 1st and 3rd requests make 2 (cut); then the oldest left is width 5 (2nd and 5th), then the 4th
    assert [(b.shape, b[0, 0]) for b in model.batches[1:]] == [((2, 3), 0.0), ((2, 5), 1.0), ((1, 3), 3.0)]


def test_a_formed_preferred_batch_does_not_wait_for_the_queue_delay():
    """Under load (recent traffic, the last batch held 6 requests) the batcher waits up to the queue
    delay for as many requests to arrive, but not once a batch of a preferred size can be formed."""
    model = GatedModel()

    async def scenario(batcher):
        await queued_behind_a_held_run(batcher, model, [rows(1, start=i) for i in range(6)])
        started = time.perf_counter()
        await asyncio.gather(*(batcher.submit(rows(1, start=i)) for i in range(2)))
        return time.perf_counter() - started

    took = run(scenario, model, BatchPolicy(max_batch_size=8, max_queue_delay_s=2.0, preferred_batch_sizes=(2, 6)))
    assert [len(b) for b in model.batches] == [1, 6, 2]
    assert took < 1.0, took


def test_execution_time_is_the_models_own_not_the_wait_for_a_worker_thread():
    """The observer gets the run's time measured in the worker thread: a batch that first waits
    0.5 s for the pool's only thread (busy with other work) still reports about its 20 ms run."""
    observer = Recorder()

    def slow_model(inputs):
        time.sleep(0.02)
        return {"y": inputs["x"] * 2}

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = DynamicBatcher(slow_model, pool, BatchPolicy(max_queue_delay_s=0.0), observer)
            batcher.start()
            busy = asyncio.get_running_loop().run_in_executor(pool, time.sleep, 0.5)
            started = time.perf_counter()
            await batcher.submit(rows(1))
            waited = time.perf_counter() - started
            await busy
            await batcher.close(drain_timeout=1.0)
            return waited

    waited = asyncio.run(main())
    assert waited >= 0.5 and len(observer.seconds) == 1
    assert 0.02 <= observer.seconds[0] < 0.25, observer.seconds


class ThreadNotingModel:
    """y = x; records the thread each batch ran on; sleeps `seconds[batch size]` (default none)."""

    def __init__(self, seconds: dict[int, float] | None = None):
        self.seconds = dict(seconds or {})
        self.threads: list[tuple[int, int]] = []  # (batch size, thread id)

    def __call__(self, inputs):
        x = inputs["x"]
        self.threads.append((len(x), threading.get_ident()))
        time.sleep(self.seconds.get(len(x), 0.0))
        return {"y": x.copy()}


def run_one_by_one(model: ThreadNotingModel, policy: BatchPolicy, sizes: list[int]) -> int:
    """Submit batches of `sizes` one after another (each answered before the next); the loop's thread id."""

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = DynamicBatcher(model, pool, policy)
            batcher.start()
            try:
                for size in sizes:
                    outputs, _ = await batcher.submit(rows(size))
                    np.testing.assert_array_equal(outputs["y"], rows(size)["x"])
            finally:
                await batcher.close(drain_timeout=2.0)
        return threading.get_ident()

    return asyncio.run(main())


def test_a_batch_size_measured_to_run_fast_runs_on_the_event_loop():
    """The first run of each size goes to the model's thread (nothing is known of it); once a size
    has run within the inline budget, its next batches run on the loop: no thread hand-off."""
    model = ThreadNotingModel()
    loop_thread = run_one_by_one(model, BatchPolicy(max_queue_delay_s=0.0, inline_run_max_s=0.05), [1, 1, 1, 2, 2])
    on_loop = [(size, thread == loop_thread) for size, thread in model.threads]
    assert on_loop == [(1, False), (1, True), (1, True), (2, False), (2, True)]


def test_slow_sizes_and_an_inline_budget_of_zero_keep_every_run_off_the_loop():
    slow = ThreadNotingModel({1: 0.03})
    loop_thread = run_one_by_one(slow, BatchPolicy(max_queue_delay_s=0.0, inline_run_max_s=0.01), [1, 1, 1])
    assert all(thread != loop_thread for _, thread in slow.threads)
    off = ThreadNotingModel()
    loop_thread = run_one_by_one(off, BatchPolicy(max_queue_delay_s=0.0), [1, 1, 1])
    assert all(thread != loop_thread for _, thread in off.threads)


def test_a_size_that_ran_slow_on_the_loop_goes_back_to_the_thread():
    """One slow run lifts its size's estimate over the budget at once; fast runs bring it back."""
    model = ThreadNotingModel()
    policy = BatchPolicy(max_queue_delay_s=0.0, inline_run_max_s=0.01)

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = DynamicBatcher(model, pool, policy)
            batcher.start()
            try:
                for step in range(12):
                    model.seconds[1] = 0.08 if step == 2 else 0.0
                    await batcher.submit(rows(1))
            finally:
                await batcher.close(drain_timeout=2.0)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    on_loop = [thread == loop_thread for _, thread in model.threads]
    assert on_loop[:4] == [False, True, True, False]  # measured, fast, slow (it ran inline), then off
    assert on_loop[-1] is True  # the fast runs since brought the estimate back under the budget
