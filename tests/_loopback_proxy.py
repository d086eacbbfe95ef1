"""The skeleton the tests' TCP proxies share: a server on a free loopback port that
forwards each connection to ``127.0.0.1:<upstream>``, one task per connection.

A subclass says what happens to the bytes (:meth:`LoopbackProxy._forward`); this class
owns the server, the connection tasks and their closing. :meth:`stall_answers` withholds
every answer for a while, for proxies that make a call's outcome ambiguous.
"""

from __future__ import annotations

import asyncio
import contextlib

from typing_extensions import Self


class LoopbackProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream>``."""

    def __init__(self, upstream: int, *, stall: float = 1.0) -> None:
        self.upstream = upstream
        self.port = 0
        self.stall = stall
        self._open = asyncio.Event()  # cleared while answers are withheld
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        self._open.set()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def stall_answers(self) -> None:
        """Withhold every answer, on every connection, for ``stall`` seconds from now."""
        self._open.clear()
        asyncio.get_running_loop().call_later(self.stall, self._open.set)

    async def pass_answer(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Send an answer on to the client once answers are no longer withheld."""
        await self._open.wait()
        writer.write(data)
        await writer.drain()

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Carry one connection's bytes both ways until either side closes."""
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers.update((writer, up_writer))
        try:
            await self._forward(reader, writer, up_reader, up_writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
                self._writers.discard(w)
            self._tasks.discard(task)
