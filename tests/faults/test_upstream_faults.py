"""Upstream faults: a loopback server that misbehaves in every way we could think of.

Each fault runs a real turn (``Pipeline`` → ``StateMiddleware`` → ``ProviderMiddleware``
→ ``OpenAIProvider`` over the default aiohttp transport) against the scripted server in
``_http_server``. For each: the turn fails with the expected typed error from
``promptkit_async.errors`` (never a raw httpx/aiohttp/OS error), within a generous
deadline, the session keeps exactly what it had (the turn is never stored), and the
same provider answers the next turn normally (its connection pool survived).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import random
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from promptkit_async import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    BadRequestError,
    IncompleteStreamError,
    InMemoryStateStore,
    InternalServerError,
    Message,
    Pipeline,
    ProviderError,
    ProviderMiddleware,
    RateLimitError,
    StateMiddleware,
    StreamIdleTimeoutError,
)
from promptkit_async.pipeline.middleware import ProviderMiddlewareConfig
from promptkit_async.providers import OpenAIProvider, RetryPolicy
from tests.faults import _http_server as srv
from tests.faults._checks import question, whole_turns
from tests.faults._http_server import ScriptedServer
from tests.faults.conftest import Report, scales

KEY = "sk-fault-UPSTREAM-7f3a9c"
#: Retries without real waiting (a server-requested wait is capped at 50 ms).
FAST = RetryPolicy(initial_delay=0.001, max_delay=0.002, max_retry_after=0.05)
GUARD = 30.0  # "finished within a generous deadline": a hang guard, not a timing claim


def make_provider(server: ScriptedServer, **options: Any) -> OpenAIProvider:
    settings: dict[str, Any] = {
        "api_key": KEY,
        "base_url": server.url,
        "retry_policy": FAST,
        "max_retries": 2,
    }
    settings.update(options)
    return OpenAIProvider("openai", "gpt-4o-mini", **settings)


def pipeline_for(provider: OpenAIProvider, store: Any, *, stream: bool = True) -> Pipeline:
    config = ProviderMiddlewareConfig(stream=stream)
    return Pipeline(StateMiddleware(store), ProviderMiddleware(provider, config=config))


async def seeded_store(session: str) -> InMemoryStateStore:
    """A store whose ``session`` already holds one whole turn."""
    store = InMemoryStateStore()
    ask = question(session, "seed")
    await store.append(session, [Message("user", ask), Message("assistant", f"reply to {ask}")])
    return store


@dataclass
class Fault:
    """One scripted fault and what it must produce."""

    name: str
    behaviours: Callable[[], list[srv.Behaviour]]
    error: type[ProviderError] | tuple[type[ProviderError], ...]
    requests: int | None = None  # how many attempts the server must see
    options: dict[str, Any] = field(default_factory=dict)
    stream: bool = True
    match: str | None = None


def repeat(behaviour: Callable[[], srv.Behaviour], times: int) -> Callable[[], list[srv.Behaviour]]:
    return lambda: [behaviour() for _ in range(times)]


def events(text: str = "partial answer") -> list[bytes]:
    return srv.reply_events(text)


_RETRY_NOW = {"retry-after": "0"}
FAULTS = [
    # --- statuses and retries -----------------------------------------------------------
    Fault(
        "429 storm with Retry-After",
        repeat(lambda: srv.status(429, headers=_RETRY_NOW), 9),
        RateLimitError,
        3,
    ),
    Fault(
        "429 storm, Retry-After beyond the deadline",
        repeat(lambda: srv.status(429, headers={"retry-after": "3600"}), 9),
        RateLimitError,
        1,
        {"deadline": 10.0, "retry_policy": RetryPolicy(max_retry_after=3600)},
    ),
    Fault(
        "429 storm, Retry-After as an HTTP date",
        repeat(
            lambda: srv.status(429, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}), 9
        ),
        RateLimitError,
        3,
    ),
    Fault(
        "5xx burst longer than the retries",
        lambda: [srv.status(500), srv.status(502), srv.status(503)],
        InternalServerError,
        3,
    ),
    Fault("529 overloaded", repeat(lambda: srv.status(529), 3), InternalServerError, 3),
    Fault(
        "503 saying do not retry",
        lambda: [srv.status(503, headers={"x-should-retry": "false"})],
        InternalServerError,
        1,
    ),
    Fault(
        "500 with an HTML body",
        repeat(lambda: srv.status(500, b"<html><h1>oops</h1></html>"), 3),
        InternalServerError,
        3,
        match="oops",
    ),
    Fault("400 is not retried", lambda: [srv.status(400)], BadRequestError, 1),
    # --- connections ------------------------------------------------------------------------
    Fault(
        "reset before any answer, every time",
        repeat(srv.reset_before_answer, 3),
        APIConnectionError,
        3,
    ),
    Fault(
        "reset after the head, before any event",
        repeat(lambda: srv.sse([], end="reset"), 3),
        APIConnectionError,
        3,
    ),
    Fault(
        "reset mid-stream (never retried)",
        lambda: [srv.sse(events()[:2], end="reset")],
        (IncompleteStreamError, APIConnectionError),
        1,
    ),
    Fault(
        "body cut mid-stream (truncated chunked body)",
        lambda: [srv.sse(events()[:2], end="cut")],
        IncompleteStreamError,
        1,
    ),
    Fault(
        "malformed status line",
        repeat(lambda: srv.raw(b"HTTP/1.1 two hundred\r\n\r\n"), 3),
        APIConnectionError,
        3,
    ),
    Fault(
        "garbage instead of HTTP",
        repeat(lambda: srv.raw(b"\x00\xff garbage\r\n\r\n"), 3),
        APIConnectionError,
        3,
    ),
    Fault(
        "invalid Content-Length",
        repeat(lambda: srv.raw(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n"), 3),
        APIConnectionError,
        3,
    ),
    # --- slow and stalled -----------------------------------------------------------------------
    Fault(
        "stall after the head (idle timeout)",
        lambda: [srv.stall()],
        StreamIdleTimeoutError,
        1,
        {"stream_idle_timeout": 0.2},
    ),
    Fault(
        "stall mid-stream (idle timeout)",
        lambda: [srv.sse(events()[:2], end="hang")],
        StreamIdleTimeoutError,
        1,
        {"stream_idle_timeout": 0.2},
    ),
    Fault(
        "slowloris: a byte every 0.5 s, idle timeout 0.2 s",
        lambda: [srv.trickle(events()[0], 0.5)],
        StreamIdleTimeoutError,
        1,
        {"stream_idle_timeout": 0.2},
    ),
    Fault(
        "slowloris: bytes faster than the idle timeout, never ending (deadline)",
        lambda: [srv.trickle(b": ." * 10_000, 0.01)],
        APITimeoutError,
        1,
        {"stream_idle_timeout": 0.5, "deadline": 1.0},
    ),
    Fault(
        "slowloris on the response head (deadline)",
        lambda: [
            srv.trickle(b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"." * 10_000, 0.01, head=False)
        ],
        APITimeoutError,
        1,
        {"deadline": 1.0},
    ),
    Fault(
        "no answer at all (read timeout)",
        repeat(lambda: srv.stall(headers_sent=False), 2),
        APITimeoutError,
        2,
        {"timeout": 0.3, "max_retries": 1},
    ),
    # --- malformed, truncated and invalid event streams -------------------------------------------
    Fault(
        "invalid JSON in an event",
        lambda: [srv.sse([srv.event("{not json")])],
        APIResponseError,
        1,
        match="invalid JSON",
    ),
    Fault(
        "an event that is JSON but not an object",
        lambda: [srv.sse([srv.event("[1, 2]")])],
        APIResponseError,
        1,
    ),
    Fault(
        "stream ends without finishing", lambda: [srv.sse(events()[:2])], IncompleteStreamError, 1
    ),
    Fault(
        "stream of comments only", lambda: [srv.sse([b": ping\n\n"] * 5)], IncompleteStreamError, 1
    ),
    Fault(
        "binary garbage as a stream",
        lambda: [srv.sse([b"\xff\xfe\x00\x01\n\x80\x81\r\n\n"] * 3)],
        IncompleteStreamError,
        1,
    ),
    Fault(
        "last event cut in half at the end of the body",
        lambda: [srv.sse([events()[0], b'data: {"id": "chatcmpl-fault", "choi'])],
        IncompleteStreamError,
        1,
    ),
    Fault(
        "error event inside a 200 stream",
        lambda: [
            srv.sse(
                [
                    events()[0],
                    srv.event({"error": {"message": "slow down", "type": "rate_limit_exceeded"}}),
                ]
            )
        ],
        RateLimitError,
        1,
    ),
    Fault(
        "JSON body where a stream was asked",
        lambda: [srv.status(200, {"not": "a stream"})],
        APIResponseError,
        1,
    ),
    Fault(
        "invalid JSON body (non-streamed)",
        lambda: [srv.status(200, b"{not json", content_type="application/json")],
        APIResponseError,
        1,
        stream=False,
    ),
    Fault(
        "invalid JSON error body",
        repeat(lambda: srv.status(503, b"{not json", content_type="application/json"), 3),
        InternalServerError,
        3,
    ),
    # --- huge and endless bodies (memory is checked in the tests below) --------------------------
    Fault(
        "50 MB error body",
        lambda: [srv.status(500, b"x" * 50_000_000)],
        InternalServerError,
        1,
        {"max_retries": 0},
    ),
]


@pytest.mark.parametrize("fault", [pytest.param(f, id=f.name) for f in FAULTS])
async def test_upstream_fault_gives_a_typed_error_and_stores_nothing(
    server: ScriptedServer, fault: Fault, report: Report
) -> None:
    session = "upstream"
    store = await seeded_store(session)
    before = await store.load(session)
    server.push(*fault.behaviours())
    async with make_provider(server, **fault.options) as provider:
        pipe = pipeline_for(provider, store, stream=fault.stream)
        with pytest.raises(ProviderError) as caught:
            await asyncio.wait_for(pipe.execute(session, "user", question(session, "q")), GUARD)
        if not isinstance(caught.value, fault.error):
            pytest.fail(f"{fault.name}: expected {fault.error}, got {caught.value!r}")
        if fault.match:
            assert fault.match in str(caught.value)
        if fault.requests is not None:
            assert len(server.requests) == fault.requests
        assert await store.load(session) == before  # nothing of the turn was stored
        # The same provider (and its pool) serves the next turn normally.
        server.script.clear()
        result = await asyncio.wait_for(
            pipe.execute(session, "user", question(session, "ok")), GUARD
        )
        assert result.response.content == f"reply to {question(session, 'ok')}"
        whole_turns(await store.load(session), session)
    report.add(faults=1, attempts=len(server.requests) - 1, losses=0)


async def test_429_storm_then_success_honours_retry_after(
    server: ScriptedServer, report: Report
) -> None:
    server.push(
        srv.status(429, headers={"retry-after-ms": "20"}),
        srv.status(429, headers={"retry-after": "0.03"}),
        srv.status(503),
    )
    store = InMemoryStateStore()
    async with make_provider(server, max_retries=3) as provider:
        pipe = pipeline_for(provider, store)
        result = await asyncio.wait_for(pipe.execute("s", "user", question("s", "q")), GUARD)
    retries = [e.detail for e in result.response.trace if e.kind == "retry"]
    assert [r["status"] for r in retries] == [429, 429, 503]
    assert [r["retry_after"] for r in retries] == [0.02, 0.03, None]
    assert retries[0]["wait"] == 0.02
    assert retries[1]["wait"] == 0.03
    assert whole_turns(await store.load("s"), "s") == [question("s", "q")]
    report.add(faults=3, retries=len(retries))


def _peak_during(before: int) -> int:
    return tracemalloc.get_traced_memory()[1] - before


@pytest.mark.parametrize(
    ("name", "behaviour", "error", "limit_mb", "options", "stream"),
    [
        pytest.param(
            "endless error body",
            lambda: srv.endless(b"e" * 65536, status_code=500),
            InternalServerError,
            16,
            {},
            True,
            id="endless error body",
        ),
        pytest.param(
            "endless error body without chunking",
            lambda: srv.endless(b"e" * 65536, status_code=503, chunked=False),
            InternalServerError,
            16,
            {},
            True,
            id="endless error body without chunking",
        ),
        pytest.param(
            "endless SSE line",
            lambda: srv.endless(b"data: " + b"x" * 65530),
            APIResponseError,
            96,
            {},
            True,
            id="endless SSE line",
        ),
        pytest.param(
            "endless data lines, no event end",
            lambda: srv.endless(b"data: " + b"y" * 1000 + b"\n"),
            APIResponseError,
            96,
            {},
            True,
            id="endless data lines, no event end",
        ),
        pytest.param(
            "endless non-streamed body",
            lambda: srv.endless(b"{" * 65536),
            APIResponseError,
            96,
            {},
            False,
            id="endless non-streamed body",
        ),
        pytest.param(
            "endless keep-alive comments (deadline)",
            lambda: srv.endless(b": keep-alive\n" * 100),
            APITimeoutError,
            16,
            {"deadline": 1.0},
            True,
            id="endless keep-alive comments (deadline)",
        ),
    ],
)
async def test_endless_bodies_end_with_a_typed_error_in_bounded_memory(
    server: ScriptedServer,
    report: Report,
    name: str,
    behaviour: Callable[[], srv.Behaviour],
    error: type[ProviderError],
    limit_mb: int,
    options: dict[str, Any],
    stream: bool,
) -> None:
    """The server never stops sending; the client must stop (the cap is 32 MB per event,
    64 KB per error body), raise a typed error and not have held much more than that."""
    server.push(behaviour())
    peak = await failing_turn_peak(server, "huge", error, stream, options)
    assert peak < limit_mb * 1024 * 1024, f"{name}: peak {peak / 2**20:.1f} MB"
    report.add(faults=1, peak_mb=round(peak / 2**20, 1), losses=0)


async def failing_turn_peak(
    server: ScriptedServer,
    session: str,
    error: type[ProviderError],
    stream: bool,
    options: dict[str, Any],
) -> int:
    """Run one turn that must fail with ``error`` (the server's next behaviour is the
    fault) and return its peak traced memory; the session must keep what it had, and the
    next turn on the same provider must succeed."""
    store = await seeded_store(session)
    before = await store.load(session)
    async with make_provider(server, max_retries=0, **options) as provider:
        pipe = pipeline_for(provider, store, stream=stream)
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            with pytest.raises(error):
                await asyncio.wait_for(pipe.execute(session, "user", question(session, "q")), GUARD)
            peak = _peak_during(base)
        finally:
            tracemalloc.stop()
        assert await store.load(session) == before
        ok = await asyncio.wait_for(pipe.execute(session, "user", question(session, "ok")), GUARD)
        assert ok.response.content.startswith("reply to")
    return peak


@functools.cache
def gzip_bomb() -> bytes:
    """~1 MB of gzip that inflates to 1 GiB of zeros (built from one repeated block
    compressed after a full flush, so it takes a second, not a minute)."""
    zeros = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    end = packer.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    return first + block * 1023 + end[:-8] + struct.pack("<II", crc, (1 << 30) & 0xFFFFFFFF)


def bomb(status_code: int, content_type: str) -> srv.Behaviour:
    """Answer with the gzip bomb as the body (``Content-Encoding: gzip``, chunked)."""

    async def behaviour(request: srv.Request, conn: srv.Conn) -> bool:
        await conn.head(status_code, {"content-encoding": "gzip"}, content_type=content_type)
        body = gzip_bomb()
        try:
            for start in range(0, len(body), 16384):
                await conn.chunk(body[start : start + 16384])
            await conn.end_chunks()
        except srv.Gone:
            return False
        return True

    return behaviour


@pytest.mark.parametrize(
    ("name", "status_code", "content_type", "stream", "error", "limit_mb"),
    [
        # A 2xx body: the 32 MiB caps (SSE line, JSON body) on the *decoded* bytes.
        ("SSE stream", 200, "text/event-stream", True, APIResponseError, 72),
        ("JSON answer", 200, "application/json", False, APIResponseError, 72),
        # An error body: 64 KiB of it is read, decoded or not.
        ("error body", 500, "application/json", True, InternalServerError, 4),
    ],
)
async def test_compression_bombs_are_decoded_only_up_to_the_caps(
    server: ScriptedServer,
    report: Report,
    name: str,
    status_code: int,
    content_type: str,
    stream: bool,
    error: type[ProviderError],
    limit_mb: int,
) -> None:
    """1 MB of gzip that inflates to 1 GiB: the client stops at the same caps as for an
    uncompressed body (it decodes in 64 KiB steps), raises a typed error, and its peak
    memory stays within the cap (tracemalloc, measured around the failing turn)."""
    gzip_bomb()  # built before measuring
    server.push(bomb(status_code, content_type))
    peak = await failing_turn_peak(server, "bomb", error, stream, {})
    assert peak < limit_mb * 1024 * 1024, f"{name}: peak {peak / 2**20:.1f} MB"
    assert "gzip" in server.requests[0].headers.get("accept-encoding", "")
    report.add(bombs=1, **{f"peak_mb_{name.replace(' ', '_')}": round(peak / 2**20, 1)})


CHAOS = [
    lambda: srv.answer,
    lambda: srv.answer,
    lambda: srv.answer,
    lambda: srv.status(429, headers=_RETRY_NOW),
    lambda: srv.status(500),
    lambda: srv.status(400),
    srv.reset_before_answer,
    lambda: srv.sse(events()[:2], end="reset"),
    lambda: srv.sse(events()[:2], end="cut"),
    lambda: srv.sse(events()[:1]),
    lambda: srv.sse([srv.event("{bad")]),
    lambda: srv.stall(),
    lambda: srv.sse(events()[:1], end="hang"),
    lambda: srv.raw(b"nonsense\r\n\r\n"),
]


@scales
async def test_upstream_chaos_keeps_every_acknowledged_turn_and_nothing_else(
    server: ScriptedServer, report: Report, scale: int
) -> None:
    """Many concurrent turns, each request answered by a random fault (or normally):
    every turn either returns (and is stored once, whole) or raises a ProviderError
    (and is not stored at all)."""
    rng = random.Random(8)
    server.default = lambda request, conn: rng.choice(CHAOS)()(request, conn)
    sessions = [f"chaos{i}" for i in range(10 * scale)]
    turns = 60 * scale
    store = InMemoryStateStore()
    acknowledged: dict[str, list[str]] = {s: [] for s in sessions}
    errors: dict[type[ProviderError], int] = {}
    async with make_provider(server, max_retries=1, stream_idle_timeout=0.3) as provider:
        pipe = pipeline_for(provider, store)

        async def turn(n: int) -> None:
            session = rng.choice(sessions)
            ask = question(session, f"t{n}")
            try:
                await pipe.execute(session, "user", ask)
            except ProviderError as exc:
                errors[type(exc)] = errors.get(type(exc), 0) + 1
                return
            acknowledged[session].append(ask)

        await asyncio.wait_for(asyncio.gather(*(turn(n) for n in range(turns))), GUARD * scale)
        for session in sessions:
            stored = whole_turns(await store.load(session), session)
            assert stored == acknowledged[session]  # each session's turns are serialised
    assert sum(errors.values()) > 0
    assert sum(map(len, acknowledged.values())) > 0
    report.add(
        turns=turns,
        acknowledged=sum(map(len, acknowledged.values())),
        failed=sum(errors.values()),
        requests=len(server.requests),
        losses=0,
        errors=dict(sorted((k.__name__, v) for k, v in errors.items())),
    )
