"""The data that flows through a turn: messages, usage, cost, responses, chunks, results.

All of these are frozen dataclasses with slots: cheap to build, safe to share between tasks,
and impossible to corrupt after they were stored. Use :func:`dataclasses.replace` to derive a
changed copy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._media import image_media_type, image_size
from .errors import InvalidMessageError, InvalidRequestError, InvalidRoleError

__all__ = [
    "MAX_TOKEN_COUNT",
    "PART_TYPES",
    "ROLES",
    "AudioPart",
    "ContentPart",
    "Cost",
    "DocumentPart",
    "ExecutionResult",
    "ImageDetail",
    "ImagePart",
    "Message",
    "MessageContent",
    "ProviderResponse",
    "Role",
    "StreamChunk",
    "TextPart",
    "ThinkingPart",
    "ToolCall",
    "ToolCallDelta",
    "ToolDefinition",
    "TraceEvent",
    "Usage",
]

#: The largest token count a :class:`Usage` accepts: 2**53, exact as a float (so costs stay
#: exact) and far beyond any real call; a larger number is a broken answer, not usage.
MAX_TOKEN_COUNT = 2**53
_MAX_FLOAT = 1.7976931348623157e308

Role = Literal["system", "user", "assistant", "tool"]
#: Every role a :class:`Message` may have.
ROLES: frozenset[str] = frozenset(("system", "user", "assistant", "tool"))


class _EmptyMapping(Mapping[str, Any]):
    """A shared, immutable, hashable ``{}``: the default metadata of every message."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"


_EMPTY: Mapping[str, Any] = _EmptyMapping()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call requested by the model.

    Attributes:
        id: the provider's call id; the matching tool result carries it as ``tool_call_id``.
        name: the tool's name.
        arguments: the arguments as the JSON text the model produced (not parsed, so a
            malformed call round-trips unchanged and can be reported back to the model).
    """

    id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call; ``index`` says which call it extends."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """A tool the model may call: its name, description and JSON-schema parameters."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


ImageDetail = Literal["auto", "low", "high"]
_DETAILS = frozenset(("auto", "low", "high"))


def _check_source(kind: str, sources: tuple[object, ...], names: str) -> None:
    # Exactly one place the bytes come from; checked on construction so a stored part is
    # always usable.
    given = sum(source is not None for source in sources)
    if given != 1:
        raise InvalidMessageError(
            f"{kind} needs exactly one of {names} ({'none' if not given else 'several'} given)"
        )


def _check_str(kind: str, name: str, value: object, *, optional: bool = True) -> None:
    if (value is None and optional) or isinstance(value, str):
        return
    raise InvalidMessageError(f"{kind}.{name} must be a str, not {type(value).__name__}")


def _check_data(kind: str, data: object) -> None:
    if data is not None and type(data) is not bytes:
        raise InvalidMessageError(
            f"{kind}.data must be bytes, not {type(data).__name__} (decode base64 first)"
        )


def _binary_repr(part: object, names: tuple[str, ...]) -> str:
    # Never print megabytes of bytes: data shows as its length.
    fields = []
    for name in names:
        value = getattr(part, name)
        if value is None:
            continue
        shown = f"<{len(value)} bytes>" if name == "data" else repr(value)
        fields.append(f"{name}={shown}")
    return f"{type(part).__name__}({', '.join(fields)})"


@dataclass(frozen=True, slots=True)
class TextPart:
    """A piece of text in a message's content parts."""

    text: str

    def __post_init__(self) -> None:
        _check_str("TextPart", "text", self.text, optional=False)


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image, given by exactly one of: its bytes, a URL, a provider file id or a blob key.

    Attributes:
        data: the image file's bytes (PNG, JPEG, GIF or WebP).
        url: an ``https:`` (or ``data:``) URL the provider fetches itself.
        file_id: an id of a file already uploaded to the provider.
        blob_key: the key of the bytes in a user-provided blob store (see
            :class:`~promptkit_async.statestore.blobs.BlobOffloadStore`).
        media_type: ``"image/png"`` etc.; read from the bytes' header when not given.
        detail: OpenAI's ``"low"``/``"high"``/``"auto"`` (other providers ignore it).
        width / height: the size in pixels, for token counting of images whose bytes are
            not at hand (read from the bytes when they are).

    Raises:
        InvalidMessageError: no source or several, non-bytes data, an unknown detail, or
            bytes of an unrecognised format without a ``media_type``.
    """

    data: bytes | None = None
    url: str | None = None
    file_id: str | None = None
    blob_key: str | None = None
    media_type: str | None = None
    detail: ImageDetail | None = None
    width: int | None = None
    height: int | None = None

    def __repr__(self) -> str:
        return _binary_repr(
            self, ("data", "url", "file_id", "blob_key", "media_type", "detail", "width", "height")
        )

    def __post_init__(self) -> None:
        _check_source(
            "ImagePart",
            (self.data, self.url, self.file_id, self.blob_key),
            "data, url, file_id, blob_key",
        )
        _check_data("ImagePart", self.data)
        for name in ("url", "file_id", "blob_key", "media_type"):
            _check_str("ImagePart", name, getattr(self, name))
        if self.detail is not None and self.detail not in _DETAILS:
            raise InvalidMessageError(
                f"ImagePart.detail must be 'auto', 'low' or 'high', not {self.detail!r}"
            )
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value <= 0):
                raise InvalidMessageError(f"ImagePart.{name} must be a positive int")
        if self.data is not None and self.media_type is None:
            media_type = image_media_type(self.data)
            if media_type is None:
                raise InvalidMessageError(
                    "ImagePart.data is not a PNG, JPEG, GIF or WebP image; pass media_type"
                )
            object.__setattr__(self, "media_type", media_type)

    def size(self) -> tuple[int, int] | None:
        """``(width, height)``: as given, else read from the bytes; ``None`` if unknown."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        return image_size(self.data) if self.data is not None else None


@dataclass(frozen=True, slots=True)
class DocumentPart:
    """A document (typically a PDF), given by exactly one of: bytes, URL, file id, blob key.

    Attributes:
        data / url / file_id / blob_key: where the document is (see :class:`ImagePart`).
        media_type: ``"application/pdf"`` (default) or ``"text/plain"``.
        filename: the file's name (OpenAI's ``filename``, Anthropic's ``title``).

    Raises:
        InvalidMessageError: no source or several, or non-bytes data.
    """

    data: bytes | None = None
    url: str | None = None
    file_id: str | None = None
    blob_key: str | None = None
    media_type: str = "application/pdf"
    filename: str | None = None

    def __repr__(self) -> str:
        return _binary_repr(self, ("data", "url", "file_id", "blob_key", "media_type", "filename"))

    def __post_init__(self) -> None:
        _check_source(
            "DocumentPart",
            (self.data, self.url, self.file_id, self.blob_key),
            "data, url, file_id, blob_key",
        )
        _check_data("DocumentPart", self.data)
        for name in ("url", "file_id", "blob_key", "filename"):
            _check_str("DocumentPart", name, getattr(self, name))
        _check_str("DocumentPart", "media_type", self.media_type, optional=False)


@dataclass(frozen=True, slots=True)
class AudioPart:
    """An audio clip: its bytes (or a blob key) and format (``"wav"``, ``"mp3"``...).

    Raises:
        InvalidMessageError: neither or both of ``data`` and ``blob_key``, non-bytes
            data, or no format.
    """

    data: bytes | None = None
    format: str = "wav"
    blob_key: str | None = None

    def __repr__(self) -> str:
        return _binary_repr(self, ("data", "format", "blob_key"))

    def __post_init__(self) -> None:
        _check_source("AudioPart", (self.data, self.blob_key), "data, blob_key")
        _check_data("AudioPart", self.data)
        _check_str("AudioPart", "blob_key", self.blob_key)
        _check_str("AudioPart", "format", self.format, optional=False)
        if not self.format:
            raise InvalidMessageError("AudioPart.format is empty; say e.g. 'wav' or 'mp3'")


@dataclass(frozen=True, slots=True)
class ThinkingPart:
    """The model's reasoning, kept so it can be sent back (Anthropic requires it in tool loops).

    Attributes:
        text: the reasoning text (empty when redacted).
        signature: the provider's signature over ``text`` (Anthropic ``signature``, Gemini
            ``thoughtSignature``); replay sends it back unchanged.
        redacted: the opaque, encrypted reasoning of a redacted block (Anthropic
            ``redacted_thinking.data``, OpenAI ``encrypted_content``).
        provider: which provider wrote it (``"anthropic"``, ``"openai"``, ``"gemini"``);
            signatures are only valid for that provider, so others drop the part.
    """

    text: str = ""
    signature: str | None = None
    redacted: str | None = None
    provider: str | None = None

    def __post_init__(self) -> None:
        _check_str("ThinkingPart", "text", self.text, optional=False)
        for name in ("signature", "redacted", "provider"):
            _check_str("ThinkingPart", name, getattr(self, name))


#: Any content part of a :class:`Message`.
ContentPart = TextPart | ImagePart | DocumentPart | AudioPart | ThinkingPart
#: A message's content: text, or a sequence of parts.
MessageContent = str | Sequence[ContentPart]
#: The part classes (for ``isinstance`` checks).
PART_TYPES: tuple[type, ...] = (TextPart, ImagePart, DocumentPart, AudioPart, ThinkingPart)


def _tool_call(raw: object) -> ToolCall:
    # A dict in OpenAI's shape ({"id", "type": "function", "function": {"name",
    # "arguments"}}) or flat ({"id", "name", "arguments"}); arguments may be parsed JSON.
    if isinstance(raw, ToolCall):
        return raw
    if not isinstance(raw, Mapping):
        raise InvalidMessageError(
            f"a tool call must be a ToolCall or a dict, not {type(raw).__name__}"
        )
    kind = raw.get("type", "function")
    fn = raw.get("function", raw)
    if kind != "function" or not isinstance(fn, Mapping):
        raise InvalidMessageError(
            f"unsupported tool call {raw!r}: expected {{'id': ..., 'type': 'function', "
            "'function': {'name': ..., 'arguments': '...'}}"
        )
    call_id, name, arguments = raw.get("id"), fn.get("name"), fn.get("arguments", "{}")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise InvalidMessageError(
            f"a tool call needs a str 'id' and function 'name'; got id={call_id!r}, name={name!r}"
        )
    if not isinstance(arguments, str):
        try:
            arguments = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidMessageError(
                f"tool call {call_id!r} has arguments that are not JSON ({exc})"
            ) from None
    return ToolCall(call_id, name, arguments)


def _parts(content: object) -> str | tuple[ContentPart, ...]:
    # Off the hot path: only content that is not a plain str comes here.
    if content is None:
        return ""  # OpenAI's content=None (an assistant message that only calls tools)
    if isinstance(content, str):
        return content
    if isinstance(content, (bytes, bytearray, Mapping)) or not isinstance(content, Iterable):
        raise InvalidMessageError(
            f"message content must be str or a sequence of content parts, not "
            f"{type(content).__name__}"
        )
    parts: list[ContentPart] = []
    for part in content:
        if isinstance(part, PART_TYPES):
            parts.append(part)  # type: ignore[arg-type]
        elif isinstance(part, str):
            parts.append(TextPart(part))
        else:
            hint = (
                "; to import provider-format dicts use Message.from_openai / from_anthropic"
                if isinstance(part, Mapping)
                else ""
            )
            raise InvalidMessageError(
                "content parts must be TextPart, ImagePart, DocumentPart, AudioPart or "
                f"ThinkingPart, not {type(part).__name__}{hint}"
            )
    return tuple(parts) if parts else ""


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation.

    Attributes:
        role: ``"system"``, ``"user"``, ``"assistant"`` or ``"tool"``.
        content: the text (a ``str``), or a sequence of content parts (:class:`TextPart`,
            :class:`ImagePart`, :class:`DocumentPart`, :class:`AudioPart`,
            :class:`ThinkingPart`; plain strings in it become :class:`TextPart`), stored
            as a tuple. ``None`` and an empty sequence become ``""``. May be empty for an
            assistant message that only calls tools. :attr:`text` gives the text either way.
        tool_calls: on assistant messages, the tool calls the model asked for: ``ToolCall``
            objects, or dicts in OpenAI's shape (``{"id", "type": "function",
            "function": {"name", "arguments"}}``), which are converted.
        tool_call_id: on tool messages, the id of the call this message answers.
        name: optional participant or tool name.
        metadata: free-form JSON-serialisable data stored with the message (never sent to
            the model). Not part of equality or hashing.

    Text messages keep ``content`` a plain ``str``: parts cost nothing unless used.
    :meth:`from_openai` / :meth:`to_openai` and :meth:`from_anthropic_list` /
    :meth:`to_anthropic_list` convert from and to the providers' chat formats.

    Raises:
        InvalidRoleError: for a role outside :data:`ROLES`.
        InvalidMessageError: for content that is neither text nor parts, a malformed tool
            call, or a tool message with no ``tool_call_id``.
    """

    role: Role
    content: MessageContent = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    metadata: Mapping[str, Any] = field(default=_EMPTY, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidRoleError(
                f"unknown role {self.role!r}; use one of: assistant, system, tool, user"
            )
        if type(self.content) is not str:
            object.__setattr__(self, "content", _parts(self.content))
        if type(self.tool_calls) is not tuple:
            # Accept any sequence (a list is the natural thing to pass) but store a tuple,
            # so a stored message cannot be changed through the caller's list.
            calls: object = self.tool_calls
            if calls is None:
                object.__setattr__(self, "tool_calls", ())
            elif isinstance(calls, (str, bytes, Mapping)):
                raise InvalidMessageError("tool_calls must be a sequence of tool calls")
            else:
                object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        for call in self.tool_calls:
            if type(call) is not ToolCall:
                object.__setattr__(self, "tool_calls", tuple(map(_tool_call, self.tool_calls)))
                break
        if self.role == "tool" and not self.tool_call_id:
            raise InvalidMessageError("a tool message needs the tool_call_id it answers")

    @property
    def text(self) -> str:
        """The message's text: ``content`` itself, or its text parts joined."""
        content = self.content
        if isinstance(content, str):
            return content
        return "".join(p.text for p in content if isinstance(p, TextPart))

    @property
    def parts(self) -> tuple[ContentPart, ...]:
        """The content as parts (a text message is one :class:`TextPart`, or none if empty)."""
        content = self.content
        if isinstance(content, str):
            return (TextPart(content),) if content else ()
        return tuple(content)

    # --- provider formats (see promptkit_async._interop for the mapping) ------------------

    @classmethod
    def from_openai(cls, message: Mapping[str, Any]) -> Message:
        """A message from a dict in the OpenAI chat format (``content=None`` accepted).

        Raises:
            InvalidMessageError: a shape the format does not have; the error names it.
        """
        from ._interop import from_openai

        return from_openai(message)

    def to_openai(self) -> dict[str, Any]:
        """This message as a dict in the OpenAI chat format (the mapping: ``_interop``)."""
        from ._interop import to_openai

        return to_openai(self)

    @classmethod
    def from_openai_list(cls, messages: Iterable[Mapping[str, Any]]) -> list[Message]:
        """:meth:`from_openai` for a whole history."""
        from ._interop import from_openai

        return [from_openai(m) for m in messages]

    @staticmethod
    def to_openai_list(messages: Iterable[Message]) -> list[dict[str, Any]]:
        """:meth:`to_openai` for a whole history."""
        from ._interop import to_openai

        return [to_openai(m) for m in messages]

    @classmethod
    def from_anthropic(cls, message: Mapping[str, Any]) -> Message:
        """A message from one Anthropic ``messages`` entry that maps to one message.

        Raises:
            InvalidMessageError: a malformed entry, or one that holds tool results next
                to other blocks (use :meth:`from_anthropic_list`, which splits it).
        """
        from ._interop import from_anthropic

        out = from_anthropic([message])
        if len(out) != 1:
            raise InvalidMessageError(
                "this Anthropic message holds several tool results or other blocks beside "
                "them; use Message.from_anthropic_list, which splits it"
            )
        return out[0]

    def to_anthropic(self) -> dict[str, Any]:
        """This message as one Anthropic ``messages`` entry (a tool result is a user entry).

        Raises:
            InvalidMessageError: for a system message (Anthropic takes the system prompt
                apart; use :meth:`to_anthropic_list`).
        """
        from ._interop import to_anthropic

        request = to_anthropic([self])
        if "system" in request:
            raise InvalidMessageError(
                "Anthropic takes system prompts apart from the messages; use "
                "Message.to_anthropic_list"
            )
        entry: dict[str, Any] = request["messages"][0]
        return entry

    @classmethod
    def from_anthropic_list(
        cls, messages: Iterable[Mapping[str, Any]], *, system: str | Sequence[Any] | None = None
    ) -> list[Message]:
        """A history from Anthropic's ``messages`` (and ``system``) request fields."""
        from ._interop import from_anthropic

        return from_anthropic(messages, system=system)

    @staticmethod
    def to_anthropic_list(messages: Iterable[Message]) -> dict[str, Any]:
        """``{"system": ..., "messages": [...]}`` for Anthropic's Messages API.

        ``system`` is left out when there is no system message.
        """
        from ._interop import to_anthropic

        return to_anthropic(messages)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one provider call (or the sum of several).

    ``prompt_tokens`` counts every input token, including ``cached_tokens`` (read from the
    provider's prompt cache) and ``cache_write_tokens`` (written to it).
    ``completion_tokens`` counts every output token, including ``reasoning_tokens`` (the
    model's thinking, as OpenAI's ``completion_tokens_details.reasoning_tokens`` and
    Gemini's ``thoughtsTokenCount`` report it; Anthropic bills thinking inside its output
    tokens without counting it apart, so it stays 0 there). Reasoning is billed as output:
    :func:`~promptkit_async.pricing.calculate_cost` prices it at the output rate as part
    of ``completion_tokens``, never a second time. ``estimated`` is true when the numbers
    were computed locally rather than reported by the provider (for example for a
    cancelled stream). ``reasoning_tokens`` comes last so positional construction keeps
    its meaning.

    Raises:
        InvalidRequestError: a count that is not an ``int`` (``bool`` and ``float``
            included), negative, or above :data:`MAX_TOKEN_COUNT`.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        p, c, t = self.prompt_tokens, self.completion_tokens, self.total_tokens
        r, w, z = self.cached_tokens, self.cache_write_tokens, self.reasoning_tokens
        # A few type checks and one range check: this runs for every response and sum.
        if not (
            type(p) is int
            and type(c) is int
            and type(t) is int
            and type(r) is int
            and type(w) is int
            and type(z) is int
            and 0 <= p | c | t | r | w | z <= MAX_TOKEN_COUNT
        ):
            _bad_counts(self)
        if not t and (p or c):
            object.__setattr__(self, "total_tokens", p + c)

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.estimated or other.estimated,
            self.reasoning_tokens + other.reasoning_tokens,
        )


@dataclass(frozen=True, slots=True)
class Cost:
    """Cost of a call in US dollars, from :mod:`promptkit_async.pricing`.

    ``input_cost`` covers uncached input tokens, ``cached_cost`` cache reads,
    ``cache_write_cost`` cache writes. ``priced`` is false when the model has no known
    price (all figures are then zero).

    Raises:
        InvalidRequestError: a figure that is negative, infinite, NaN or not a number.
    """

    input_cost: float = 0.0
    output_cost: float = 0.0
    cached_cost: float = 0.0
    cache_write_cost: float = 0.0
    total_cost: float = 0.0
    priced: bool = True

    def __post_init__(self) -> None:
        try:
            valid = (
                0.0 <= self.input_cost <= _MAX_FLOAT
                and 0.0 <= self.output_cost <= _MAX_FLOAT
                and 0.0 <= self.cached_cost <= _MAX_FLOAT
                and 0.0 <= self.cache_write_cost <= _MAX_FLOAT
                and 0.0 <= self.total_cost <= _MAX_FLOAT
            )
        except TypeError:
            valid = False
        if not valid:
            raise InvalidRequestError(
                f"a Cost needs finite, non-negative numbers of dollars; got {self!r}"
            )

    def __add__(self, other: Cost) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        return Cost(
            self.input_cost + other.input_cost,
            self.output_cost + other.output_cost,
            self.cached_cost + other.cached_cost,
            self.cache_write_cost + other.cache_write_cost,
            self.total_cost + other.total_cost,
            self.priced and other.priced,
        )


def _bad_counts(usage: Usage) -> None:
    """Raise for the first count of ``usage`` that is not a valid token count."""
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    ):
        value = getattr(usage, name)
        if type(value) is not int or not 0 <= value <= MAX_TOKEN_COUNT:
            raise InvalidRequestError(
                f"Usage.{name} must be an int between 0 and {MAX_TOKEN_COUNT}, "
                f"not {type(value).__name__} {value!r}"
            )


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """Something notable that happened during a turn (a retry, a trim, a fallback)."""

    kind: str
    detail: Mapping[str, Any] = field(default=_EMPTY)


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    """A provider's complete answer to one request, in the library's one shape.

    Attributes:
        content: the assistant's text.
        finish_reason: normalised to ``"stop"``, ``"length"``, ``"tool_calls"``,
            ``"content_filter"`` or the provider's own word.
        usage: token usage as reported by the provider.
        cost: what the call cost, priced by the provider's pricing.
        tool_calls: tool calls the model asked for.
        thinking: the model's reasoning as :class:`ThinkingPart` objects, in the order
            the model produced them (Anthropic ``thinking`` / ``redacted_thinking``
            blocks with their signatures, Gemini thought summaries and thought
            signatures); empty when the model returned none. Not part of ``content``.
        model: the model that answered (as the provider reported it).
        response_id: the provider's id for the response.
        request_id: the provider's request id header.
        latency: seconds from sending the request to the last byte.
        time_to_first_chunk: seconds to the first streamed chunk (``None`` if not streamed).
        trace: retries and other events of this call.
        raw: the provider's raw payload, only with ``include_raw_output=True``.
        parsed: with a ``response_format``, the answer parsed and checked: a pydantic
            model instance for a model, else the JSON value (``None`` without a format,
            and for an answer that calls tools).
    """

    content: str = ""
    role: Literal["assistant"] = "assistant"
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: Cost = field(default_factory=Cost)
    tool_calls: tuple[ToolCall, ...] = ()
    thinking: tuple[ThinkingPart, ...] = ()
    model: str | None = None
    response_id: str | None = None
    request_id: str | None = None
    latency: float = 0.0
    time_to_first_chunk: float | None = None
    trace: tuple[TraceEvent, ...] = ()
    raw: Any = None
    parsed: Any = None

    def to_message(self) -> Message:
        """The assistant message this response adds to a conversation.

        Its ``content`` is the text (a ``str``), or, when the model returned reasoning,
        the :class:`ThinkingPart` objects followed by the text as a :class:`TextPart`,
        so the reasoning is stored and replayed with the message (Anthropic requires it
        back in a tool loop; each provider sends only its own).
        """
        thinking = self.thinking
        if not thinking:
            return Message("assistant", self.content, self.tool_calls)
        parts: tuple[ContentPart, ...] = (
            (*thinking, TextPart(self.content)) if self.content else thinking
        )
        return Message("assistant", parts, self.tool_calls)


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """What a pipeline turn produced.

    Attributes:
        session_id: the session the turn ran in.
        response: the model's final response of the turn.
        cost: the turn's total cost (summed over every provider call of a tool loop).
        usage: the turn's total usage (likewise summed).
        messages: the messages the turn added to the session, oldest first: the input
            message, any tool-call and tool-result messages, then the reply.
        latency: seconds the whole turn took, middleware and storage included.
        trace: events of the turn (retries, trims, summaries, fallbacks).
        metadata: what middleware left in ``ctx.metadata``.
        estimated_prompt_tokens: the local token estimate of what was sent, when a
            middleware computed one (compare with ``usage.prompt_tokens``).
        turn_id: the turn's idempotency key: the caller's ``turn_id=``, or the one
            ``StateMiddleware`` generated over a store with session leases (else
            ``None``).
            Retrying with it never stores the turn twice.
        replayed: ``True`` when the turn had already been stored under ``turn_id``: the
            stored reply was returned, the model was not called and nothing was stored
            (``usage`` and ``cost`` are then zero).
    """

    session_id: str
    response: ProviderResponse
    cost: Cost
    usage: Usage
    messages: tuple[Message, ...]
    latency: float = 0.0
    trace: tuple[TraceEvent, ...] = ()
    metadata: Mapping[str, Any] = field(default=_EMPTY)
    estimated_prompt_tokens: int | None = None
    turn_id: str | None = None
    replayed: bool = False

    @property
    def parsed(self) -> Any:
        """With a ``response_format``, the final answer parsed (``response.parsed``): a
        pydantic model instance for a model, else the JSON value; otherwise ``None``."""
        return self.response.parsed


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One piece of a streamed turn.

    Every chunk but the last carries text in ``delta``, tool-call fragments, or a piece
    of the model's reasoning in ``thinking`` (reasoning models stream it before the
    answer; it is not part of the reply's text, and the whole of it is on the final
    response's ``thinking``). The provider's last chunk carries ``response``; the
    pipeline's last chunk carries ``finish_reason``, ``usage`` and ``final_result``, and
    arrives only once the turn has been stored.
    """

    delta: str = ""
    tool_call_deltas: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    response: ProviderResponse | None = None
    final_result: ExecutionResult | None = None
    thinking: str = ""
