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
import contextlib


class AmbiguousProxy:
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
        self.upstream = upstream
        self.marker = marker
        self.every = every
        self.mode = mode
        self.stall = stall
        self.port = 0
        self.executions = 0  # executions of the marked statement seen
        self.faults = 0  # of which made ambiguous
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> AmbiguousProxy:
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

    def _reopen_later(self) -> None:
        self._open.clear()
        asyncio.get_running_loop().call_later(self.stall, self._open.set)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers.update((writer, up_writer))
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
                            self._reopen_later()
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
                await self._open.wait()
                writer.write(data)
                await writer.drain()
            writer.close()  # the server closed: so does the client's side

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


def _message_kinds(data: bytes) -> list[bytes]:
    """The type bytes of the protocol messages in one client write (type + int32 length)."""
    kinds, i = [], 0
    while i + 5 <= len(data):
        kinds.append(data[i : i + 1])
        i += 1 + int.from_bytes(data[i + 1 : i + 5], "big")
    return kinds
