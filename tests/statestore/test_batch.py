"""The batcher under deadlines: what is sent, what is dropped, who is told what.

A real ``Batcher`` around an executor the test controls (an event it waits on), so the
order of events is forced, never slept into.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import anyio
import pytest

from promptkit_async.statestore._batch import Batcher, Command, Expired, batch_deadline


class Executor:
    """Records each batch and its deadline; holds every batch until ``release``."""

    def __init__(self) -> None:
        self.batches: list[list[Command]] = []
        self.deadlines: list[float | None] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, commands: list[Command]) -> list[Any]:
        self.batches.append(commands)
        self.deadlines.append(batch_deadline())
        self.started.set()
        await self.release.wait()
        return [f"reply to {c[0]}" for c in commands]


async def test_a_group_that_expires_in_the_queue_is_never_sent() -> None:
    execute = Executor()
    batcher = Batcher(execute, max_in_flight=1)
    first = asyncio.ensure_future(batcher.call([("first",)], timeout=30))
    await execute.started.wait()  # the first batch is on the wire and stays there
    with pytest.raises(Expired) as caught:
        await batcher.call([("queued",)], timeout=0.05)
    assert caught.value.sent is False
    execute.release.set()
    assert await first == ["reply to first"]
    await batcher.drain()
    assert execute.batches == [[("first",)]]  # "queued" never reached the executor


async def test_a_group_that_expires_once_sent_says_so_and_its_batch_learns_the_deadline() -> None:
    execute = Executor()
    batcher = Batcher(execute, max_in_flight=1)
    loop = asyncio.get_running_loop()
    before = loop.time()
    with pytest.raises(Expired) as caught:
        await asyncio.gather(
            batcher.call([("a",)], timeout=0.05), batcher.call([("b",)], timeout=0.1)
        )
    assert caught.value.sent is True
    assert execute.batches == [[("a",), ("b",)]]  # one batch for both
    deadline = execute.deadlines[0]
    assert deadline is not None
    assert before + 0.1 <= deadline <= loop.time() + 0.1  # the later of the two
    execute.release.set()
    await batcher.drain()


async def test_a_batch_with_a_caller_without_timeout_has_no_deadline() -> None:
    execute = Executor()
    execute.release.set()
    batcher = Batcher(execute, max_in_flight=1)
    await asyncio.gather(batcher.call([("a",)], timeout=1), batcher.call([("b",)]))
    assert execute.deadlines == [None]


async def within_asyncio(seconds: float, batcher: Batcher) -> None:
    async with asyncio.timeout(seconds):
        await batcher.call([("slow",)], timeout=30)


async def within_anyio(seconds: float, batcher: Batcher) -> None:
    with anyio.fail_after(seconds):
        await batcher.call([("slow",)], timeout=30)


# asyncio.timeout is 3.11+; anyio's scopes on 3.10 (no Task.uncancel) leave tasks cancelling.
@pytest.mark.skipif(sys.version_info < (3, 11), reason="needs Python 3.11+")
@pytest.mark.parametrize("within", [within_asyncio, within_anyio])
async def test_a_callers_own_timeout_is_the_callers(within: Any) -> None:
    """The caller's scope fires first: TimeoutError from the scope, never Expired, and
    no cancellation is left behind or swallowed."""
    execute = Executor()
    batcher = Batcher(execute, max_in_flight=1)
    with pytest.raises(TimeoutError) as caught:
        await within(0.05, batcher)
    assert not isinstance(caught.value, Expired)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    execute.release.set()
    await batcher.drain()
