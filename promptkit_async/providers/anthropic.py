"""Anthropic's Messages API (``POST /v1/messages``).

::

    async with AnthropicProvider("anthropic", "claude-sonnet-4-5") as provider:
        response = await provider.complete(ProviderRequest([Message("user", "Hi")]))
        # key from ANTHROPIC_API_KEY

How the library's one shape maps onto the Messages API:

* system messages become the top-level ``system`` field (several are joined with a blank
  line); the API knows only ``user`` and ``assistant`` turns, so consecutive messages of
  one role are merged into one turn;
* an assistant message's tool calls become ``tool_use`` blocks (their ``input`` parsed
  from the call's JSON arguments text; a malformed text is sent as ``{}``), and tool
  results become ``tool_result`` blocks of a user turn (all results of one round in one
  turn, ahead of any text), so a stored tool round replays as the API requires;
* ``max_tokens`` is required by the API: the request's, else ``defaults.max_tokens``,
  else :data:`DEFAULT_MAX_TOKENS`;
* ``temperature`` and ``top_p`` are not sent: the Messages API deprecated them (current
  models reject them with a 400 and the official SDK no longer has the fields). For an
  older model that still takes them, pass ``extra_body={"temperature": 0.2}``. ``seed``
  has no Anthropic equivalent and is not sent either;
* usage: ``prompt_tokens`` = input + cache reads + cache writes, ``cached_tokens`` = cache
  reads (``cache_read_input_tokens``), ``cache_write_tokens`` = cache writes
  (``cache_creation_input_tokens``), each priced at its own rate;
* ``stop_reason``: ``end_turn`` / ``stop_sequence`` → ``"stop"``, ``max_tokens`` /
  ``model_context_window_exceeded`` → ``"length"``, ``tool_use`` → ``"tool_calls"``,
  ``refusal`` → ``"content_filter"``, anything else as Anthropic says it.

Only ``text`` and ``tool_use`` content is read; ``thinking`` blocks are skipped (so
extended thinking combined with tool use, which needs them replayed, is not supported).
The API refuses ``tool_use`` / ``tool_result`` blocks in a request without ``tools``, so a
session holding tool rounds must keep being sent with its tools.
Retries, timeouts, error mapping and the HTTP client are shared with the other HTTP
providers (:mod:`promptkit_async.providers._http`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
from typing_extensions import Unpack

from ..errors import APIResponseError, IncompleteStreamError, InvalidRequestError, ProviderError
from ..types import (
    Message,
    ProviderResponse,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    Usage,
)
from ._http import HTTPOptions, HTTPProvider, json_loads, redact
from .base import ProviderDefaults, ProviderRequest

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicProvider"]

logger = logging.getLogger("promptkit_async.providers")

#: The ``anthropic-version`` header sent with every request.
ANTHROPIC_VERSION = "2023-06-01"
#: ``max_tokens`` when neither the request nor ``ProviderDefaults`` set one (the API
#: requires it; every Claude 3 and later model allows at least this many).
DEFAULT_MAX_TOKENS = 4096

_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: Anthropic's error types and the HTTP status each stands for (used for ``error``
#: events inside a 2xx stream, which carry no status of their own).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _tool_input(arguments: str) -> dict[str, Any]:
    # The stored arguments are the model's own JSON text; tool_use.input must be an
    # object. A malformed call was already answered with an error tool result, so an
    # empty input keeps the history valid without inventing arguments.
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _blocks(message: Message) -> list[dict[str, Any]]:
    """The content blocks one message contributes to its turn."""
    role = message.role
    if role == "tool":
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if message.content:
            block["content"] = message.content
        return [block]
    blocks: list[dict[str, Any]] = []
    if message.content:  # the API rejects empty text blocks
        blocks.append({"type": "text", "text": message.content})
    if role == "assistant":
        for call in message.tool_calls:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": _tool_input(call.arguments),
                }
            )
    return blocks


def _turns(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """The ``system`` text and the alternating user/assistant turns for ``messages``."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    last_role: str | None = None
    for message in messages:
        if message.role == "system":
            if message.content:
                system.append(message.text)
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            continue  # an empty message: nothing the API would accept
        if role == last_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
            last_role = role
    for turn in turns:
        content = turn["content"]
        if turn["role"] == "user" and len(content) > 1:
            # tool_result blocks must open their user turn; keep each group's order.
            results = [b for b in content if b["type"] == "tool_result"]
            if results and len(results) < len(content):
                content[:] = results + [b for b in content if b["type"] != "tool_result"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]  # the plain form, for a lone text
    return "\n\n".join(system), turns


def _tool(tool: ToolDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name, "input_schema": dict(tool.parameters)}
    if tool.description:
        out["description"] = tool.description
    return out


def _tool_choice(choice: str) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    return {"type": "tool", "name": choice}


class _UsageCounts:
    """Anthropic's usage counters, updated by ``message_start`` and ``message_delta``."""

    __slots__ = ("cache_creation", "cache_read", "input", "output", "seen")

    def __init__(self) -> None:
        self.input = self.output = self.cache_read = self.cache_creation = 0
        self.seen = False

    def update(self, data: Any) -> None:
        # message_delta's counts are cumulative: a present value replaces the earlier one.
        if not isinstance(data, Mapping):
            return
        self.seen = True
        value = data.get("input_tokens")
        if value is not None:
            self.input = value
        value = data.get("output_tokens")
        if value is not None:
            self.output = value
        value = data.get("cache_read_input_tokens")
        if value is not None:
            self.cache_read = value
        value = data.get("cache_creation_input_tokens")
        if value is not None:
            self.cache_creation = value

    def usage(self) -> Usage:
        prompt = self.input + self.cache_read + self.cache_creation
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=self.output,
            total_tokens=prompt + self.output,
            cached_tokens=self.cache_read,
            cache_write_tokens=self.cache_creation,
        )


def _estimate_usage(messages: Sequence[Message], completion: str) -> Usage:
    # Only for servers that report no usage: ~4 characters per token, marked estimated.
    prompt = sum((len(m.content) + 3) // 4 + 4 for m in messages)
    return Usage(prompt, (len(completion) + 3) // 4, estimated=True)


class AnthropicProvider(HTTPProvider):
    """A provider for Anthropic's Messages API (see the module docstring for the mapping).

    Args:
        id: a short name for logs and errors (``"anthropic"``).
        model: the model, e.g. ``"claude-sonnet-4-5"``.
        api_key: the API key, sent as ``x-api-key``; ``None`` reads ``ANTHROPIC_API_KEY``
            (or ``api_key_env``). Never shown in ``repr``, logs or errors.
        defaults: ``max_tokens`` used when a request leaves it unset, and a pricing
            override (``temperature`` / ``top_p`` are ignored: see the module docstring).
        include_raw_output: put the raw payload in ``response.raw`` (the list of event
            payloads when streaming, the message payload otherwise).
        base_url: the API root (default ``ANTHROPIC_BASE_URL`` or
            ``https://api.anthropic.com``); requests go to ``{base_url}/v1/messages``.
        http_client: an ``httpx.AsyncClient`` to send through; it is not closed by us.
            By default the provider owns a client over aiohttp, closed by :meth:`aclose`.
        timeout: per-attempt timeouts (seconds or ``httpx.Timeout``).
        max_retries: retries of 408/409/429/5xx (529 "overloaded" included) and
            connection errors (default 2).
        stream_idle_timeout: seconds without a streamed byte before
            :class:`~promptkit_async.errors.StreamIdleTimeoutError`.
        deadline: seconds for a whole call including retries and the full answer.
        retry_policy: backoff timing.
        default_headers: headers added to every request (e.g. ``anthropic-beta``); an
            ``anthropic-version`` given here replaces :data:`ANTHROPIC_VERSION`.
        api_key_env: the variable to read the key from.
        default_max_tokens: ``max_tokens`` when neither the request nor ``defaults`` set
            one (default :data:`DEFAULT_MAX_TOKENS`).

    Errors: HTTP statuses map to :mod:`promptkit_async.errors` (401
    ``AuthenticationError``, 429 ``RateLimitError``, 529 ``InternalServerError``, 400
    ``ContextLengthExceededError`` for "prompt is too long"...); an ``error`` event inside
    the stream maps by its type (``overloaded_error`` → ``InternalServerError`` with
    status 529, ``rate_limit_error`` → ``RateLimitError``...); a stream that ends before
    ``message_stop`` raises ``IncompleteStreamError``.

    Concurrency: share one instance between any number of tasks and sessions on one
    event loop. Closing (or cancelling the consumer of) a stream closes its HTTP
    response at once.
    """

    default_base_url = "https://api.anthropic.com"
    default_api_key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    request_id_headers = ("request-id", "x-request-id")

    def __init__(
        self,
        id: str,
        model: str,
        api_key: str | None = None,
        defaults: ProviderDefaults | None = None,
        include_raw_output: bool = False,
        *,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        **options: Unpack[HTTPOptions],
    ) -> None:
        if default_max_tokens < 1:
            raise InvalidRequestError("default_max_tokens must be >= 1")
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        headers.update(options.get("default_headers") or {})
        options["default_headers"] = headers
        super().__init__(id, model, api_key, defaults, include_raw_output, **options)
        self.default_max_tokens = default_max_tokens
        if self.defaults.temperature is not None or self.defaults.top_p is not None:
            logger.warning(
                "%s: ProviderDefaults temperature/top_p are not sent to the Messages API "
                "(deprecated there); use extra_body for a model that still takes them",
                id,
            )
        self._endpoint = httpx.URL(f"{self.base_url}/v1/messages")

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    # --- request --------------------------------------------------------------------------

    def build_body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        """The Messages API request body for ``request`` (what is sent, as a dict).

        ``max_tokens`` falls back to ``defaults.max_tokens``, then ``default_max_tokens``;
        ``temperature`` / ``top_p`` are never sent (see the module docstring);
        ``extra_body`` is merged last and wins (e.g. ``{"metadata": ...}``).

        Raises:
            InvalidRequestError: no user or assistant message to send.
        """
        system, turns = _turns(request.messages)
        if not turns:
            raise InvalidRequestError(
                "the request has no user or assistant message with content; add at least one"
            )
        defaults = self.defaults
        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = defaults.max_tokens or self.default_max_tokens
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "messages": turns}
        if system:
            body["system"] = system
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
            if request.tool_choice:
                body["tool_choice"] = _tool_choice(request.tool_choice)
        if stream:
            body["stream"] = True
        if request.extra_body:
            body.update(request.extra_body)
        return body

    # --- errors -----------------------------------------------------------------------------

    def _anthropic_error(self, payload: Mapping[str, Any], request_id: str | None) -> ProviderError:
        """The typed error for an ``error`` event (or error body) inside a 2xx answer."""
        body = redact(payload, self._api_key)
        error = body.get("error") if isinstance(body.get("error"), Mapping) else body
        kind = error.get("type")
        message = error.get("message")
        status = _ERROR_STATUS.get(kind) if isinstance(kind, str) else None
        if status is None:
            return self._payload_error(body, request_id)
        return self._make_status_error(
            status,
            redact(str(message), self._api_key) if message else f"Anthropic {kind}",
            kind,
            body,
            request_id,
        )

    def _bad_payload(self, detail: str, request_id: str | None) -> APIResponseError:
        return APIResponseError(
            f"unexpected response shape ({detail})", provider=self.id, request_id=request_id
        )

    # --- non-streaming --------------------------------------------------------------------

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Send ``request`` without streaming and return the whole answer.

        Raises:
            ProviderError: a subclass from :mod:`promptkit_async.errors` (see the class
                docstring).
        """
        payload, call, request_id = await self._post_json(
            self._endpoint, self.build_body(request, stream=False)
        )
        if not isinstance(payload, dict):
            raise APIResponseError(
                "the response is not a JSON object", provider=self.id, request_id=request_id
            )
        if payload.get("type") == "error" or "error" in payload:
            raise self._anthropic_error(payload, request_id)
        content_blocks = payload.get("content")
        if not isinstance(content_blocks, list):
            raise self._bad_payload("no content list", request_id)
        parts: list[str] = []
        calls: list[ToolCall] = []
        try:
            for block in content_blocks:
                kind = block.get("type")
                if kind == "text":
                    parts.append(block.get("text") or "")
                elif kind == "tool_use":
                    arguments = block.get("input")
                    calls.append(
                        ToolCall(
                            block["id"],
                            block["name"],
                            json.dumps(arguments, ensure_ascii=False)
                            if arguments is not None
                            else "{}",
                        )
                    )
        except (KeyError, TypeError, AttributeError) as exc:
            raise self._bad_payload(f"{type(exc).__name__}: {exc}", request_id) from None
        content = "".join(parts)
        counts = _UsageCounts()
        counts.update(payload.get("usage"))
        usage = counts.usage() if counts.seen else _estimate_usage(request.messages, content)
        stop = payload.get("stop_reason")
        return ProviderResponse(
            content=content,
            finish_reason=_STOP_REASONS.get(stop, stop)
            if stop
            else ("tool_calls" if calls else "stop"),
            usage=usage,
            cost=self.calculate_cost(usage),
            tool_calls=tuple(calls),
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
        (``tool_call_deltas``; each ``tool_use`` block is one call, indexed in order),
        then one last chunk with ``response``, ``usage`` and ``finish_reason``.

        Close the iterator if you stop early (``contextlib.aclosing``); that, or
        cancelling the consuming task, closes the HTTP response at once. Retries happen
        only before the first event arrives.

        Raises:
            ProviderError: see the class docstring.
        """
        events = self._post_events(self._endpoint, self.build_body(request, stream=True))
        parts: list[str] = []
        # block index -> tool index; tool index -> [id, name, [json fragments], start input]
        tool_of_block: dict[int, int] = {}
        calls: list[list[Any]] = []
        counts = _UsageCounts()
        stop_reason: str | None = None
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
                    try:
                        payload = loads(event.data)
                    except ValueError:
                        raise self._event_error(
                            event.data, events.request_id, events.ended
                        ) from None
                    if type(payload) is not dict:
                        raise self._event_error(event.data, events.request_id, False)
                    if raw is not None:
                        raw.append(payload)
                    kind = payload.get("type") or event.event
                    if kind == "content_block_delta":
                        delta = payload.get("delta") or {}
                        delta_kind = delta.get("type")
                        if delta_kind == "text_delta":
                            text = delta.get("text")
                            if text:
                                if first is None:
                                    first = time.perf_counter() - events.started
                                parts.append(text)
                                yield StreamChunk(delta=text)
                        elif delta_kind == "input_json_delta":
                            index = tool_of_block.get(payload.get("index", -1))
                            fragment = delta.get("partial_json")
                            if index is not None and fragment:
                                calls[index][2].append(fragment)
                                yield StreamChunk(
                                    tool_call_deltas=(ToolCallDelta(index, arguments=fragment),)
                                )
                        # thinking / signature / citations deltas are not part of the reply
                    elif kind == "content_block_start":
                        block = payload.get("content_block") or {}
                        block_kind = block.get("type")
                        if block_kind == "tool_use":
                            index = len(calls)
                            tool_of_block[payload.get("index", index)] = index
                            start_input = block.get("input")
                            calls.append([block.get("id"), block.get("name"), [], start_input])
                            if first is None:
                                first = time.perf_counter() - events.started
                            yield StreamChunk(
                                tool_call_deltas=(
                                    ToolCallDelta(index, block.get("id"), block.get("name")),
                                )
                            )
                        elif block_kind == "text" and block.get("text"):
                            if first is None:
                                first = time.perf_counter() - events.started
                            parts.append(block["text"])
                            yield StreamChunk(delta=block["text"])
                    elif kind == "message_start":
                        message = payload.get("message") or {}
                        response_id = message.get("id")
                        model = message.get("model")
                        counts.update(message.get("usage"))
                    elif kind == "message_delta":
                        reason = (payload.get("delta") or {}).get("stop_reason")
                        if reason:
                            stop_reason = reason
                        counts.update(payload.get("usage"))
                    elif kind == "message_stop":
                        done = True
                        events.expect_end(self.end_grace)
                        break
                    elif kind == "error":
                        raise self._anthropic_error(payload, events.request_id)
                    # ping, content_block_stop and unknown future events need nothing
        finally:
            await events.aclose()
        if not done:
            raise IncompleteStreamError(
                "the stream ended before the model finished (no message_stop event)",
                provider=self.id,
                request_id=events.request_id,
            )
        content = "".join(parts)
        usage = counts.usage() if counts.seen else _estimate_usage(request.messages, content)
        tool_calls = tuple(
            ToolCall(
                call_id or f"toolu_{i}",
                name or "",
                "".join(fragments) or (json.dumps(start, ensure_ascii=False) if start else "{}"),
            )
            for i, (call_id, name, fragments, start) in enumerate(calls)
        )
        finish = (
            _STOP_REASONS.get(stop_reason, stop_reason)
            if stop_reason
            else ("tool_calls" if tool_calls else "stop")
        )
        response = ProviderResponse(
            content=content,
            finish_reason=finish,
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
        yield StreamChunk(finish_reason=finish, usage=usage, response=response)
