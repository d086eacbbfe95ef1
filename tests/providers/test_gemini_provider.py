"""GeminiProvider over respx: bodies checked against the ``google-genai`` SDK's types,
answers built from them; streaming, function calls, usage, costs, errors, retries, secrets."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import respx

from promptkit_async.errors import (
    AuthenticationError,
    BadRequestError,
    ContextLengthExceededError,
    IncompleteStreamError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from promptkit_async.pricing import lookup_pricing
from promptkit_async.providers import GeminiProvider, GenerationConfig, ProviderRequest
from promptkit_async.types import Message, StreamChunk, ToolCall, ToolDefinition, Usage

HELLO = ProviderRequest([Message("user", "Hi")])
WEATHER = ToolDefinition(
    "get_weather",
    "Weather for a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)


def sent_body(route: respx.Route, index: int = -1) -> dict[str, Any]:
    return json.loads(route.calls[index].request.content)


async def collect(provider: GeminiProvider, request: ProviderRequest) -> list[StreamChunk]:
    return [c async for c in provider.stream(request)]


async def drain(chunks: AsyncIterator[StreamChunk], seen: list[str]) -> None:
    async for chunk in chunks:
        seen.append(chunk.delta)


# --- streaming ----------------------------------------------------------------------------


async def test_streamed_answer(gemini_provider, router, gfakes) -> None:
    route = router.post(gfakes.STREAM_URL).mock(
        return_value=gfakes.sse_response(gfakes.hello_stream("Hello", " there", "!"))
    )
    chunks = await collect(gemini_provider, HELLO)

    assert [c.delta for c in chunks[:-1]] == ["Hello", " there", "!"]
    response = chunks[-1].response
    assert response is not None
    assert response.content == "Hello there!"
    assert response.finish_reason == chunks[-1].finish_reason == "stop"
    assert response.usage == chunks[-1].usage == Usage(10, 5, 15)
    assert response.model == "gemini-2.5-flash"
    assert response.response_id == "resp-G1"
    assert response.time_to_first_chunk is not None

    request = route.calls.last.request
    assert request.url.params["alt"] == "sse"
    assert request.headers["x-goog-api-key"] == gfakes.API_KEY
    assert "authorization" not in request.headers
    assert gfakes.API_KEY not in str(request.url)  # never in the URL
    body = sent_body(route)
    gfakes.validate_request(body)
    assert body == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


async def test_usage_with_cache_and_thoughts_and_its_cost(gemini_provider, router, gfakes) -> None:
    usage = gfakes.usage(1000, 40, cached=600, thoughts=200)
    router.post(gfakes.STREAM_URL).mock(
        return_value=gfakes.sse_response(gfakes.hello_stream("Hi", usage_=usage))
    )
    response = (await collect(gemini_provider, HELLO))[-1].response
    assert response is not None
    # Thinking tokens are billed as output: they count as completion tokens, and are
    # reported apart as reasoning tokens.
    assert response.usage == Usage(1000, 240, 1240, cached_tokens=600, reasoning_tokens=200)
    price = lookup_pricing("gemini-2.5-flash")
    assert price is not None
    assert price.cached_input_per_mtok is not None
    cost = response.cost
    assert cost.input_cost == pytest.approx(400 * price.input_per_mtok / 1e6)
    assert cost.cached_cost == pytest.approx(600 * price.cached_input_per_mtok / 1e6)
    assert cost.output_cost == pytest.approx(240 * price.output_per_mtok / 1e6)
    assert cost.total_cost == pytest.approx(cost.input_cost + cost.cached_cost + cost.output_cost)


async def test_thought_parts_are_not_reply_text_and_stream_apart(
    gemini_provider, router, gfakes
) -> None:
    body = gfakes.sse(
        gfakes.response(gfakes.text("Let me think...", thought=True), finish=None),
        gfakes.response(gfakes.text("42"), usage_=gfakes.usage()),
    )
    router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(body))
    chunks = await collect(gemini_provider, HELLO)
    assert [(c.thinking, c.delta) for c in chunks[:-1]] == [("Let me think...", ""), ("", "42")]
    assert chunks[-1].response is not None
    assert chunks[-1].response.content == "42"
    assert [t.text for t in chunks[-1].response.thinking] == ["Let me think..."]


async def test_streamed_function_calls_two_in_one_message(gemini_provider, router, gfakes) -> None:
    body = gfakes.sse(
        gfakes.response(gfakes.text("Checking."), finish=None),
        gfakes.response(
            gfakes.call("get_weather", {"city": "Paris"}, signature=b"sig-1"),
            gfakes.call("get_weather", {"city": "Oslo"}),
            usage_=gfakes.usage(30, 20),
        ),
    )
    route = router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(body))
    request = ProviderRequest(
        [Message("user", "Weather in Paris and Oslo?")], tools=[WEATHER], tool_choice="auto"
    )
    chunks = await collect(gemini_provider, request)

    deltas = [d for c in chunks for d in c.tool_call_deltas]
    first_id = "gemini_resp-G1_0~sig~c2lnLTE="  # made-up id + the call's thought signature
    assert [(d.index, d.id, d.name, d.arguments) for d in deltas] == [
        (0, first_id, "get_weather", '{"city": "Paris"}'),
        (1, "gemini_resp-G1_1", "get_weather", '{"city": "Oslo"}'),
    ]
    response = chunks[-1].response
    assert response is not None
    assert response.content == "Checking."
    assert response.finish_reason == "tool_calls"  # Gemini says STOP
    assert response.tool_calls == (
        ToolCall(first_id, "get_weather", '{"city": "Paris"}'),
        ToolCall("gemini_resp-G1_1", "get_weather", '{"city": "Oslo"}'),
    )
    sent = sent_body(route)
    gfakes.validate_request(sent)
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parametersJsonSchema": dict(WEATHER.parameters),
                }
            ]
        }
    ]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}

    # The model turn and both results replay as functionCall / functionResponse parts.
    history = [
        *request.messages,
        response.to_message(),
        Message("tool", "18C", tool_call_id=first_id, name="get_weather"),
        Message("tool", "-3C", tool_call_id="gemini_resp-G1_1"),  # name found from the call
    ]
    router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(gfakes.hello_stream()))
    await collect(gemini_provider, ProviderRequest(history, tools=[WEATHER]))
    replay = sent_body(route)
    gfakes.validate_request(replay)
    assert replay["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Checking."},
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "c2lnLTE=",  # exactly as Gemini sent it
                },
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"result": "18C"}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "-3C"}}},
            ],
        },
    ]


async def test_ids_gemini_sends_are_kept_and_sent_back(gemini_provider, router, gfakes) -> None:
    payload = gfakes.response(gfakes.call("lookup", {"q": "x"}, id="fc-77"))
    router.post(gfakes.URL).mock(return_value=httpx.Response(200, json=payload))
    response = await gemini_provider.complete(HELLO)
    assert response.tool_calls == (ToolCall("fc-77", "lookup", '{"q": "x"}'),)
    history = [
        Message("user", "Hi"),
        response.to_message(),
        Message("tool", "found", tool_call_id="fc-77", name="lookup"),
    ]
    body = gemini_provider.build_body(ProviderRequest(history))
    gfakes.validate_request(body)
    assert body["contents"][1]["parts"] == [
        {"functionCall": {"name": "lookup", "args": {"q": "x"}, "id": "fc-77"}}
    ]
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "lookup", "response": {"result": "found"}, "id": "fc-77"}}
    ]


def test_gemini_3_replays_unsigned_calls_with_the_documented_placeholder(gfakes) -> None:
    history = [
        Message("user", "Hi"),
        Message(
            "assistant",
            "",
            tool_calls=[ToolCall("call_x", "f", "{}"), ToolCall("call_y", "f", "{}")],
        ),
        Message("tool", "1", tool_call_id="call_x", name="f"),
        Message("tool", "2", tool_call_id="call_y", name="f"),
    ]
    gemini3 = GeminiProvider("gemini", "gemini-3-pro-preview", gfakes.API_KEY)
    parts = gemini3.build_body(ProviderRequest(history))["contents"][1]["parts"]
    # Only the first call of a turn carries a signature (as Gemini itself does).
    assert [p.get("thoughtSignature") for p in parts] == ["skip_thought_signature_validator", None]
    older = GeminiProvider("gemini", "gemini-2.5-flash", gfakes.API_KEY)
    parts = older.build_body(ProviderRequest(history))["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == [None, None]


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "malformed_function_call"),
        ("OTHER", "other"),
    ],
)
async def test_finish_reasons_are_normalised(gemini_provider, router, gfakes, reason, finish):
    body = gfakes.sse(gfakes.response(gfakes.text("x"), finish=reason, usage_=gfakes.usage()))
    router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(body))
    response = (await collect(gemini_provider, HELLO))[-1].response
    assert response is not None
    assert response.finish_reason == finish


async def test_a_blocked_prompt_is_a_content_filter_finish(gemini_provider, router, gfakes):
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-B",
    }
    router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(gfakes.sse(blocked)))
    router.post(gfakes.URL).mock(return_value=httpx.Response(200, json=blocked))
    streamed = (await collect(gemini_provider, HELLO))[-1].response
    assert streamed is not None
    whole = await gemini_provider.complete(HELLO)
    for response in (streamed, whole):
        assert response.content == ""
        assert response.finish_reason == "content_filter"
        assert response.usage == Usage(7, 0, 7)


async def test_stream_without_a_finish_reason_is_incomplete(gemini_provider, router, gfakes):
    body = gfakes.sse(gfakes.response(gfakes.text("Hel"), finish=None))
    router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(body))
    seen: list[str] = []
    with pytest.raises(IncompleteStreamError):
        await drain(gemini_provider.stream(HELLO), seen)
    assert seen == ["Hel"]


async def test_closing_the_stream_early_closes_the_response(gemini_provider, router, gfakes):
    first = gfakes.sse(gfakes.response(gfakes.text("first"), finish=None))
    stream = gfakes.TrackedStream([first], after="hang")
    router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(stream))
    async with aclosing(gemini_provider.stream(HELLO)) as chunks:
        chunk = await anext(chunks)
    assert chunk.delta == "first"
    assert stream.closed


# --- non-streaming ------------------------------------------------------------------------


async def test_non_streamed_answer(http_client, router, gfakes) -> None:
    payload = gfakes.response(gfakes.text("Hi "), gfakes.text("Alice"), usage_=gfakes.usage(20, 3))
    route = router.post(gfakes.URL).mock(return_value=httpx.Response(200, json=payload))
    async with GeminiProvider(
        "gemini", gfakes.MODEL, gfakes.API_KEY, include_raw_output=True, http_client=http_client
    ) as provider:
        response = await provider.complete(HELLO)
    assert response.content == "Hi Alice"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(20, 3, 23)
    assert response.cost == provider.calculate_cost(response.usage)
    assert response.cost.total_cost > 0
    assert response.response_id == "resp-G1"
    assert response.raw == payload
    assert response.time_to_first_chunk is None
    request = route.calls.last.request
    assert "alt" not in request.url.params
    assert request.headers["x-goog-api-key"] == gfakes.API_KEY
    gfakes.validate_request(sent_body(route))


async def test_non_streamed_function_calls(gemini_provider, router, gfakes) -> None:
    payload = gfakes.response(
        gfakes.call("lookup", {"q": "ü"}), gfakes.call("lookup", {}), response_id="R9"
    )
    router.post(gfakes.URL).mock(return_value=httpx.Response(200, json=payload))
    response = await gemini_provider.complete(HELLO)
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall("gemini_R9_0", "lookup", '{"q": "ü"}'),
        ToolCall("gemini_R9_1", "lookup", "{}"),
    )


# --- request building ---------------------------------------------------------------------


async def test_system_merging_and_generation_config(http_client, router, gfakes) -> None:
    route = router.post(gfakes.URL).mock(return_value=httpx.Response(200, json=gfakes.response()))
    defaults = GenerationConfig(temperature=0.3, max_tokens=100, top_p=0.9)
    messages = [
        Message("system", "You are terse."),
        Message("system", "Answer in English."),
        Message("user", "Weather?"),
        Message("user", "In Oslo."),
        Message("assistant", "", tool_calls=[ToolCall("c1", "get_weather", '{"city": "Oslo"}')]),
        Message("tool", "-3C", tool_call_id="c1", name="get_weather"),
        Message("user", "Thanks"),
        Message("assistant", ""),  # an empty reply: skipped
        Message("user", "And tomorrow?"),
    ]
    request = ProviderRequest(
        messages,
        tools=[WEATHER],
        tool_choice="get_weather",
        generation=GenerationConfig(
            stop=("END",),
            seed=7,
            extra_body={
                "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}},
                "safetySettings": [
                    {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
                ],
            },
        ),
    )
    async with GeminiProvider(
        "gemini", gfakes.MODEL, gfakes.API_KEY, generation=defaults, http_client=http_client
    ) as provider:
        await provider.complete(request)
    body = sent_body(route)
    gfakes.validate_request(body)
    assert body["systemInstruction"] == {
        "parts": [{"text": "You are terse.\n\nAnswer in English."}]
    }
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather?"}, {"text": "In Oslo."}]},
        {
            "role": "model",
            # An id not made up by this provider (here from another provider's history)
            # is sent back as the call's id, and its result's.
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}, "id": "c1"}}
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "get_weather",
                        "response": {"result": "-3C"},
                        "id": "c1",
                    }
                },
                {"text": "Thanks"},
                {"text": "And tomorrow?"},
            ],
        },
    ]
    # extra_body merges one level deep: the thinking config joins the mapped fields.
    assert body["generationConfig"] == {
        "maxOutputTokens": 100,
        "temperature": 0.3,
        "topP": 0.9,
        "stopSequences": ["END"],
        "seed": 7,
        "thinkingConfig": {"thinkingBudget": 0},
    }
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    assert body["safetySettings"][0]["threshold"] == "BLOCK_ONLY_HIGH"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ("get_weather", {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
    ],
)
def test_tool_choice_mapping(gfakes, choice, expected) -> None:
    provider = GeminiProvider("gemini", gfakes.MODEL, gfakes.API_KEY)
    body = provider.build_body(
        ProviderRequest([Message("user", "Hi")], tools=[WEATHER], tool_choice=choice)
    )
    gfakes.validate_request(body)
    assert body["toolConfig"] == {"functionCallingConfig": expected}


def test_model_paths_and_api_version(gfakes) -> None:
    tuned = GeminiProvider("g", "tunedModels/my-model", gfakes.API_KEY, api_version="v1")
    assert str(tuned._endpoint).endswith("/v1/tunedModels/my-model:generateContent")
    prefixed = GeminiProvider("g", "models/gemini-2.5-pro", gfakes.API_KEY)
    assert str(prefixed._stream_endpoint).endswith(
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    )
    assert prefixed.calculate_cost(Usage(1_000_000, 0)).total_cost == pytest.approx(1.25)
    with pytest.raises(InvalidRequestError):
        GeminiProvider("g", gfakes.MODEL, api_version="v1/evil")


async def test_a_result_whose_call_is_unknown_is_a_clear_error(gemini_provider, router, gfakes):
    route = router.post(gfakes.URL)
    history = [Message("user", "Hi"), Message("tool", "x", tool_call_id="nowhere")]
    with pytest.raises(InvalidRequestError, match=r"Message\.name"):
        await gemini_provider.complete(ProviderRequest(history))
    assert route.call_count == 0


@pytest.mark.parametrize("messages", [[], [Message("system", "Only a system prompt")]])
async def test_nothing_to_send_is_rejected_before_io(gemini_provider, router, gfakes, messages):
    route = router.post(gfakes.URL)
    with pytest.raises(InvalidRequestError, match="no user or assistant message"):
        await gemini_provider.complete(ProviderRequest(messages))
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"GEMINI_API_KEY": "gem-key"}, "gem-key"),
        ({"GOOGLE_API_KEY": "goo-key"}, "goo-key"),
        ({"GEMINI_API_KEY": "gem-key", "GOOGLE_API_KEY": "goo-key"}, "goo-key"),  # SDK order
    ],
)
async def test_key_from_environment(http_client, router, gfakes, monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    route = router.post(gfakes.URL).mock(return_value=httpx.Response(200, json=gfakes.response()))
    async with GeminiProvider("gemini", gfakes.MODEL, http_client=http_client) as provider:
        await provider.complete(HELLO)
    assert route.calls.last.request.headers["x-goog-api-key"] == expected


# --- errors -------------------------------------------------------------------------------

CASES = [
    (400, "INVALID_ARGUMENT", "Request contains an invalid argument.", BadRequestError),
    (
        400,
        "INVALID_ARGUMENT",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        ContextLengthExceededError,
    ),
    (403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.", PermissionDeniedError),
    (404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta", NotFoundError),
    (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).", RateLimitError),
    (500, "INTERNAL", "An internal error has occurred.", InternalServerError),
    (503, "UNAVAILABLE", "The model is overloaded. Please try again later.", InternalServerError),
]


@pytest.mark.parametrize(("status", "code", "message", "error"), CASES)
@pytest.mark.parametrize("streaming", [False, True])
async def test_status_errors_are_typed(
    http_client, router, gfakes, status, code, message, error, streaming
) -> None:
    body = gfakes.error_body(status, message, code)
    router.post(url__startswith=gfakes.URL.rsplit(":", 1)[0]).mock(
        return_value=httpx.Response(status, json=body, headers={"x-request-id": f"req_{status}"})
    )
    async with GeminiProvider(
        "gemini", gfakes.MODEL, gfakes.API_KEY, http_client=http_client, max_retries=0
    ) as provider:
        with pytest.raises(error) as caught:
            await (collect(provider, HELLO) if streaming else provider.complete(HELLO))
    exc = caught.value
    assert type(exc) is error
    assert exc.status_code == status
    assert exc.message == message
    assert exc.body == body
    assert exc.provider == "gemini"
    assert exc.request_id == f"req_{status}"


async def test_an_invalid_key_is_an_authentication_error(http_client, router, gfakes) -> None:
    body = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                }
            ],
        }
    }
    router.post(gfakes.URL).mock(return_value=httpx.Response(400, json=body))
    async with GeminiProvider("gemini", gfakes.MODEL, http_client=http_client) as provider:
        with pytest.raises(AuthenticationError, match="GOOGLE_API_KEY") as caught:
            await provider.complete(HELLO)
    assert caught.value.status_code == 400
    assert "x-goog-api-key" not in router.calls.last.request.headers


@pytest.mark.parametrize(
    ("error", "expected", "status"),
    [
        ({"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}, RateLimitError, 429),
        ({"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}, InternalServerError, 503),
        ({"message": "quota", "status": "RESOURCE_EXHAUSTED"}, RateLimitError, 429),
    ],
)
async def test_error_inside_the_stream(gemini_provider, router, gfakes, error, expected, status):
    body = gfakes.sse(gfakes.response(gfakes.text("Hi"), finish=None), {"error": error})
    stream = gfakes.TrackedStream([body])
    router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(stream))
    seen: list[str] = []
    with pytest.raises(expected) as caught:
        await drain(gemini_provider.stream(HELLO), seen)
    assert caught.value.status_code == status
    assert seen == ["Hi"]
    assert stream.closed


# --- retries (the shared loop) --------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
async def test_one_429_then_success_is_retried(gemini_provider, router, gfakes, streaming) -> None:
    failure = httpx.Response(
        429,
        json=gfakes.error_body(429, "Resource has been exhausted", "RESOURCE_EXHAUSTED"),
        headers={"retry-after": "0.001"},
    )
    if streaming:
        success = gfakes.sse_response(gfakes.hello_stream())
        route = router.post(gfakes.STREAM_URL).mock(side_effect=[failure, success])
        response = (await collect(gemini_provider, HELLO))[-1].response
    else:
        success = httpx.Response(200, json=gfakes.response(gfakes.text("Hello there!")))
        route = router.post(gfakes.URL).mock(side_effect=[failure, success])
        response = await gemini_provider.complete(HELLO)
    assert response is not None
    assert response.content == "Hello there!"
    assert route.call_count == 2
    assert [event.kind for event in response.trace] == ["retry"]
    assert response.trace[0].detail["status"] == 429
    assert response.trace[0].detail["retry_after"] == 0.001


# --- secrets ------------------------------------------------------------------------------


async def test_api_key_never_in_urls_errors_reprs_or_logs(
    gemini_provider, router, gfakes, caplog
) -> None:
    key = gfakes.API_KEY
    echo = gfakes.error_body(503, f"backend saw key {key}", "UNAVAILABLE")
    route = router.post(gfakes.URL).mock(
        side_effect=[
            httpx.Response(503, json=echo),  # retried: shows up in trace and logs
            httpx.Response(403, json=gfakes.error_body(403, f"key {key} denied", "DENIED")),
        ]
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PermissionDeniedError) as caught:
        await gemini_provider.complete(HELLO)
    error = caught.value
    texts = [str(error), repr(error), error.message, json.dumps(error.body)]
    texts += [repr(gemini_provider), str(gemini_provider._endpoint)]
    texts += [str(call.request.url) for call in route.calls]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(record.__dict__) for record in caplog.records]
    assert any("retry" in t for t in texts)
    for text in texts:
        assert key not in text
    assert "[REDACTED]" in error.message


async def test_a_silent_tail_after_the_finish_reason_ends_after_the_grace(
    gemini_provider, router, gfakes
) -> None:
    stream = gfakes.TrackedStream([gfakes.hello_stream()], after="hang")
    router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(stream))
    gemini_provider.end_grace = 0.02
    response = (await collect(gemini_provider, HELLO))[-1].response
    assert response is not None
    assert response.content == "Hello there!"
    assert stream.closed


async def test_a_broken_tail_after_the_finish_reason_is_ignored(gemini_provider, router, gfakes):
    stream = gfakes.TrackedStream([gfakes.hello_stream()], after=httpx.ReadError("reset"))
    route = router.post(gfakes.STREAM_URL).mock(return_value=gfakes.sse_response(stream))
    response = (await collect(gemini_provider, HELLO))[-1].response
    assert response is not None
    assert response.usage == Usage(10, 5, 15)
    assert route.call_count == 1
