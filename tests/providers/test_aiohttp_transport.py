"""The default transport (httpx over aiohttp) against a real loopback server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import math
import socket
import sys
import warnings
import zlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import httpx
import pytest
import respx

from promptkit_async.errors import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    IncompleteStreamError,
    PromptKitError,
    RateLimitError,
    StreamIdleTimeoutError,
)
from promptkit_async.providers import (
    AiohttpTransport,
    OpenAIProvider,
    ProviderRequest,
    RetryPolicy,
)
from promptkit_async.types import Message, StreamChunk
from tests.faults import _http_server as srv

HELLO = ProviderRequest([Message("user", "Hi")])


async def drain(chunks: AsyncIterator[StreamChunk], seen: list[str]) -> None:
    """Read a stream to its end (or error), keeping the text deltas in ``seen``."""
    async for chunk in chunks:
        seen.append(chunk.delta)


FAST = RetryPolicy(initial_delay=0.001, max_delay=0.002)


def provider_for(server: Any, mode: str, **kwargs: Any) -> OpenAIProvider:
    kwargs.setdefault("retry_policy", FAST)
    return OpenAIProvider(
        "openai", "gpt-4o-mini", "sk-loop", base_url=f"{server.url}/{mode}/v1", **kwargs
    )


async def test_streaming_and_non_streaming_end_to_end(loopback, fakes) -> None:
    async with provider_for(loopback, "ok") as provider:
        chunks = [c async for c in provider.stream(HELLO)]
        completed = await provider.complete(HELLO)
    streamed = chunks[-1].response
    assert streamed is not None
    assert "".join(c.delta for c in chunks) == streamed.content == "Hello there!"
    assert streamed.usage.total_tokens == 17
    assert streamed.request_id == "req_loop"
    assert completed.content == "Hello there!"
    assert completed.request_id == "req_json"
    fakes.validate_request(loopback.bodies[0], stream=True)
    fakes.validate_request(loopback.bodies[1], stream=False)
    assert loopback.headers[0]["Authorization"] == "Bearer sk-loop"
    assert loopback.headers[0]["Accept"] == "text/event-stream"


async def test_compressed_bodies_are_decoded(loopback) -> None:
    # Our transport hands bodies over undecoded; a Content-Encoding must still be undone.
    async with provider_for(loopback, "gzip") as provider:
        chunks = [c async for c in provider.stream(HELLO)]
        completed = await provider.complete(HELLO)
    streamed = chunks[-1].response
    assert streamed is not None
    assert "".join(c.delta for c in chunks) == streamed.content == "Hello there!"
    assert streamed.request_id == "req_gzip"
    assert completed.content == "Hello there!"
    assert "gzip" in loopback.headers[0]["Accept-Encoding"]


async def test_a_body_that_fails_to_decode_is_a_response_error(loopback) -> None:
    async with provider_for(loopback, "badgzip") as provider:
        with pytest.raises(APIResponseError, match="could not decode the response body"):
            [c async for c in provider.stream(HELLO)]
        with pytest.raises(APIResponseError, match="could not decode the response body"):
            await provider.complete(HELLO)
    assert loopback.requests == 2  # not retried


async def test_connections_are_reused(loopback) -> None:
    # Reading each stream to its end hands the connection back to the pool.
    async with provider_for(loopback, "ok") as provider:
        for _ in range(5):
            [c async for c in provider.stream(HELLO)]
            await provider.complete(HELLO)
    assert loopback.requests == 10
    assert len(loopback.peers) == 1


async def test_status_errors_through_the_real_transport(loopback) -> None:
    async with provider_for(loopback, "status/429", max_retries=1) as provider:
        with pytest.raises(RateLimitError) as caught:
            [c async for c in provider.stream(HELLO)]
    assert caught.value.request_id == "req_429"
    assert caught.value.message == "failure 429"
    assert loopback.requests == 2


async def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    async with OpenAIProvider(
        "openai", "m", base_url=f"http://127.0.0.1:{port}/v1", retry_policy=FAST
    ) as provider:
        with pytest.raises(APIConnectionError, match="check base_url") as caught:
            await provider.complete(HELLO)
        assert type(caught.value) is APIConnectionError  # not a timeout
        with pytest.raises(APIConnectionError):
            [c async for c in provider.stream(HELLO)]


async def test_server_dropping_the_connection_midway(loopback) -> None:
    seen = []
    async with provider_for(loopback, "cut") as provider:
        with pytest.raises(IncompleteStreamError):
            await drain(provider.stream(HELLO), seen)
    assert seen == ["partial"]
    assert loopback.requests == 1  # text had reached the caller: not retried


async def test_read_timeout_maps_to_timeout_error(loopback) -> None:
    timeout = httpx.Timeout(5.0, read=0.05)
    async with provider_for(loopback, "stall", timeout=timeout, max_retries=0) as provider:
        with pytest.raises(APITimeoutError) as caught:
            [c async for c in provider.stream(HELLO)]
    assert type(caught.value) is APITimeoutError
    await loopback.wait_for(lambda: loopback.disconnects == 1)


def _two_events_then_silence(got_first: asyncio.Event) -> srv.Behaviour:
    """Headers and one event, then (once the client has it: the second event arrives in a
    network read of its own, after aiohttp's header-phase timer is gone) a second event,
    then silence until the client leaves."""

    async def behaviour(request: srv.Request, conn: srv.Conn) -> bool:
        await conn.head(200)
        await conn.chunk(srv.delta("one "))
        await got_first.wait()
        await conn.chunk(srv.delta("two"))
        await conn.until_client_leaves()
        return False

    return behaviour


async def test_read_timeout_in_the_middle_of_the_body() -> None:
    # After the headers the body's read timeout is ours (one lazy timer per response),
    # no longer aiohttp's per-read timer: a silence after some events must still end it.

    got_first = asyncio.Event()
    two_events_then_silence = _two_events_then_silence(got_first)

    server = await srv.ScriptedServer().start()
    server.push(two_events_then_silence)
    seen: list[str] = []
    try:
        async with OpenAIProvider(
            "openai",
            "m",
            "sk-test",
            base_url=server.url,
            timeout=httpx.Timeout(5.0, read=0.05),
            max_retries=3,
        ) as provider:

            async def read() -> None:
                async for chunk in provider.stream(HELLO):
                    if chunk.delta:
                        seen.append(chunk.delta)
                        got_first.set()

            with pytest.raises(APITimeoutError, match="read timeout") as caught:
                await read()
            assert type(caught.value) is APITimeoutError
            assert seen == ["one ", "two"]
            assert len(server.requests) == 1  # text had reached the caller: not retried
    finally:
        await server.aclose()


async def test_silence_after_done_ends_the_stream_after_the_grace() -> None:
    # [DONE] arrived but the body never ends: the transport's read clock, cut to the
    # provider's end_grace, closes it (no read timeout of minutes, no error).

    server = await srv.ScriptedServer().start()
    server.push(srv.sse(srv.reply_events("Hello there!"), end="hang"))
    try:
        async with OpenAIProvider(
            "openai", "m", "sk-test", base_url=server.url, max_retries=0
        ) as provider:
            provider.end_grace = 0.05

            async def read() -> list[StreamChunk]:
                return [c async for c in provider.stream(HELLO)]

            chunks = await asyncio.wait_for(read(), 10)  # else: the 10-minute read timeout
        response = chunks[-1].response
        assert response is not None
        assert response.content == "Hello there!"
        assert response.usage.total_tokens == 15
        # The connection was closed, not handed back to the pool half-read.
        await asyncio.wait_for(server.wait_for(lambda: server.open == 0), 10)
    finally:
        await server.aclose()


async def test_a_short_read_timeout_fires_while_a_long_one_waits_on_the_same_transport() -> None:
    # One transport times every body it reads on one timer: a read with a short limit
    # that starts while the timer is set far ahead must still fail on time.

    got_first = asyncio.Event()
    two_events_then_silence = _two_events_then_silence(got_first)

    server = await srv.ScriptedServer().start()
    server.push(srv.stall(), two_events_then_silence)
    try:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            patient = OpenAIProvider(
                "openai",
                "m",
                "sk-test",
                base_url=server.url,
                max_retries=0,
                http_client=client,
                timeout=httpx.Timeout(600.0),
            )
            hasty = OpenAIProvider(
                "openai",
                "m",
                "sk-test",
                base_url=server.url,
                max_retries=0,
                http_client=client,
                timeout=httpx.Timeout(600.0, read=0.05),
            )
            waiting = asyncio.create_task(anext(aiter(patient.stream(HELLO))))
            await asyncio.wait_for(server.wait_for(lambda: len(server.requests) == 1), 10)
            seen: list[str] = []

            async def read() -> None:
                async for chunk in hasty.stream(HELLO):
                    if chunk.delta:
                        seen.append(chunk.delta)
                        got_first.set()

            with pytest.raises(APITimeoutError, match="read timeout"):
                await asyncio.wait_for(read(), 10)
            assert seen == ["one ", "two"]
            assert not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
    finally:
        await server.aclose()


async def test_idle_timeout_closes_the_connection(loopback) -> None:
    async with provider_for(loopback, "hang", stream_idle_timeout=0.05) as provider:
        with pytest.raises(StreamIdleTimeoutError):
            [c async for c in provider.stream(HELLO)]
    # The server saw the client leave: the response was closed, not left dangling.
    await loopback.wait_for(lambda: loopback.disconnects == 1)


async def test_cancelling_mid_stream_closes_the_connection(loopback) -> None:
    async with provider_for(loopback, "hang") as provider:
        first = asyncio.Event()

        async def consume() -> None:
            async with aclosing(provider.stream(HELLO)) as chunks:
                async for _ in chunks:
                    first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await loopback.wait_for(lambda: loopback.disconnects == 1)


async def test_pool_survives_1000_cancelled_streams(loopback) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked socket or session fails the test
        async with provider_for(loopback, "hang") as provider:

            async def consume(first: asyncio.Event) -> None:
                async with aclosing(provider.stream(HELLO)) as chunks:
                    async for _ in chunks:
                        first.set()

            for _ in range(10):  # 100 concurrent streams at a time, each cancelled
                firsts = [asyncio.Event() for _ in range(100)]
                tasks = [asyncio.create_task(consume(first)) for first in firsts]
                await asyncio.gather(*(first.wait() for first in firsts))
                for task in tasks:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, asyncio.CancelledError) for r in results)
            # Every response was closed: the server saw every client leave.
            await loopback.wait_for(lambda: loopback.disconnects == 1000, timeout=30)

            # New requests are still served, streamed and not.
            async with provider_for(loopback, "ok") as ok:
                chunks = [c async for c in ok.stream(HELLO)]
                assert chunks[-1].response is not None
                assert (await ok.complete(HELLO)).content == "Hello there!"
        gc.collect()


async def test_a_small_pool_is_not_exhausted_by_cancelled_streams(loopback) -> None:
    # With 5 connections, leaking even 5 of 50 cancelled streams would leave nothing for
    # the next request, which would then fail with a pool timeout.
    transport = AiohttpTransport(max_connections=5)
    async with httpx.AsyncClient(
        transport=transport, timeout=httpx.Timeout(10.0, pool=2.0)
    ) as client:
        hang = OpenAIProvider(
            "openai",
            "m",
            base_url=f"{loopback.url}/hang/v1",
            http_client=client,
            max_retries=0,
        )
        for _ in range(50):
            async with aclosing(hang.stream(HELLO)) as chunks:
                await anext(chunks)
        ok = OpenAIProvider(
            "openai", "m", base_url=f"{loopback.url}/ok/v1", http_client=client, max_retries=0
        )
        assert (await ok.complete(HELLO)).content == "Hello there!"


async def test_no_proxy_and_proxy_variables(loopback, monkeypatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    async with provider_for(loopback, "ok", max_retries=0) as provider:
        with pytest.raises(APIConnectionError):  # the (dead) proxy was used
            await provider.complete(HELLO)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    async with provider_for(loopback, "ok", max_retries=0) as provider:
        assert (await provider.complete(HELLO)).content == "Hello there!"


async def test_transport_refuses_use_after_close(loopback) -> None:
    transport = AiohttpTransport()
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(f"{loopback.url}/ok/v1/chat/completions", json={})
        assert response.status_code == 200
        assert response.json()["object"] == "chat.completion"
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(httpx.Request("GET", loopback.url))


# --- the caller's own timeouts and cancel scopes ---------------------------------------


@contextlib.asynccontextmanager
async def _user_scope(kind: str, seconds: float) -> AsyncIterator[None]:
    """The caller's timeout: ``asyncio.timeout`` or ``anyio.fail_after`` (both raise the
    builtin ``TimeoutError``)."""
    if kind == "asyncio":
        if sys.version_info < (3, 11):
            pytest.skip("asyncio.timeout is Python 3.11+")
        async with asyncio.timeout(seconds):
            yield
    else:
        if sys.version_info < (3, 11):
            pytest.skip("anyio scopes on 3.10 (no Task.uncancel) leave tasks cancelling")
        with anyio.fail_after(seconds):
            yield


def scripted_provider(server: srv.ScriptedServer, **options: Any) -> OpenAIProvider:
    return OpenAIProvider("openai", "m", "sk-test", base_url=server.url, **options)


SILENCES = {
    # what the server does, what the caller does, our own limits (all far longer)
    "no headers, complete": (lambda: srv.stall(headers_sent=False), False),
    "no headers, stream": (lambda: srv.stall(headers_sent=False), True),
    "silent body, stream": (lambda: srv.sse([srv.delta("one ")], end="hang"), True),
    "silent body, complete": (lambda: srv.stall(), False),
}


@pytest.mark.parametrize("scope", ["asyncio", "anyio"])
@pytest.mark.parametrize("case", sorted(SILENCES))
async def test_the_callers_timeout_fires_as_in_plain_asyncio(scope: str, case: str) -> None:
    # Our own limits (an attempt scope, a deadline scope, a stream's timer) are running
    # and much longer: the caller's 0.2 s scope must fire, as itself (TimeoutError, not
    # one of ours), the task must not stay cancelled, and the connection must be closed.
    behaviour, streaming = SILENCES[case]
    server = await srv.ScriptedServer().start()
    server.default = behaviour()
    try:
        async with scripted_provider(
            server, deadline=30, stream_idle_timeout=20, timeout=25.0, max_retries=0
        ) as provider:
            seen: list[str] = []
            started = asyncio.get_running_loop().time()

            async def call() -> None:
                async with _user_scope(scope, 0.2):
                    if streaming:
                        async for chunk in provider.stream(HELLO):
                            seen.append(chunk.delta)
                    else:
                        await provider.complete(HELLO)

            with pytest.raises(TimeoutError) as caught:
                await call()
            elapsed = asyncio.get_running_loop().time() - started
            assert not isinstance(caught.value, PromptKitError)
            assert elapsed < 10  # the caller's 0.2 s, not any of our 20-30 s limits
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0  # nothing left cancelled behind
            await asyncio.wait_for(server.wait_for(lambda: server.open == 0), 10)
            if case == "silent body, stream":
                assert seen == ["one "]
            # The provider still works, and our own limit is still ours.
            server.default = srv.answer
            assert (await provider.complete(HELLO)).content.startswith("reply to")
    finally:
        await server.aclose()


@pytest.mark.parametrize("scope", ["asyncio", "anyio"])
async def test_our_idle_timeout_inside_a_longer_caller_scope(scope: str) -> None:
    # Ours fires first: our typed error, and the caller's scope neither fires nor is
    # left with a stray cancellation (the code after the call still runs).
    server = await srv.ScriptedServer().start()
    server.default = srv.sse([srv.delta("one ")], end="hang")
    try:
        async with scripted_provider(server, stream_idle_timeout=0.1) as provider:
            async with _user_scope(scope, 20):
                with pytest.raises(StreamIdleTimeoutError):
                    async for _ in provider.stream(HELLO):
                        pass
                await asyncio.sleep(0)  # a stray cancel would land here
                after = "ran"
            assert after == "ran"
            assert len(server.requests) == 1  # an idle stream is not re-sent
    finally:
        await server.aclose()


async def test_a_silent_stream_fails_by_default_in_bounded_time() -> None:
    # The default: an idle limit on every streamed call (no more 600 s x 3 attempts).
    from promptkit_async.providers._http import DEFAULT_STREAM_IDLE_TIMEOUT

    async with OpenAIProvider("openai", "m", "sk-test") as provider:
        assert provider.stream_idle_timeout == DEFAULT_STREAM_IDLE_TIMEOUT == 120.0
    async with OpenAIProvider("openai", "m", "sk-test", stream_idle_timeout=math.inf) as off:
        assert off.stream_idle_timeout is None


async def test_respx_sees_a_provider_given_an_httpx_client() -> None:
    # The documented way to test with respx (docs/how-to/testing.md): hand the provider
    # an httpx.AsyncClient; respx.mock then answers, and nothing reaches the network.
    url = "https://api.openai.com/v1/chat/completions"
    answer = {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "mocked"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    with respx.mock(assert_all_called=True) as router:
        route = router.post(url).respond(json=answer)
        async with (
            httpx.AsyncClient() as client,
            OpenAIProvider("openai", "gpt-4o-mini", "sk-x", http_client=client) as provider,
        ):
            assert (await provider.complete(HELLO)).content == "mocked"
    assert route.call_count == 1


def _encoded(kind: str, data: bytes) -> tuple[str, bytes]:
    if kind == "gzip":
        return "gzip", gzip.compress(data)
    if kind == "deflate (zlib)":
        return "deflate", zlib.compress(data)
    if kind == "deflate (raw)":  # no zlib header: some servers send this
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        return "deflate", packer.compress(data) + packer.flush()
    return kind, data  # an encoding we never asked for, e.g. "br"


def _compressed(kind: str, streaming: bool) -> srv.Behaviour:
    async def behaviour(request: srv.Request, conn: srv.Conn) -> bool:
        if streaming:
            data = b"".join(srv.reply_events("Hello there!"))
        else:
            data = srv.completion_body("Hello there!")
        encoding, body = _encoded(kind, data)
        kind_ = "text/event-stream" if streaming else "application/json"
        await conn.head(200, {"content-encoding": encoding}, content_type=kind_)
        for start in range(0, len(body), 7):  # small pieces: state carried across reads
            await conn.chunk(body[start : start + 7])
        await conn.end_chunks()
        return True

    return behaviour


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "complete"])
@pytest.mark.parametrize("kind", ["gzip", "deflate (zlib)", "deflate (raw)", "br"])
async def test_content_encodings(kind: str, streaming: bool) -> None:
    server = await srv.ScriptedServer().start()
    server.default = _compressed(kind, streaming)
    try:
        async with scripted_provider(server, max_retries=2) as provider:

            async def call() -> str:
                if streaming:
                    return "".join([c.delta async for c in provider.stream(HELLO)])
                return (await provider.complete(HELLO)).content

            if kind == "br":  # not asked for, not decoded: a typed error, not retried
                with pytest.raises(APIResponseError, match="unsupported Content-Encoding"):
                    await call()
                assert len(server.requests) == 1
            else:
                assert await call() == "Hello there!"
            assert server.requests[0].headers["accept-encoding"] == "gzip, deflate"
    finally:
        await server.aclose()


async def test_a_stream_waits_for_its_headers_at_most_the_idle_timeout() -> None:
    # No headers at all: each attempt ends after stream_idle_timeout (connecting
    # included) with a timeout error, and is retried like a connection failure.
    server = await srv.ScriptedServer().start()
    server.default = srv.stall(headers_sent=False)
    try:
        async with scripted_provider(
            server, stream_idle_timeout=0.1, max_retries=1, retry_policy=FAST
        ) as provider:
            with pytest.raises(APITimeoutError, match="no response headers") as caught:
                await asyncio.wait_for(drain(provider.stream(HELLO), []), 10)
            assert type(caught.value) is APITimeoutError
            assert len(server.requests) == 2
            await asyncio.wait_for(server.wait_for(lambda: server.open == 0), 10)
    finally:
        await server.aclose()


async def test_a_slow_reader_is_not_an_idle_stream() -> None:
    # The idle limit times the waits for bytes, not the caller: a consumer that holds
    # each chunk longer than the limit (the fault simulated here) still gets it all.
    server = await srv.ScriptedServer().start()

    async def paced(request: srv.Request, conn: srv.Conn) -> bool:
        # Events 20 ms apart (within the limit), then the body stays open: closing the
        # response would break the reads still to come.
        await conn.head(200)
        for event in srv.reply_events("Hello there!", pieces=6):
            await conn.chunk(event)
            await asyncio.sleep(0.02)  # the pacing of a real stream
        await conn.until_client_leaves()
        return False

    server.default = paced
    try:
        async with scripted_provider(server, stream_idle_timeout=0.05) as provider:
            seen: list[str] = []
            async for chunk in provider.stream(HELLO):
                seen.append(chunk.delta)
                await asyncio.sleep(0.1)  # a slow consumer, longer than the idle limit
            assert "".join(seen) == "Hello there!"
    finally:
        await server.aclose()


class _CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the timers scheduled on it (``call_later`` included)."""

    def __init__(self) -> None:
        super().__init__()
        self.timers = 0

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


def test_a_providers_streams_share_one_timer() -> None:
    # Every streamed attempt is timed (the headers, each read of the body) by one clock
    # per provider: streams one after another schedule no timer of their own.

    async def main(loop: _CountingLoop) -> tuple[int, int]:
        server = await srv.ScriptedServer().start()
        try:
            async with OpenAIProvider(
                "openai", "m", "sk-test", base_url=server.url, max_retries=0
            ) as provider:
                first = [c async for c in provider.stream(HELLO)]  # connects, sets the clock
                assert first[-1].response is not None
                before = loop.timers
                for _ in range(20):
                    chunks = [c async for c in provider.stream(HELLO)]
                    assert chunks[-1].response is not None
                return before, loop.timers
        finally:
            await server.aclose()

    loop = _CountingLoop()
    try:
        before, after = loop.run_until_complete(main(loop))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    assert after - before <= 2  # (aiohttp's own keep-alive clean-up may add one)


async def test_streams_on_one_clock_each_keep_their_own_idle_limit() -> None:
    # Two streams of one provider share its clock. The silent one fails on time; the
    # other, waiting (for less than its limit) when the clock fires for the first, is not
    # failed with it, and later fails its own limit after its own last event.
    idle = 0.3
    silent_failed = asyncio.Event()

    async def one_then_two_after_the_other_failed(request: srv.Request, conn: srv.Conn) -> bool:
        await conn.head(200)
        await conn.chunk(srv.delta("one "))
        await silent_failed.wait()
        await conn.chunk(srv.delta("two"))
        await conn.until_client_leaves()
        return False

    server = await srv.ScriptedServer().start()
    server.push(srv.stall(), one_then_two_after_the_other_failed)
    loop = asyncio.get_running_loop()
    try:
        async with OpenAIProvider(
            "openai", "m", "sk-test", base_url=server.url, max_retries=0,
            stream_idle_timeout=idle,
        ) as provider:  # fmt: skip

            async def silent() -> float:
                try:
                    with pytest.raises(StreamIdleTimeoutError):
                        [c async for c in provider.stream(HELLO)]
                    return loop.time()
                finally:
                    silent_failed.set()

            seen: list[str] = []
            arrived: list[float] = []

            async def read() -> None:
                async for chunk in provider.stream(HELLO):
                    if chunk.delta:
                        seen.append(chunk.delta)
                        arrived.append(loop.time())

            async def talkative() -> float:
                with pytest.raises(StreamIdleTimeoutError):
                    await read()
                return loop.time()

            started = loop.time()
            first = asyncio.create_task(silent())
            await asyncio.wait_for(server.wait_for(lambda: len(server.requests) == 1), 10)
            # The scenario, not a synchronisation: the second stream's silence starts half
            # a limit later, so it is mid-wait when the clock fires for the first.
            await asyncio.sleep(idle / 2)
            second_failed = await asyncio.wait_for(talkative(), 10)
            first_failed = await asyncio.wait_for(first, 10)
        assert seen == ["one ", "two"]  # not failed when the clock fired for the other
        assert idle - 0.01 <= first_failed - started < idle + 0.25  # on time
        assert arrived[-1] >= first_failed
        assert second_failed - arrived[-1] >= idle - 0.01  # its whole limit, from its own read
    finally:
        await server.aclose()
