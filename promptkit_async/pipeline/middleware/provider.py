"""ProviderMiddleware: sends the conversation to a model and records its answer."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from ...errors import IncompleteStreamError, ToolError
from ...providers.base import Provider, ProviderRequest
from ...types import ProviderResponse
from .._context import ExecutionContext, Next

__all__ = ["ProviderMiddleware", "ProviderMiddlewareConfig"]


@dataclass(frozen=True, slots=True)
class ProviderMiddlewareConfig:
    """Per-pipeline request settings; ``None`` falls back to the provider's defaults.

    Attributes:
        max_tokens: cap on the reply's tokens.
        temperature / top_p / stop / seed: sampling controls.
        stream: use the provider's streaming API (default). With ``False`` each call is a
            single non-streamed request, and ``Pipeline.stream`` yields only its final
            chunk.
        extra_body: provider-specific request fields, merged into the body as-is.
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    stream: bool = True
    extra_body: Mapping[str, Any] | None = None


class ProviderMiddleware:
    """Calls the model with the turn's messages and fills in the response.

    Put it last. It sends ``ctx.messages`` with the config's settings, forwards streamed
    text chunks to ``ctx.emit``, then sets ``ctx.response``, adds the call's usage and
    cost to ``ctx.usage`` / ``ctx.cost``, appends the reply to ``ctx.new_messages`` and
    calls ``next``. Provider errors propagate unchanged (the turn is not stored).

    Args:
        provider: any :class:`~promptkit_async.providers.base.Provider`; shared freely.
        tools: tools the model may call (tool calling arrives with the tool registry).
        tool_policy: limits on the tool loop.
        config: request settings.

    Safe to share between pipelines and tasks: it keeps no per-turn state.
    """

    def __init__(
        self,
        provider: Provider,
        tools: Any = None,
        tool_policy: Any = None,
        config: ProviderMiddlewareConfig | None = None,
    ) -> None:
        if tools is not None or tool_policy is not None:
            raise ToolError(
                "tools are not supported by this version of ProviderMiddleware; pass None"
            )
        self.provider = provider
        self.config = config or ProviderMiddlewareConfig()

    def __repr__(self) -> str:
        return f"ProviderMiddleware(provider={self.provider!r})"

    def _request(self, ctx: ExecutionContext) -> ProviderRequest:
        c = self.config
        return ProviderRequest(
            messages=ctx.messages,
            max_tokens=c.max_tokens,
            temperature=c.temperature,
            top_p=c.top_p,
            stop=c.stop,
            seed=c.seed,
            extra_body=c.extra_body,
        )

    async def _call(self, ctx: ExecutionContext, request: ProviderRequest) -> ProviderResponse:
        if not self.config.stream:
            return await self.provider.complete(request)
        response: ProviderResponse | None = None
        emit = ctx.emit
        stream = self.provider.stream(request)
        async with aclosing(stream) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                if chunk.response is not None:
                    response = chunk.response
                else:
                    await emit(chunk)
        if response is None:
            raise IncompleteStreamError(
                "the provider's stream ended without a final response", provider=self.provider.id
            )
        return response

    async def __call__(self, ctx: ExecutionContext, next: Next) -> None:
        response = await self._call(ctx, self._request(ctx))
        ctx.response = response
        ctx.usage += response.usage
        ctx.cost += response.cost
        if response.trace:
            ctx.trace.extend(response.trace)
        ctx.new_messages.append(response.to_message())
        await next(ctx)
