"""OpenAI Chat Completions, and every server that speaks it (Ollama, vLLM, Groq...).

::

    async with OpenAIProvider("openai", "gpt-4o-mini") as provider:   # key from OPENAI_API_KEY
        response = await provider.complete(ProviderRequest([Message("user", "Hi")]))

    local = OpenAIProvider("ollama", "llama3.2", base_url="http://localhost:11434/v1")

Streaming uses server-sent events with ``stream_options.include_usage`` so the last chunk
carries the real token usage; text and tool-call fragments are yielded as they arrive and
the final chunk carries the assembled :class:`~promptkit_async.types.ProviderResponse`.
Retries, timeouts, error mapping and the HTTP client are shared with the other HTTP
providers (:mod:`promptkit_async.providers._http`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
from typing_extensions import Unpack

from ..errors import APIResponseError, IncompleteStreamError, InvalidRequestError
from ..types import (
    Message,
    ProviderResponse,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    Usage,
)
from ._http import HTTPOptions, HTTPProvider, json_loads
from .base import ProviderDefaults, ProviderRequest

__all__ = ["OpenAIProvider"]

_OPENAI_HOST = "api.openai.com"
_FINISH_REASONS = {"function_call": "tool_calls"}
_TOOL_CHOICES = frozenset({"auto", "none", "required"})


def _message(message: Message) -> dict[str, Any]:
    role = message.role
    if role == "tool":
        return {"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id}
    out: dict[str, Any] = {"role": role, "content": message.content}
    if message.tool_calls and role == "assistant":
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
        if not message.content:
            out["content"] = None  # what the API itself returns for a tool-call-only turn
    if message.name:
        out["name"] = message.name
    return out


def _tool(tool: ToolDefinition) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> Any:
    if choice in _TOOL_CHOICES:
        return choice
    return {"type": "function", "function": {"name": choice}}


def _usage(data: Mapping[str, Any]) -> Usage:
    details = data.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return Usage(
        prompt_tokens=data.get("prompt_tokens") or 0,
        completion_tokens=data.get("completion_tokens") or 0,
        total_tokens=data.get("total_tokens") or 0,
        cached_tokens=cached or 0,
    )


def _estimate_usage(messages: Sequence[Message], completion: str) -> Usage:
    # Only for servers that report no usage: ~4 characters per token, marked estimated.
    prompt = sum((len(m.content) + 3) // 4 + 4 for m in messages)
    return Usage(prompt, (len(completion) + 3) // 4, estimated=True)


class OpenAIProvider(HTTPProvider):
    """A provider for the OpenAI Chat Completions API and compatible servers.

    Args:
        id: a short name for logs and errors (``"openai"``).
        model: the model, e.g. ``"gpt-4o-mini"``.
        api_key: the API key; ``None`` reads ``OPENAI_API_KEY`` (or ``api_key_env``).
            Without a key no ``Authorization`` header is sent (for local servers).
        defaults: temperature / max_tokens / top_p used when a request leaves them unset,
            and a pricing override.
        include_raw_output: put the raw payload in ``response.raw`` (the list of chunk
            payloads when streaming, the response payload otherwise).
        base_url: the API root (default ``OPENAI_BASE_URL`` or
            ``https://api.openai.com/v1``); any OpenAI-compatible server works.
        http_client: an ``httpx.AsyncClient`` to send through; it is not closed by us.
            By default the provider owns a client over aiohttp, closed by :meth:`aclose`.
        timeout: per-attempt timeouts (seconds or ``httpx.Timeout``).
        max_retries: retries of 408/409/429/5xx and connection errors (default 2).
        stream_idle_timeout: seconds without a streamed byte, once the response headers
            arrived, before :class:`~promptkit_async.errors.StreamIdleTimeoutError` (the
            wait for the headers is bounded by the read timeout).
        deadline: seconds for a whole call including retries and the full answer.
        retry_policy: backoff timing.
        default_headers: headers added to every request (e.g. ``OpenAI-Organization``).
        api_key_env: the variable to read the key from (presets use their vendor's).
        max_tokens_field: the body field carrying ``max_tokens``: by default
            ``"max_completion_tokens"`` for api.openai.com (required by reasoning models)
            and ``"max_tokens"`` for other servers.

    Errors: HTTP statuses map to :mod:`promptkit_async.errors` (401
    ``AuthenticationError``, 429 ``RateLimitError``, 400 ``ContextLengthExceededError``
    when the prompt is too long...), transport failures to ``APIConnectionError`` /
    ``APITimeoutError``, a broken event stream to ``APIResponseError``, a stream that
    ends early to ``IncompleteStreamError``, an ``error`` event inside the stream to the
    matching status error.

    Concurrency: share one instance between any number of tasks and sessions on one
    event loop. Closing (or cancelling the consumer of) a stream closes its HTTP
    response at once.
    """

    default_base_url = "https://api.openai.com/v1"
    default_api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    request_id_headers = ("x-request-id",)

    def __init__(
        self,
        id: str,
        model: str,
        api_key: str | None = None,
        defaults: ProviderDefaults | None = None,
        include_raw_output: bool = False,
        *,
        max_tokens_field: str | None = None,
        **options: Unpack[HTTPOptions],
    ) -> None:
        super().__init__(id, model, api_key, defaults, include_raw_output, **options)
        if max_tokens_field is None:
            official = httpx.URL(self.base_url).host == _OPENAI_HOST
            max_tokens_field = "max_completion_tokens" if official else "max_tokens"
        self.max_tokens_field = max_tokens_field
        self._endpoint = httpx.URL(f"{self.base_url}/chat/completions")

    # --- request --------------------------------------------------------------------------

    def build_body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        """The Chat Completions request body for ``request`` (what is sent, as a dict).

        Request fields left ``None`` fall back to the provider's ``defaults``;
        ``extra_body`` is merged last and wins.

        Raises:
            InvalidRequestError: no messages.
        """
        if not request.messages:
            raise InvalidRequestError("the request has no messages; add at least one")
        defaults = self.defaults
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_message(m) for m in request.messages],
        }
        max_tokens = request.max_tokens if request.max_tokens is not None else defaults.max_tokens
        if max_tokens is not None:
            body[self.max_tokens_field] = max_tokens
        temperature = (
            request.temperature if request.temperature is not None else defaults.temperature
        )
        if temperature is not None:
            body["temperature"] = temperature
        top_p = request.top_p if request.top_p is not None else defaults.top_p
        if top_p is not None:
            body["top_p"] = top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
        if request.tool_choice:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if request.extra_body:
            body.update(request.extra_body)
        return body

    # --- non-streaming --------------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Send ``request`` without streaming and return the whole answer.

        Raises:
            ProviderError: a subclass from :mod:`promptkit_async.errors` (see the class
                docstring); nothing is retried once the answer was read.
        """
        payload, call, request_id = await self._post_json(
            self._endpoint, self.build_body(request, stream=False)
        )
        if not isinstance(payload, dict):
            raise APIResponseError(
                "the response is not a JSON object", provider=self.id, request_id=request_id
            )
        if payload.get("error"):
            raise self._payload_error(payload, request_id)
        try:
            choice = payload["choices"][0]
            message = choice.get("message") or {}
            content = message.get("content") or ""
            if message.get("refusal"):
                content += message["refusal"]
            tool_calls = tuple(
                ToolCall(
                    tc.get("id") or f"call_{i}",
                    tc["function"]["name"],
                    tc["function"].get("arguments") or "{}",
                )
                for i, tc in enumerate(message.get("tool_calls") or ())
            )
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise APIResponseError(
                f"unexpected response shape ({type(exc).__name__}: {exc})",
                provider=self.id,
                request_id=request_id,
            ) from None
        usage_data = payload.get("usage")
        usage = (
            _usage(usage_data)
            if isinstance(usage_data, Mapping)
            else _estimate_usage(request.messages, content)
        )
        return ProviderResponse(
            content=content,
            finish_reason=_FINISH_REASONS.get(finish, finish),
            usage=usage,
            cost=self.calculate_cost(usage),
            tool_calls=tool_calls,
            model=payload.get("model"),
            response_id=payload.get("id"),
            request_id=request_id,
            latency=time.perf_counter() - call.started,
            trace=tuple(call.trace),
            raw=payload if self.include_raw_output else None,
        )

    # --- streaming ------------------------------------------------------------------------

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        """Stream the answer: text chunks (``delta``), tool-call fragments
        (``tool_call_deltas``), then one last chunk with ``response``, ``usage`` and
        ``finish_reason``.

        Close the iterator if you stop early (``contextlib.aclosing``); that, or
        cancelling the consuming task, closes the HTTP response at once. Retries happen
        only before the first event arrives.

        Raises:
            ProviderError: see the class docstring.
        """
        events = self._post_events(self._endpoint, self.build_body(request, stream=True))
        parts: list[str] = []
        calls: dict[int, list[Any]] = {}  # index -> [id, name, [argument fragments]]
        finish: str | None = None
        usage: Usage | None = None
        response_id: str | None = None
        model: str | None = None
        first: float | None = None
        raw: list[Any] | None = [] if self.include_raw_output else None
        done = False
        loads = json_loads
        try:
            while batch := await events.next_batch():
                if done:
                    continue  # read on to the end of the body so the connection is reused
                for event in batch:
                    data = event.data
                    if data == "[DONE]":
                        done = True
                        events.expect_end(self.end_grace)
                        break
                    try:
                        payload = loads(data)
                    except ValueError:
                        raise self._event_error(data, events.request_id, events.ended) from None
                    if type(payload) is not dict:
                        raise self._event_error(data, events.request_id, False)
                    if raw is not None:
                        raw.append(payload)
                    if event.event == "error" or payload.get("error"):
                        error = payload if "error" in payload else {"error": payload}
                        raise self._payload_error(error, events.request_id)
                    if response_id is None:
                        response_id = payload.get("id")
                        model = payload.get("model")
                    usage_data = payload.get("usage")
                    if usage_data:
                        usage = _usage(usage_data)
                    choices = payload.get("choices")
                    if not choices:
                        continue
                    choice = choices[0]
                    if choice.get("index", 0) != 0:
                        continue  # only the first choice is assembled
                    delta = choice.get("delta")
                    if delta:
                        text = delta.get("content") or delta.get("refusal")
                        if text:
                            if first is None:
                                first = time.perf_counter() - events.started
                            parts.append(text)
                            yield StreamChunk(delta=text)
                        fragments = delta.get("tool_calls")
                        if fragments:
                            if first is None:
                                first = time.perf_counter() - events.started
                            yield StreamChunk(tool_call_deltas=self._tool_deltas(fragments, calls))
                    reason = choice.get("finish_reason")
                    if reason:
                        finish = _FINISH_REASONS.get(reason, reason)
        finally:
            await events.aclose()
        if not done and finish is None:
            raise IncompleteStreamError(
                "the stream ended before the model finished (no finish_reason, no [DONE])",
                provider=self.id,
                request_id=events.request_id,
            )
        content = "".join(parts)
        if usage is None:
            usage = _estimate_usage(request.messages, content)
        tool_calls = tuple(
            ToolCall(c[0] or f"call_{i}", c[1] or "", "".join(c[2]) or "{}")
            for i, c in sorted(calls.items())
        )
        response = ProviderResponse(
            content=content,
            finish_reason=finish or ("tool_calls" if tool_calls else "stop"),
            usage=usage,
            cost=self.calculate_cost(usage),
            tool_calls=tool_calls,
            model=model,
            response_id=response_id,
            request_id=events.request_id,
            latency=time.perf_counter() - events.started,
            time_to_first_chunk=first,
            trace=tuple(events.trace),
            raw=raw,
        )
        yield StreamChunk(finish_reason=response.finish_reason, usage=usage, response=response)

    @staticmethod
    def _tool_deltas(
        fragments: Sequence[Mapping[str, Any]], calls: dict[int, list[Any]]
    ) -> tuple[ToolCallDelta, ...]:
        deltas = []
        for position, fragment in enumerate(fragments):
            index = fragment.get("index", position)
            function = fragment.get("function") or {}
            call_id = fragment.get("id")
            name = function.get("name")
            arguments = function.get("arguments") or ""
            entry = calls.get(index)
            if entry is None:
                entry = calls[index] = [None, None, []]
            if call_id:
                entry[0] = call_id
            if name:
                entry[1] = name
            if arguments:
                entry[2].append(arguments)
            deltas.append(ToolCallDelta(index, call_id, name, arguments))
        return tuple(deltas)
