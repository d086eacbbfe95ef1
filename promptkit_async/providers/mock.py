"""Offline providers for tests and demos: scripted replies or a Python function.

:class:`MockProvider` behaves like a real streaming provider (chunks, usage, cost, finish
reasons, tool calls) without any network, so you can test code built on promptkit_async::

    provider = MockProvider(["Hello Alice!", "Your name is Alice."])
    provider = MockProvider(handler=lambda request: f"you said {request.messages[-1].content}")

Every request is recorded in :attr:`MockProvider.requests` for assertions.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Union

from typing_extensions import Unpack

from .._structured import ResponseFormat, with_parsed
from ..errors import ConfigurationError
from ..types import ProviderResponse, StreamChunk, ToolCallDelta, Usage
from .base import BaseProvider, ProviderIdentity, ProviderRequest

__all__ = ["MockProvider", "MockReply"]

#: A scripted reply: text, a full response (e.g. with tool calls), or an exception to raise.
MockReply = Union[str, ProviderResponse, BaseException]  # noqa: UP007 (runtime alias on 3.10)
Handler = Callable[[ProviderRequest], Union[MockReply, Awaitable[MockReply]]]  # noqa: UP007


def _approx_tokens(text: str) -> int:
    # Roughly 4 characters per token, like OpenAI's rule of thumb; never 0 for text.
    return (len(text) + 3) // 4


class MockProvider(BaseProvider):
    """A provider that answers from a script or a function, with no network.

    Args:
        replies: answers to give, in order. A ``str`` becomes the reply text; a
            :class:`ProviderResponse` is returned as given (usage filled in if empty); an
            exception instance is raised instead of answering. When the script runs out,
            the provider raises ``IndexError`` naming how many replies were used.
        handler: instead of a script, a function (sync or async) called with each
            :class:`ProviderRequest`, returning a reply as above.
        chunk_size: characters per streamed chunk.
        chunk_delay: seconds to wait before each chunk (to simulate a slow model).
        model / name / generation / pricing: as for real providers (``name`` defaults to
            ``"mock"``; ``id=`` and ``defaults=`` are deprecated spellings); the default
            model has no price, so pass ``model="gpt-4o-mini"`` to get realistic costs.

    With neither ``replies`` nor ``handler`` it echoes the last message.

    With a ``response_format`` (on the request or in ``generation``), a reply that ends
    the turn is checked and parsed like a real provider's: script the JSON text
    (``MockProvider(['{"name": "Alice"}'])``) and ``response.parsed`` holds the value;
    a reply that does not match raises ``StructuredOutputError`` (after streaming it).

    Usage is estimated at ~4 characters per token for the prompt and the reply, so costs
    and token counts behave like a real provider's. Safe to share between tasks; the
    script is consumed in call order.
    """

    kind = "mock"

    def __init__(
        self,
        replies: Iterable[MockReply] | None = None,
        *,
        handler: Handler | None = None,
        chunk_size: int = 8,
        chunk_delay: float = 0.0,
        model: str = "mock-model",
        **options: Unpack[ProviderIdentity],
    ) -> None:
        super().__init__(model=model, **options)
        if replies is not None and handler is not None:
            raise ConfigurationError("pass either replies or handler, not both")
        if chunk_size < 1:
            raise ConfigurationError("chunk_size must be at least 1")
        self._script: deque[MockReply] | None = deque(replies) if replies is not None else None
        self._used = 0
        self._handler = handler
        self.chunk_size = chunk_size
        self.chunk_delay = chunk_delay
        #: Every request received, in order.
        self.requests: list[ProviderRequest] = []

    def _parsed(self, request: ProviderRequest, response: ProviderResponse) -> ProviderResponse:
        # As a real provider does: the answer checked against the request's (or this
        # provider's default) response_format; a tool-calling answer is left alone.
        fmt = request.generation.response_format or self.generation.response_format
        if fmt is None:
            return response
        return with_parsed(ResponseFormat.coerce(fmt), response, self.id)

    async def _reply(self, request: ProviderRequest) -> ProviderResponse:
        self.requests.append(request)
        reply: MockReply
        if self._handler is not None:
            produced = self._handler(request)
            reply = await produced if inspect.isawaitable(produced) else produced
        elif self._script is not None:
            if not self._script:
                raise IndexError(
                    f"MockProvider ran out of scripted replies after {self._used}; "
                    "add more replies or use handler="
                )
            reply = self._script.popleft()
            self._used += 1
        else:
            last = request.messages[-1].text if request.messages else ""
            reply = f"echo: {last}"
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, str):
            reply = ProviderResponse(reply, finish_reason="stop")
        response = reply
        if response.finish_reason is None:
            response = replace(
                response, finish_reason="tool_calls" if response.tool_calls else "stop"
            )
        if response.usage == Usage():
            prompt = sum(_approx_tokens(m.text) + 4 for m in request.messages)
            completion = _approx_tokens(response.content) + sum(
                _approx_tokens(c.name + c.arguments) for c in response.tool_calls
            )
            response = replace(response, usage=Usage(prompt, completion))
        return replace(
            response,
            model=response.model or self.model,
            cost=self.calculate_cost(response.usage),
        )

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Answer at once, without streaming."""
        started = time.perf_counter()
        response = await self._reply(request)
        return self._parsed(request, replace(response, latency=time.perf_counter() - started))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        """Stream the reply in ``chunk_size`` pieces, then the final response."""
        started = time.perf_counter()
        response = await self._reply(request)
        first: float | None = None
        text = response.content
        for i in range(0, len(text), self.chunk_size):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            if first is None:
                first = time.perf_counter() - started
            yield StreamChunk(delta=text[i : i + self.chunk_size])
        for index, call in enumerate(response.tool_calls):
            yield StreamChunk(
                tool_call_deltas=(ToolCallDelta(index, call.id, call.name, call.arguments),)
            )
        # Checked after the text streamed, as a real provider can only do.
        response = self._parsed(
            request,
            replace(response, latency=time.perf_counter() - started, time_to_first_chunk=first),
        )
        yield StreamChunk(
            finish_reason=response.finish_reason, usage=response.usage, response=response
        )
