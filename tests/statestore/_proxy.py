"""Loopback TCP proxies: one counts round trips, to prove how many a store operation
costs; one withholds replies, to make a write time out after the server applied it.

A round trip starts when the client sends bytes while no earlier request of that
connection is waiting for its answer; the first byte of the answer ends it. A pipeline
of many commands sent in one write is therefore one round trip, as it should be.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


class CountingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream>`` and counts round trips."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.round_trips = 0
        # (connection number, first bytes) of each round trip, to tell whose it was.
        self.requests: list[tuple[int, bytes]] = []
        self._accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers.update((writer, up_writer))
        waiting = False
        self._accepted += 1
        connection = self._accepted

        async def requests() -> None:
            nonlocal waiting
            while data := await reader.read(1 << 16):
                if not waiting:
                    self.round_trips += 1
                    self.requests.append((connection, data[:120]))
                    waiting = True
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def answers() -> None:
            nonlocal waiting
            while data := await up_reader.read(1 << 16):
                waiting = False
                writer.write(data)
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(requests(), answers())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
                self._writers.discard(w)
            self._tasks.discard(task)


class ReplyStallProxy:
    """A loopback TCP proxy to Redis that, the first time it forwards a request holding
    ``marker`` (e.g. the ``end`` script's operation), withholds every reply for ``stall``
    seconds: the command is applied by Redis, but its caller times out waiting (an
    ambiguous outcome), as do the calls right after it."""

    def __init__(self, upstream: int, marker: bytes, stall: float) -> None:
        self.upstream = upstream
        self.marker = marker
        self.stall = stall
        self.port = 0
        self.saves_seen = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> ReplyStallProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _reopen_later(self) -> None:
        self._open.clear()
        asyncio.get_running_loop().call_later(self.stall, self._open.set)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def requests() -> None:
            while data := await reader.read(1 << 16):
                if self.marker in data and not self.saves_seen:
                    self.saves_seen += 1
                    self._reopen_later()
                up_writer.write(data)
                await up_writer.drain()

        async def replies() -> None:
            while data := await up_reader.read(1 << 16):
                await self._open.wait()
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(requests(), replies())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._tasks.discard(task)
