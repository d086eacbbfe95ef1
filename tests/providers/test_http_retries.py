"""The shared retry loop, through OpenAIProvider and respx: what is retried, how long it
waits (as recorded in the trace, never measured), and what is closed when."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from promptkit_async.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    RateLimitError,
)
from promptkit_async.providers import OpenAIProvider, ProviderRequest, RetryPolicy
from promptkit_async.types import Message, StreamChunk, TraceEvent

HELLO = ProviderRequest([Message("user", "Hi")])


async def drain(chunks: AsyncIterator[StreamChunk], seen: list[str]) -> None:
    """Read a stream to its end (or error), keeping the text deltas in ``seen``."""
    async for chunk in chunks:
        seen.append(chunk.delta)


def make(http_client: httpx.AsyncClient, **kwargs: Any) -> OpenAIProvider:
    kwargs.setdefault("retry_policy", RetryPolicy(initial_delay=0.001, max_delay=0.002))
    return OpenAIProvider("openai", "gpt-4o-mini", "sk-test", http_client=http_client, **kwargs)


def retries(trace: tuple[TraceEvent, ...]) -> list[dict[str, Any]]:
    assert all(event.kind == "retry" for event in trace)
    return [dict(event.detail) for event in trace]


def ok(fakes: Any, streaming: bool) -> httpx.Response:
    if streaming:
        return fakes.sse_response(fakes.hello_stream())
    return httpx.Response(200, json=fakes.completion())


async def call(provider: OpenAIProvider, streaming: bool) -> Any:
    if streaming:
        chunks = [c async for c in provider.stream(HELLO)]
        return chunks[-1].response
    return await provider.complete(HELLO)


@pytest.fixture(params=[False, True], ids=["complete", "stream"])
def streaming(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


async def test_retry_after_seconds(http_client, router, fakes, streaming) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[
            httpx.Response(429, json={}, headers={"retry-after": "3"}),
            ok(fakes, streaming),
        ]
    )
    policy = RetryPolicy(max_retry_after=0.004)
    async with make(http_client, retry_policy=policy) as provider:
        response = await call(provider, streaming)
    assert route.call_count == 2
    [detail] = retries(response.trace)
    assert detail["retry_after"] == 3.0
    assert detail["wait"] == 0.004  # the server's 3 s, capped
    assert detail["status"] == 429
    assert detail["reason"] == "HTTP 429"
    assert detail["attempt"] == 2
    assert detail["max_retries"] == 2


async def test_retry_after_http_date(http_client, router, fakes, streaming) -> None:
    when = formatdate(time.time() + 120, usegmt=True)
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[
            httpx.Response(503, json={}, headers={"Retry-After": when}),
            ok(fakes, streaming),
        ]
    )
    async with make(http_client, retry_policy=RetryPolicy(max_retry_after=0.004)) as provider:
        response = await call(provider, streaming)
    assert route.call_count == 2
    [detail] = retries(response.trace)
    assert 100 < detail["retry_after"] <= 120  # read from the date, not the default backoff
    assert detail["wait"] == 0.004


async def test_retry_after_ms_from_each_attempts_own_response(
    http_client, router, fakes, streaming
) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[
            httpx.Response(429, json={}, headers={"retry-after-ms": "3"}),
            httpx.Response(500, json={}, headers={"retry-after-ms": "5"}),
            ok(fakes, streaming),
        ]
    )
    async with make(http_client, retry_policy=RetryPolicy(max_retry_after=1.0)) as provider:
        response = await call(provider, streaming)
    assert route.call_count == 3
    details = retries(response.trace)
    assert [d["retry_after"] for d in details] == [0.003, 0.005]
    assert [d["wait"] for d in details] == [0.003, 0.005]
    assert [d["status"] for d in details] == [429, 500]


async def test_backoff_without_a_hint(http_client, router, fakes, streaming) -> None:
    router.post(fakes.CHAT_URL).mock(
        side_effect=[httpx.Response(500, json={}), httpx.Response(502), ok(fakes, streaming)]
    )
    policy = RetryPolicy(initial_delay=0.002, max_delay=0.003, jitter=0.5)
    async with make(http_client, retry_policy=policy) as provider:
        response = await call(provider, streaming)
    waits = [d["wait"] for d in retries(response.trace)]
    assert 0.001 <= waits[0] <= 0.002  # 0.002, minus up to half of it
    assert 0.0015 <= waits[1] <= 0.003  # doubled, capped at max_delay
    assert [d["retry_after"] for d in retries(response.trace)] == [None, None]


async def test_max_retries_then_the_last_error(http_client, router, fakes, streaming) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(500, json={"error": {"message": "down"}})
    )
    async with make(http_client, max_retries=3) as provider:
        with pytest.raises(InternalServerError, match="down"):
            await call(provider, streaming)
    assert route.call_count == 4


async def test_max_retries_zero_means_one_attempt(http_client, router, fakes, streaming) -> None:
    route = router.post(fakes.CHAT_URL).mock(return_value=httpx.Response(429, json={}))
    async with make(http_client, max_retries=0) as provider:
        with pytest.raises(RateLimitError):
            await call(provider, streaming)
    assert route.call_count == 1


@pytest.mark.parametrize(("status", "error"), [(400, BadRequestError), (401, AuthenticationError)])
async def test_client_errors_are_not_retried(http_client, router, fakes, status, error) -> None:
    route = router.post(fakes.CHAT_URL).mock(return_value=httpx.Response(status, json={}))
    async with make(http_client) as provider:
        with pytest.raises(error):
            await provider.complete(HELLO)
    assert route.call_count == 1


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
async def test_retryable_statuses(http_client, router, fakes, status) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[httpx.Response(status, json={}), ok(fakes, False)]
    )
    async with make(http_client) as provider:
        response = await provider.complete(HELLO)
    assert route.call_count == 2
    assert len(response.trace) == 1


async def test_x_should_retry_header_is_obeyed(http_client, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[
            httpx.Response(400, json={}, headers={"x-should-retry": "true"}),
            httpx.Response(500, json={}, headers={"x-should-retry": "false"}),
        ]
    )
    async with make(http_client) as provider:
        with pytest.raises(InternalServerError):
            await provider.complete(HELLO)
    assert route.call_count == 2


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx.ConnectError("refused"), APIConnectionError),
        (httpx.ReadError("reset"), APIConnectionError),
        (httpx.ConnectTimeout("slow"), APITimeoutError),
        (httpx.PoolTimeout("busy"), APITimeoutError),
    ],
)
async def test_connection_errors_are_retried(
    http_client, router, fakes, streaming, failure, error
) -> None:
    route = router.post(fakes.CHAT_URL).mock(side_effect=[failure, ok(fakes, streaming)])
    async with make(http_client) as provider:
        response = await call(provider, streaming)
    assert route.call_count == 2
    [detail] = retries(response.trace)
    assert detail["reason"] == error.__name__
    assert detail["status"] is None

    route.mock(side_effect=failure)
    async with make(http_client, max_retries=1) as provider:
        with pytest.raises(error):
            await call(provider, streaming)


async def test_no_retry_once_a_streamed_event_arrived(http_client, router, fakes) -> None:
    broken = fakes.TrackedStream(
        [fakes.sse(fakes.chunk("Hel"), done=False)], after=httpx.ReadError("connection reset")
    )
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[fakes.sse_response(broken), ok(fakes, True)]
    )
    seen = []
    async with make(http_client) as provider:
        with pytest.raises(APIConnectionError):
            await drain(provider.stream(HELLO), seen)
    assert seen == ["Hel"]
    assert route.call_count == 1  # the caller already had text: no replay
    assert broken.closed


async def test_stream_broken_before_its_first_event_is_retried(http_client, router, fakes) -> None:
    broken = fakes.TrackedStream([b": keep-alive\n\n"], after=httpx.ReadError("reset"))
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[fakes.sse_response(broken), ok(fakes, True)]
    )
    async with make(http_client) as provider:
        chunks = [c async for c in provider.stream(HELLO)]
    assert "".join(c.delta for c in chunks) == "Hello there!"
    assert route.call_count == 2
    assert broken.closed
    response = chunks[-1].response
    assert response is not None
    assert retries(response.trace)[0]["reason"] == "APIConnectionError"


async def test_failed_response_is_closed_before_sleeping(http_client, router, fakes) -> None:
    # The retry waits 60 s. If the failed response were only closed after the wait, the
    # close event below would never come (the test would time out), so seeing it while
    # the call is still waiting proves the order.
    failed = fakes.TrackedStream([b'{"error": {"message": "busy"}}'])
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[
            httpx.Response(429, headers={"retry-after": "60"}, stream=failed),
            ok(fakes, False),
        ]
    )
    async with make(http_client, retry_policy=RetryPolicy(max_retry_after=60)) as provider:
        task = asyncio.create_task(provider.complete(HELLO))
        await asyncio.wait_for(failed.close_event.wait(), 10)
        assert not task.done()
        assert route.call_count == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert route.call_count == 1  # cancelling the wait ended the call


async def test_a_wait_beyond_the_deadline_fails_at_once(http_client, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(
            429, json={"error": {"message": "slow down"}}, headers={"retry-after": "30"}
        )
    )
    policy = RetryPolicy(max_retry_after=60)
    async with make(http_client, retry_policy=policy, deadline=5) as provider:
        with pytest.raises(RateLimitError, match="slow down"):
            await provider.complete(HELLO)
    assert route.call_count == 1


async def test_retries_are_logged_without_secrets(http_client, router, fakes, caplog) -> None:
    router.post(fakes.CHAT_URL).mock(
        side_effect=[
            httpx.Response(503, json={}, headers={"retry-after-ms": "2"}),
            ok(fakes, False),
        ]
    )
    caplog.set_level(logging.INFO, logger="promptkit_async.providers")
    async with make(http_client) as provider:
        await provider.complete(HELLO)
    [record] = [r for r in caplog.records if r.name == "promptkit_async.providers"]
    assert record.levelno == logging.INFO
    assert "HTTP 503" in record.getMessage()
    assert "retry 1/2" in record.getMessage()
    assert record.retry["wait"] == 0.002  # type: ignore[attr-defined]
    assert "sk-test" not in repr(record.__dict__)


async def test_retry_counter_is_per_call(http_client, router, fakes) -> None:
    # Two calls, each failing once: each gets its own budget of retries.
    responses: list[Callable[[], httpx.Response]] = [
        lambda: httpx.Response(500, json={}),
        lambda: ok(fakes, False),
    ] * 2
    router.post(fakes.CHAT_URL).mock(side_effect=[make_response() for make_response in responses])
    async with make(http_client, max_retries=1) as provider:
        first = await provider.complete(HELLO)
        second = await provider.complete(HELLO)
    assert len(first.trace) == len(second.trace) == 1
