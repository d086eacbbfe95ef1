"""Coalescing of commands that concurrent tasks issue into shared pipelined round trips."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

__all__ = ["Batcher", "Command"]

#: One Redis command: its name and arguments.
Command = tuple[Any, ...]
#: Sends commands in one write and returns one result per command, errors in place.
Executor = Callable[[list[Command]], Awaitable[list[Any]]]


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
    dropped, so it never reaches the server. Once sent it runs to completion on the
    server; the caller just stops waiting. The batch itself always runs to its end in
    its own task, so a cancelled caller never leaves a half-read connection behind.
    """

    __slots__ = ("_execute", "_in_flight", "_max_in_flight", "_pending", "_scheduled", "_tasks")

    def __init__(self, execute: Executor, max_in_flight: int) -> None:
        self._execute = execute
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._scheduled = False
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in the next batch; their results, errors as values."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((commands, future))
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        groups = [g for g in self._pending if not g[1].done()]
        self._pending = []
        if not groups:
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(groups))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, groups: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]) -> None:
        try:
            if len(groups) == 1:
                commands = list(groups[0][0])
            else:
                commands = [c for group, _ in groups for c in group]
            results = await self._execute(commands)
        except asyncio.CancelledError:
            for _, future in groups:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in groups:
                if not future.done():
                    future.set_exception(exc)
        else:
            start = 0
            for group, future in groups:
                end = start + len(group)
                if not future.done():
                    future.set_result(results[start:end])
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
