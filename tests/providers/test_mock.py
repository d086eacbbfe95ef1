"""MockProvider: scripted replies, handlers, streaming shape, usage and cost."""

from __future__ import annotations

import pytest

from promptkit_async import (
    Message,
    MockProvider,
    ProviderRequest,
    ProviderResponse,
    StreamChunk,
    ToolCall,
)
from promptkit_async.pricing import lookup_pricing


def request(text: str = "hi") -> ProviderRequest:
    return ProviderRequest(messages=[Message("user", text)])


async def collect(provider: MockProvider, req: ProviderRequest) -> list[StreamChunk]:
    return [c async for c in provider.stream(req)]


async def test_scripted_replies_in_order_then_clear_error() -> None:
    provider = MockProvider(["one", "two"])
    assert (await provider.complete(request())).content == "one"
    chunks = await collect(provider, request())
    assert "".join(c.delta for c in chunks) == "two"
    with pytest.raises(IndexError, match="ran out of scripted replies after 2"):
        await provider.complete(request())


async def test_handler_may_be_async_and_sees_the_request() -> None:
    async def handler(req: ProviderRequest) -> str:
        return req.messages[-1].content[::-1]

    provider = MockProvider(handler=handler)
    assert (await provider.complete(request("abc"))).content == "cba"
    assert provider.requests[0].messages[-1].content == "abc"


async def test_stream_ends_with_response_and_reports_usage_and_cost() -> None:
    provider = MockProvider(["a fairly long reply text"], model="gpt-4o-mini", chunk_size=5)
    chunks = await collect(provider, request("hello"))
    final = chunks[-1].response
    assert final is not None
    assert all(c.response is None for c in chunks[:-1])
    assert [c.delta for c in chunks[:-1]] == ["a fai", "rly l", "ong r", "eply ", "text"]
    assert final.usage.prompt_tokens > 0
    assert final.usage.completion_tokens > 0
    price = lookup_pricing("gpt-4o-mini")
    assert price is not None
    expected = (
        final.usage.prompt_tokens * price.input_per_mtok
        + final.usage.completion_tokens * price.output_per_mtok
    ) / 1e6
    assert final.cost.total_cost == pytest.approx(expected)
    assert final.finish_reason == "stop"
    assert final.time_to_first_chunk is not None


async def test_tool_call_replies_stream_deltas_and_finish_with_tool_calls() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    provider = MockProvider([ProviderResponse(tool_calls=(call,))])
    chunks = await collect(provider, request())
    deltas = [d for c in chunks for d in c.tool_call_deltas]
    assert deltas[0].name == "get_weather"
    final = chunks[-1].response
    assert final is not None
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls == (call,)


async def test_scripted_exception_is_raised() -> None:
    provider = MockProvider([ValueError("boom")])
    with pytest.raises(ValueError, match="boom"):
        await collect(provider, request())


async def test_default_echo_and_unknown_model_is_unpriced() -> None:
    provider = MockProvider()
    response = await provider.complete(request("ping"))
    assert response.content == "echo: ping"
    assert response.cost.priced is False
    assert response.cost.total_cost == 0


def test_replies_and_handler_are_exclusive() -> None:
    with pytest.raises(ValueError, match="either"):
        MockProvider(["x"], handler=lambda r: "y")
