"""The data that flows through a turn: messages, usage, cost, responses, chunks, results.

All of these are frozen dataclasses with slots: cheap to build, safe to share between tasks,
and impossible to corrupt after they were stored. Use :func:`dataclasses.replace` to derive a
changed copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import InvalidMessageError, InvalidRequestError, InvalidRoleError

__all__ = [
    "MAX_TOKEN_COUNT",
    "ROLES",
    "Cost",
    "ExecutionResult",
    "Message",
    "ProviderResponse",
    "Role",
    "StreamChunk",
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


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation.

    Attributes:
        role: ``"system"``, ``"user"``, ``"assistant"`` or ``"tool"``.
        content: the text. May be empty for an assistant message that only calls tools.
        tool_calls: on assistant messages, the tool calls the model asked for.
        tool_call_id: on tool messages, the id of the call this message answers.
        name: optional participant or tool name.
        metadata: free-form JSON-serialisable data stored with the message (never sent to
            the model). Not part of equality or hashing.

    Raises:
        InvalidRoleError: for a role outside :data:`ROLES`.
        InvalidMessageError: for a non-string content, or a tool message with no
            ``tool_call_id``.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    metadata: Mapping[str, Any] = field(default=_EMPTY, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidRoleError(
                f"unknown role {self.role!r}; use one of: assistant, system, tool, user"
            )
        if not isinstance(self.content, str):
            raise InvalidMessageError(
                f"message content must be str, not {type(self.content).__name__}"
            )
        if type(self.tool_calls) is not tuple:
            # Accept any sequence (a list is the natural thing to pass) but store a tuple,
            # so a stored message cannot be changed through the caller's list.
            object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if self.role == "tool" and not self.tool_call_id:
            raise InvalidMessageError("a tool message needs the tool_call_id it answers")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one provider call (or the sum of several).

    ``prompt_tokens`` counts every input token, including ``cached_tokens`` (read from the
    provider's prompt cache) and ``cache_write_tokens`` (written to it). ``estimated`` is
    true when the numbers were computed locally rather than reported by the provider (for
    example for a cancelled stream).

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

    def __post_init__(self) -> None:
        p, c, t = self.prompt_tokens, self.completion_tokens, self.total_tokens
        r, w = self.cached_tokens, self.cache_write_tokens
        # A few type checks and one range check: this runs for every response and sum.
        if not (
            type(p) is int
            and type(c) is int
            and type(t) is int
            and type(r) is int
            and type(w) is int
            and 0 <= p | c | t | r | w <= MAX_TOKEN_COUNT
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
        model: the model that answered (as the provider reported it).
        response_id: the provider's id for the response.
        request_id: the provider's request id header.
        latency: seconds from sending the request to the last byte.
        time_to_first_chunk: seconds to the first streamed chunk (``None`` if not streamed).
        trace: retries and other events of this call.
        raw: the provider's raw payload, only with ``include_raw_output=True``.
    """

    content: str = ""
    role: Literal["assistant"] = "assistant"
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: Cost = field(default_factory=Cost)
    tool_calls: tuple[ToolCall, ...] = ()
    model: str | None = None
    response_id: str | None = None
    request_id: str | None = None
    latency: float = 0.0
    time_to_first_chunk: float | None = None
    trace: tuple[TraceEvent, ...] = ()
    raw: Any = None

    def to_message(self) -> Message:
        """The assistant message this response adds to a conversation."""
        return Message("assistant", self.content, self.tool_calls)


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


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One piece of a streamed turn.

    Every chunk but the last carries text in ``delta`` (or tool-call fragments). The
    provider's last chunk carries ``response``; the pipeline's last chunk carries
    ``finish_reason``, ``usage`` and ``final_result``, and arrives only once the turn has
    been stored.
    """

    delta: str = ""
    tool_call_deltas: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    response: ProviderResponse | None = None
    final_result: ExecutionResult | None = None
