"""Dynamic batching: many small requests in, few large ONNX Runtime runs out.

Why: a CNN run at batch 16 costs far less than 16 runs at batch 1, and camera apps send one
frame at a time. The batcher stacks queued requests (from any client, several images each) on
dim 0, runs them on a free model instance, checks the output batch size and splits the outputs
back by offsets.

Latency rules: a request never waits for a batch to fill when the model is idle. The queue delay
(`max_queue_delay_us`) is spent only when recent traffic says more requests are about to arrive
(the last batch held more requests than are queued now), which is what closed-loop clients under
load look like. Model runs go to the model's thread pool, off the event loop, unless the model
opts in (`batching.inline_run_max_us`): then a batch of a size whose recent runs took at most
`inline_run_max_s` runs on the loop itself, because handing it to the thread and back costs two
thread wake-ups (a few tenths of a millisecond on a 2-core VM), more than a tiny model's whole run.
A size not run yet, or one that ran slower, still goes to the thread, so the loop is never held
longer than about a run already measured to be short. With `preferred_batch_sizes` a batch is cut
back to the largest preferred size its requests reach, and no delay is spent once one can be
formed (Triton's rule). The queue is bounded
in images and in input bytes (RESOURCE_EXHAUSTED when full; a batch comes from the queue, so the
bytes bound one run's input too), deadlines are checked before a request reaches the model, a
cancelled call's queued work is removed, and a failed run fails every request of that batch and
nothing else.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from service.batch_policy import BatchObserver, BatchPolicy, NullObserver
from service.batch_selection import take_batch
from service.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(eq=False)
class _Pending:
    inputs: dict[str, np.ndarray]
    count: int
    nbytes: int
    key: tuple
    future: asyncio.Future
    enqueued: float
    deadline: float | None
    queue_wait: float = field(default=0.0)


class DynamicBatcher:
    """Per-model batching queue in front of `instances` concurrent runs of `run`."""

    def __init__(self, run: RunFn, executor: Executor, policy: BatchPolicy, observer: BatchObserver | None = None):
        self._run = run
        self._executor = executor
        self.policy = policy
        self._observer = observer or NullObserver()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_images = 0
        self._queued_bytes = 0
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.instances)
        self._running: set[asyncio.Task] = set()
        self._expected_requests = 1
        self._last_done = 0.0
        self._run_estimates: dict[int, float] = {}  # batch size -> moving average of its run seconds
        self._closing = False
        self._dispatcher: asyncio.Task | None = None

    def start(self) -> None:
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_loop())

    @property
    def queued_images(self) -> int:
        return self._queued_images

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def running_batches(self) -> int:
        """Batches handed to a model instance and not finished yet (at most `instances`)."""
        return len(self._running)

    @property
    def idle(self) -> bool:
        return not self._queue and not self._running

    async def submit(
        self, inputs: dict[str, np.ndarray], deadline: float | None = None
    ) -> tuple[dict[str, np.ndarray], float]:
        """Queue one request ([n, ...] arrays); returns its outputs and the seconds it waited in the queue.

        `deadline` is absolute `time.monotonic()` seconds, or None.
        """
        if self._closing:
            raise Unavailable("model is shutting down or being unloaded; retry on another replica")
        count = int(next(iter(inputs.values())).shape[0])
        if count > self.policy.max_batch_size:
            raise InvalidArgument(f"batch of {count} exceeds the model's max_batch_size {self.policy.max_batch_size}")
        if self._queued_images + count > self.policy.max_queue_size:
            self._observer.rejected("queue_full")
            raise ResourceExhausted(
                f"model queue is full ({self._queued_images} images queued, "
                f"limit {self.policy.max_queue_size}); retry later"
            )
        nbytes = sum(int(array.nbytes) for array in inputs.values())
        if self._queued_bytes + nbytes > self.policy.max_queue_bytes:
            self._observer.rejected("queue_full")
            raise ResourceExhausted(
                f"model queue is full ({self._queued_bytes} input bytes queued, this request "
                f"{nbytes}, limit {self.policy.max_queue_bytes}); retry later"
            )
        key = _shape_key(inputs)
        future = asyncio.get_running_loop().create_future()
        pending = _Pending(inputs, count, nbytes, key, future, time.monotonic(), deadline)
        self._queue.append(pending)
        self._queued_images += count
        self._queued_bytes += nbytes
        self._observer.queue_depth(self._queued_images)
        self._arrived.set()
        try:
            outputs = await future
        except asyncio.CancelledError:
            self._remove(pending)
            raise
        return outputs, pending.queue_wait

    def _remove(self, pending: _Pending) -> None:
        try:
            self._queue.remove(pending)
        except ValueError:
            return
        self._queued_images -= pending.count
        self._queued_bytes -= pending.nbytes
        self._observer.queue_depth(self._queued_images)

    async def _dispatch_loop(self) -> None:
        """Start a batch whenever the queue has work and an instance is free (the slot passes to
        `_launch`). Batches that follow one another under load mostly start from `_finish`
        instead, which hands its slot straight on."""
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            await self._slots.acquire()
            await self._wait_for_company()
            self._launch()

    def _company_arrived(self) -> bool:
        """Whether the next batch should start now rather than wait for more of the queue delay:
        no delay configured, no recent traffic to suggest company, as many requests queued as the
        last batch held (or a preferred size reached), or the oldest request's delay spent."""
        delay = self.policy.max_queue_delay_s
        if delay <= 0 or not self._queue:
            return True
        if time.monotonic() - self._last_done >= max(0.05, 4 * delay):
            return True
        return self._enough_queued() or time.monotonic() >= self._queue[0].enqueued + delay

    def _next_batch_ready(self) -> bool:
        """Whether a free slot should go straight to a batch of the queue rather than to the dispatcher."""
        return bool(self._queue) and self._company_arrived()

    def _enough_queued(self) -> bool:
        # a batch of a preferred size can be formed: run it now (Triton's rule), else wait for max_batch_size
        enough = min(self.policy.preferred_batch_sizes, default=self.policy.max_batch_size)
        return len(self._queue) >= self._expected_requests or self._queued_images >= enough

    async def _wait_for_company(self) -> None:
        """Under load, wait up to the queue delay for the requests the last batch suggests are coming."""
        if self._company_arrived():
            return
        give_up = self._queue[0].enqueued + self.policy.max_queue_delay_s
        while self._queue and not self._enough_queued():
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take_batch(self) -> list[_Pending]:
        """The next batch off the queue (service/batch_selection.py), with the queue's counts kept."""
        batch, taken = take_batch(self._queue, self.policy.max_batch_size, self.policy.preferred_batch_sizes)
        self._queued_images -= sum(p.count for p in taken)
        self._queued_bytes -= sum(p.nbytes for p in taken)
        self._observer.queue_depth(self._queued_images)
        return batch

    def _launch(self) -> None:
        """Hand the next batch to the model instance whose slot the caller holds, synchronously: the
        run is submitted before the loop does anything else. Requests whose deadline has passed
        fail here instead of reaching the model; when nothing of the batch is left to run, the
        slot goes to the batch after it, or back to the dispatcher."""
        while True:
            batch = self._take_batch()
            live = self._live(batch)
            if live:
                break
            if batch:  # every request of it expired: the model was "done" with them just now
                self._last_done = time.monotonic()
            if not self._next_batch_ready():
                self._slots.release()
                return
        total = sum(p.count for p in live)
        loop = asyncio.get_running_loop()
        try:
            started = time.perf_counter()
            if len(live) == 1:
                merged = live[0].inputs
            else:
                merged = {name: np.concatenate([p.inputs[name] for p in live]) for name in live[0].inputs}
            merge_seconds = time.perf_counter() - started
            run = None if self._runs_inline(total) else loop.run_in_executor(self._executor, _timed, self._run, merged)
        except Exception as exc:  # merging or the hand-off failed: this batch's requests, no one else's
            self._slots.release()
            for pending in live:
                _fail(pending, InternalError(f"inference failed: {type(exc).__name__}: {exc}"))
            return
        task = loop.create_task(self._finish(live, total, merged, merge_seconds, run))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _live(self, batch: list[_Pending]) -> list[_Pending]:
        """The batch's requests still worth running; those past their deadline fail now."""
        now = time.monotonic()
        live = []
        for pending in batch:
            pending.queue_wait = now - pending.enqueued
            if pending.deadline is not None and now >= pending.deadline:
                self._observer.rejected("deadline")
                _fail(
                    pending,
                    DeadlineExceeded("deadline passed while the request was queued; it never reached the model"),
                )
            elif not pending.future.done():
                live.append(pending)
        return live

    async def _finish(
        self,
        live: list[_Pending],
        total: int,
        merged: dict[str, np.ndarray],
        merge_seconds: float,
        run: asyncio.Future | None,
    ) -> None:
        """Wait for the batch's run (or run it here when `run` is None: an inline batch), pass the
        slot on, then answer the batch's requests.

        Why the slot is passed on before anyone is answered: when the next batch is already
        queued it goes to the worker thread at once instead of after this batch's callers and the
        dispatcher have had their turn on the loop. (On 2 cores that changed nothing measurable:
        the time between runs is the worker waiting for the GIL; docs/load-testing.md, "Starting
        batches sooner does not help on two cores".)"""
        outputs: dict[str, np.ndarray] = {}
        error: Exception | None = None
        try:
            try:
                outputs, run_seconds = _timed(self._run, merged) if run is None else await run
                del merged  # the stacked batch is not held while the callers are answered
                if self.policy.inline_run_max_s:
                    self._note_run(total, run_seconds)
                for name, value in outputs.items():
                    if value.shape[:1] != (total,):
                        raise InternalError(
                            f"model returned output '{name}' with batch {value.shape[:1]}, expected {total}"
                        )
                self._expected_requests = len(live)
            except Exception as exc:  # every waiter of this batch gets the error, no one else
                error = (
                    exc
                    if isinstance(exc, ServiceError)
                    else InternalError(f"inference failed: {type(exc).__name__}: {exc}")
                )
        finally:
            self._last_done = time.monotonic()
            if self._next_batch_ready():
                self._launch()
            else:
                self._slots.release()
        if error is not None:
            for pending in live:
                _fail(pending, error)
            return
        started = time.perf_counter()
        offset = 0
        for pending in live:
            part = {name: value[offset : offset + pending.count] for name, value in outputs.items()}
            offset += pending.count
            if not pending.future.done():
                pending.future.set_result(part)
        self._observer.batch_done(total, len(live), run_seconds, merge_seconds, time.perf_counter() - started)

    def _runs_inline(self, images: int) -> bool:
        """Whether a batch of `images` is expected to run in at most the policy's inline budget."""
        if not self.policy.inline_run_max_s:
            return False
        estimate = self._run_estimates.get(images)
        return estimate is not None and estimate <= self.policy.inline_run_max_s

    def _note_run(self, images: int, seconds: float) -> None:
        """Fold one run into its batch size's estimate (a quarter weight: one slow run moves a short
        estimate above the budget at once, and a few fast ones bring it back)."""
        previous = self._run_estimates.get(images)
        self._run_estimates[images] = seconds if previous is None else previous + 0.25 * (seconds - previous)

    async def close(self, drain_timeout: float) -> None:
        """Refuse new requests, let queued and running ones finish (up to the timeout), fail the rest."""
        self._closing = True
        give_up = time.monotonic() + drain_timeout
        while not self.idle and time.monotonic() < give_up:
            await asyncio.sleep(0.01)
        for pending in list(self._queue):
            _fail(pending, Unavailable("server shut down before this request was run"))
        self._queue.clear()
        self._queued_images = 0
        self._queued_bytes = 0
        self._observer.queue_depth(0)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)


def _timed(run: RunFn, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """run(inputs) and its seconds, timed in the worker thread: the model's own time, without the
    hand-off to and from the thread pool (which the request's inference stage includes)."""
    started = time.perf_counter()
    outputs = run(inputs)
    return outputs, time.perf_counter() - started


def _shape_key(inputs: dict[str, np.ndarray]) -> tuple:
    """What requests must share to be stacked: per input, its name, per-item shape and dtype."""
    if len(inputs) == 1:  # the usual case, without sorting
        for name, array in inputs.items():
            return ((name, array.shape[1:], array.dtype),)
    return tuple(sorted((name, array.shape[1:], array.dtype) for name, array in inputs.items()))


def _fail(pending: _Pending, error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)
