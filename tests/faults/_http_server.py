"""A raw asyncio HTTP/1.1 server on a loopback port whose answers are scripted faults.

Written on bare ``asyncio`` streams (not aiohttp) so that it can misbehave in ways a web
framework would not allow: reset a connection mid-body, trickle bytes, announce one
length and send another, never end a stream, answer garbage.

Each request is answered by a *behaviour*: an async function ``(request, conn) -> bool``
that writes whatever it likes and returns whether the connection may serve another
request. Behaviours are taken from :attr:`ScriptedServer.script` in order, then
:attr:`ScriptedServer.default` (which by default streams an OpenAI-style answer saying
``reply to <the last message>``).

Counters for the tests: ``requests``, ``accepted`` (connections ever opened), ``open``
(connections open now), ``busy`` (connections inside a behaviour now). A behaviour that
waits for the client (``stall``, ``hang``) ends only when the client closes the
connection, so ``busy`` going back to 0 proves that every abandoned response was closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    """One request the server read."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def question(self) -> str:
        """The content of the last message of an OpenAI-style request."""
        messages = self.json().get("messages") or [{"content": ""}]
        return str(messages[-1].get("content", ""))


class Gone(Exception):
    """The client closed the connection while a behaviour was writing."""


@dataclass
class Conn:
    """The server side of one connection, as a behaviour sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: ScriptedServer
    sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing() or self.reader.at_eof():
            raise Gone
        self.writer.write(data)
        self.sent += len(data)
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise Gone from exc

    async def chunk(self, data: bytes) -> None:
        """One piece of a ``Transfer-Encoding: chunked`` body."""
        if data:
            await self.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def end_chunks(self) -> None:
        await self.write(b"0\r\n\r\n")

    async def head(
        self,
        status: int = 200,
        headers: dict[str, str] | None = None,
        *,
        content_type: str = "text/event-stream",
        length: int | None = None,
    ) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        all_headers = {"content-type": content_type, "x-request-id": "req_fault"}
        if length is None:
            all_headers["transfer-encoding"] = "chunked"
        else:
            all_headers["content-length"] = str(length)
        all_headers.update(headers or {})
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        await self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def until_client_leaves(self) -> None:
        """Wait until the client closes the connection (it sends nothing meanwhile)."""
        while await self.reader.read(65536):
            pass

    def reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), not a clean FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Behaviour = Callable[[Request, Conn], Awaitable[bool]]
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


# --- OpenAI-shaped stream pieces -------------------------------------------------------


def event(payload: Any) -> bytes:
    """One SSE ``data:`` event carrying ``payload`` as JSON (or a raw string)."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def delta(text: str) -> bytes:
    return event(
        {
            "id": "chatcmpl-fault",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
    )


def finish(prompt: int = 10, completion: int = 5) -> bytes:
    stop = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    usage = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return event(stop) + event(usage) + b"data: [DONE]\n\n"


def reply_events(text: str, pieces: int = 4) -> list[bytes]:
    """The events of a complete streamed answer ``text``, in about ``pieces`` deltas."""
    size = max(1, -(-len(text) // pieces))
    return [delta(text[i : i + size]) for i in range(0, len(text), size)] + [finish()]


def completion_body(text: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    ).encode()


# --- behaviours -------------------------------------------------------------------------


async def answer(request: Request, conn: Conn) -> bool:
    """The default: ``reply to <question>``, streamed if asked, else one JSON body."""
    text = f"reply to {request.question}"
    if not request.json().get("stream"):
        body = completion_body(text)
        await conn.head(200, content_type="application/json", length=len(body))
        await conn.write(body)
        return True
    await conn.head()
    for piece in reply_events(text):
        await conn.chunk(piece)
        await asyncio.sleep(0)  # let the client read between pieces (not synchronisation)
    await conn.end_chunks()
    return True


def status(
    code: int,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    content_type: str | None = None,
) -> Behaviour:
    """An error (or any) status with a complete body."""
    if body is None:
        body = {"error": {"message": f"scripted {code}", "type": "server_error", "code": None}}
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    kind = content_type or ("application/json" if isinstance(body, dict) else "text/plain")

    async def behaviour(request: Request, conn: Conn) -> bool:
        await conn.head(code, headers, content_type=kind, length=len(data))
        await conn.write(data)
        return True

    return behaviour


def sse(
    pieces: Iterable[bytes],
    *,
    end: str = "eof",
    headers: dict[str, str] | None = None,
    gap: int = 0,
) -> Behaviour:
    """Stream ``pieces`` (chunked), then ``end``: ``"eof"`` (a proper end of body),
    ``"hang"`` (wait for the client to leave), ``"reset"`` (TCP RST), ``"cut"`` (close
    without the final chunk: a truncated body)."""
    parts = list(pieces)

    async def behaviour(request: Request, conn: Conn) -> bool:
        await conn.head(200, headers)
        for piece in parts:
            await conn.chunk(piece)
            for _ in range(gap):
                await asyncio.sleep(0)
        if end == "eof":
            await conn.end_chunks()
            return True
        if end == "hang":
            await conn.until_client_leaves()
        elif end == "reset":
            conn.reset()
        return False

    return behaviour


def reset_before_answer() -> Behaviour:
    """Read the request, answer nothing, reset the connection."""

    async def behaviour(request: Request, conn: Conn) -> bool:
        conn.reset()
        return False

    return behaviour


def raw(data: bytes) -> Behaviour:
    """Write ``data`` as is (malformed HTTP, say) and close."""

    async def behaviour(request: Request, conn: Conn) -> bool:
        await conn.write(data)
        return False

    return behaviour


def stall(*, headers_sent: bool = True) -> Behaviour:
    """Send the response head (or nothing), then silence until the client leaves."""

    async def behaviour(request: Request, conn: Conn) -> bool:
        if headers_sent:
            await conn.head()
        await conn.until_client_leaves()
        return False

    return behaviour


def trickle(data: bytes, every: float, *, head: bool = True) -> Behaviour:
    """Send the head, then ``data`` one byte every ``every`` seconds (the pacing is the
    fault being simulated, not a synchronisation), then wait for the client to leave."""

    async def behaviour(request: Request, conn: Conn) -> bool:
        if head:
            await conn.head()
        for i in range(len(data)):
            piece = data[i : i + 1]
            await (conn.chunk(piece) if head else conn.write(piece))
            await asyncio.sleep(every)
        await conn.until_client_leaves()
        return False

    return behaviour


def endless(piece: bytes, *, status_code: int = 200, chunked: bool = True) -> Behaviour:
    """A body that never ends: ``piece`` again and again until the client leaves.

    With ``chunked=False`` the head announces a 1 TB ``Content-Length`` instead.
    """

    async def behaviour(request: Request, conn: Conn) -> bool:
        kind = "text/event-stream" if status_code < 300 else "application/json"
        await conn.head(status_code, content_type=kind, length=None if chunked else 10**12)
        send = conn.chunk if chunked else conn.write
        while True:
            await send(piece)

    return behaviour


class ScriptedServer:
    """The server; see the module docstring."""

    def __init__(self) -> None:
        self.script: deque[Behaviour] = deque()
        self.default: Behaviour = answer
        self.requests: list[Request] = []
        self.accepted = 0
        self.open = 0
        self.busy = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._changed: asyncio.Condition | None = None

    @property
    def url(self) -> str:
        """The ``base_url`` to give a provider."""
        return f"http://127.0.0.1:{self.port}/v1"

    def push(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with ``behaviours``, in order."""
        self.script.extend(behaviours)

    async def start(self) -> ScriptedServer:
        self._changed = asyncio.Condition()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds (callers bound this with a deadline)."""
        assert self._changed is not None
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def aclose(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        self.open += 1
        await self._notify()
        conn = Conn(reader, writer, self)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                behaviour = self.script.popleft() if self.script else self.default
                self.busy += 1
                await self._notify()
                try:
                    keep = await behaviour(request, conn)
                finally:
                    self.busy -= 1
                await self._notify()
                if not keep:
                    break
        except (Gone, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # the server is closing
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
            self.open -= 1
            self._tasks.discard(task)
            if self._server is not None:
                await self._notify()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed an idle connection
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    return Request(method, path, headers, body, head)
