"""Coalescing of commands that concurrent tasks issue into shared pipelined round trips."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._concurrency import finishing_writes, settle
from ..errors import StoreError

__all__ = ["Batcher", "Command", "Expired", "batch_deadline"]

#: One Redis command: its name and arguments.
Command = tuple[Any, ...]
#: Sends commands in one write and returns one result per command, errors in place.
Executor = Callable[[list[Command]], Awaitable[list[Any]]]

# Each batch runs in a task of its own, so this is set per batch.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "promptkit_batch_deadline", default=None
)


def batch_deadline() -> float | None:
    """Inside an executor: the loop time by which every caller of this batch has given
    up (``None``: some caller waits without a deadline). Past it the executor should
    stop and free what it holds: nobody waits for its results."""
    return _deadline.get()


class Expired(StoreError):
    """A group's deadline passed before its results came back.

    ``sent`` tells whether its batch had left the queue (a write may then have been
    applied) or not (it never will be). Each store translates it into a
    :class:`~promptkit_async.errors.StoreTimeoutError` naming what timed out; it is a
    ``StoreError`` only so that, should it ever escape, it is still a typed error.
    """

    def __init__(self, sent: bool) -> None:
        super().__init__(
            "a store operation's deadline passed before its reply "
            f"({'sent: it may have been applied' if sent else 'never sent'})"
        )
        self.sent = sent


class _Group:
    """One caller's commands, its future, and the batch that sent them (once sent)."""

    __slots__ = ("batch", "commands", "deadline", "future", "sent")

    def __init__(
        self, commands: Sequence[Command], future: asyncio.Future[list[Any]], deadline: float | None
    ) -> None:
        self.commands = commands
        self.future = future
        self.deadline = deadline
        self.sent = False
        self.batch: asyncio.Task[None] | None = None


def _expire(group: _Group) -> None:
    if not group.future.done():
        group.future.set_exception(Expired(group.sent))


class Batcher:
    """Sends the command groups submitted during one loop iteration as one pipeline.

    A caller submits a group of commands that must travel together (one operation) and
    awaits its results. Groups submitted while the event loop is busy are joined into
    one batch: one write, one read of all replies, on one connection. One task alone
    still costs exactly one round trip per group; a thousand concurrent tasks cost far
    fewer than one each, which is what keeps the client CPU per turn low.

    At most ``max_in_flight`` batches are on the wire at once; groups submitted
    meanwhile wait for the next one (and make it larger).

    Deadlines: a group submitted with a ``timeout`` fails with :class:`Expired` once that
    many seconds have passed since the call, wherever it is: waiting in the queue behind
    full in-flight batches, or in its own batch. A timer resolves its future; nothing
    cancels the caller, so a caller's own ``asyncio.timeout`` or ``anyio`` cancel scope
    around the call behaves exactly as it would around any other await. A batch is told
    the latest deadline of its groups, past which nobody waits for it.

    Cancellation: a group whose caller was cancelled (or whose deadline passed) before
    its batch was sent is dropped, so it never reaches the server. Once sent it runs to
    completion on the server and the caller just stops waiting, except a write's caller
    (``write=True``) inside ``finish_sent_writes()`` (a turn's save): it waits for its
    batch to end and then re-raises its cancellation, so the session's next turn never
    starts before this one's save has landed. The batch itself always runs to its end in
    its own task, so a cancelled caller never leaves a half-read connection behind.
    """

    __slots__ = ("_execute", "_in_flight", "_max_in_flight", "_pending", "_scheduled", "_tasks")

    def __init__(self, execute: Executor, max_in_flight: int) -> None:
        self._execute = execute
        self._max_in_flight = max_in_flight
        self._pending: list[_Group] = []
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(
        self, commands: Sequence[Command], timeout: float | None = None, *, write: bool = False
    ) -> list[Any]:
        """Send ``commands`` in the next batch; their results, errors as values.

        Raises:
            Expired: ``timeout`` seconds passed (counted from this call) first.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if timeout is None:
            group = _Group(commands, future, None)
            timer = None
        else:
            deadline = loop.time() + timeout
            group = _Group(commands, future, deadline)
            timer = loop.call_at(deadline, _expire, group)
        self._pending.append(group)
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)
        try:
            return await future  # cancelled before its batch is sent: never sent
        except asyncio.CancelledError:
            if write and group.batch is not None and finishing_writes.get():
                # Sent: wait for the outcome (a second cancellation keeps us waiting).
                with contextlib.suppress(asyncio.CancelledError):
                    await settle(group.batch)
            raise
        finally:
            if timer is not None:
                timer.cancel()
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: a cancelled caller leaves no warning

    def _flush(self) -> None:
        self._scheduled = False
        groups = [g for g in self._pending if not g.future.done()]
        self._pending = []
        if not groups:
            return
        deadline: float | None = None
        for group in groups:
            group.sent = True
            if group.deadline is None:
                deadline = None
                break
            deadline = group.deadline if deadline is None else max(deadline, group.deadline)
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(groups, deadline))
        for group in groups:
            group.batch = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, groups: list[_Group], deadline: float | None) -> None:
        try:
            if len(groups) == 1:
                commands = list(groups[0].commands)
            else:
                commands = [c for group in groups for c in group.commands]
            _deadline.set(deadline)
            results = await self._execute(commands)
        except asyncio.CancelledError:
            for group in groups:
                group.future.cancel()
            raise
        except Exception as exc:
            for group in groups:
                if not group.future.done():
                    group.future.set_exception(exc)
        else:
            start = 0
            for group in groups:
                end = start + len(group.commands)
                if not group.future.done():
                    group.future.set_result(results[start:end])
                start = end
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def drain(self) -> None:
        """Wait until every submitted group has been answered."""
        while self._tasks or self._pending or self._scheduled:
            if self._tasks:
                await asyncio.wait(set(self._tasks))
            else:
                await asyncio.sleep(0)  # let the scheduled flush start its batch
