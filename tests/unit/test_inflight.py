"""service/inflight.py: the server-wide budget on original-size image bytes, on the real event loop."""

from __future__ import annotations

import asyncio
import time

import cv2
import numpy as np
import pytest

from service.errors import DeadlineExceeded, ResourceExhausted
from service.inflight import InflightBudget, original_size_bytes


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def later(seconds: float) -> float:
    return time.monotonic() + seconds


def test_a_request_waits_for_room_then_proceeds():
    async def scenario():
        budget = InflightBudget(100)
        order = []

        async def hold(name, nbytes, seconds):
            async with budget.reserve(nbytes, later(5)):
                order.append(f"{name} in, {budget.used} used")
                await asyncio.sleep(seconds)
            order.append(f"{name} out")

        first = asyncio.create_task(hold("a", 70, 0.2))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, hold("b", 50, 0))
        return order, budget.used

    order, used = run(scenario())
    assert order == ["a in, 70 used", "a out", "b in, 50 used", "b out"]
    assert used == 0


def test_a_request_that_alone_exceeds_the_budget_is_refused_at_once():
    async def scenario():
        budget = InflightBudget(100)
        with pytest.raises(ResourceExhausted, match="over the server's --max-decoded-bytes 100"):
            async with budget.reserve(101, later(5)):
                pass
        return budget.used

    assert run(scenario()) == 0


def test_the_reservation_is_released_when_the_body_fails():
    async def scenario():
        budget = InflightBudget(100)
        with pytest.raises(ValueError):
            async with budget.reserve(80, later(5)):
                raise ValueError("decode failed")
        async with budget.reserve(100, later(5)):
            return budget.used

    assert run(scenario()) == 100


def test_a_waiter_whose_deadline_passes_gets_deadline_exceeded_and_takes_nothing():
    async def scenario():
        budget = InflightBudget(100)
        async with budget.reserve(60, later(5)):
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="waiting for 60 bytes"):
                async with budget.reserve(60, later(0.1)):
                    pass
            waited = time.monotonic() - started
            assert budget.used == 60
        return waited, budget.used

    waited, used = run(scenario())
    assert 0.05 < waited < 2 and used == 0


def test_a_cancelled_waiter_leaves_the_line_and_lets_smaller_ones_in():
    async def scenario():
        budget = InflightBudget(100)
        entered, leave = [], asyncio.Event()

        async def hold(name, nbytes):
            async with budget.reserve(nbytes, later(5)):
                entered.append(name)
                await leave.wait()

        async with budget.reserve(60, later(5)):
            big = asyncio.create_task(hold("big", 90))
            await asyncio.sleep(0.01)
            small = asyncio.create_task(hold("small", 30))
            await asyncio.sleep(0.01)
            assert entered == []  # first come, first served: the small one waits behind the large one
            big.cancel()
            await asyncio.sleep(0.01)
            assert entered == ["small"] and budget.used == 90
        leave.set()
        await small
        return budget.used

    assert run(scenario()) == 0


def png(width: int, height: int) -> bytes:
    return cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))[1].tobytes()


def test_prices_from_the_headers():
    images = [png(40, 30), png(20, 10)]
    assert original_size_bytes(images, False, 0, max_pixels=10_000) == 40 * 30 * 3
    assert original_size_bytes(images, True, 0, max_pixels=10_000) == (1200 + 200) * 3
    assert original_size_bytes(images, False, 1, max_pixels=10_000) == 1200 * 3 + 1400
    assert original_size_bytes([b"not an image"], True, 1, max_pixels=10_000) == 0
    # over the pixel limit: decoding refuses it (INVALID_ARGUMENT), so it reserves nothing
    assert original_size_bytes(images, True, 1, max_pixels=1000) == 200 * 3 + 200
