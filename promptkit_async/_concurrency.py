"""Concurrency helpers shared by every layer: work that must finish once begun.

Both helpers run the work in a task of its own, so code inside it (a store's ``append``
with its own ``asyncio.timeout``, say) runs in one task from start to end, exactly as
it would in plain asyncio; the caller only waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

__all__ = ["finish_sent_writes", "finish_shielded", "finishing_writes", "settle"]

#: True inside :func:`finish_sent_writes`: a store write that was already sent completes
#: even if its caller is cancelled (the cancellation is re-raised once it has). Stores
#: read it where their writes leave for the server (the batcher); elsewhere a cancelled
#: caller just stops waiting, as with any await.
finishing_writes: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "promptkit_finishing_writes", default=False
)


@contextlib.contextmanager
def finish_sent_writes() -> Iterator[None]:
    """Within this block, store writes that were sent finish before a cancellation."""
    token = finishing_writes.set(True)
    try:
        yield
    finally:
        finishing_writes.reset(token)


T = TypeVar("T")


async def settle(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` is done, even if the caller is cancelled meanwhile.

    Does not raise the task's outcome (read it with ``task.result()``). A cancellation of
    the caller that arrives during the wait is re-raised once the task is done.
    """
    cancelled = False
    while not task.done():
        try:
            # asyncio.wait never cancels what it waits for, unlike ``await task``.
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def finish_shielded(work: Awaitable[T]) -> T:
    """Await ``work`` to completion even if the caller is cancelled meanwhile.

    ``work`` runs in a task of its own (a save that has begun is never cut in half). A
    cancellation of the caller during the wait is re-raised once ``work`` is done; an
    error of ``work`` itself is raised as it is (like an error in a ``finally`` block).
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done():
            raise  # the work itself was cancelled (not by us): propagate
        # We were cancelled: let the work finish, then re-raise.
        with contextlib.suppress(asyncio.CancelledError):
            await settle(task)
        task.result()  # the work's own error wins, as in a finally block
        raise
