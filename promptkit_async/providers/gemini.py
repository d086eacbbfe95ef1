"""Google's Gemini API: ``generateContent`` and ``streamGenerateContent`` (server-sent events).

::

    async with GeminiProvider("gemini-2.5-flash") as provider:
        response = await provider.complete(ProviderRequest([Message("user", "Hi")]))
        # key from GOOGLE_API_KEY or GEMINI_API_KEY

Requests go to ``{base_url}/{api_version}/models/{model}:generateContent`` (or
``:streamGenerateContent?alt=sse``) with the key in the ``x-goog-api-key`` header, never
in the URL (URLs end up in logs and exceptions).

How the library's one shape maps onto the Gemini API:

* system messages become ``systemInstruction`` (several joined with a blank line); user
  messages are ``user`` contents, assistant messages ``model`` contents; consecutive
  contents of one role are merged;
* tool calls are ``functionCall`` parts and tool results ``functionResponse`` parts
  (``{"name": ..., "response": {"result": <the tool message text>}}``) of a ``user``
  content, all results of one round in one content;
* Gemini usually gives calls no id, so the provider makes one up per call,
  ``gemini_<responseId>_<n>``; such ids are never sent back, the function name pairs a
  result with its call. An id Gemini did send is kept and sent back. A call's
  ``thoughtSignature`` (Gemini 3 rejects a replayed call without it) travels inside the
  call id after ``~sig~``, so a stored tool round replays exactly as Gemini sent it. For
  Gemini 3 models, a replayed call that has no signature (a history from another provider)
  gets Google's documented ``skip_thought_signature_validator`` placeholder;
* tools are ``functionDeclarations`` with their JSON schema as ``parametersJsonSchema``
  (full JSON Schema, unlike the OpenAPI subset of ``parameters``); ``tool_choice`` maps
  to ``toolConfig.functionCallingConfig`` (``auto`` → AUTO, ``none`` → NONE,
  ``required`` → ANY, a name → ANY limited to that function);
* ``generationConfig``: ``maxOutputTokens``, ``temperature``, ``topP``,
  ``stopSequences``, ``seed``; ``extra_body`` is merged into the body, one level deep
  for objects (so ``{"generationConfig": {"thinkingConfig": ...}}`` keeps the rest);
* usage: ``prompt_tokens`` = ``promptTokenCount`` + ``toolUsePromptTokenCount``,
  ``cached_tokens`` = ``cachedContentTokenCount`` (part of the prompt),
  ``completion_tokens`` = ``candidatesTokenCount`` + ``thoughtsTokenCount``: thinking
  tokens are billed as output, so they count (and are priced) as completion tokens;
* ``finishReason``: ``STOP`` → ``"stop"`` (``"tool_calls"`` when the answer calls
  tools), ``MAX_TOKENS`` → ``"length"``, ``SAFETY`` / ``RECITATION`` / ``BLOCKLIST`` /
  ``PROHIBITED_CONTENT`` / ``SPII`` / image-safety reasons and a blocked prompt →
  ``"content_filter"``, anything else lower-cased (``"malformed_function_call"``...).

Content parts: text as ``text`` parts; bytes (an image, a document, audio) as
``inlineData`` (``mimeType`` and base64 ``data``; a ``data:`` URL likewise); a URL or a
provider file id as ``fileData`` (``fileUri``, and ``mimeType`` when known; a Files API
name such as ``files/abc`` becomes its full URI). Audio formats: wav, mp3, aiff, aac,
ogg, flac. System messages and tool results take text only; an unknown audio format,
media in those, or bytes still in a blob store raise
:class:`~promptkit_async.errors.UnsupportedContentError` / ``InvalidMessageError``
before any request is sent.

Reasoning: thought summaries (parts marked ``thought``, sent when
``generationConfig.thinkingConfig.includeThoughts`` is on) are not part of the reply's
text; they become the reply's :class:`~promptkit_async.types.ThinkingPart` objects
(``provider="gemini"``, consecutive pieces joined, a ``thoughtSignature`` closing one),
first in the assistant message, and go back as ``thought`` parts with their signatures.
Streamed, each thought's text also arrives in the chunks' ``thinking``.
A signature on a reply's text part is kept as a text-less ``ThinkingPart`` and goes back
on the text; one that arrives on an empty part after the calls of a tool-calling answer
(as streamed answers may send it) belongs to the first call and travels in its id (see
above). ``thoughtsTokenCount`` is ``Usage.reasoning_tokens``. A streamed chunk has the
same shape as a whole answer, so one reader serves both; each chunk is checked
(``candidates`` a list, ``parts`` objects, text a string, int token counts) before any
of its text is passed on.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast
from urllib.parse import quote

import httpx
from typing_extensions import Unpack

from .._interop import unresolved
from ..errors import (
    APIStatusError,
    AuthenticationError,
    InvalidRequestError,
    UnsupportedContentError,
)
from ..types import (
    MAX_TOKEN_COUNT,
    AudioPart,
    ContentPart,
    DocumentPart,
    ImagePart,
    Message,
    StreamChunk,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from ._shape import ShapeError, optional_str, token_count
from ._wire import (
    ProviderOptions,
    Turn,
    WireProvider,
    WireReader,
    arguments_object,
    conversation_turns,
    declaration,
    json_text,
    text_only,
    wire_settings,
)
from .base import ProviderRequest

__all__ = ["GeminiProvider"]

_SYNTHETIC = "gemini_"  # prefix of the call ids made up here (never sent to Gemini)
_SIGNATURE = "~sig~"  # separates a call id from its thought signature (base64 has no "~")
#: Google's documented placeholder for a replayed call that has no signature.
_SKIP_SIGNATURE = "skip_thought_signature_validator"
_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
#: AudioPart formats and the MIME types Gemini takes them as.
_AUDIO_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mp3",
    "aiff": "audio/aiff",
    "aac": "audio/aac",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
}
_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
#: GenerationConfig fields → generationConfig's names.
_SETTING_KEYS = {
    "max_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "stop": "stopSequences",
    "seed": "seed",
}


def _finish(reason: str) -> str | None:
    if reason in _FINISH:
        return _FINISH[reason]
    if reason in _FILTERED:
        return "content_filter"
    if reason == "FINISH_REASON_UNSPECIFIED":
        return None
    return reason.lower()


def _split_id(call_id: str) -> tuple[str, str]:
    """A call id's own part and the thought signature carried with it ("" if none)."""
    base, _, signature = call_id.partition(_SIGNATURE)
    return base, signature


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _is_result(part: dict[str, Any]) -> bool:
    return "functionResponse" in part


def _tool_config(choice: str) -> dict[str, Any]:
    mode = _MODES.get(choice)
    if mode is not None:
        return {"functionCallingConfig": {"mode": mode}}
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice]}}


_COUNTS = (
    "promptTokenCount",
    "toolUsePromptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "totalTokenCount",
    "cachedContentTokenCount",
)


def _counts(meta: Any) -> tuple[int, int, int, int, int]:
    """(prompt, completion, total, cached, thoughts) from ``usageMetadata``, checked.

    Every chunk carries the (cumulative) usage, so this is on the hot path: the checks
    are inline and the :class:`Usage` is built once, from the last counts.
    """
    if type(meta) is not dict:
        raise ShapeError(f"usageMetadata is {type(meta).__name__}, not an object")
    get = meta.get
    prompt = get("promptTokenCount") or 0
    tool = get("toolUsePromptTokenCount") or 0
    output = get("candidatesTokenCount") or 0
    thoughts = get("thoughtsTokenCount") or 0
    total = get("totalTokenCount") or 0
    cached = get("cachedContentTokenCount") or 0
    if not (
        type(prompt) is int
        and type(tool) is int
        and type(output) is int
        and type(thoughts) is int
        and type(total) is int
        and type(cached) is int
        and 0 <= prompt | tool | output | thoughts | total | cached <= MAX_TOKEN_COUNT
    ):
        for key in _COUNTS:
            token_count(meta, key)  # raises, naming the count
        raise ShapeError(f"a usageMetadata count is out of range: {meta!r}")
    prompt += tool
    output += thoughts
    return prompt, output, total or prompt + output, cached, thoughts


def _deep_update(body: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        current = body.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            body[key] = {**current, **value}
        else:
            body[key] = value


class _Reader(WireReader):
    """Reads ``GenerateContentResponse`` payloads: each streamed chunk, or the whole answer.

    Calls are numbered in arrival order; one without an id gets
    ``gemini_<responseId>_<n>``.
    """

    __slots__ = ("_first_signed", "_key", "_made", "_signature", "_thoughts", "_usage")
    incomplete = "the stream ended before the model finished (no finishReason)"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._key: str | None = None
        self._made = 0  # calls read so far
        self._usage: tuple[int, int, int, int, int] | None = None
        # Thought summaries: [text pieces, signature] each; a signature closes one.
        self._thoughts: list[list[Any]] | None = None
        # A signature on a reply part that is not a call: (signature, came with text).
        self._signature: tuple[str, bool] | None = None
        self._first_signed = False  # the first call carried its own signature

    def _reasoning(self, part: dict[str, Any], piece: Any) -> bool:
        """Keep a thought or a signature; true for a thought (not part of the reply)."""
        signature = optional_str(part.get("thoughtSignature"), "thoughtSignature")
        if not part.get("thought"):
            if signature:
                self._signature = signature, bool(piece)
            return False
        if piece is not None and type(piece) is not str:
            raise ShapeError(f"a thought part's text is {type(piece).__name__}")
        thoughts = self._thoughts
        if thoughts is None:
            thoughts = self._thoughts = []
        if thoughts and thoughts[-1][1] is None:
            entry = thoughts[-1]  # a streamed thought goes on until a signature ends it
        else:
            entry = [[], None]
            thoughts.append(entry)
        if piece:
            entry[0].append(piece)
        if signature:
            entry[1] = signature
        return True

    def _call(self, part: dict[str, Any], index: int) -> ToolCallDelta:
        call = part["functionCall"]
        if type(call) is not dict:
            raise ShapeError(f"functionCall is {type(call).__name__}, not an object")
        name = optional_str(call.get("name"), "functionCall.name")
        if not name:
            raise ShapeError("a functionCall has no name")
        args = call.get("args")
        if args is not None and type(args) is not dict:
            raise ShapeError(f"functionCall.args is {type(args).__name__}, not an object")
        call_id = optional_str(call.get("id"), "functionCall.id")
        if not call_id:
            if self._key is None:
                self._key = self.response_id or secrets.token_hex(8)
            call_id = f"{_SYNTHETIC}{self._key}_{index}"
        signature = optional_str(part.get("thoughtSignature"), "thoughtSignature")
        if signature:
            call_id = f"{call_id}{_SIGNATURE}{signature}"
            if index == 0:
                self._first_signed = True
        return ToolCallDelta(index, call_id, name, json_text(args))

    def feed(self, kind: str, payload: dict[str, Any]) -> StreamChunk | None:
        if "error" in payload:
            raise self.provider._payload_error(payload, self.request_id())
        if self.response_id is None:
            self.note_ids(payload, "responseId", "modelVersion")
        meta = payload.get("usageMetadata")
        if meta:
            self._usage = _counts(meta)  # cumulative: the last one is the total
        candidates = payload.get("candidates")
        if not candidates:
            feedback = payload.get("promptFeedback")
            if feedback:
                if type(feedback) is not dict:
                    raise ShapeError("promptFeedback is not an object")
                if feedback.get("blockReason") and not self.complete:
                    self.finish = "content_filter"
                    self._finished()
            return None
        if type(candidates) is not list:
            raise ShapeError(f"candidates is {type(candidates).__name__}, not a list")
        candidate = candidates[0]
        if type(candidate) is not dict:
            raise ShapeError("candidates[0] is not an object")
        content = candidate.get("content")
        if content is None:
            parts: Any = ()
        elif type(content) is not dict:
            raise ShapeError(f"candidates[0].content is {type(content).__name__}")
        else:
            parts = content.get("parts")
            if parts is None:
                parts = ()
            elif type(parts) is not list:
                raise ShapeError("candidates[0].content.parts is not a list")
        text = ""
        thinking = None
        calls: list[ToolCallDelta] | None = None
        for part in parts:
            if type(part) is not dict:
                raise ShapeError("a part is not an object")
            piece = part.get("text")
            if piece is None or len(part) > 1:
                # Not a plain text part: a call, a thought, a signature, or another kind.
                if "functionCall" in part:
                    if calls is None:
                        calls = []
                    calls.append(self._call(part, self._made))
                    self._made += 1
                    continue
                if ("thoughtSignature" in part or part.get("thought")) and self._reasoning(
                    part, piece
                ):
                    if piece:  # streamed apart from the text (chunks' ``thinking``)
                        thinking = thinking + piece if thinking else piece
                    continue
            if piece:
                if type(piece) is not str:
                    raise ShapeError(f"a part's text is {type(piece).__name__}")
                text = text + piece if text else piece
        reason = candidate.get("finishReason")
        if reason is not None and type(reason) is not str:
            raise ShapeError(f"finishReason is {type(reason).__name__}, not a string")
        chunk = self.emit(text, tuple(calls) if calls else None, thinking)
        if reason and not self.complete:
            self.finish = _finish(reason)
            self._finished()
        return chunk

    def _finished(self) -> None:
        # The answer is complete: read on (a later chunk may carry usage), but only
        # briefly to the body's end.
        self.complete = True
        if self.events is not None:
            self.events.expect_end(self.provider.end_grace)

    def parse(self, payload: dict[str, Any]) -> None:
        self.feed("", payload)
        self.complete = True

    def tool_calls(self) -> tuple[ToolCall, ...]:
        calls = super().tool_calls()
        signature = self._signature
        if signature is not None and not signature[1] and calls and not self._first_signed:
            # A streamed tool-calling answer may send the signature of its first call
            # on an empty part after the calls: it goes back on that call.
            first = calls[0]
            calls = (replace(first, id=f"{first.id}{_SIGNATURE}{signature[0]}"), *calls[1:])
        return calls

    def response(self, request_id: str | None, trace: Sequence[Any], raw: Any) -> Any:
        if self._usage is not None:
            prompt, output, total, cached, thoughts = self._usage
            self.usage = Usage(prompt, output, total, cached, reasoning_tokens=thoughts)
        if self.calls and self.finish in (None, "stop"):
            self.finish = "tool_calls"
        if self._thoughts is not None or self._signature is not None:
            self._keep_reasoning()
        return super().response(request_id, trace, raw)

    def _keep_reasoning(self) -> None:
        thinking = [
            ThinkingPart("".join(pieces), signature, provider="gemini")
            for pieces, signature in self._thoughts or ()
            if pieces or signature  # an empty thought part carries nothing
        ]
        signature = self._signature
        if signature is not None and (signature[1] or not self.calls or self._first_signed):
            # The reply text's signature: a text-less part, sent back on the text.
            thinking.append(ThinkingPart("", signature[0], provider="gemini"))
        if thinking:
            self.thinking = thinking


class GeminiProvider(WireProvider):
    """A provider for the Gemini API (see the module docstring for the mapping).

    ``GeminiProvider("gemini-2.5-flash")`` reads the key from ``GOOGLE_API_KEY``, else
    ``GEMINI_API_KEY`` (the official SDK's order), or ``api_key_env`` when given; it is
    sent as ``x-goog-api-key``, never in URLs. The model may also be a ``"models/..."`` or
    ``"tunedModels/..."`` name. Every option of
    :class:`~promptkit_async.providers._wire.WireProvider` applies (the default
    ``base_url`` is ``https://generativelanguage.googleapis.com``). A 400 for an invalid
    API key is an ``AuthenticationError``; an error object inside the stream maps by its
    ``code``.

    Args:
        api_version: the API version path segment (default ``"v1beta"``).
    """

    kind = "gemini"
    reader = _Reader
    default_base_url = "https://generativelanguage.googleapis.com"
    default_api_key_env = "GEMINI_API_KEY"
    extra_api_key_envs = ("GOOGLE_API_KEY",)
    request_id_headers = ("x-request-id", "x-goog-request-id")

    def __init__(
        self,
        *args: str | None,
        api_version: str = "v1beta",
        **options: Unpack[ProviderOptions],
    ) -> None:
        super().__init__(*args, **options)
        if not api_version or "/" in api_version:
            raise InvalidRequestError(f"api_version must be like 'v1beta', got {api_version!r}")
        model = self.model
        path = model if "/" in model else f"models/{model}"
        root = f"{self.base_url}/{api_version}/{quote(path, safe='/')}"
        self._files_root = f"{self.base_url}/{api_version}"
        self._endpoint = httpx.URL(f"{root}:generateContent")
        self._stream_endpoint = httpx.URL(f"{root}:streamGenerateContent", params={"alt": "sse"})
        # Gemini 3 rejects replayed function calls without a thought signature.
        self._needs_signature = "gemini-3" in model

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    def _url(self, stream: bool) -> httpx.URL:
        return self._stream_endpoint if stream else self._endpoint

    # --- request --------------------------------------------------------------------------

    def _contents(self, messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
        names: dict[str, str] = {}  # call id -> function name, for results without a name

        def turn(message: Message) -> Turn:
            if message.role == "tool":
                return "user", [self._result(message, names)]
            parts: list[dict[str, Any]] = []
            content = message.content
            model = message.role == "assistant"
            if type(content) is str:  # the common case, checked without a call
                if content:
                    parts.append({"text": content})
                if not model:
                    return "user", parts
                signature = None
            else:
                content = cast("Sequence[ContentPart]", content)
                signature = self._parts(content, model, parts)  # None for a user message
                if not model:
                    return "user", parts
            for position, call in enumerate(message.tool_calls):
                names[call.id] = call.name
                parts.append(self._call_part(call, position))
            if signature:
                # A signature Gemini sent on an empty part, with no text to carry it:
                # an empty part again, after the calls, as Gemini itself sends it.
                parts.append({"text": "", "thoughtSignature": signature})
            return "model", parts

        system, turns = conversation_turns(messages, turn, _is_result, provider="Gemini")
        return system, [{"role": role, "parts": parts} for role, parts in turns]

    @staticmethod
    def _result(message: Message, names: Mapping[str, str]) -> dict[str, Any]:
        call_id = message.tool_call_id or ""
        name = message.name or names.get(call_id)
        if not name:
            raise InvalidRequestError(
                f"the tool message answering {call_id!r} has no name and no earlier "
                "assistant message made that call; Gemini pairs results with calls "
                "by function name, so set Message.name to the tool's name"
            )
        base, _ = _split_id(call_id)
        result = text_only(message, "Gemini")
        response: dict[str, Any] = {"name": name, "response": {"result": result}}
        if base and not base.startswith(_SYNTHETIC):
            response["id"] = base
        return {"functionResponse": response}

    def _parts(
        self, content: Sequence[ContentPart], model: bool, out: list[dict[str, Any]]
    ) -> str | None:
        """A message's parts as Gemini parts, appended to ``out``.

        Gemini's own thoughts go back (in model turns) as ``thought`` parts with their
        signatures; a text-less signature goes back on the message's last text part, or
        is returned when the message has no text.
        """
        signature: str | None = None
        text: dict[str, Any] | None = None
        for part in content:
            if isinstance(part, TextPart):
                if part.text:
                    text = {"text": part.text}
                    out.append(text)
            elif isinstance(part, ThinkingPart):
                if not model or part.provider != "gemini":
                    continue  # another provider's reasoning means nothing to Gemini
                if not part.text:
                    signature = part.signature or signature
                    continue
                thought: dict[str, Any] = {"text": part.text, "thought": True}
                if part.signature:
                    thought["thoughtSignature"] = part.signature
                out.append(thought)
            else:
                out.append(self._media(part))
        if signature and text is not None:
            text["thoughtSignature"] = signature
            return None
        return signature

    def _media(self, part: ImagePart | DocumentPart | AudioPart) -> dict[str, Any]:
        """An image, document or audio part as ``inlineData`` or ``fileData``."""
        if isinstance(part, AudioPart):
            if part.data is None:
                raise unresolved(part)
            media_type = _AUDIO_TYPES.get(part.format)
            if media_type is None:
                raise UnsupportedContentError(
                    f"Gemini takes audio as {', '.join(_AUDIO_TYPES)}, not {part.format!r}; "
                    "convert the clip first"
                )
            return {"inlineData": {"mimeType": media_type, "data": _b64(part.data)}}
        if part.data is not None:
            return {"inlineData": {"mimeType": part.media_type, "data": _b64(part.data)}}
        uri = part.url if part.url is not None else part.file_id
        if uri is None:
            raise unresolved(part)
        if uri.startswith("data:"):
            head, comma, encoded = uri[5:].partition(",")
            if not comma or not head.endswith(";base64"):
                raise UnsupportedContentError(
                    "Gemini takes data: URLs only base64-encoded (data:<type>;base64,...)"
                )
            return {"inlineData": {"mimeType": head[: -len(";base64")], "data": encoded}}
        if part.file_id is not None and "://" not in uri:
            uri = f"{self._files_root}/{uri}"  # a Files API name ("files/abc") to its URI
        file: dict[str, Any] = {"fileUri": uri}
        if part.media_type is not None:
            file["mimeType"] = part.media_type
        return {"fileData": file}

    def _call_part(self, call: ToolCall, position: int) -> dict[str, Any]:
        base, signature = _split_id(call.id)
        function: dict[str, Any] = {"name": call.name, "args": arguments_object(call.arguments)}
        if base and not base.startswith(_SYNTHETIC):
            function["id"] = base
        part: dict[str, Any] = {"functionCall": function}
        if signature:
            part["thoughtSignature"] = signature
        elif position == 0 and self._needs_signature:
            part["thoughtSignature"] = _SKIP_SIGNATURE
        return part

    def build_body(self, request: ProviderRequest, *, stream: bool = False) -> dict[str, Any]:
        """The ``generateContent`` request body for ``request`` (the same for streaming).

        Generation settings the request leaves unset fall back to the provider's
        ``generation``; a ``response_format`` sets ``generationConfig.responseMimeType``
        to ``application/json`` and, with a schema, ``responseJsonSchema`` (the schema as
        given); ``extra_body`` is merged last, one level deep, and wins.

        Raises:
            InvalidRequestError: no user or assistant message to send, or a tool result
                whose function name cannot be known.
        """
        system, contents = self._contents(request.messages)
        if not contents:
            raise InvalidRequestError(
                "the request has no user or assistant message with content; add at least one"
            )
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        settings = self._settings(request)
        config = wire_settings(settings, _SETTING_KEYS)
        fmt = settings.format if settings.response_format is not None else None
        if fmt is not None:
            # responseJsonSchema takes full JSON Schema ($defs, $ref, anyOf...), unlike
            # the OpenAPI subset of responseSchema, so pydantic's schemas go as they are.
            config["responseMimeType"] = "application/json"
            if fmt.schema is not None:
                config["responseJsonSchema"] = fmt.schema
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [
                {
                    "functionDeclarations": [
                        declaration(t, "parametersJsonSchema") for t in request.tools
                    ]
                }
            ]
            if request.tool_choice:
                body["toolConfig"] = _tool_config(request.tool_choice)
        if settings.extra_body:
            _deep_update(body, settings.extra_body)
        return body

    # --- errors -----------------------------------------------------------------------------

    def _make_status_error(
        self, status: int, message: str, code: object, body: Any, *args: Any, **kwargs: Any
    ) -> APIStatusError:
        error = super()._make_status_error(status, message, code, body, *args, **kwargs)
        # Gemini answers a wrong key with 400 INVALID_ARGUMENT and reason API_KEY_INVALID:
        # report it as the authentication problem it is.
        if status != 400 or "API_KEY_INVALID" not in json.dumps(body):
            return error
        if not self._api_key:
            message += " (no API key was configured: pass api_key= or set GOOGLE_API_KEY)"
        return AuthenticationError(
            message,
            status_code=status,
            provider=self.id,
            request_id=error.request_id,
            body=error.body,
            retry_after=error.retry_after,
        )
