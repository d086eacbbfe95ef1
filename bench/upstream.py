"""A loopback mock of the OpenAI chat completions API, fast enough not to be the bottleneck.

Run it in its own process (the harness does)::

    python -m bench.upstream --profile fast --loop uvloop --cpu 0

It prints ``READY <port>`` on stdout once it listens on 127.0.0.1, then serves until
SIGTERM/SIGINT. Raw asyncio streams (uvloop when asked), HTTP/1.1 keep-alive, chunked
responses; no HTTP framework, so a request costs the server a header split, one
``json.loads`` of the body and a few pre-built writes.

Endpoints:

* ``POST /v1/chat/completions`` (also without ``/v1``): with ``"stream": true`` a
  ``text/event-stream`` of ``chat.completion.chunk`` events (role, N content deltas, a
  ``finish_reason`` chunk, a usage chunk when ``stream_options.include_usage`` is set, then
  ``data: [DONE]``), paced by the profile; otherwise one ``chat.completion`` JSON object
  after the same total delay. Malformed bodies get OpenAI-shaped 400 errors.
* ``GET /__stats``: counters since the last reset (requests, messages received, errors,
  connections, server CPU seconds) as JSON; ``POST /__reset`` zeroes them. The harness
  uses them to check that every turn sent the growing history and that the server was
  not saturated.

Profiles (delays are measured from the request's arrival, so pacing does not drift
under load): ``fast`` 10 chunks 10 ms apart; ``realistic`` 200 ms to the first chunk,
then 30 chunks 30 ms apart; ``instant`` 10 chunks with no delay (pure client cost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from ._common import LOOPS, pin_to, raise_fd_limit, run_on

__all__ = ["PROFILES", "Profile", "Upstream", "main"]


@dataclass(frozen=True)
class Profile:
    """How the mock model paces its reply."""

    name: str
    chunks: int
    first_delay: float
    gap: float

    def offsets(self) -> list[float]:
        """Seconds after the request at which each content chunk is sent."""
        return [self.first_delay + k * self.gap for k in range(self.chunks)]

    @property
    def duration(self) -> float:
        """Seconds from the request to the last chunk."""
        return self.offsets()[-1] if self.chunks else 0.0


PROFILES: dict[str, Profile] = {
    "fast": Profile("fast", chunks=10, first_delay=0.010, gap=0.010),
    "realistic": Profile("realistic", chunks=30, first_delay=0.200, gap=0.030),
    "instant": Profile("instant", chunks=10, first_delay=0.0, gap=0.0),
}

# Token-sized pieces, so the reply and the growing history look like real text.
_WORDS = (
    " Sure",
    ",",
    " here",
    " is",
    " the",
    " next",
    " part",
    " of",
    " our",
    " story",
    ":",
    " a",
    " quiet",
    " harbour",
    " town",
    " where",
    " every",
    " boat",
    " has",
    " a",
    " name",
    " and",
    " every",
    " name",
    " a",
    " secret",
    ".",
    " The",
    " end",
    ".",
)
MODEL = "gpt-4o-mini"
_ID = "chatcmpl-bench0000000000000000000000"
_CREATED = 1_700_000_000


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


class Upstream:
    """The server state: pre-built response pieces for one profile, and counters."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        words = [_WORDS[k % len(_WORDS)] for k in range(profile.chunks)]
        self.reply_text = "".join(words)
        self.offsets = profile.offsets()
        # Every byte that does not depend on the request is built once.
        self.sse_head = (
            b"HTTP/1.1 200 OK\r\n"
            b"content-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\n"
            b"cache-control: no-cache\r\n"
            b"x-request-id: req_bench\r\n"
        )
        self.role_frame = _frame(_event(_chunk({"role": "assistant", "content": ""})))
        self.content_frames = [_frame(_event(_chunk({"content": w}))) for w in words]
        self.finish_frame = _frame(_event(_chunk({}, "stop")))
        self.done_frame = _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.reset()

    def reset(self) -> None:
        """Zero the counters."""
        self.requests = 0
        self.streamed = 0
        self.messages = 0
        self.bad_requests = 0
        self.connections = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self.cpu_at_reset = time.process_time()
        self.wall_at_reset = time.perf_counter()

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset."""
        return {
            "profile": self.profile.name,
            "requests": self.requests,
            "streamed": self.streamed,
            "messages": self.messages,
            "bad_requests": self.bad_requests,
            "connections": self.connections,
            "open_connections": self.open_connections,
            "max_open_connections": self.max_open_connections,
            "cpu_s": time.process_time() - self.cpu_at_reset,
            "wall_s": time.perf_counter() - self.wall_at_reset,
        }

    # --- HTTP ---------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one keep-alive connection until the client closes it."""
        self.connections += 1
        self.open_connections += 1
        if self.open_connections > self.max_open_connections:
            self.max_open_connections = self.open_connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.split(b"\r\n")
                try:
                    method, target, version = lines[0].split(b" ", 2)
                except ValueError:
                    return
                length = 0
                chunked = False
                close = version != b"HTTP/1.1"
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"transfer-encoding":
                        chunked = b"chunked" in value.lower()
                    elif name == b"connection":
                        v = value.strip().lower()
                        close = v == b"close" or (close and v != b"keep-alive")
                body = await (_read_chunked(reader) if chunked else reader.readexactly(length))
                await self.dispatch(method, target.split(b"?", 1)[0], body, writer, close)
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.open_connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def dispatch(
        self, method: bytes, path: bytes, body: bytes, writer: asyncio.StreamWriter, close: bool
    ) -> None:
        """Route one request."""
        if path in (b"/v1/chat/completions", b"/chat/completions"):
            if method != b"POST":
                self.respond(writer, 405, _error("use POST", "invalid_request_error"), close)
                return
            await self.chat(body, writer, close)
        elif path == b"/__stats":
            self.respond(writer, 200, self.stats(), close)
        elif path == b"/__reset":
            self.reset()
            self.respond(writer, 200, {"ok": True}, close)
        elif path == b"/health":
            self.respond(writer, 200, {"ok": True}, close)
        else:
            self.respond(writer, 404, _error(f"no route {path.decode()!r}", "not_found"), close)

    def respond(self, writer: asyncio.StreamWriter, status: int, obj: Any, close: bool) -> None:
        """Write a complete JSON response."""
        data = json.dumps(obj, separators=(",", ":")).encode()
        writer.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: req_bench\r\n%s\r\n%s"
            % (
                status,
                _REASONS.get(status, b"Error"),
                len(data),
                b"connection: close\r\n" if close else b"",
                data,
            )
        )

    async def chat(self, body: bytes, writer: asyncio.StreamWriter, close: bool) -> None:
        """Answer a chat completion, streamed or whole, paced by the profile."""
        started = time.perf_counter()
        try:
            request = json.loads(body)
            messages = request["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("messages must be a non-empty list")
            for m in messages:
                if not isinstance(m, dict) or "role" not in m:
                    raise ValueError("each message needs a role")
            if not isinstance(request.get("model"), str):
                raise ValueError("model is required")
        except (ValueError, KeyError, TypeError) as exc:
            self.bad_requests += 1
            self.respond(writer, 400, _error(str(exc), "invalid_request_error"), close)
            await writer.drain()
            return
        self.requests += 1
        self.messages += len(messages)
        # ~4 bytes of JSON body per token: cheap and grows with the history, like the real one.
        usage = _usage(len(body) // 4, self.profile.chunks)
        if not request.get("stream"):
            await self._pace(started, self.profile.duration)
            self.respond(writer, 200, self._completion(usage), close)
            await writer.drain()
            return
        self.streamed += 1
        options = request.get("stream_options") or {}
        tail = self.finish_frame
        if options.get("include_usage"):
            tail += _frame(
                _event(
                    {
                        "id": _ID,
                        "object": "chat.completion.chunk",
                        "created": _CREATED,
                        "model": MODEL,
                        "system_fingerprint": "fp_bench",
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        tail += self.done_frame
        head = self.sse_head + (b"connection: close\r\n\r\n" if close else b"\r\n")
        frames = self.content_frames
        last = len(frames) - 1
        if self.profile.gap == 0 and self.profile.first_delay == 0:
            writer.write(head + self.role_frame + b"".join(frames) + tail)
        else:
            for k, offset in enumerate(self.offsets):
                await self._pace(started, offset)
                frame = frames[k]
                if k == 0:
                    frame = head + self.role_frame + frame
                if k == last:
                    frame += tail
                writer.write(frame)
        await writer.drain()

    @staticmethod
    async def _pace(started: float, offset: float) -> None:
        wait = started + offset - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)

    def _completion(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": _ID,
            "object": "chat.completion",
            "created": _CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply_text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            # Trailers (rare) end with an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def serve(profile: Profile, host: str, port: int, ready: Any = None) -> None:
    """Serve until SIGTERM/SIGINT; write ``READY <port>`` to ``ready`` (a text stream)."""
    upstream = Upstream(profile)
    server = await asyncio.start_server(upstream.handle, host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.write(f"READY {bound}\n")
        ready.flush()
    async with server:
        await stop.wait()
        server.close()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: ``python -m bench.upstream --help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fast")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=LOOPS, default="uvloop")
    parser.add_argument("--cpu", type=int, action="append", help="pin to this CPU (repeatable)")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the mock upstream serves loopback only")
    if args.cpu:
        pin_to(set(args.cpu))
    raise_fd_limit()
    run_on(args.loop, serve(PROFILES[args.profile], args.host, args.port, sys.stdout))


if __name__ == "__main__":
    main()
