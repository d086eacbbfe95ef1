"""A loopback TCP proxy that counts round trips, to prove how many a store operation costs.

A round trip starts when the client sends bytes while no earlier request of that
connection is waiting for its answer; the first byte of the answer ends it. A pipeline
of many commands sent in one write is therefore one round trip, as it should be.
"""

from __future__ import annotations

import asyncio
import contextlib


class CountingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream>`` and counts round trips."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.round_trips = 0
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

        async def requests() -> None:
            nonlocal waiting
            while data := await reader.read(1 << 16):
                if not waiting:
                    self.round_trips += 1
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
