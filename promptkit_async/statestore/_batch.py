"""Coalescing of commands that concurrent tasks issue into shared pipelined round trips."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._concurrency import settle

__all__ = ["Batcher", "Command"]

#: One Redis command: its name and arguments.
Command = tuple[Any, ...]
#: Sends commands in one write and returns one result per command, errors in place.
Executor = Callable[[list[Command]], Awaitable[list[Any]]]


class _Group:
    """One caller's commands, its future, and the batch task that sent them (once sent)."""

    __slots__ = ("batch", "commands", "future")

    def __init__(self, commands: Sequence[Command], future: asyncio.Future[list[Any]]) -> None:
        self.commands = commands
        self.future = future
        self.batch: asyncio.Task[None] | None = None


class Batcher:
    """Sends the command groups submitted during one loop iteration as one pipeline.

    A caller submits a group of commands that must travel together (one operation) and
    awaits its results. Groups submitted while the event loop is busy are joined into
    one batch: one write, one read of all replies, on one connection. One task alone
    still costs exactly one round trip per group; a thousand concurrent tasks cost far
    fewer than one each, which is what keeps the client CPU per turn low.

    At most ``max_in_flight`` batches are on the wire at once; groups submitted
    meanwhile wait for the next one (and make it larger).

    Cancellation: a group whose caller was cancelled before its batch was sent is
    dropped, so it never reaches the server. Once sent it runs to completion; a reader's
    caller just stops waiting, while a write's caller (``write=True``) waits for the
    outcome and then re-raises its cancellation, so a session's next turn never starts
    before this one's save has landed. The batch itself always runs to its end in its
    own task, so a cancelled caller never leaves a half-read connection behind.
    """

    __slots__ = ("_execute", "_in_flight", "_max_in_flight", "_pending", "_scheduled", "_tasks")

    def __init__(self, execute: Executor, max_in_flight: int) -> None:
        self._execute = execute
        self._max_in_flight = max_in_flight
        self._pending: list[_Group] = []
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, commands: Sequence[Command], *, write: bool = False) -> list[Any]:
        """Send ``commands`` in the next batch; their results, errors as values."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        group = _Group(commands, future)
        self._pending.append(group)
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)
        try:
            return await future  # cancelled before its batch is sent: never sent
        except asyncio.CancelledError:
            if write and group.batch is not None:
                # Sent: wait for the outcome (a second cancellation keeps us waiting).
                with contextlib.suppress(asyncio.CancelledError):
                    await settle(group.batch)
            raise

    def _flush(self) -> None:
        self._scheduled = False
        groups = [g for g in self._pending if not g.future.done()]
        self._pending = []
        if not groups:
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(groups))
        for group in groups:
            group.batch = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, groups: list[_Group]) -> None:
        try:
            if len(groups) == 1:
                commands = list(groups[0].commands)
            else:
                commands = [c for group in groups for c in group.commands]
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
