"""A loopback TCP proxy to PostgreSQL that makes chosen statements' outcomes ambiguous.

asyncpg sends a statement's text in a Parse message, then (after the server described
it) its Bind/Execute in the next write (with the Parse again when it caches no
statements). The proxy watches the client's writes for ``marker`` (e.g.
``b'end_turn"'``, a part of the SQL text): the write with an Execute message that
carries it, or that follows the one that carried it, executes the statement. Every
``every``-th such execution is forwarded to the server (which applies it), and then, by
``mode``:

* ``"drop"``: the server's answer is read and thrown away, and the client connection is
  closed: the statement was applied, and its caller sees a lost connection;
* ``"stall"``: every answer to every connection is withheld for ``stall`` seconds from
  then on (the caller's timeout fires first), then delivered.

The statement text must travel with each execution for every one to be seen: give the
store's pool ``statement_cache_size=0`` (asyncpg then parses each time).
"""

from __future__ import annotations

import asyncio

from tests._loopback_proxy import LoopbackProxy


class AmbiguousProxy(LoopbackProxy):
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream>``; see the module docstring."""

    def __init__(
        self,
        upstream: int,
        marker: bytes,
        *,
        every: int = 1,
        mode: str = "drop",
        stall: float = 1.0,
    ) -> None:
        assert mode in ("drop", "stall")
        super().__init__(upstream, stall=stall)
        self.marker = marker
        self.every = every
        self.mode = mode
        self.executions = 0  # executions of the marked statement seen
        self.faults = 0  # of which made ambiguous

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        armed = False
        drop_next_answer = asyncio.Event()

        async def requests() -> None:
            nonlocal armed
            while data := await reader.read(1 << 16):
                kinds = _message_kinds(data)
                marked = self.marker in data
                executes = b"E" in kinds and (armed or marked)
                armed = marked and not executes and b"Q" not in kinds
                if executes:
                    self.executions += 1
                    if self.executions % self.every == 0:
                        self.faults += 1
                        if self.mode == "drop":
                            drop_next_answer.set()
                        else:
                            self.stall_answers()
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def answers() -> None:
            while data := await up_reader.read(1 << 16):
                if drop_next_answer.is_set():
                    # Applied by the server: its answer never reaches the caller.
                    writer.close()
                    up_writer.close()
                    return
                await self.pass_answer(writer, data)
            writer.close()  # the server closed: so does the client's side

        await asyncio.gather(requests(), answers())


def _message_kinds(data: bytes) -> list[bytes]:
    """The type bytes of the protocol messages in one client write (type + int32 length)."""
    kinds, i = [], 0
    while i + 5 <= len(data):
        kinds.append(data[i : i + 1])
        i += 1 + int.from_bytes(data[i + 1 : i + 5], "big")
    return kinds
