"""OpenAIProvider over respx: bodies, streaming, tool calls, errors, costs, secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import respx

from promptkit_async.errors import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ContextLengthExceededError,
    IncompleteStreamError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    StreamIdleTimeoutError,
    UnprocessableEntityError,
)
from promptkit_async.pricing import lookup_pricing
from promptkit_async.providers import GenerationConfig, OpenAIProvider, ProviderRequest
from promptkit_async.types import Message, StreamChunk, ToolCall, ToolDefinition, Usage

HELLO = ProviderRequest([Message("user", "Hi")])


def sent_body(route: respx.Route, index: int = -1) -> dict[str, Any]:
    return json.loads(route.calls[index].request.content)


async def collect(provider: OpenAIProvider, request: ProviderRequest) -> list[StreamChunk]:
    return [c async for c in provider.stream(request)]


async def drain(chunks: AsyncIterator[StreamChunk], seen: list[str]) -> None:
    """Read a stream to its end (or error), keeping the text deltas in ``seen``."""
    async for chunk in chunks:
        seen.append(chunk.delta)


# --- streaming ----------------------------------------------------------------------------


async def test_streamed_answer_with_usage_chunk(provider, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        return_value=fakes.sse_response(fakes.hello_stream("Hello there!", cached=4))
    )
    chunks = await collect(provider, HELLO)

    assert [c.delta for c in chunks[:-1]] == ["Hell", "o th", "ere!"]
    assert all(c.response is None for c in chunks[:-1])
    final = chunks[-1]
    response = final.response
    assert response is not None
    assert final.delta == ""
    assert response.content == "Hello there!"
    assert response.finish_reason == final.finish_reason == "stop"
    assert response.usage == final.usage == Usage(12, 5, 17, cached_tokens=4)
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.response_id == "chatcmpl-abc123"
    assert response.request_id == "req_stream"
    assert response.time_to_first_chunk is not None
    assert response.tool_calls == ()
    assert response.trace == ()
    assert response.raw is None

    body = sent_body(route)
    fakes.validate_request(body, stream=True)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    headers = route.calls.last.request.headers
    assert headers["authorization"] == f"Bearer {fakes.API_KEY}"
    assert headers["accept"] == "text/event-stream"
    assert headers["content-type"] == "application/json"


async def test_cost_is_usage_times_gpt_4o_mini_prices(provider, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(fakes.hello_stream(cached=4)))
    response = (await collect(provider, HELLO))[-1].response
    assert response is not None
    price = lookup_pricing("gpt-4o-mini")
    assert price is not None
    assert price.cached_input_per_mtok is not None
    # 12 prompt tokens of which 4 cached, 5 completion tokens.
    expected_input = 8 * price.input_per_mtok / 1e6
    expected_cached = 4 * price.cached_input_per_mtok / 1e6
    expected_output = 5 * price.output_per_mtok / 1e6
    assert response.cost.input_cost == pytest.approx(expected_input)
    assert response.cost.cached_cost == pytest.approx(expected_cached)
    assert response.cost.output_cost == pytest.approx(expected_output)
    assert response.cost.total_cost == pytest.approx(
        expected_input + expected_cached + expected_output
    )
    assert response.cost == provider.calculate_cost(response.usage)


async def test_text_arrives_chunk_by_chunk_before_the_stream_ends(provider, router, fakes) -> None:
    stream = fakes.TrackedStream([fakes.sse(fakes.chunk("first"), done=False)], after="hang")
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    async with aclosing(provider.stream(HELLO)) as chunks:
        first = await anext(chunks)
    assert first.delta == "first"
    assert stream.closed


async def test_streamed_tool_calls_two_in_one_message(provider, router, fakes) -> None:
    body = fakes.sse(
        fakes.chunk(role="assistant", tool_calls=[(0, "call_a", "get_weather", "")]),
        fakes.chunk(tool_calls=[(0, None, None, '{"city":')]),
        fakes.chunk(tool_calls=[(0, None, None, ' "Paris"}')]),
        fakes.chunk(tool_calls=[(1, "call_b", "get_time", "")]),
        fakes.chunk(tool_calls=[(1, None, None, '{"tz": "CET"}')]),
        fakes.chunk(finish_reason="tool_calls"),
        fakes.chunk(usage_=fakes.usage(30, 20)),
    )
    route = router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(body))
    tools = [
        ToolDefinition(
            "get_weather",
            "Weather for a city",
            {"type": "object", "properties": {"city": {"type": "string"}}},
        ),
        ToolDefinition("get_time"),
    ]
    request = ProviderRequest([Message("user", "Weather and time?")], tools=tools)
    chunks = await collect(provider, request)

    deltas = [d for c in chunks for d in c.tool_call_deltas]
    assert [(d.index, d.id, d.name, d.arguments) for d in deltas] == [
        (0, "call_a", "get_weather", ""),
        (0, None, None, '{"city":'),
        (0, None, None, ' "Paris"}'),
        (1, "call_b", "get_time", ""),
        (1, None, None, '{"tz": "CET"}'),
    ]
    response = chunks[-1].response
    assert response is not None
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", '{"tz": "CET"}'),
    )
    sent = sent_body(route)
    fakes.validate_request(sent, stream=True)
    assert sent["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }

    # The assistant turn and tool results replay as valid messages on the next call.
    history = [
        *request.messages,
        response.to_message(),
        Message("tool", "18C", tool_call_id="call_a"),
        Message("tool", "10:00", tool_call_id="call_b"),
    ]
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(fakes.hello_stream()))
    await collect(provider, ProviderRequest(history, tools=tools))
    replay = sent_body(route)
    fakes.validate_request(replay, stream=True)
    assert replay["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
            },
        ],
    }
    assert replay["messages"][2] == {"role": "tool", "content": "18C", "tool_call_id": "call_a"}


async def test_include_raw_output_keeps_every_payload(http_client, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(fakes.hello_stream()))
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, include_raw_output=True, http_client=http_client
    ) as provider:
        response = (await collect(provider, HELLO))[-1].response
    assert response is not None
    assert isinstance(response.raw, list)
    assert len(response.raw) == 6
    assert response.raw[-1]["usage"]["total_tokens"] == 17
    assert response.raw[1]["choices"][0]["delta"]["content"] == "Hell"


async def test_missing_usage_is_estimated_and_marked(provider, router, fakes) -> None:
    body = fakes.sse(fakes.chunk("Hello world"), fakes.chunk(finish_reason="stop"))
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(body))
    response = (await collect(provider, HELLO))[-1].response
    assert response is not None
    assert response.usage.estimated
    assert response.usage.completion_tokens > 0
    assert response.usage.prompt_tokens > 0


# --- non-streaming ------------------------------------------------------------------------


async def test_non_streamed_answer(provider, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(
            200,
            json=fakes.completion("Hi Alice", usage_=fakes.usage(20, 3, cached=10)),
            headers={"x-request-id": "req_json"},
        )
    )
    response = await provider.complete(HELLO)
    assert response.content == "Hi Alice"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(20, 3, 23, cached_tokens=10)
    assert response.cost == provider.calculate_cost(response.usage)
    assert response.cost.total_cost > 0
    assert response.request_id == "req_json"
    assert response.response_id == "chatcmpl-xyz789"
    assert response.time_to_first_chunk is None
    body = sent_body(route)
    fakes.validate_request(body, stream=False)
    assert "stream" not in body
    assert "stream_options" not in body


async def test_non_streamed_tool_calls_and_raw(http_client, router, fakes) -> None:
    payload = fakes.completion(
        None,
        tool_calls=[("call_1", "lookup", '{"q": "x"}'), ("call_2", "lookup", '{"q": "y"}')],
        finish_reason="tool_calls",
    )
    router.post(fakes.CHAT_URL).mock(return_value=httpx.Response(200, json=payload))
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, include_raw_output=True, http_client=http_client
    ) as provider:
        response = await provider.complete(HELLO)
    assert response.content == ""
    assert response.tool_calls == (
        ToolCall("call_1", "lookup", '{"q": "x"}'),
        ToolCall("call_2", "lookup", '{"q": "y"}'),
    )
    assert response.finish_reason == "tool_calls"
    assert response.raw == payload


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"not json", APIResponseError),
        (b"[1, 2]", APIResponseError),
        (b'{"choices": []}', APIResponseError),
        (b'{"choices": [{"message": {"tool_calls": [{"id": "x"}]}}]}', APIResponseError),
    ],
)
async def test_unusable_non_streamed_body(provider, router, fakes, content, error) -> None:
    router.post(fakes.CHAT_URL).mock(return_value=httpx.Response(200, content=content))
    with pytest.raises(error):
        await provider.complete(HELLO)


# --- request building ---------------------------------------------------------------------


async def test_message_conversion_and_request_fields(http_client, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(200, json=fakes.completion())
    )
    defaults = GenerationConfig(temperature=0.3, max_tokens=100, top_p=0.9)
    messages = [
        Message("system", "You are terse."),
        Message("user", "Weather?", name="alice"),
        Message("assistant", "", tool_calls=[ToolCall("c1", "weather", '{"city": "Oslo"}')]),
        Message("tool", "-3C", tool_call_id="c1"),
        Message("assistant", "It is -3C."),
        Message("user", "Thanks"),
    ]
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, generation=defaults, http_client=http_client
    ) as provider:
        await provider.complete(
            ProviderRequest(
                messages,
                tools=[ToolDefinition("weather")],
                tool_choice="weather",
                generation=GenerationConfig(
                    temperature=0.0,  # set explicitly: wins over the default though falsy
                    stop=("END",),
                    seed=7,
                    extra_body={"user": "u-1", "top_p": 0.5},
                ),
            )
        )
        await provider.complete(ProviderRequest(messages[-1:], tool_choice="required"))
    body = sent_body(route, 0)
    fakes.validate_request(body, stream=False)
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather?", "name": "alice"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "content": "-3C", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is -3C."},
        {"role": "user", "content": "Thanks"},
    ]
    assert body["temperature"] == 0.0
    assert body["max_completion_tokens"] == 100  # from defaults; api.openai.com's field
    assert "max_tokens" not in body
    assert body["top_p"] == 0.5  # extra_body wins
    assert body["stop"] == ["END"]
    assert body["seed"] == 7
    assert body["user"] == "u-1"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    second = sent_body(route, 1)
    fakes.validate_request(second, stream=False)
    assert second["tool_choice"] == "required"
    assert second["temperature"] == 0.3
    assert second["top_p"] == 0.9


async def test_other_servers_get_max_tokens(http_client, router, fakes) -> None:
    route = router.post("http://localhost:8000/v1/chat/completions").mock(
        return_value=httpx.Response(200, json=fakes.completion())
    )
    async with OpenAIProvider(
        "vllm", "qwen", base_url="http://localhost:8000/v1/", http_client=http_client
    ) as provider:
        await provider.complete(
            ProviderRequest([Message("user", "x")], generation=GenerationConfig(max_tokens=9))
        )
    body = sent_body(route)
    fakes.validate_request(body, stream=False)
    assert body["max_tokens"] == 9
    assert "max_completion_tokens" not in body


async def test_empty_request_is_rejected_before_io(provider, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL)
    with pytest.raises(InvalidRequestError, match="no messages"):
        await provider.complete(ProviderRequest([]))
    with pytest.raises(InvalidRequestError):
        await collect(provider, ProviderRequest([]))
    assert not route.called


async def test_unserialisable_extra_body_is_a_clear_error(provider, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL)
    with pytest.raises(InvalidRequestError, match="extra_body"):
        await provider.complete(
            ProviderRequest(
                [Message("user", "x")], generation=GenerationConfig(extra_body={"x": {1, 2}})
            )
        )
    assert not route.called


@pytest.mark.parametrize("base_url", ["localhost:11434/v1", "ftp://example.com"])
def test_base_url_needs_a_scheme(base_url: str) -> None:
    with pytest.raises(InvalidRequestError, match="http"):
        OpenAIProvider("x", "m", base_url=base_url)


@pytest.mark.parametrize("bad", [{"max_retries": -1}, {"stream_idle_timeout": 0}, {"deadline": -1}])
def test_bad_limits_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        OpenAIProvider("x", "gpt-4o-mini", **bad)


# --- keys ---------------------------------------------------------------------------------


async def test_key_from_environment(http_client, router, fakes, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    route = router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(200, json=fakes.completion())
    )
    async with OpenAIProvider("openai", "gpt-4o-mini", http_client=http_client) as provider:
        await provider.complete(HELLO)
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-from-env"


async def test_no_key_sends_no_authorization_header(http_client, router, fakes) -> None:
    route = router.post("http://localhost:11434/v1/chat/completions").mock(
        return_value=httpx.Response(200, json=fakes.completion())
    )
    async with OpenAIProvider(
        "ollama", "llama3.2", base_url="http://localhost:11434/v1", http_client=http_client
    ) as provider:
        await provider.complete(HELLO)
    assert "authorization" not in route.calls.last.request.headers


async def test_missing_key_401_says_how_to_fix_it(http_client, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(401, json={"error": {"message": "You didn't provide a key."}})
    )
    async with OpenAIProvider("openai", "gpt-4o-mini", http_client=http_client) as provider:
        with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
            await provider.complete(HELLO)


async def test_api_key_never_in_errors_reprs_or_logs(provider, router, fakes, caplog) -> None:
    key = fakes.API_KEY
    echo = {"error": {"message": f"Incorrect API key provided: {key}.", "code": "invalid_api_key"}}
    router.post(fakes.CHAT_URL).mock(
        side_effect=[
            httpx.Response(500, json=echo),  # retried: shows up in trace and logs
            httpx.Response(401, json=echo, headers={"x-request-id": "req_401"}),
        ]
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as caught:
        await provider.complete(HELLO)
    error = caught.value
    assert error.status_code == 401
    assert error.request_id == "req_401"
    assert "Incorrect API key provided" in str(error)
    texts = [str(error), repr(error), error.message, json.dumps(error.body), repr(provider)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(record.__dict__) for record in caplog.records]
    assert any("retry" in t for t in texts)
    for text in texts:
        assert key not in text
    assert "[REDACTED]" in error.message


# --- errors -------------------------------------------------------------------------------

CASES = [
    (
        400,
        {"error": {"message": "Invalid 'messages'", "type": "invalid_request_error"}},
        BadRequestError,
    ),
    (
        400,
        {
            "error": {
                "message": "This model's maximum context length is 128000 tokens. However, "
                "your messages resulted in 130000 tokens.",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        },
        ContextLengthExceededError,
    ),
    (
        400,
        {"error": {"message": "Please reduce the length of the messages.", "code": None}},
        ContextLengthExceededError,
    ),
    (
        401,
        {"error": {"message": "Invalid key", "type": "invalid_request_error"}},
        AuthenticationError,
    ),
    (403, {"error": {"message": "Country not supported"}}, PermissionDeniedError),
    (404, {"error": {"message": "The model `gpt-9` does not exist"}}, NotFoundError),
    (422, {"detail": "unprocessable"}, UnprocessableEntityError),
    (429, {"error": {"message": "Rate limit reached", "type": "requests"}}, RateLimitError),
    (500, {"error": {"message": "The server had an error"}}, InternalServerError),
    (503, "upstream unavailable", InternalServerError),
    (418, {"message": "teapot"}, APIStatusError),
]


def _error_response(status: int, body: Any) -> httpx.Response:
    headers = {"x-request-id": f"req_{status}"}
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(("status", "body", "error"), CASES)
@pytest.mark.parametrize("streaming", [False, True])
async def test_status_errors_are_typed(
    http_client, router, fakes, status, body, error, streaming
) -> None:
    router.post(fakes.CHAT_URL).mock(return_value=_error_response(status, body))
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, http_client=http_client, max_retries=0
    ) as provider:
        with pytest.raises(error) as caught:
            await (collect(provider, HELLO) if streaming else provider.complete(HELLO))
    exc = caught.value
    assert type(exc) is error
    assert exc.status_code == status
    assert exc.request_id == f"req_{status}"
    assert exc.provider == "openai"
    expected = body if isinstance(body, str) else (body.get("error") or {}).get("message")
    expected = expected or body.get("detail") or body.get("message")
    assert exc.message == expected
    assert exc.body == body
    assert f"HTTP {status}" in str(exc)
    assert f"req_{status}" in str(exc)


async def test_rate_limit_error_carries_retry_after(http_client, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(429, json={}, headers={"retry-after": "12"})
    )
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, http_client=http_client, max_retries=0
    ) as provider:
        with pytest.raises(RateLimitError) as caught:
            await provider.complete(HELLO)
    assert caught.value.retry_after == 12.0
    assert caught.value.message == "HTTP 429 with no message"


async def test_stream_cut_off_midway(provider, router, fakes) -> None:
    body = fakes.sse(fakes.chunk("Hel"), fakes.chunk("lo"), done=False)
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(body))
    seen: list[str] = []
    with pytest.raises(IncompleteStreamError) as caught:
        await drain(provider.stream(HELLO), seen)
    assert seen == ["Hel", "lo"]
    assert caught.value.request_id == "req_stream"


async def test_stream_cut_inside_an_event(provider, router, fakes) -> None:
    body = fakes.sse(fakes.chunk("Hel"), done=False) + b'data: {"id": "chatcmpl-abc123", "cho'
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(body))
    with pytest.raises(IncompleteStreamError, match="inside an event"):
        await collect(provider, HELLO)


async def test_connection_lost_midway_is_incomplete(provider, router, fakes) -> None:
    stream = fakes.TrackedStream(
        [fakes.sse(fakes.chunk("Hel"), done=False)],
        after=httpx.RemoteProtocolError("peer closed connection"),
    )
    route = router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    with pytest.raises(IncompleteStreamError):
        await collect(provider, HELLO)
    assert route.call_count == 1
    assert stream.closed


@pytest.mark.parametrize(
    "body",
    [
        b"data: {not json}\n\ndata: [DONE]\n\n",
        b"data: [1, 2]\n\ndata: [DONE]\n\n",
        b'data: "text"\n\n',
    ],
)
async def test_malformed_events_are_response_errors(provider, router, fakes, body) -> None:
    stream = fakes.TrackedStream([body])
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    with pytest.raises(APIResponseError) as caught:
        await collect(provider, HELLO)
    assert type(caught.value) is APIResponseError  # not "incomplete": the data was bad
    assert stream.closed


@pytest.mark.parametrize(
    ("event", "error", "status"),
    [
        (
            b'data: {"error": {"message": "Rate limit reached", '
            b'"type": "rate_limit_exceeded"}}\n\n',
            RateLimitError,
            429,
        ),
        (
            b'data: {"error": {"message": "too long", "type": "invalid_request_error", '
            b'"code": "context_length_exceeded"}}\n\n',
            ContextLengthExceededError,
            400,
        ),
        (
            b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n',
            InternalServerError,
            500,
        ),
        (b'data: {"error": {"message": "slow down", "code": 429}}\n\n', RateLimitError, 429),
        (b'event: error\ndata: {"message": "overloaded"}\n\n', InternalServerError, 500),
    ],
)
async def test_error_event_inside_the_stream(provider, router, fakes, event, error, status) -> None:
    body = fakes.sse(fakes.chunk("Hi"), done=False) + event
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(body))
    with pytest.raises(error) as caught:
        await collect(provider, HELLO)
    assert caught.value.status_code == status
    assert caught.value.request_id == "req_stream"


async def test_json_error_instead_of_a_stream(provider, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=httpx.Response(
            200, json={"error": {"message": "model overloaded", "type": "server_error"}}
        )
    )
    with pytest.raises(InternalServerError, match="model overloaded"):
        await collect(provider, HELLO)


async def test_connection_errors_are_typed(http_client, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(side_effect=httpx.ConnectError("refused"))
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, http_client=http_client, max_retries=0
    ) as provider:
        with pytest.raises(APIConnectionError) as caught:
            await provider.complete(HELLO)
        assert type(caught.value) is APIConnectionError
        router.post(fakes.CHAT_URL).mock(side_effect=httpx.ReadTimeout("slow"))
        with pytest.raises(APITimeoutError):
            await collect(provider, HELLO)


# --- closing, cancellation, timeouts ------------------------------------------------------


async def test_closing_the_stream_early_closes_the_response(provider, router, fakes) -> None:
    stream = fakes.TrackedStream([fakes.hello_stream()])
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    chunks = provider.stream(HELLO)
    assert (await anext(chunks)).delta == "Hell"
    assert not stream.closed
    await chunks.aclose()  # type: ignore[attr-defined]
    assert stream.closed


async def test_cancelling_mid_stream_closes_the_response(provider, router, fakes) -> None:
    stream = fakes.TrackedStream([fakes.sse(fakes.chunk("Hel"), done=False)], after="hang")
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    got_first = asyncio.Event()

    async def consume() -> None:
        async with aclosing(provider.stream(HELLO)) as chunks:
            async for _ in chunks:
                got_first.set()

    task = asyncio.create_task(consume())
    await got_first.wait()
    await stream.stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.closed


async def test_stream_idle_timeout(http_client, router, fakes) -> None:
    stream = fakes.TrackedStream([fakes.sse(fakes.chunk("Hel"), done=False)], after="hang")
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, http_client=http_client, stream_idle_timeout=0.05
    ) as provider:
        seen = []
        with pytest.raises(StreamIdleTimeoutError) as caught:
            await drain(provider.stream(HELLO), seen)
    assert seen == ["Hel"]
    assert isinstance(caught.value, APITimeoutError)
    assert caught.value.request_id == "req_stream"
    assert stream.closed
    # The task was not left cancelled by the timeout.
    current = asyncio.current_task()
    if sys.version_info >= (3, 11):
        assert current is not None
        assert current.cancelling() == 0


async def test_idle_timeout_does_not_fire_while_the_consumer_is_busy(
    http_client, router, fakes
) -> None:
    # Time the *caller* spends between chunks is not server idleness.
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(fakes.hello_stream()))
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, http_client=http_client, stream_idle_timeout=0.02
    ) as provider:
        text = ""
        async for c in provider.stream(HELLO):
            await asyncio.sleep(0.03)  # a slow consumer, longer than the idle limit
            text += c.delta
    assert text == "Hello there!"


async def test_deadline_limits_the_whole_call(http_client, router, fakes) -> None:
    stream = fakes.TrackedStream([fakes.sse(fakes.chunk("Hel"), done=False)], after="hang")
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, http_client=http_client, deadline=0.05
    ) as provider:
        with pytest.raises(APITimeoutError, match="deadline") as caught:
            await collect(provider, HELLO)
    assert type(caught.value) is APITimeoutError
    assert stream.closed


async def test_deadline_on_a_non_streamed_call(http_client, router, fakes) -> None:
    async def never(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    router.post(fakes.CHAT_URL).mock(side_effect=never)
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, http_client=http_client, deadline=0.05
    ) as provider:
        with pytest.raises(APITimeoutError, match="deadline"):
            await provider.complete(HELLO)


async def test_outside_cancellation_is_not_turned_into_a_timeout(
    http_client, router, fakes
) -> None:
    started = asyncio.Event()

    async def never(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    router.post(fakes.CHAT_URL).mock(side_effect=never)
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", fakes.API_KEY, http_client=http_client, deadline=30
    ) as provider:
        task = asyncio.create_task(provider.complete(HELLO))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- lifecycle ----------------------------------------------------------------------------


async def test_injected_client_is_not_closed(http_client, fakes) -> None:
    provider = OpenAIProvider("openai", "gpt-4o-mini", fakes.API_KEY, http_client=http_client)
    async with provider:
        assert provider.http_client is http_client
    assert not http_client.is_closed
    with pytest.raises(ProviderError, match="closed"):
        await provider.complete(HELLO)


async def test_owned_transport_is_closed() -> None:
    provider = OpenAIProvider("openai", "gpt-4o-mini", "sk-x")
    async with provider:
        assert provider.http_client is None  # no httpx client: our transport, sent to directly
    with pytest.raises(ProviderError, match="closed"):
        await provider.complete(ProviderRequest([Message("user", "Hi")]))
    await provider.aclose()  # twice is fine


def test_repr_shows_identity_only(fakes) -> None:
    provider = OpenAIProvider("openai", "gpt-4o-mini", fakes.API_KEY)
    assert repr(provider) == (
        "OpenAIProvider(name='openai', model='gpt-4o-mini', base_url='https://api.openai.com/v1')"
    )


def test_base_url_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy.local:4000/v1/")
    assert OpenAIProvider("openai", "gpt-4o-mini").base_url == "http://proxy.local:4000/v1"


async def test_silence_after_done_ends_the_stream_quietly(provider, router, fakes) -> None:
    # [DONE] arrived but the server never ends the body: the answer is complete, so the
    # stream ends after a short grace instead of waiting for the read timeout.
    stream = fakes.TrackedStream([fakes.hello_stream()], after="hang")
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    provider.end_grace = 0.02
    chunks = await collect(provider, HELLO)
    response = chunks[-1].response
    assert response is not None
    assert response.content == "Hello there!"
    assert stream.closed


async def test_broken_tail_after_done_is_ignored(provider, router, fakes) -> None:
    stream = fakes.TrackedStream([fakes.hello_stream()], after=httpx.ReadError("reset"))
    route = router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(stream))
    chunks = await collect(provider, HELLO)
    response = chunks[-1].response
    assert response is not None
    assert response.usage.total_tokens == 17
    assert route.call_count == 1


@pytest.mark.parametrize(
    "change",
    [
        {"bogus_field": 1},
        {"messages": [{"role": "user", "content": "x", "bogus": 1}]},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "tool", "content": "x"}]},  # no tool_call_id
        {"stream": False},
        {"tool_choice": "sometimes"},
    ],
)
def test_the_request_validator_itself_rejects_bad_bodies(fakes, change) -> None:
    # Guards the guard: the SDK-type check used above must not accept anything.
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    body |= {"stream": True, **change}
    with pytest.raises(Exception):  # noqa: B017 (pydantic or assertion, either is a "no")
        fakes.validate_request(body, stream=True)
