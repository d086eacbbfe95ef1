"""OpenAI Chat Completions, and every server that speaks it (Ollama, vLLM, Groq...).

::

    async with OpenAIProvider("gpt-4o-mini") as provider:   # key from OPENAI_API_KEY
        response = await provider.complete(ProviderRequest([Message("user", "Hi")]))

    local = OpenAIProvider("llama3.2", name="ollama", base_url="http://localhost:11434/v1")

Streaming uses server-sent events with ``stream_options.include_usage`` so the last chunk
carries the real token usage; each chunk's text and tool-call fragments are yielded as
they arrive (checked first: ``choices`` a list, ``delta`` an object, ``content`` a
string...), and the final chunk carries the assembled
:class:`~promptkit_async.types.ProviderResponse`. The request/response loop, retries,
timeouts and error mapping are shared (:mod:`promptkit_async.providers._wire`).

Content parts go out as Chat Completions content parts (the mapping of
:meth:`Message.to_openai <promptkit_async.types.Message.to_openai>`): text as ``text``,
an image as ``image_url`` (its URL, or a ``data:`` URL of its bytes, with ``detail``),
audio as ``input_audio`` (wav or mp3), a document as ``file`` (``file_data`` as a
``data:`` URL with a ``filename``, ``document.pdf`` when none is given, or ``file_id``).
Only user messages take media; system, assistant and tool messages go out as their text.
A part the API cannot take (an image by ``file_id``, a document by URL, another audio
format, media outside a user message, bytes still in a blob store) raises
:class:`~promptkit_async.errors.UnsupportedContentError` (or ``InvalidMessageError``
for a blob) before any request is sent.

Reasoning: OpenAI's Chat Completions returns no reasoning text, only its token count
(``usage.completion_tokens_details.reasoning_tokens`` → ``Usage.reasoning_tokens``,
inside ``completion_tokens`` and priced as output). Compatible servers that do return
it (DeepSeek, vLLM, Ollama, OpenRouter: ``reasoning_content``, or ``reasoning``, beside
``content`` in each delta or in the message) have it streamed in the chunks'
``thinking`` and kept on ``ProviderResponse.thinking`` as one :class:`ThinkingPart`
(``provider="openai"``, no signature), so it is stored with the turn. It is not sent
back: a :class:`ThinkingPart` in the history is left out of the request (DeepSeek
refuses reasoning sent back, and a signature from another provider means nothing here).
A ``reasoning_content`` that is not a string is an
:class:`~promptkit_async.errors.APIResponseError`; a ``reasoning`` field of another type
(some servers use the name for an object) is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from typing_extensions import Unpack

from .._interop import openai_part
from .._structured import ResponseFormat, ResponseFormatLike
from ..errors import InvalidRequestError
from ..types import (
    ContentPart,
    Message,
    ProviderResponse,
    StreamChunk,
    ThinkingPart,
    ToolCallDelta,
    ToolDefinition,
    Usage,
)
from ._shape import ShapeError, optional_str, token_count
from ._wire import (
    ProviderOptions,
    WireProvider,
    WireReader,
    declaration,
    text_only,
    wire_settings,
)
from .base import ProviderRequest

__all__ = ["OpenAIProvider"]

_OPENAI_HOST = "api.openai.com"
_FINISH_REASONS = {"function_call": "tool_calls"}
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
# stream_options.include_usage: the last chunk carries the real token usage.
_STREAM_FIELDS = {"stream": True, "stream_options": {"include_usage": True}}


def _parts(parts: Sequence[ContentPart]) -> list[dict[str, Any]] | str:
    """A user message's parts as content parts (thinking left out)."""
    out = []
    for part in parts:
        wire = openai_part(part)
        if wire is None:
            continue
        if wire["type"] == "file" and "file_data" in wire["file"]:
            # The API wants a name with inline file data.
            wire["file"].setdefault("filename", "document.pdf")
        out.append(wire)
    return out or ""


def _message(message: Message) -> dict[str, Any]:
    role = message.role
    content: Any = message.content
    if type(content) is not str:
        content = _parts(content) if role == "user" else text_only(message, "OpenAI chat")
    if role == "tool":
        return {"role": "tool", "content": content, "tool_call_id": message.tool_call_id}
    out: dict[str, Any] = {"role": role, "content": content}
    if message.tool_calls and role == "assistant":
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
        if not content:
            out["content"] = None  # what the API itself returns for a tool-call-only turn
    if message.name:
        out["name"] = message.name
    return out


def _tool(tool: ToolDefinition) -> dict[str, Any]:
    return {"type": "function", "function": declaration(tool, "parameters")}


def _tool_choice(choice: str) -> Any:
    if choice in _TOOL_CHOICES:
        return choice
    return {"type": "function", "function": {"name": choice}}


def _response_format(value: ResponseFormatLike) -> dict[str, Any]:
    """``response_format``: Structured Outputs (``json_schema``), or JSON mode without a
    schema (OpenAI then requires the word "JSON" somewhere in the messages)."""
    fmt = ResponseFormat.coerce(value)  # already one: GenerationConfig normalised it
    if fmt.wire_schema is None:
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.wire_schema, "strict": fmt.strict}
    if fmt.description:
        spec["description"] = fmt.description
    return {"type": "json_schema", "json_schema": spec}


def _usage(data: Any) -> Usage:
    if type(data) is not dict:
        raise ShapeError(f"usage is {type(data).__name__}, not an object")
    details = data.get("prompt_tokens_details")
    output = data.get("completion_tokens_details")
    return Usage(
        prompt_tokens=token_count(data, "prompt_tokens"),
        completion_tokens=token_count(data, "completion_tokens"),
        total_tokens=token_count(data, "total_tokens"),
        cached_tokens=token_count(details, "cached_tokens") if type(details) is dict else 0,
        reasoning_tokens=token_count(output, "reasoning_tokens") if type(output) is dict else 0,
    )


def _finish(reason: Any) -> str | None:
    if not reason:
        return None
    if type(reason) is not str:
        raise ShapeError(f"finish_reason is {type(reason).__name__}, not a string")
    return _FINISH_REASONS.get(reason, reason)


def _reasoning(fields: dict[str, Any], where: str) -> str | None:
    """The reasoning text of a delta or message, from a compatible server (see above)."""
    text = fields.get("reasoning_content")
    if text is None:
        text = fields.get("reasoning")
        return text if type(text) is str else None
    if type(text) is not str:
        raise ShapeError(f"{where}.reasoning_content is {type(text).__name__}, not a string")
    return text


def _first_choice(payload: dict[str, Any]) -> dict[str, Any] | None:
    choices = payload.get("choices")
    if not choices:
        return None
    if type(choices) is not list:
        raise ShapeError(f"choices is {type(choices).__name__}, not a list")
    choice = choices[0]
    if type(choice) is not dict:
        raise ShapeError(f"choices[0] is {type(choice).__name__}, not an object")
    return choice


def _tool_deltas(fragments: Any) -> tuple[ToolCallDelta, ...]:
    """``delta.tool_calls`` (streamed fragments) or ``message.tool_calls`` (whole calls)."""
    if type(fragments) is not list:
        raise ShapeError(f"tool_calls is {type(fragments).__name__}, not a list")
    deltas = []
    for position, fragment in enumerate(fragments):
        if type(fragment) is not dict:
            raise ShapeError(f"tool_calls[{position}] is not an object")
        index = fragment.get("index", position)
        if type(index) is not int or index < 0:
            raise ShapeError(f"tool_calls[{position}].index is {index!r}, not an int >= 0")
        function = fragment.get("function") or {}
        if type(function) is not dict:
            raise ShapeError(f"tool_calls[{position}].function is not an object")
        deltas.append(
            ToolCallDelta(
                index,
                optional_str(fragment.get("id"), "a tool call's id"),
                optional_str(function.get("name"), "a tool call's name"),
                optional_str(function.get("arguments"), "a tool call's arguments") or "",
            )
        )
    return tuple(deltas)


def _message_text(message: dict[str, Any], where: str) -> str | None:
    text = message.get("content") or message.get("refusal")
    if text and type(text) is not str:
        raise ShapeError(f"{where}.content is {type(text).__name__}, not a string")
    return text


class _Reader(WireReader):
    """Reads Chat Completions chunks (``choices[0].delta``) or a whole completion."""

    __slots__ = ("_reasoning",)
    incomplete = "the stream ended before the model finished (no finish_reason, no [DONE])"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reasoning: list[str] | None = None  # a compatible server's reasoning text

    def _think(self, text: str) -> None:
        if self._reasoning is None:
            self._reasoning = []
        self._reasoning.append(text)

    def _head(self, payload: dict[str, Any]) -> None:
        if payload.get("error"):
            raise self.provider._payload_error(payload, self.request_id())
        if self.response_id is None:
            self.note_ids(payload, "id", "model")
        usage = payload.get("usage")
        if usage:
            self.usage = _usage(usage)

    def feed(self, kind: str, payload: dict[str, Any]) -> StreamChunk | None:
        # The per-chunk hot path: the checks are inline (one call per chunk, to emit).
        if kind == "error" and "error" not in payload:
            payload = {"error": payload}
        if payload.get("error") or payload.get("usage") or self.response_id is None:
            self._head(payload)
        choices = payload.get("choices")
        if not choices:
            return None  # a usage-only chunk
        if type(choices) is not list:
            raise ShapeError(f"choices is {type(choices).__name__}, not a list")
        choice = choices[0]
        if type(choice) is not dict:
            raise ShapeError(f"choices[0] is {type(choice).__name__}, not an object")
        if choice.get("index", 0) != 0:
            return None  # only the first choice is assembled
        reason = choice.get("finish_reason")
        if reason:
            self.finish = _finish(reason)
            self.complete = True
        delta = choice.get("delta")
        if not delta:
            return None
        if type(delta) is not dict:
            raise ShapeError(f"choices[0].delta is {type(delta).__name__}, not an object")
        text = delta.get("content") or delta.get("refusal")
        if text and type(text) is not str:
            raise ShapeError(f"choices[0].delta.content is {type(text).__name__}, not a string")
        thought = None
        if "reasoning_content" in delta or "reasoning" in delta:
            thought = _reasoning(delta, "choices[0].delta")
            if thought:
                self._think(thought)
        fragments = delta.get("tool_calls")
        return self.emit(text, _tool_deltas(fragments) if fragments else None, thought)

    def parse(self, payload: dict[str, Any]) -> None:
        self._head(payload)
        choice = _first_choice(payload)
        if choice is None:
            raise ShapeError("no choices")
        message = choice.get("message") or {}
        if type(message) is not dict:
            raise ShapeError(f"choices[0].message is {type(message).__name__}, not an object")
        content = message.get("content")
        if content:
            if type(content) is not str:
                raise ShapeError(f"choices[0].message.content is {type(content).__name__}")
            self.parts.append(content)
        refusal = optional_str(message.get("refusal"), "choices[0].message.refusal")
        if refusal:
            self.parts.append(refusal)
        thought = _reasoning(message, "choices[0].message")
        if thought:
            self._think(thought)
        calls = message.get("tool_calls")
        if calls:
            deltas = _tool_deltas(calls)
            if not all(d.name for d in deltas):
                raise ShapeError("a tool call in choices[0].message has no function name")
            self.add_calls(deltas)
        self.finish = _finish(choice.get("finish_reason"))
        self.complete = True

    def response(self, request_id: str | None, trace: Sequence[Any], raw: Any) -> ProviderResponse:
        if self._reasoning:
            self.thinking = [ThinkingPart("".join(self._reasoning), provider="openai")]
        return super().response(request_id, trace, raw)


class OpenAIProvider(WireProvider):
    """A provider for the OpenAI Chat Completions API and compatible servers.

    ``OpenAIProvider("gpt-4o-mini")`` reads the key from ``OPENAI_API_KEY`` and the API
    root from ``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``); without a key
    no ``Authorization`` header is sent (for local servers). Every option of
    :class:`~promptkit_async.providers._wire.WireProvider` applies (``name``,
    ``api_key``, ``generation``, ``pricing``, ``include_raw_output``, the HTTP options,
    the errors and the concurrency rules); ``default_headers`` can carry
    ``OpenAI-Organization``.

    Args:
        max_tokens_field: the body field carrying ``max_tokens``: by default
            ``"max_completion_tokens"`` for api.openai.com (required by reasoning models)
            and ``"max_tokens"`` for other servers.
    """

    kind = "openai"
    reader = _Reader
    end_sentinel = "[DONE]"
    default_base_url = "https://api.openai.com/v1"
    default_api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    request_id_headers = ("x-request-id",)

    def __init__(
        self,
        *args: str | None,
        max_tokens_field: str | None = None,
        **options: Unpack[ProviderOptions],
    ) -> None:
        super().__init__(*args, **options)
        if max_tokens_field is None:
            official = httpx.URL(self.base_url).host == _OPENAI_HOST
            max_tokens_field = "max_completion_tokens" if official else "max_tokens"
        self.max_tokens_field = max_tokens_field
        self._setting_keys = {
            "max_tokens": max_tokens_field,
            "temperature": "temperature",
            "top_p": "top_p",
            "stop": "stop",
            "seed": "seed",
        }
        self._endpoint = httpx.URL(f"{self.base_url}/chat/completions")

    def _url(self, stream: bool) -> httpx.URL:
        return self._endpoint

    def build_body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        """The Chat Completions request body for ``request`` (what is sent, as a dict).

        Generation settings the request leaves unset fall back to the provider's
        ``generation``; a ``response_format`` goes out as ``response_format``
        (``json_schema`` with the strict form of the schema, or ``json_object`` for
        ``"json"``); ``extra_body`` is merged last and wins.

        Raises:
            InvalidRequestError: no messages.
        """
        if not request.messages:
            raise InvalidRequestError("the request has no messages; add at least one")
        settings = self._settings(request)
        body = wire_settings(settings, self._setting_keys)
        body["model"] = self.model
        body["messages"] = [_message(m) for m in request.messages]
        tools, choice = request.tools, request.tool_choice
        if tools:
            body["tools"] = [_tool(t) for t in tools]
        if choice:
            body["tool_choice"] = _tool_choice(choice)
        if settings.response_format is not None:  # one attribute check when unused
            body["response_format"] = _response_format(settings.response_format)
        if stream:
            body.update(_STREAM_FIELDS)
        return {**body, **settings.extra_body} if settings.extra_body else body
