"""Anthropic's Messages API (``POST /v1/messages``).

::

    async with AnthropicProvider("claude-sonnet-4-5") as provider:
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
* ``max_tokens`` is required by the API: the request's, else the provider's
  ``generation.max_tokens``, else :data:`DEFAULT_MAX_TOKENS`;
* ``temperature`` and ``top_p`` are not sent: the Messages API deprecated them (current
  models reject them with a 400 and the official SDK no longer has the fields). For an
  older model that still takes them, pass ``extra_body={"temperature": 0.2}``. ``seed``
  has no Anthropic equivalent and is not sent either;
* usage: ``prompt_tokens`` = input + cache reads + cache writes, ``cached_tokens`` = cache
  reads (``cache_read_input_tokens``), ``cache_write_tokens`` = cache writes
  (``cache_creation_input_tokens``), each priced at its own rate;
* a ``response_format`` goes out as ``output_config.format`` (structured outputs), or,
  with ``structured_output="tool"``, as a forced tool whose input is the answer (see
  :class:`AnthropicProvider`);
* ``stop_reason``: ``end_turn`` / ``stop_sequence`` → ``"stop"``, ``max_tokens`` /
  ``model_context_window_exceeded`` → ``"length"``, ``tool_use`` → ``"tool_calls"``,
  ``refusal`` → ``"content_filter"``, anything else as Anthropic says it.

Content parts go out as content blocks (the mapping of
:meth:`Message.to_anthropic_list <promptkit_async.types.Message.to_anthropic_list>`):
an image as an ``image`` block (``base64`` source for bytes: JPEG, PNG, GIF or WebP;
``url``; ``file`` for a Files API id), a document as a ``document`` block (a PDF as
``base64``, ``url`` or ``file``; ``text/plain`` bytes as a ``text`` source; the filename
as ``title``), also inside tool results. Audio, other image or document types, and bytes
still in a blob store raise :class:`~promptkit_async.errors.UnsupportedContentError` /
``InvalidMessageError`` before any request is sent. System messages take text only.

Extended thinking: ``thinking`` blocks (streamed as ``thinking_delta`` and
``signature_delta``) and ``redacted_thinking`` blocks become the reply's
:class:`~promptkit_async.types.ThinkingPart` objects (``text`` and ``signature``, or
``redacted`` data; ``provider="anthropic"``), in order, on ``ProviderResponse.thinking``
and first in the assistant message's parts (streamed, each ``thinking_delta`` also
arrives in a chunk's ``thinking``). An assistant message's thinking goes back
exactly as it came, ahead of its text and ``tool_use`` blocks, as the API requires in a
tool loop; thinking without a signature or written by another provider is left out (the
API would reject it), and thinking never goes out in a user turn. Enable thinking with
``extra_body={"thinking": {"type": "enabled", "budget_tokens": 2048}}``. Anthropic counts
thinking inside ``output_tokens`` without a separate figure, so ``Usage.reasoning_tokens``
stays 0 (the tokens are in ``completion_tokens`` and priced as output).

The API refuses ``tool_use`` / ``tool_result`` blocks in a request without ``tools``, so a
session holding tool rounds must keep being sent with its tools. Every event is checked
(objects where objects belong, strings for text and ids, int token counts) before its
text is passed on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import httpx
from typing_extensions import Unpack

from .._interop import anthropic_block
from .._structured import ResponseFormat, ResponseFormatLike
from ..errors import ConfigurationError, InvalidRequestError, ProviderError
from ..types import (
    MAX_TOKEN_COUNT,
    ContentPart,
    Message,
    StreamChunk,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from . import _wire
from ._http import redact
from ._shape import ShapeError, object_at, optional_str
from ._wire import ProviderOptions, WireProvider, WireReader
from .base import ProviderRequest

__all__ = ["ANTHROPIC_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicProvider"]

logger = logging.getLogger("promptkit_async.providers")

#: The ``anthropic-version`` header sent with every request.
ANTHROPIC_VERSION = "2023-06-01"
#: ``max_tokens`` when neither the request nor the provider's ``generation`` set one (the API
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


def _part_blocks(parts: Sequence[ContentPart], assistant: bool) -> list[dict[str, Any]]:
    """A message's parts as content blocks, in order."""
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, ThinkingPart):
            # Only the API's own signed thinking goes back, and only in assistant turns.
            if not assistant or (part.signature is None and part.redacted is None):
                continue
        elif isinstance(part, TextPart) and not part.text:
            continue  # the API rejects empty text blocks
        block = anthropic_block(part)
        if block is not None:
            blocks.append(block)
    return blocks


def _blocks(message: Message) -> list[dict[str, Any]]:
    """The content blocks one message contributes to its turn."""
    role = message.role
    content = message.content
    plain = type(content) is str  # the common case, checked without a call
    if role == "tool":
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if not plain:
            block["content"] = _part_blocks(cast("Sequence[ContentPart]", content), False)
        elif content:
            block["content"] = content
        return [block]
    blocks: list[dict[str, Any]]
    if not plain:
        blocks = _part_blocks(cast("Sequence[ContentPart]", content), role == "assistant")
    elif content:  # the API rejects empty text blocks
        blocks = [{"type": "text", "text": content}]
    else:
        blocks = []
    if role == "assistant":
        for call in message.tool_calls:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": _wire.arguments_object(call.arguments),
                }
            )
    return blocks


def _turn(message: Message) -> _wire.Turn:
    return ("assistant" if message.role == "assistant" else "user"), _blocks(message)


def _is_result(block: dict[str, Any]) -> bool:
    return block["type"] == "tool_result"  # type: ignore[no-any-return]


def _turns(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """The ``system`` text and the alternating user/assistant turns for ``messages``."""
    system, turns = _wire.conversation_turns(messages, _turn, _is_result, provider="Anthropic")
    out: list[dict[str, Any]] = []
    for role, content in turns:
        if len(content) == 1 and content[0]["type"] == "text":
            out.append({"role": role, "content": content[0]["text"]})  # a lone text, plain
        else:
            out.append({"role": role, "content": content})
    return system, out


def _tool_choice(choice: str) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    return {"type": "tool", "name": choice}


def _answer_tool(body: dict[str, Any], value: ResponseFormatLike, choice: str | None) -> None:
    """The forced-tool mapping: the answer is the input of a tool named after the format.

    The tool is added to the request's tools; ``tool_choice`` forces it when the model
    has no other tool to call (or was asked not to), else ``any``: call one of the
    user's tools, or answer.
    """
    fmt = ResponseFormat.coerce(value)
    schema = fmt.schema if fmt.schema is not None else {"type": "object"}
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        raise InvalidRequestError(
            "structured_output='tool' sends the format as a tool's input_schema, which "
            "must be an object schema; wrap the value in an object, or use the native "
            "structured outputs (structured_output='native')"
        )
    tools: list[dict[str, Any]] = body.get("tools", [])
    if any(t["name"] == fmt.name for t in tools):
        raise InvalidRequestError(
            f"a tool is named {fmt.name!r}, like the response format's answer tool; "
            "give the format another name: ResponseFormat(..., name='...')"
        )
    description = fmt.description or "Give your final answer by calling this tool."
    body["tools"] = [*tools, {"name": fmt.name, "description": description, "input_schema": schema}]
    if not tools or choice == "none":
        body["tool_choice"] = {"type": "tool", "name": fmt.name}
    elif choice in (None, "auto", "required"):
        body["tool_choice"] = {"type": "any"}
    # a choice naming one of the user's tools stands (ProviderMiddleware relaxes it after)


def _output_config(value: ResponseFormatLike) -> dict[str, Any]:
    """Structured outputs: ``output_config.format``, the model constrained to the schema."""
    fmt = ResponseFormat.coerce(value)  # already one: GenerationConfig normalised it
    if fmt.wire_schema is None:
        raise InvalidRequestError(
            "the Messages API has no schema-less JSON mode; give response_format a JSON "
            'schema (e.g. {"type": "object", "properties": {...}}) or a pydantic model'
        )
    return {"format": {"type": "json_schema", "schema": fmt.wire_schema}}


class _Reader(WireReader):
    """Reads Messages API events (``message_start``, ``content_block_*``,
    ``message_delta``, ``message_stop``, ``error``) or a whole message."""

    __slots__ = ("_blocks", "_counts", "_pending", "_seen", "_thoughts")
    incomplete = "the stream ended before the model finished (no message_stop event)"
    call_id_prefix = "toolu_"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._blocks: dict[Any, int] = {}  # content block index -> tool call index
        self._pending: dict[int, str] = {}  # tool call index -> input sent with its start
        # input, output, cache read, cache creation; message_delta's counts are
        # cumulative: a present value replaces the earlier one.
        self._counts = [0, 0, 0, 0]
        self._seen = False
        # content block index -> [thinking text pieces, signature, redacted data], in
        # block order; made into ThinkingParts once, in response().
        self._thoughts: dict[Any, list[Any]] | None = None

    def _thought(self, index: Any) -> list[Any]:
        thoughts = self._thoughts
        if thoughts is None:
            thoughts = self._thoughts = {}
        entry = thoughts.get(index)
        if entry is None:
            entry = thoughts[index] = [[], None, None]
        return entry

    def _thinking_block(self, block: dict[str, Any], index: Any) -> None:
        """A ``thinking`` or ``redacted_thinking`` block (whole, or the start of one)."""
        entry = self._thought(index)
        if block.get("type") == "redacted_thinking":
            data = optional_str(block.get("data"), "a redacted_thinking block's data")
            if data is None:
                raise ShapeError("a redacted_thinking block has no data")
            entry[2] = data
            return
        text = optional_str(block.get("thinking"), "a thinking block's thinking")
        if text:
            entry[0].append(text)
        entry[1] = optional_str(block.get("signature"), "a thinking block's signature") or None

    def _thinking_delta(
        self, payload: dict[str, Any], delta: dict[str, Any], kind: str
    ) -> str | None:
        """Keep a piece of a thinking block; its text, to stream (``None`` for none)."""
        entry = self._thought(payload.get("index", -1))
        if kind == "thinking_delta":
            text = optional_str(delta.get("thinking"), "a thinking_delta's thinking")
            if text:
                entry[0].append(text)
            return text
        signature = optional_str(delta.get("signature"), "a signature_delta's signature")
        entry[1] = (entry[1] or "") + signature if signature else entry[1]
        return None

    def _count(self, data: Any) -> None:
        if data is None:
            return
        if type(data) is not dict:
            raise ShapeError(f"usage is {type(data).__name__}, not an object")
        counts = self._counts
        for i, key in enumerate(_USAGE_KEYS):
            value = data.get(key)
            if value is not None:
                if type(value) is not int or not 0 <= value <= MAX_TOKEN_COUNT:
                    raise ShapeError(f"usage {key} is {value!r}, not a token count")
                counts[i] = value
        self._seen = True  # the Usage is built once, in response()

    def _call(self, block: dict[str, Any], index: int) -> ToolCallDelta:
        call_id = optional_str(block.get("id"), "a tool_use block's id")
        name = optional_str(block.get("name"), "a tool_use block's name")
        start = block.get("input")
        if start is not None and type(start) is not dict:
            raise ShapeError(f"a tool_use block's input is {type(start).__name__}")
        if start:
            self._pending[index] = _wire.json_text(start)
        return ToolCallDelta(index, call_id, name)

    def feed(self, kind: str, payload: dict[str, Any]) -> StreamChunk | None:
        kind = payload.get("type") or kind
        if kind == "content_block_delta":
            # The per-event hot path: checked inline (one call, to emit).
            delta = payload.get("delta")
            if type(delta) is not dict:
                delta = object_at(payload, "delta")  # {} for a missing delta, else raises
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                text = delta.get("text")
                if text is not None and type(text) is not str:
                    raise ShapeError(f"a text_delta's text is {type(text).__name__}")
                return self.emit(text)
            if delta_kind == "input_json_delta":
                index = self._blocks.get(payload.get("index", -1))
                fragment = optional_str(delta.get("partial_json"), "partial_json")
                if index is None or not fragment:
                    return None
                self._pending.pop(index, None)
                return self.emit(None, (ToolCallDelta(index, arguments=fragment),))
            if delta_kind == "thinking_delta" or delta_kind == "signature_delta":
                # Reasoning is kept for the response (and replay), and streamed apart
                # from the text (chunks' ``thinking``).
                return self.emit(None, None, self._thinking_delta(payload, delta, delta_kind))
            return None  # citations deltas are not part of the reply
        if kind == "content_block_start":
            block = object_at(payload, "content_block")
            block_kind = block.get("type")
            if block_kind == "tool_use":
                index = len(self._blocks)
                self._blocks[payload.get("index", index)] = index
                return self.emit(None, (self._call(block, index),))
            if block_kind == "text":
                return self.emit(optional_str(block.get("text"), "a text block's text"))
            if block_kind == "thinking" or block_kind == "redacted_thinking":
                self._thinking_block(block, payload.get("index", -1))
            return None
        if kind == "content_block_stop":
            index = self._blocks.get(payload.get("index", -1))
            start = self._pending.pop(index, None) if index is not None else None
            if start is None:
                return None
            # A tool_use whose whole input came with its start: stream it as arguments.
            return self.emit(None, (ToolCallDelta(index, arguments=start),))  # type: ignore[arg-type]
        if kind == "message_start":
            message = object_at(payload, "message")
            self.note_ids(message, "id", "model")
            self._count(message.get("usage"))
        elif kind == "message_delta":
            reason = optional_str(object_at(payload, "delta").get("stop_reason"), "stop_reason")
            if reason:
                self.finish = _STOP_REASONS.get(reason, reason)
            self._count(payload.get("usage"))
        elif kind == "message_stop":
            self.end()
        elif kind == "error":
            raise self.provider._anthropic_error(payload, self.request_id())  # type: ignore[attr-defined]
        # ping and unknown future events need nothing
        return None

    def parse(self, payload: dict[str, Any]) -> None:
        if payload.get("type") == "error" or "error" in payload:
            raise self.provider._anthropic_error(payload, self.request_id())  # type: ignore[attr-defined]
        blocks = payload.get("content")
        if type(blocks) is not list:
            raise ShapeError(f"content is {type(blocks).__name__}, not a list of blocks")
        for position, block in enumerate(blocks):
            if type(block) is not dict:
                raise ShapeError(f"content[{position}] is not an object")
            kind = block.get("type")
            if kind == "text":
                text = optional_str(block.get("text"), "a text block's text")
                if text:
                    self.parts.append(text)
            elif kind == "tool_use":
                index = len(self._blocks)
                self._blocks[position] = index
                call = self._call(block, index)
                if not call.id or not call.name:
                    raise ShapeError("a tool_use block has no id or name")
                self.add_calls((call,))
            elif kind == "thinking" or kind == "redacted_thinking":
                self._thinking_block(block, position)
        self._count(payload.get("usage"))
        self.note_ids(payload, "id", "model")
        reason = optional_str(payload.get("stop_reason"), "stop_reason")
        if reason:
            self.finish = _STOP_REASONS.get(reason, reason)
        self.complete = True

    def response(self, request_id: str | None, trace: Sequence[Any], raw: Any) -> Any:
        for index, start in self._pending.items():  # a start input never followed by a stop
            self.add_calls((ToolCallDelta(index, arguments=start),))
        self._pending.clear()
        if self._seen:
            fresh, output, read, write = self._counts
            prompt = fresh + read + write
            self.usage = Usage(prompt, output, prompt + output, read, write)
        if self._thoughts:
            self.thinking = [
                ThinkingPart(redacted=data, provider="anthropic")
                if data is not None
                else ThinkingPart("".join(pieces), signature, provider="anthropic")
                for pieces, signature, data in self._thoughts.values()
            ]
        return super().response(request_id, trace, raw)


class _AnswerToolReader(_Reader):
    """``structured_output="tool"``: the answer tool's input is the reply's text.

    Its streamed input fragments become text chunks (so the JSON streams as any answer
    does) and the call is left out of the response's tool calls.
    """

    __slots__ = ("_answer", "_answer_index", "_other_calls")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        value = self.request.generation.response_format or (
            self.provider.generation.response_format
        )
        self._answer = ResponseFormat.coerce(value).name if value is not None else None
        self._answer_index: int | None = None
        self._other_calls = False

    def feed(self, kind: str, payload: dict[str, Any]) -> StreamChunk | None:
        chunk = super().feed(kind, payload)
        if chunk is None or self._answer is None or not chunk.tool_call_deltas:
            return chunk
        text, others = "", []
        for delta in chunk.tool_call_deltas:
            if delta.name == self._answer and self._answer_index is None:
                self._answer_index = delta.index
            if delta.index == self._answer_index:
                text += delta.arguments
            else:
                others.append(delta)
                self._other_calls = self._other_calls or delta.name is not None
        if len(others) == len(chunk.tool_call_deltas):
            return chunk
        if text:
            self.parts.append(text)
        if not text and not others:
            return None
        return StreamChunk(delta=chunk.delta + text, tool_call_deltas=tuple(others))

    def parse(self, payload: dict[str, Any]) -> None:
        super().parse(payload)
        if self._answer is None:
            return
        for block in payload["content"]:
            if block.get("type") != "tool_use":
                continue
            if block.get("name") == self._answer:
                self.parts.append(_wire.json_text(block.get("input")))
            else:
                self._other_calls = True

    def tool_calls(self) -> tuple[ToolCall, ...]:
        calls = super().tool_calls()
        if self._answer is None:
            return calls
        return tuple(c for c in calls if c.name != self._answer)

    def response(self, request_id: str | None, trace: Sequence[Any], raw: Any) -> Any:
        if self._answer is not None and self.finish == "tool_calls" and not self._other_calls:
            self.finish = "stop"  # the only call was the answer
        return super().response(request_id, trace, raw)


# temperature / top_p / seed are never sent (see the module docstring).
_SETTING_KEYS = {"max_tokens": "max_tokens", "stop": "stop_sequences"}
_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


class AnthropicProvider(WireProvider):
    """A provider for Anthropic's Messages API (see the module docstring for the mapping).

    ``AnthropicProvider("claude-sonnet-4-5")`` reads the key from ``ANTHROPIC_API_KEY``
    (sent as ``x-api-key``) and the API root from ``ANTHROPIC_BASE_URL`` (default
    ``https://api.anthropic.com``; requests go to ``{base_url}/v1/messages``). Every
    option of :class:`~promptkit_async.providers._wire.WireProvider` applies; of
    ``generation`` only ``max_tokens``, ``stop`` and ``extra_body`` are sent (see the
    module docstring). ``default_headers`` can carry ``anthropic-beta``; an
    ``anthropic-version`` given there replaces :data:`ANTHROPIC_VERSION`. Retried
    statuses include 529 "overloaded"; an ``error`` event inside the stream maps by its
    type (``overloaded_error`` → ``InternalServerError`` with status 529,
    ``rate_limit_error`` → ``RateLimitError``...).

    Args:
        default_max_tokens: ``max_tokens`` when neither the request nor ``generation``
            set one (default :data:`DEFAULT_MAX_TOKENS`).
        structured_output: how a ``response_format`` is sent. ``"native"`` (default):
            structured outputs, ``output_config.format``, the model's text constrained
            to the schema. ``"tool"``: the classic forced tool call, for models without
            structured outputs: a tool named after the format (``ResponseFormat.name``;
            no tool of yours may have that name) whose ``input_schema`` is the schema
            (an object schema), forced when the request has no other tools, else
            ``tool_choice: any``; its input streams as the reply's text and the call
            itself never appears in ``tool_calls``. Not compatible with extended
            thinking, which refuses forced tool choices.
    """

    kind = "anthropic"
    reader = _Reader
    default_base_url = "https://api.anthropic.com"
    default_api_key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    request_id_headers = ("request-id", "x-request-id")

    def __init__(
        self,
        *args: str | None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        structured_output: Literal["native", "tool"] = "native",
        **options: Unpack[ProviderOptions],
    ) -> None:
        if default_max_tokens < 1:
            raise InvalidRequestError("default_max_tokens must be >= 1")
        if structured_output not in ("native", "tool"):
            raise ConfigurationError(
                f"structured_output must be 'native' or 'tool', got {structured_output!r}"
            )
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        headers.update(options.get("default_headers") or {})
        options["default_headers"] = headers
        super().__init__(*args, **options)
        self.default_max_tokens = default_max_tokens
        self.structured_output = structured_output
        if structured_output == "tool":
            # This instance reads answers with the answer-tool reader; others keep the
            # plain one (no per-event cost for them).
            self.reader = _AnswerToolReader  # type: ignore[misc]
        if self.generation.temperature is not None or self.generation.top_p is not None:
            logger.warning(
                "%s: generation temperature/top_p are not sent to the Messages API "
                "(deprecated there); use extra_body for a model that still takes them",
                self.id,
            )
        self._endpoint = httpx.URL(f"{self.base_url}/v1/messages")

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def _url(self, stream: bool) -> httpx.URL:
        return self._endpoint

    def build_body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        """The Messages API request body for ``request`` (what is sent, as a dict).

        ``max_tokens`` falls back to the provider's ``generation.max_tokens``, then
        ``default_max_tokens``; ``temperature`` / ``top_p`` / ``seed`` are never sent
        (see the module docstring); a ``response_format`` goes out as
        ``output_config.format`` (structured outputs; the strict form of the schema);
        ``extra_body`` is merged last and wins (e.g. ``{"metadata": ...}``; its
        ``output_config`` is merged with the format's).

        Raises:
            InvalidRequestError: no user or assistant message to send, or a
                ``response_format`` of ``"json"`` (the API needs a schema).
        """
        system, turns = _turns(request.messages)
        if not turns:
            raise InvalidRequestError(
                "the request has no user or assistant message with content; add at least one"
            )
        settings = self._settings(request)
        body = _wire.wire_settings(settings, _SETTING_KEYS)
        body.setdefault("max_tokens", self.default_max_tokens)
        body.update(model=self.model, messages=turns)
        if system:
            body["system"] = system
        tools = request.tools
        if tools:
            # tool_choice only goes with tools (the API rejects it alone).
            body["tools"] = [_wire.declaration(t, "input_schema") for t in tools]
            choice = request.tool_choice
            if choice:
                body["tool_choice"] = _tool_choice(choice)
        fmt = settings.response_format  # one attribute check when unused
        if fmt is not None:
            if self.structured_output == "native":
                body["output_config"] = _output_config(fmt)
            else:
                _answer_tool(body, fmt, request.tool_choice)
        if stream:
            body["stream"] = True
        extra = settings.extra_body
        if not extra:
            return body
        config = extra.get("output_config")
        if "output_config" in body and isinstance(config, Mapping):  # {"effort": ...}: keep both
            extra = {**extra, "output_config": {**body["output_config"], **config}}
        return {**body, **extra}

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
