"""response_format through whole turns: per call, per pipeline, streamed, in a tool loop,
with a provider that knows nothing of it; nothing stored when the answer does not match."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from promptkit_async import (
    BaseProvider,
    GenerationConfig,
    InMemoryStateStore,
    InvalidRequestError,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    ProviderRequest,
    ProviderResponse,
    ResponseFormat,
    StateMiddleware,
    StreamChunk,
    StructuredOutputError,
    ToolCall,
    tool,
)


class Weather(BaseModel):
    city: str
    celsius: float


GOOD = '{"city": "Oslo", "celsius": 4.5}'
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def make(provider: object, config: ProviderMiddlewareConfig | None = None, tools=None):
    store = InMemoryStateStore()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider, tools, None, config))  # type: ignore[arg-type]
    return pipe, store


async def test_execute_parses_and_stores_the_json_text() -> None:
    provider = MockProvider([GOOD])
    pipe, store = make(provider)
    async with pipe:
        result = await pipe.execute("s", "user", "Weather in Oslo?", response_format=Weather)
    assert result.parsed == Weather(city="Oslo", celsius=4.5)
    assert result.response.parsed is result.parsed
    assert provider.requests[0].generation.format == ResponseFormat(Weather)
    history = await store.load("s")
    assert [(m.role, m.content) for m in history] == [
        ("user", "Weather in Oslo?"),
        ("assistant", GOOD),
    ]


async def test_an_answer_that_does_not_match_stores_nothing() -> None:
    provider = MockProvider(["ok", '{"city": "Oslo"}'])
    pipe, store = make(provider)
    async with pipe:
        await pipe.execute("s", "user", "hello")  # a plain turn first
        with pytest.raises(StructuredOutputError) as caught:
            await pipe.execute("s", "user", "Weather?", response_format=Weather)
    assert caught.value.raw_text == '{"city": "Oslo"}'
    assert [m.content for m in await store.load("s")] == ["hello", "ok"]


async def test_stream_yields_the_raw_json_and_the_final_result_is_parsed() -> None:
    pipe, store = make(MockProvider([GOOD], chunk_size=5))
    async with pipe, pipe.stream("s", "user", "Weather?", response_format=Weather) as chunks:
        got = [c async for c in chunks]
    assert "".join(c.delta for c in got) == GOOD
    assert len(got) > 2
    final = got[-1].final_result
    assert final is not None
    assert final.parsed == Weather(city="Oslo", celsius=4.5)
    assert len(await store.load("s")) == 2


async def test_stream_of_a_mismatch_fails_after_the_text_and_stores_nothing() -> None:
    pipe, store = make(MockProvider(['{"ok": "yes"}']))
    seen: list[str] = []

    async def read() -> None:
        async with pipe.stream("s", "user", "ok?", response_format=SCHEMA) as chunks:
            async for chunk in chunks:
                seen.append(chunk.delta)

    async with pipe:
        with pytest.raises(StructuredOutputError):
            await read()
    assert "".join(seen) == '{"ok": "yes"}'
    assert await store.load("s") == []


async def test_per_call_format_wins_over_the_pipelines() -> None:
    provider = MockProvider(['{"ok": true}', GOOD, "plain"])
    config = ProviderMiddlewareConfig(GenerationConfig(max_tokens=50, response_format=SCHEMA))
    pipe, _ = make(provider, config)
    async with pipe:
        assert (await pipe.execute("s", "user", "a")).parsed == {"ok": True}
        over = await pipe.execute("s", "user", "b", response_format=Weather)
        assert isinstance(over.parsed, Weather)
    first, second = provider.requests
    assert first.generation.format == ResponseFormat(SCHEMA)
    assert second.generation.format == ResponseFormat(Weather)
    assert second.generation.max_tokens == 50  # the rest of the config still applies


async def test_a_bad_format_is_refused_before_any_work() -> None:
    provider = MockProvider(["x"])
    pipe, store = make(provider)
    async with pipe:
        with pytest.raises(InvalidRequestError, match="response_format"):
            await pipe.execute("s", "user", "a", response_format="yaml")
        with pytest.raises(InvalidRequestError):
            pipe.stream("s", "user", "a", response_format=42)  # type: ignore[arg-type]
    assert provider.requests == []
    assert await store.load("s") == []


async def test_without_a_format_result_parsed_is_none() -> None:
    pipe, _ = make(MockProvider(['{"ok": true}']))
    async with pipe:
        result = await pipe.execute("s", "user", "a")
    assert result.parsed is None


async def test_a_tool_loop_applies_the_format_to_the_final_answer() -> None:
    @tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"{city}: 4.5 C"

    provider = MockProvider(
        [
            ProviderResponse(tool_calls=(ToolCall("c1", "weather", '{"city": "Oslo"}'),)),
            GOOD,
        ]
    )
    pipe, store = make(provider, tools=[weather])
    async with pipe:
        result = await pipe.execute("s", "user", "Weather in Oslo?", response_format=Weather)
    assert result.parsed == Weather(city="Oslo", celsius=4.5)
    # both requests asked for the format; the tool round itself was not checked
    assert [r.generation.format for r in provider.requests] == [ResponseFormat(Weather)] * 2
    assert [r.tools != () for r in provider.requests] == [True, True]
    roles = [m.role for m in await store.load("s")]
    assert roles == ["user", "assistant", "tool", "assistant"]


class PlainProvider(BaseProvider):
    """A third-party provider that knows nothing of response_format."""

    kind = "plain"

    def __init__(self, text: str) -> None:
        super().__init__(model="plain-1")
        self.text = text

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        return ProviderResponse(self.text, finish_reason="stop")

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(delta=self.text)
        response = ProviderResponse(self.text, finish_reason="stop")
        yield StreamChunk(finish_reason="stop", response=response)


@pytest.mark.parametrize("stream", [True, False])
async def test_a_provider_that_ignores_the_format_is_still_checked(stream: bool) -> None:
    config = ProviderMiddlewareConfig(stream=stream)
    good, _ = make(PlainProvider(GOOD), config)
    async with good:
        assert (await good.execute("s", "user", "a", response_format=Weather)).parsed == Weather(
            city="Oslo", celsius=4.5
        )
    bad, store = make(PlainProvider("It is 4.5 degrees."), config)
    async with bad:
        with pytest.raises(StructuredOutputError) as caught:
            await bad.execute("s", "user", "a", response_format=Weather)
    assert caught.value.provider == "plain"
    assert await store.load("s") == []


async def test_a_replayed_turn_carries_its_parsed_answer() -> None:
    # A retry with the same turn id answers from the store; its result is parsed too.
    provider = MockProvider([GOOD])
    pipe, store = make(provider)
    async with pipe:
        first = await pipe.execute("s", "user", "Oslo?", response_format=Weather, turn_id="t-1")
        again = await pipe.execute("s", "user", "Oslo?", response_format=Weather, turn_id="t-1")
    assert again.replayed
    assert not first.replayed
    assert again.parsed == first.parsed == Weather(city="Oslo", celsius=4.5)
    assert len(provider.requests) == 1
    assert await store.count("s") == 2
