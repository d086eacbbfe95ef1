"""ProviderMiddleware: sends the conversation to a model, runs its tools, records its answer."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ... import events
from ..._context import ExecutionContext, Next
from ..._structured import ResponseFormat, with_parsed
from ...errors import IncompleteStreamError, ToolError
from ...providers.base import (
    UNSET_GENERATION,
    GenerationConfig,
    Provider,
    ProviderRequest,
    legacy_generation,
    legacy_generation_fields,
)
from ...tools import (
    ToolCallAssembler,
    ToolLike,
    ToolPolicy,
    ToolRegistry,
    ToolSource,
    as_registry,
    run_tool_calls,
)
from ...types import (
    Message,
    ProviderResponse,
    StreamChunk,
    ToolCall,
    ToolDefinition,
    TraceEvent,
)

__all__ = ["ProviderMiddleware", "ProviderMiddlewareConfig"]

_NOT_FORCING = frozenset(("auto", "none"))  # tool choices that do not force a call
_KEYWORDS = frozenset(("auto", "none", "required"))


@legacy_generation_fields
@dataclass(frozen=True, slots=True, init=False)
class ProviderMiddlewareConfig:
    """Per-pipeline request settings.

    Attributes:
        generation: the generation settings of every request (``max_tokens``,
            ``temperature``, ``top_p``, ``stop``, ``seed``, ``extra_body``,
            ``response_format``); fields left ``None`` fall back to the provider's
            ``generation`` defaults. A turn's own ``response_format=`` wins over this
            one's.
        stream: use the provider's streaming API (default). With ``False`` each call is a
            single non-streamed request, and ``Pipeline.stream`` yields only its final
            chunk.

    The keywords ``max_tokens=``, ``temperature=``, ``top_p=``, ``stop=``, ``seed=`` and
    ``extra_body=`` (and the attributes of those names) are deprecated: they go into
    ``generation``.
    """

    generation: GenerationConfig
    stream: bool

    def __init__(
        self, generation: GenerationConfig | None = None, stream: bool = True, **legacy: Any
    ) -> None:
        if legacy:
            generation = legacy_generation("ProviderMiddlewareConfig", legacy, generation)
        object.__setattr__(self, "generation", generation or UNSET_GENERATION)
        object.__setattr__(self, "stream", stream)


class ProviderMiddleware:
    """Calls the model with the turn's messages, runs its tool calls, and records its answer.

    Put it last. It sends ``ctx.messages`` with the config's settings, yields the streamed
    chunks (text and tool-call fragments; fragments are also assembled, for a provider
    whose final response leaves its calls out), sets ``ctx.response``, adds each call's
    usage and cost to ``ctx.usage`` / ``ctx.cost``, appends its messages to
    ``ctx.new_messages`` and iterates ``next``. Provider errors propagate unchanged (the turn
    is then not stored).

    With tools, one turn is a loop. Each request carries the tools' definitions (minus
    the policy's blocklist). While the model answers with tool calls:

    1. its assistant message (with ``tool_calls``, and the answer's reasoning as
       :class:`~promptkit_async.types.ThinkingPart` objects ahead of its text, see
       :meth:`~promptkit_async.types.ProviderResponse.to_message`) is appended to
       ``ctx.messages`` and ``ctx.new_messages``, so the next request sends the reasoning
       back as the provider requires (Anthropic's signed thinking blocks, Gemini's thought
       signatures);
    2. the calls run concurrently, each limited by the policy's (or the tool's) timeout;
       a failing, hanging, unknown or blocked tool, or malformed arguments, produce a
       tool result explaining the problem rather than an exception;
    3. one ``role="tool"`` message per call (with its ``tool_call_id``), in call order,
       is appended to both lists, a ``"tool_round"`` trace event records the calls, and
       the model is asked again.

    After ``max_rounds`` rounds the model is asked once more with ``tool_choice="none"``
    (a ``"tool_rounds_exhausted"`` trace event marks it). Tool calls in an answer to a
    ``"none"`` request are not run: they are dropped from the reply (a
    ``"tool_calls_dropped"`` trace event names them), so the stored history stays valid
    for every provider. ``ctx.response`` is the last response; ``ctx.usage`` / ``ctx.cost``
    sum every round. Since ``StateMiddleware`` stores ``ctx.new_messages`` only after the
    whole loop, a turn's tool-call messages, tool results and final reply are stored
    together or not at all. Cancelling the turn cancels running tools (and waits for
    them to finish cancelling); sync tools' threads run on, their results discarded.

    Structured output: with a ``response_format`` (the turn's own, from
    ``pipe.execute(..., response_format=...)``, else the config's ``generation``), every
    request of the turn carries it, and the answer that ends the turn is checked and
    parsed into ``ctx.response.parsed`` (by the provider, or here for a provider that
    does not know the setting). One that does not match raises
    ``StructuredOutputError`` before anything is appended to ``ctx.new_messages``.

    Args:
        provider: any :class:`~promptkit_async.providers.base.Provider`; shared freely.
        tools: a :class:`~promptkit_async.tools.ToolRegistry` (used live: tools added
            later are offered from the next request on) or a sequence of tools /
            functions / tool sources (MCP servers); ``None`` for no tools.
        tool_policy: limits of the tool loop (default ``ToolPolicy()``).
        config: request settings.

    Raises:
        ToolError: a ``tool_choice`` naming a tool that is not registered or is blocked,
            or ``tools`` of the wrong kind.

    Safe to share between pipelines and tasks: it keeps no per-turn state.
    """

    def __init__(
        self,
        provider: Provider,
        tools: ToolRegistry | Iterable[ToolLike | ToolSource] | None = None,
        tool_policy: ToolPolicy | None = None,
        config: ProviderMiddlewareConfig | None = None,
    ) -> None:
        if tool_policy is not None and not isinstance(tool_policy, ToolPolicy):
            raise ToolError(f"tool_policy must be a ToolPolicy, not {type(tool_policy).__name__}")
        self.provider = provider
        self.tools: ToolRegistry | None = as_registry(tools)
        self.tool_policy = tool_policy or ToolPolicy()
        self.config = config or ProviderMiddlewareConfig()
        choice = self.tool_policy.tool_choice
        if self.tools is not None and choice is not None and choice not in _KEYWORDS:
            if choice not in self.tools:
                raise ToolError(
                    f"tool_choice names {choice!r}, which is not registered; registered: "
                    f"{', '.join(self.tools.names) or 'none'}"
                )
            if choice in self.tool_policy.blocklist:
                raise ToolError(f"tool_choice names {choice!r}, which the blocklist forbids")
        self._definitions: tuple[ToolDefinition, ...] = ()
        self._definitions_version = -1

    def __repr__(self) -> str:
        tools = f", tools={list(self.tools.names)!r}" if self.tools is not None else ""
        return f"ProviderMiddleware(provider={self.provider!r}{tools})"

    def _request(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition] = (),
        tool_choice: str | None = None,
        generation: GenerationConfig | None = None,
    ) -> ProviderRequest:
        if generation is None:
            generation = self.config.generation
        return ProviderRequest(messages, tools, tool_choice, generation)

    @staticmethod
    def _account(ctx: ExecutionContext, response: ProviderResponse) -> None:
        ctx.usage += response.usage
        ctx.cost += response.cost
        if response.trace:
            ctx.trace.extend(response.trace)

    async def __call__(self, ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        # One flat generator for the whole loop (one layer per chunk, and every provider
        # stream closed here, in a finally, whatever ends the turn).
        tools = self.tools
        if tools is not None:
            await tools.prepare()  # tool sources (MCP servers) connect on first use
        generation = self.config.generation
        if ctx.response_format is not None:  # the caller's, for this turn only
            generation = replace(generation, response_format=ctx.response_format)
        loop = _ToolLoop(self, ctx, tools, generation) if tools is not None else None
        request = (
            self._request(ctx.messages, (), None, generation) if loop is None else loop.request()
        )
        while True:
            observed = events.call_started(ctx, self.provider, request, self.config.stream)
            try:
                if not self.config.stream:
                    response = await self.provider.complete(request)
                else:
                    final: ProviderResponse | None = None
                    assembler: ToolCallAssembler | None = None
                    chunks = self.provider.stream(request)
                    try:
                        async for chunk in chunks:
                            if chunk.response is not None:
                                final = chunk.response
                                continue
                            if observed is not None:
                                events.call_first_chunk(observed)
                            if chunk.tool_call_deltas and tools is not None:
                                if assembler is None:
                                    assembler = ToolCallAssembler()
                                assembler.add(chunk.tool_call_deltas)
                            yield chunk
                    finally:
                        # Closes the HTTP response at once when we stop early.
                        aclose = getattr(chunks, "aclose", None)
                        if aclose is not None:
                            await aclose()
                    if final is None:
                        raise IncompleteStreamError(
                            "the provider's stream ended without a final response",
                            provider=self.provider.id,
                        )
                    if assembler and not final.tool_calls:
                        # The provider streamed calls but left them out of its final response.
                        final = replace(final, tool_calls=assembler.calls())
                    response = final
            except BaseException as exc:
                if observed is not None:
                    events.call_finished(observed, None, exc)
                raise
            if observed is not None:
                events.call_finished(observed, response, None)
            self._account(ctx, response)
            if loop is None:
                break
            response = await loop.after(response)
            if loop.done:
                break
            request = loop.request()
        fmt = generation.response_format
        if fmt is not None and response.parsed is None and not response.tool_calls:
            # A provider that does not know response_format (or an answer whose calls
            # were dropped): the final answer is still checked before anything is stored.
            response = with_parsed(ResponseFormat.coerce(fmt), response, self.provider.id)
        ctx.response = response
        ctx.new_messages.append(response.to_message())
        async for chunk in next(ctx):
            yield chunk

    def _tool_definitions(self, tools: ToolRegistry) -> tuple[ToolDefinition, ...]:
        # Cached per registry version: rebuilt only when tools were added or removed.
        if self._definitions_version != tools.version:
            self._definitions = tools.definitions(exclude=self.tool_policy.blocklist)
            self._definitions_version = tools.version
        return self._definitions


class _ToolLoop:
    """One turn's tool loop: what to ask next, and running the calls of each answer."""

    __slots__ = ("choice", "ctx", "done", "generation", "middleware", "rounds", "shared", "tools")

    def __init__(
        self,
        middleware: ProviderMiddleware,
        ctx: ExecutionContext,
        tools: ToolRegistry,
        generation: GenerationConfig,
    ) -> None:
        self.middleware = middleware
        self.generation = generation
        self.ctx = ctx
        self.tools = tools
        self.choice = middleware.tool_policy.tool_choice
        # One list when a middleware made them the same: append each message once.
        self.shared = ctx.messages is ctx.new_messages
        self.rounds = 0
        self.done = False

    def request(self) -> ProviderRequest:
        definitions = self.middleware._tool_definitions(self.tools)
        # A snapshot: the request must not change when the loop appends messages.
        return self.middleware._request(
            tuple(self.ctx.messages),
            definitions,
            self.choice if definitions else None,
            self.generation,
        )

    async def after(self, response: ProviderResponse) -> ProviderResponse:
        """Run the answer's tool calls (if any) and add them and their results."""
        ctx, policy = self.ctx, self.middleware.tool_policy
        if not response.tool_calls:
            self.done = True
            return response
        if self.choice == "none":
            # Asked with tool_choice="none" (the policy's, or after max_rounds) and it
            # still called tools: do not run them, and keep them out of the history
            # (unanswered calls would break the next turn on every provider).
            ctx.trace.append(
                TraceEvent(
                    "tool_calls_dropped",
                    {"calls": tuple(c.name for c in response.tool_calls), "round": self.rounds},
                )
            )
            self.done = True
            return replace(response, tool_calls=())
        calls = _with_ids(response.tool_calls)
        if calls is not response.tool_calls:
            response = replace(response, tool_calls=calls)
        started = time.perf_counter()
        assistant = response.to_message()
        ctx.new_messages.append(assistant)
        if not self.shared:
            ctx.messages.append(assistant)
        results, records = await run_tool_calls(self.tools, calls, policy, ctx)
        ctx.new_messages.extend(results)
        if not self.shared:
            ctx.messages.extend(results)
        self.rounds += 1
        ctx.trace.append(
            TraceEvent(
                "tool_round",
                {
                    "round": self.rounds,
                    "calls": tuple(records),
                    "seconds": time.perf_counter() - started,
                },
            )
        )
        if self.rounds >= policy.max_rounds:
            self.choice = "none"
            ctx.trace.append(TraceEvent("tool_rounds_exhausted", {"max_rounds": self.rounds}))
        elif self.choice is not None and self.choice not in _NOT_FORCING:
            self.choice = "auto"  # a forced call was made; let the model answer now
        return response


def _with_ids(calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
    """``calls``, with a unique id made up for any call the provider sent without one.

    Tool results are matched to calls by id, and a stored tool message needs one.
    """
    if all(c.id for c in calls):
        return calls
    return tuple(c if c.id else replace(c, id=f"call_{secrets.token_hex(12)}") for c in calls)
