"""Concurrency helpers shared by every layer (saves that must finish once begun)."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

__all__ = ["finish_shielded"]

T = TypeVar("T")


@types.coroutine
def _resume(coro: Coroutine[Any, Any, T], signal: Any) -> Generator[Any, Any, T]:
    """Go on running ``coro``, started by hand and now waiting for ``signal``."""
    while True:
        try:
            yield signal
        except BaseException as exc:
            try:
                signal = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                signal = coro.send(None)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]


async def _finish(coro: Coroutine[Any, Any, T], signal: Any) -> T:
    return await _resume(coro, signal)


async def finish_shielded(work: Awaitable[T]) -> T:
    """Await ``work`` to completion even if the caller is cancelled meanwhile.

    A cancellation that arrives during the wait is re-raised once ``work`` is done, so
    a save that has begun is never cut in half. A coroutine runs inline as far as it
    gets without waiting (an in-memory save never waits: no task at all); only the rest,
    if any, runs in a task of its own, shielded from the caller's cancellation.
    """
    if type(work) is types.CoroutineType:
        try:
            signal = work.send(None)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        task: asyncio.Future[T] = asyncio.ensure_future(_finish(work, signal))
    else:
        task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                # The work itself was cancelled (not just us): propagate.
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
