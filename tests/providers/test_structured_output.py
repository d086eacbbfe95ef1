"""response_format per provider: request bodies checked against the vendor SDKs' types
(``openai``, ``anthropic``, ``google-genai``), answers served by respx, parsed values and
``StructuredOutputError`` with the raw text; MockProvider likewise."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from pydantic import BaseModel

from promptkit_async import (
    GenerationConfig,
    InvalidRequestError,
    Message,
    MockProvider,
    ProviderRequest,
    ProviderResponse,
    ResponseFormat,
    StructuredOutputError,
    ToolCall,
)
from promptkit_async.providers import AnthropicProvider, OpenAIProvider
from promptkit_async.types import StreamChunk


class City(BaseModel):
    name: str
    population: int
    country: str | None = None


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["answer"],
}
GOOD = '{"name": "Oslo", "population": 709000, "country": "Norway"}'
BAD = '{"name": "Oslo", "population": "many"}'


def httpx_json(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json=body, headers={"x-request-id": "req_json"})


def ask(fmt: Any = None, **settings: Any) -> ProviderRequest:
    return ProviderRequest(
        [Message("user", "Biggest city in Norway?")],
        generation=GenerationConfig(response_format=fmt, **settings),
    )


def sent_body(route: respx.Route, index: int = -1) -> dict[str, Any]:
    return json.loads(route.calls[index].request.content)


async def collect(provider: Any, request: ProviderRequest) -> list[StreamChunk]:
    return [c async for c in provider.stream(request)]


async def drain(chunks: AsyncIterator[StreamChunk], seen: list[str]) -> None:
    async for chunk in chunks:
        seen.append(chunk.delta)


def pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# --- OpenAI: response_format json_schema / json_object -------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_openai_body_carries_the_strict_schema(provider, router, fakes, stream) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        return_value=fakes.sse_response(fakes.hello_stream(GOOD))
        if stream
        else httpx_json(fakes.completion(GOOD))
    )
    request = ask(City)
    if stream:
        await collect(provider, request)
    else:
        await provider.complete(request)
    body = sent_body(route)
    fakes.validate_request(body, stream=stream)
    spec = body["response_format"]
    assert spec["type"] == "json_schema"
    assert spec["json_schema"]["name"] == "City"
    assert spec["json_schema"]["strict"] is True
    schema = spec["json_schema"]["schema"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["name", "population", "country"]  # strict: all required


async def test_openai_json_mode_and_a_description(provider, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[httpx_json(fakes.completion("[1, 2]")), httpx_json(fakes.completion("{}"))]
    )
    response = await provider.complete(ask("json"))
    assert response.parsed == [1, 2]
    assert sent_body(route)["response_format"] == {"type": "json_object"}
    fmt = ResponseFormat(SCHEMA, name="qa", strict=False, description="an answer")
    with pytest.raises(StructuredOutputError):
        await provider.complete(ask(fmt))  # {} lacks "answer"
    body = sent_body(route)
    fakes.validate_request(body, stream=False)
    assert body["response_format"]["json_schema"] == {
        "name": "qa",
        "schema": SCHEMA,  # strict=False: sent as given
        "strict": False,
        "description": "an answer",
    }


async def test_openai_streamed_json_arrives_as_text_and_parses_at_the_end(
    provider, router, fakes
) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=fakes.sse_response(
            fakes.sse(
                *(fakes.chunk(p) for p in pieces(GOOD)),
                fakes.chunk(finish_reason="stop"),
                fakes.chunk(usage_=fakes.usage()),
            )
        )
    )
    chunks = await collect(provider, ask(City))
    assert "".join(c.delta for c in chunks[:-1]) == GOOD
    assert all(c.response is None for c in chunks[:-1])
    response = chunks[-1].response
    assert response is not None
    assert response.parsed == City(name="Oslo", population=709000, country="Norway")
    assert response.content == GOOD  # the text is kept as the model wrote it


async def test_openai_answer_not_matching_is_an_error_with_the_raw_text(
    provider, router, fakes
) -> None:
    router.post(fakes.CHAT_URL).mock(return_value=fakes.sse_response(fakes.hello_stream(BAD)))
    seen: list[str] = []
    with pytest.raises(StructuredOutputError) as caught:
        await drain(provider.stream(ask(City)), seen)
    error = caught.value
    assert "".join(seen) == BAD  # the text streamed; the check failed at the end
    assert error.raw_text == BAD
    assert any(e.startswith("population:") for e in error.errors)
    assert error.provider == "openai"
    assert error.request_id == "req_stream"
    assert error.finish_reason == "stop"
    assert error.response is not None
    assert error.response.usage.total_tokens == 17
    assert fakes.API_KEY not in repr(error.__dict__)


async def test_openai_not_json_at_all(provider, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=httpx_json(fakes.completion("I can't answer that."))
    )
    with pytest.raises(StructuredOutputError, match="is not JSON") as caught:
        await provider.complete(ask(SCHEMA))
    assert caught.value.raw_text == "I can't answer that."


async def test_openai_tool_calls_are_not_parsed(provider, router, fakes) -> None:
    router.post(fakes.CHAT_URL).mock(
        return_value=httpx_json(
            fakes.completion(
                None, tool_calls=[("call_1", "lookup", '{"q": "Oslo"}')], finish_reason="tool_calls"
            )
        )
    )
    response = await provider.complete(ask(City))
    assert response.tool_calls == (ToolCall("call_1", "lookup", '{"q": "Oslo"}'),)
    assert response.parsed is None


async def test_openai_provider_default_format_and_the_request_winning(
    http_client, router, fakes
) -> None:
    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[httpx_json(fakes.completion(GOOD)), httpx_json(fakes.completion("[]"))]
    )
    async with OpenAIProvider(
        "gpt-4o-mini",
        api_key=fakes.API_KEY,
        http_client=http_client,
        generation=GenerationConfig(response_format=City),
    ) as provider:
        default = await provider.complete(ProviderRequest([Message("user", "Hi")]))
        assert isinstance(default.parsed, City)
        assert sent_body(route)["response_format"]["json_schema"]["name"] == "City"
        own = await provider.complete(ask("json"))
        assert own.parsed == []
        assert sent_body(route)["response_format"] == {"type": "json_object"}


async def test_openai_extra_body_still_wins(provider, router, fakes) -> None:
    route = router.post(fakes.CHAT_URL).mock(return_value=httpx_json(fakes.completion("{}")))
    await provider.complete(ask("json", extra_body={"response_format": {"type": "text"}}))
    assert sent_body(route)["response_format"] == {"type": "text"}


# --- Anthropic: output_config.format -------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_anthropic_body_carries_output_config(
    anthropic_provider, router, afakes, stream
) -> None:
    route = router.post(afakes.URL).mock(
        return_value=afakes.sse_response(afakes.hello_stream(*pieces(GOOD)))
        if stream
        else httpx_json(afakes.message(GOOD))
    )
    request = ask(City)
    if stream:
        chunks = await collect(anthropic_provider, request)
        response = chunks[-1].response
        assert "".join(c.delta for c in chunks[:-1]) == GOOD
    else:
        response = await anthropic_provider.complete(request)
    assert response is not None
    assert response.parsed == City(name="Oslo", population=709000, country="Norway")
    body = sent_body(route)
    afakes.validate_request(body, stream=stream)
    fmt = body["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["schema"] == ResponseFormat(City).wire_schema
    assert fmt["schema"]["additionalProperties"] is False


async def test_anthropic_invalid_answer(anthropic_provider, router, afakes) -> None:
    router.post(afakes.URL).mock(
        return_value=afakes.sse_response(afakes.hello_stream(*pieces(BAD)))
    )
    with pytest.raises(StructuredOutputError) as caught:
        await collect(anthropic_provider, ask(City))
    assert caught.value.raw_text == BAD
    assert caught.value.provider == "anthropic"


async def test_anthropic_has_no_json_mode(anthropic_provider, router, afakes) -> None:
    route = router.post(afakes.URL).mock(return_value=httpx_json(afakes.message("{}")))
    with pytest.raises(InvalidRequestError, match="no schema-less JSON mode"):
        await anthropic_provider.complete(ask("json"))
    assert not route.called  # refused before anything was sent


async def test_anthropic_extra_output_config_is_merged(anthropic_provider, router, afakes) -> None:
    route = router.post(afakes.URL).mock(return_value=httpx_json(afakes.message('{"answer": "x"}')))
    response = await anthropic_provider.complete(
        ask(SCHEMA, extra_body={"output_config": {"effort": "low"}})
    )
    assert response.parsed == {"answer": "x"}
    body = sent_body(route)
    afakes.validate_request(body, stream=False)
    assert body["output_config"]["effort"] == "low"
    assert body["output_config"]["format"]["type"] == "json_schema"


async def test_anthropic_tool_use_answer_is_not_parsed(anthropic_provider, router, afakes) -> None:
    router.post(afakes.URL).mock(
        return_value=httpx_json(
            afakes.message(
                None, tool_uses=[("toolu_1", "lookup", {"q": "Oslo"})], stop_reason="tool_use"
            )
        )
    )
    response = await anthropic_provider.complete(ask(City))
    assert response.parsed is None
    assert [c.name for c in response.tool_calls] == ["lookup"]


# --- Gemini: responseMimeType + responseJsonSchema -----------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_gemini_body_carries_the_json_schema(gemini_provider, router, gfakes, stream) -> None:
    url = gfakes.STREAM_URL if stream else gfakes.URL
    route = router.post(url).mock(
        return_value=gfakes.sse_response(gfakes.hello_stream(*pieces(GOOD)))
        if stream
        else httpx_json(gfakes.response(gfakes.text(GOOD), usage_=gfakes.usage()))
    )
    request = ask(City, max_tokens=300)
    if stream:
        chunks = await collect(gemini_provider, request)
        response = chunks[-1].response
    else:
        response = await gemini_provider.complete(request)
    assert response is not None
    assert response.parsed == City(name="Oslo", population=709000, country="Norway")
    body = sent_body(route)
    gfakes.validate_request(body)
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == City.model_json_schema()  # full JSON Schema, as given
    assert config["maxOutputTokens"] == 300


async def test_gemini_json_mode_sets_only_the_mime_type(gemini_provider, router, gfakes) -> None:
    route = router.post(gfakes.URL).mock(
        return_value=httpx_json(gfakes.response(gfakes.text('{"a": 1}')))
    )
    response = await gemini_provider.complete(ask("json"))
    assert response.parsed == {"a": 1}
    body = sent_body(route)
    gfakes.validate_request(body)
    assert body["generationConfig"] == {"responseMimeType": "application/json"}


async def test_gemini_invalid_answer(gemini_provider, router, gfakes) -> None:
    router.post(gfakes.URL).mock(
        return_value=httpx_json(gfakes.response(gfakes.text('{"answer": 3}')))
    )
    with pytest.raises(StructuredOutputError) as caught:
        await gemini_provider.complete(ask(SCHEMA))
    assert caught.value.raw_text == '{"answer": 3}'
    assert caught.value.provider == "gemini"
    assert any("answer" in e for e in caught.value.errors)


async def test_gemini_cut_off_answer_names_max_tokens(gemini_provider, router, gfakes) -> None:
    router.post(gfakes.URL).mock(
        return_value=httpx_json(
            gfakes.response(gfakes.text('{"answer": "a lo'), finish="MAX_TOKENS")
        )
    )
    with pytest.raises(StructuredOutputError, match="max_tokens") as caught:
        await gemini_provider.complete(ask(SCHEMA))
    assert caught.value.finish_reason == "length"


# --- no format: nothing changes -------------------------------------------------------------


async def test_without_a_format_nothing_is_added_or_parsed(
    provider, anthropic_provider, gemini_provider, router, fakes, afakes, gfakes
) -> None:
    o = router.post(fakes.CHAT_URL).mock(return_value=httpx_json(fakes.completion("{}")))
    a = router.post(afakes.URL).mock(return_value=httpx_json(afakes.message("{}")))
    g = router.post(gfakes.URL).mock(return_value=httpx_json(gfakes.response(gfakes.text("{}"))))
    plain = ProviderRequest([Message("user", "Hi")])
    for p in (provider, anthropic_provider, gemini_provider):
        assert (await p.complete(plain)).parsed is None
    assert "response_format" not in sent_body(o)
    assert "output_config" not in sent_body(a)
    assert "generationConfig" not in sent_body(g)


# --- MockProvider ------------------------------------------------------------------------------


async def test_mock_parses_scripted_json() -> None:
    provider = MockProvider([GOOD, GOOD])
    response = await provider.complete(ask(City))
    assert response.parsed == City(name="Oslo", population=709000, country="Norway")
    chunks = [c async for c in provider.stream(ask(City))]
    assert "".join(c.delta for c in chunks[:-1]) == GOOD
    assert chunks[-1].response is not None
    assert isinstance(chunks[-1].response.parsed, City)


async def test_mock_streams_then_raises_on_a_mismatch() -> None:
    provider = MockProvider([BAD], chunk_size=4)
    seen: list[str] = []
    with pytest.raises(StructuredOutputError) as caught:
        await drain(provider.stream(ask(City)), seen)
    assert "".join(seen) == BAD
    assert caught.value.raw_text == BAD
    assert caught.value.provider == "mock"


async def test_mock_default_format_and_tool_calls() -> None:
    call = ProviderResponse(tool_calls=(ToolCall("c1", "lookup", "{}"),))
    provider = MockProvider(
        [call, '{"answer": "x"}'], generation=GenerationConfig(response_format=SCHEMA)
    )
    plain = ProviderRequest([Message("user", "Hi")])
    first = await provider.complete(plain)
    assert first.tool_calls
    assert first.parsed is None  # a tool round is not checked
    assert (await provider.complete(plain)).parsed == {"answer": "x"}


# --- a whole turn through OpenAIProvider: tool loop, nothing stored on a mismatch ----------


async def test_openai_pipeline_tool_loop_then_structured_answer(provider, router, fakes) -> None:
    from promptkit_async import InMemoryStateStore, Pipeline, ProviderMiddleware, StateMiddleware
    from promptkit_async import tool as make_tool

    @make_tool
    def population(city: str) -> int:
        """How many people live in a city."""
        return 709000

    route = router.post(fakes.CHAT_URL).mock(
        side_effect=[
            fakes.sse_response(
                fakes.sse(
                    fakes.chunk(tool_calls=[(0, "call_1", "population", '{"city": "Oslo"}')]),
                    fakes.chunk(finish_reason="tool_calls"),
                    fakes.chunk(usage_=fakes.usage()),
                )
            ),
            fakes.sse_response(fakes.hello_stream(GOOD)),
            fakes.sse_response(fakes.hello_stream(BAD)),
        ]
    )
    store = InMemoryStateStore()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider, [population]))
    async with pipe:
        result = await pipe.execute("s", "user", "Oslo?", response_format=City)
        assert result.parsed == City(name="Oslo", population=709000, country="Norway")
        with pytest.raises(StructuredOutputError):
            await pipe.execute("s", "user", "Again?", response_format=City)
    for index in range(3):
        body = sent_body(route, index)
        fakes.validate_request(body, stream=True)
        assert body["response_format"]["json_schema"]["name"] == "City"
        assert body["tools"][0]["function"]["name"] == "population"
    history = await store.load("s")
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[-1].content == GOOD


# --- Anthropic with structured_output="tool": the forced answer tool ----------------------


@pytest.fixture
async def answer_tool_provider(http_client, afakes):
    async with AnthropicProvider(
        afakes.MODEL,
        api_key=afakes.API_KEY,
        http_client=http_client,
        retry_policy=afakes.FAST_RETRY,
        structured_output="tool",
    ) as p:
        yield p


def answer_stream(afakes, *fragments: str, name: str = "City") -> bytes:
    return (
        afakes.start()
        + afakes.tool_block(0, "toolu_A", name, *fragments)
        + afakes.finish("tool_use")
    )


async def test_answer_tool_is_forced_and_streams_as_text(
    answer_tool_provider, router, afakes
) -> None:
    route = router.post(afakes.URL).mock(
        return_value=afakes.sse_response(answer_stream(afakes, *pieces(GOOD)))
    )
    chunks = await collect(answer_tool_provider, ask(City))
    body = sent_body(route)
    afakes.validate_request(body, stream=True)
    assert body["tools"] == [
        {
            "name": "City",
            "description": "Give your final answer by calling this tool.",
            "input_schema": City.model_json_schema(),
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "City"}
    assert "output_config" not in body
    assert "".join(c.delta for c in chunks[:-1]) == GOOD
    assert all(not c.tool_call_deltas for c in chunks)
    response = chunks[-1].response
    assert response is not None
    assert response.parsed == City(name="Oslo", population=709000, country="Norway")
    assert response.content == GOOD
    assert response.tool_calls == ()
    assert response.finish_reason == "stop"


async def test_answer_tool_without_streaming(answer_tool_provider, router, afakes) -> None:
    router.post(afakes.URL).mock(
        return_value=httpx_json(
            afakes.message(
                None, tool_uses=[("toolu_A", "qa", {"answer": "yes"})], stop_reason="tool_use"
            )
        )
    )
    response = await answer_tool_provider.complete(ask(ResponseFormat(SCHEMA, name="qa")))
    assert response.parsed == {"answer": "yes"}
    assert response.tool_calls == ()
    assert response.finish_reason == "stop"


async def test_answer_tool_next_to_user_tools(answer_tool_provider, router, afakes) -> None:
    from promptkit_async import ToolDefinition

    lookup = ToolDefinition("lookup", "Look a city up", {"type": "object", "properties": {}})
    route = router.post(afakes.URL).mock(
        return_value=afakes.sse_response(
            afakes.start()
            + afakes.tool_block(0, "toolu_L", "lookup", "{}")
            + afakes.finish("tool_use")
        )
    )
    request = ProviderRequest(
        [Message("user", "Oslo?")], [lookup], "auto", GenerationConfig(response_format=City)
    )
    chunks = await collect(answer_tool_provider, request)
    body = sent_body(route)
    afakes.validate_request(body, stream=True)
    assert [t["name"] for t in body["tools"]] == ["lookup", "City"]
    assert body["tool_choice"] == {"type": "any"}  # a tool of the user's, or the answer
    response = chunks[-1].response
    assert response is not None
    assert [c.name for c in response.tool_calls] == ["lookup"]  # a tool round: not parsed
    assert response.finish_reason == "tool_calls"
    assert response.parsed is None
    assert any(c.tool_call_deltas for c in chunks[:-1])


async def test_answer_tool_name_must_not_collide(answer_tool_provider, router, afakes) -> None:
    from promptkit_async import ToolDefinition

    route = router.post(afakes.URL).mock(return_value=httpx_json(afakes.message("{}")))
    clash = ToolDefinition("City", "", {"type": "object", "properties": {}})
    request = ProviderRequest(
        [Message("user", "Oslo?")], [clash], None, GenerationConfig(response_format=City)
    )
    with pytest.raises(InvalidRequestError, match="ResponseFormat"):
        await answer_tool_provider.complete(request)
    with pytest.raises(InvalidRequestError, match="object schema"):
        await answer_tool_provider.complete(ask({"type": "array"}))
    assert not route.called


async def test_answer_tool_in_a_pipeline_tool_loop(answer_tool_provider, router, afakes) -> None:
    from promptkit_async import InMemoryStateStore, Pipeline, ProviderMiddleware, StateMiddleware
    from promptkit_async import tool as make_tool

    @make_tool
    def population(city: str) -> int:
        """How many people live in a city."""
        return 709000

    route = router.post(afakes.URL).mock(
        side_effect=[
            afakes.sse_response(
                afakes.start()
                + afakes.tool_block(0, "toolu_P", "population", '{"city": "Oslo"}')
                + afakes.finish("tool_use")
            ),
            afakes.sse_response(answer_stream(afakes, GOOD)),
        ]
    )
    store = InMemoryStateStore()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(answer_tool_provider, [population]))
    async with pipe:
        result = await pipe.execute("s", "user", "Oslo?", response_format=City)
    assert result.parsed == City(name="Oslo", population=709000, country="Norway")
    first, second = sent_body(route, 0), sent_body(route, 1)
    afakes.validate_request(second, stream=True)
    assert first["tool_choice"] == second["tool_choice"] == {"type": "any"}
    history = await store.load("s")
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[-1].content == GOOD
    assert history[-1].tool_calls == ()


def test_structured_output_setting_is_checked() -> None:
    from promptkit_async import ConfigurationError

    with pytest.raises(ConfigurationError, match="structured_output"):
        AnthropicProvider("claude-sonnet-4-5", api_key="k", structured_output="forced")  # type: ignore[arg-type]


async def test_answer_tool_for_json_mode_takes_any_object(
    answer_tool_provider, router, afakes
) -> None:
    route = router.post(afakes.URL).mock(
        return_value=afakes.sse_response(answer_stream(afakes, '{"any": ', "[1]}", name="response"))
    )
    chunks = await collect(answer_tool_provider, ask("json"))
    body = sent_body(route)
    afakes.validate_request(body, stream=True)
    assert body["tools"][0]["input_schema"] == {"type": "object"}
    assert body["tool_choice"] == {"type": "tool", "name": "response"}
    response = chunks[-1].response
    assert response is not None
    assert response.parsed == {"any": [1]}
