"""Loopback TCP proxies: one counts round trips, to prove how many a store operation
costs; one withholds replies, to make a write time out after the server applied it.

A round trip starts when the client sends bytes while no earlier request of that
connection is waiting for its answer; the first byte of the answer ends it. A pipeline
of many commands sent in one write is therefore one round trip, as it should be.
"""

from __future__ import annotations

import asyncio

from tests._loopback_proxy import LoopbackProxy


class CountingProxy(LoopbackProxy):
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream>`` and counts round trips."""

    def __init__(self, upstream: int) -> None:
        super().__init__(upstream)
        self.round_trips = 0
        # (connection number, first bytes) of each round trip, to tell whose it was.
        self.requests: list[tuple[int, bytes]] = []
        self._accepted = 0

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        self._accepted += 1
        connection = self._accepted
        waiting = False

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

        await asyncio.gather(requests(), answers())


class ReplyStallProxy(LoopbackProxy):
    """A loopback TCP proxy to Redis that, the first time it forwards a request holding
    ``marker`` (e.g. the ``end`` script's operation), withholds every reply for ``stall``
    seconds: the command is applied by Redis, but its caller times out waiting (an
    ambiguous outcome), as do the calls right after it."""

    def __init__(self, upstream: int, marker: bytes, stall: float) -> None:
        super().__init__(upstream, stall=stall)
        self.marker = marker
        self.saves_seen = 0

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        async def requests() -> None:
            while data := await reader.read(1 << 16):
                if self.marker in data and not self.saves_seen:
                    self.saves_seen += 1
                    self.stall_answers()
                up_writer.write(data)
                await up_writer.drain()

        async def replies() -> None:
            while data := await up_reader.read(1 << 16):
                await self.pass_answer(writer, data)

        await asyncio.gather(requests(), replies())
