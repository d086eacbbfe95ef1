"""The skeleton every wire-format provider shares; each format module keeps only its format.

A format module (``openai.py``, ``anthropic.py``, ``gemini.py``) subclasses
:class:`WireProvider` and says

* how a request is written: :meth:`WireProvider.build_body` and :meth:`WireProvider._url`;
* how an answer is read: a :class:`WireReader` subclass with ``feed`` (one streamed event's
  payload → at most one :class:`~promptkit_async.types.StreamChunk`) and ``parse`` (a
  whole non-streamed answer). The reader is also where the answer's shape is checked: a
  few ``type(...) is`` checks per payload, raising :class:`ShapeError`.

Everything else lives here once: the constructor's forms (``OpenAIProvider("gpt-4o-mini")``,
the tutorial's ``OpenAIProvider("openai", "gpt-4o-mini", key)``, keyword-only options),
merging generation settings with the provider's defaults, the streaming and non-streaming
loops, raw payload capture, first-chunk timing, tool-call assembly, usage estimates when a
server reports none, the final response, and turning any payload of the wrong shape into
:class:`~promptkit_async.errors.APIResponseError` (carrying the payload, redacted) before
any part of it reaches the caller.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import httpx
from typing_extensions import Unpack

from .._structured import ResponseFormat, with_parsed
from .._toolcalls import ToolCallAssembler
from ..errors import (
    APIResponseError,
    IncompleteStreamError,
    InvalidArgumentsError,
    UnsupportedContentError,
)
from ..types import (
    Message,
    ProviderResponse,
    StreamChunk,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolCallDelta,
    ToolDefinition,
    Usage,
)
from ._http import HTTPOptions, HTTPProvider, SSEStream, json_loads, redact
from ._shape import SHAPE_ERRORS, ShapeError, optional_str
from .base import (
    UNSET_GENERATION,
    GenerationConfig,
    ProviderIdentity,
    ProviderRequest,
    resolve_name,
)

__all__ = [
    "ProviderOptions",
    "Turn",
    "WireProvider",
    "WireReader",
    "arguments_object",
    "conversation_turns",
    "declaration",
    "estimate_usage",
    "json_text",
    "text_only",
    "wire_settings",
]


class ProviderOptions(HTTPOptions, ProviderIdentity, total=False):
    """The keyword options of every wire-format provider (see :class:`WireProvider`)."""

    model: str
    api_key: str | None
    include_raw_output: bool


def estimate_usage(messages: Sequence[Message], completion: str) -> Usage:
    """Usage for a server that reports none: ~4 characters per token, marked estimated."""
    prompt = sum((len(m.text) + 3) // 4 + 4 for m in messages)
    return Usage(prompt, (len(completion) + 3) // 4, estimated=True)


def arguments_object(arguments: str) -> dict[str, Any]:
    """A stored call's JSON arguments text as the object a request must carry.

    A malformed call was already answered with an error tool result, so ``{}`` keeps
    the history valid without inventing arguments.
    """
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


#: One turn of a request: the format's role name and its parts (blocks, parts...).
Turn = tuple[str, list[dict[str, Any]]]


def text_only(message: Message, provider: str) -> str:
    """The text of a message whose role takes only text at ``provider`` (thinking dropped).

    Raises:
        UnsupportedContentError: the message holds an image, document or audio part.
    """
    content = message.content
    if type(content) is str:
        return content
    for part in content:
        if not isinstance(part, (TextPart, ThinkingPart)):
            raise UnsupportedContentError(
                f"{provider} takes only text in {message.role} messages, and this one holds "
                f"{type(part).__name__}; put media in a user message (or describe it in text)"
            )
    return message.text


def conversation_turns(
    messages: Sequence[Message],
    convert: Callable[[Message], Turn],
    is_result: Callable[[dict[str, Any]], bool],
    user: str = "user",
    provider: str = "the provider",
) -> tuple[str, list[Turn]]:
    """The system text and the alternating turns for formats that need them (Anthropic,
    Gemini): system messages joined with a blank line; each other message ``convert``-ed
    to (role, parts), an empty one skipped; consecutive parts of one role merged into one
    turn, with tool results (``is_result``) first in ``user`` turns (they answer the
    previous turn's calls), each group in its order. System messages take text only
    (:class:`~promptkit_async.errors.UnsupportedContentError` names ``provider``).
    """
    system: list[str] = []
    turns: list[Turn] = []
    for message in messages:
        if message.role == "system":
            if message.content:
                system.append(text_only(message, provider))
            continue
        role, parts = convert(message)
        if not parts:
            continue  # an empty message: nothing the API would accept
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(parts)
        else:
            turns.append((role, list(parts)))
    for role, parts in turns:
        if role == user and len(parts) > 1:
            results = [p for p in parts if is_result(p)]
            if results and len(results) < len(parts):
                parts[:] = results + [p for p in parts if not is_result(p)]
    return "\n\n".join(system), turns


def wire_settings(settings: GenerationConfig, keys: Mapping[str, str]) -> dict[str, Any]:
    """The generation settings that are set, under their wire names.

    ``keys`` maps a :class:`GenerationConfig` field (``max_tokens``, ``temperature``,
    ``top_p``, ``stop``, ``seed``) to the format's name for it; fields it leaves out are
    not sent. ``stop`` goes out as a list, and only when not empty.
    """
    out: dict[str, Any] = {}
    if settings is UNSET_GENERATION:
        return out  # the common case: nothing set anywhere
    for field, key in keys.items():
        value = getattr(settings, field)
        if value is not None:
            if field == "stop":
                if not value:
                    continue
                value = list(value)
            out[key] = value
    return out


def declaration(tool: ToolDefinition, schema_key: str) -> dict[str, Any]:
    """A tool's name, description (if any) and JSON schema under ``schema_key``."""
    out: dict[str, Any] = {"name": tool.name, schema_key: dict(tool.parameters)}
    if tool.description:
        out["description"] = tool.description
    return out


def json_text(value: Any) -> str:
    """A call's arguments object as the JSON text a :class:`ToolCall` carries."""
    return json.dumps(value, ensure_ascii=False) if value else "{}"


class WireReader:
    """One answer being read; a format module subclasses it with ``feed`` and ``parse``.

    The format's code fills in ``parts`` (via :meth:`emit` or directly), tool-call
    fragments (:meth:`emit` / :meth:`add_calls`), ``finish``, ``usage``, ``model``,
    ``response_id`` and ``thinking`` (the reply's reasoning, when there is any); sets
    ``complete`` once the answer is whole (else the stream ends in
    :class:`~promptkit_async.errors.IncompleteStreamError`) and calls :meth:`end` when no
    further event matters. One reader per call; used by one task.
    """

    __slots__ = (
        "_request_id",
        "calls",
        "complete",
        "done",
        "events",
        "finish",
        "first",
        "model",
        "parts",
        "provider",
        "request",
        "response_id",
        "started",
        "thinking",
        "usage",
    )

    #: The IncompleteStreamError message when the stream ends before ``complete``.
    incomplete: ClassVar[str] = "the stream ended before the model finished"
    #: Prefix of the ids made up for calls the server sent without one (``call_0``...).
    call_id_prefix: ClassVar[str] = "call_"

    def __init__(
        self,
        provider: WireProvider,
        request: ProviderRequest,
        started: float,
        events: SSEStream | None = None,
        request_id: str | None = None,
    ) -> None:
        self.provider, self.request, self.started = provider, request, started
        self.events, self._request_id = events, request_id
        self.parts: list[str] = []
        self.calls: ToolCallAssembler | None = None
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.model: str | None = None
        self.response_id: str | None = None
        self.thinking: list[ThinkingPart] | None = None
        self.first: float | None = None
        self.complete = False
        self.done = False

    def feed(self, kind: str, payload: dict[str, Any]) -> StreamChunk | None:
        """Read one streamed event (``kind`` is its SSE event name, ``""`` if none)."""
        raise NotImplementedError

    def parse(self, payload: dict[str, Any]) -> None:
        """Read a whole non-streamed answer."""
        raise NotImplementedError

    def note_ids(self, payload: Mapping[str, Any], id_key: str, model_key: str) -> None:
        """Take the response id and model from the first payload that has them."""
        if self.response_id is None:
            self.response_id = optional_str(payload.get(id_key), id_key)
            self.model = optional_str(payload.get(model_key), model_key)

    def request_id(self) -> str | None:
        """The call's request id (for errors)."""
        return self.events.request_id if self.events is not None else self._request_id

    def end(self) -> None:
        """The answer is whole: ignore further events, read the body's end only briefly."""
        self.complete = self.done = True
        if self.events is not None:
            self.events.expect_end(self.provider.end_grace)

    def emit(
        self,
        text: str | None,
        deltas: tuple[ToolCallDelta, ...] | None = None,
        thinking: str | None = None,
    ) -> StreamChunk | None:
        """The chunk for one event's text, tool-call fragments and reasoning (already
        checked; the format keeps the reasoning for the response itself)."""
        if not text and not deltas and not thinking:
            return None
        if self.first is None:
            self.first = time.perf_counter() - self.started
        if deltas:
            self.add_calls(deltas)
        if text:
            self.parts.append(text)
        if thinking or deltas:
            return StreamChunk(
                delta=text or "", tool_call_deltas=deltas or (), thinking=thinking or ""
            )
        return StreamChunk(delta=text)  # type: ignore[arg-type]

    def add_calls(self, deltas: Sequence[ToolCallDelta]) -> None:
        """Take in tool-call fragments (or whole calls) without making a chunk."""
        if self.calls is None:
            self.calls = ToolCallAssembler()
        self.calls.add(deltas)

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The calls assembled so far, each with an id (made up where the server sent none)."""
        if self.calls is None:
            return ()
        calls = self.calls.calls()
        if all(c.id for c in calls):
            return calls
        prefix = self.call_id_prefix
        return tuple(c if c.id else replace(c, id=f"{prefix}{i}") for i, c in enumerate(calls))

    def response(self, request_id: str | None, trace: Sequence[Any], raw: Any) -> ProviderResponse:
        """The complete answer in the library's one shape."""
        content = "".join(self.parts)
        usage = self.usage or estimate_usage(self.request.messages, content)
        tool_calls = self.tool_calls()
        finish = self.finish or ("tool_calls" if tool_calls else "stop")
        response = ProviderResponse(
            content=content,
            finish_reason=finish,
            usage=usage,
            cost=self.provider.calculate_cost(usage),
            tool_calls=tool_calls,
            thinking=tuple(self.thinking) if self.thinking else (),
            model=self.model,
            response_id=self.response_id,
            request_id=request_id,
            latency=time.perf_counter() - self.started,
            time_to_first_chunk=self.first if self.events is not None else None,
            trace=tuple(trace),
            raw=raw,
        )
        # response_format applies to the answer that ends the turn, not to a tool round.
        fmt = self.request.generation.response_format or self.provider.generation.response_format
        if fmt is None or tool_calls:
            return response
        return with_parsed(ResponseFormat.coerce(fmt), response, self.provider.id)


class WireProvider(HTTPProvider):
    """A provider speaking one wire format over HTTP (the base of the vendor providers).

    Constructor forms (``OpenAIProvider`` stands for any of them)::

        OpenAIProvider("gpt-4o-mini")                          # name defaults to "openai"
        OpenAIProvider("gpt-4o-mini", api_key=key, name="primary")
        OpenAIProvider("openai", "gpt-4o-mini", key)           # (name, model[, api_key])

    Everything after ``api_key`` is keyword-only.

    Args:
        name: the label in logs, errors and ``repr`` (default: the vendor, e.g.
            ``"openai"``); ``id=`` is a deprecated alias.
        model: the model, positional or ``model=``.
        api_key: the API key; ``None`` reads the vendor's variable (or ``api_key_env``).
            Never shown in ``repr``, logs or errors.
        generation: a :class:`~promptkit_async.providers.GenerationConfig` whose set
            fields are the defaults of every request (a request's own settings win).
        pricing: a :class:`~promptkit_async.pricing.ModelPricing` overriding the built-in
            price of ``model``.
        include_raw_output: put the raw payload in ``response.raw`` (the list of event
            payloads when streaming, the answer's payload otherwise).
        defaults: deprecated (``ProviderDefaults``): use ``generation`` and ``pricing``.
        base_url, http_client, timeout, max_retries, stream_idle_timeout, deadline,
            retry_policy, default_headers, api_key_env: the HTTP options, see
            :class:`~promptkit_async.providers._http.HTTPProvider`.

    Errors: HTTP statuses map to :mod:`promptkit_async.errors` (401
    ``AuthenticationError``, 429 ``RateLimitError``, a too-long prompt
    ``ContextLengthExceededError``...), transport failures to ``APIConnectionError`` /
    ``APITimeoutError``, an error event inside a stream to the matching status error, a
    stream that ends early to ``IncompleteStreamError``, and an answer that is not JSON
    or not of the format's shape (a wrong type anywhere, nonsense token counts) to
    ``APIResponseError`` whose ``body`` is the payload (API key redacted): raised before
    any text of that payload reaches the caller.

    Concurrency: share one instance between any number of tasks and sessions on one
    event loop. Closing (or cancelling the consumer of) a stream closes its HTTP
    response at once; retries happen only before the first event arrives.
    """

    #: How a streamed answer is read (the format module's WireReader subclass).
    reader: ClassVar[type[WireReader]] = WireReader
    #: Event data that ends a stream without being JSON (OpenAI's ``[DONE]``), if any.
    end_sentinel: ClassVar[str | None] = None
    #: More variables for the API key, read before ``default_api_key_env``.
    extra_api_key_envs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: str | None, **options: Unpack[ProviderOptions]) -> None:
        name, model, api_key = self._identity(args, options)
        defaults = options.pop("defaults", None)
        if defaults is not None:
            options["generation"] = defaults.generation().with_defaults(
                options.get("generation") or GenerationConfig()
            )
            options["pricing"] = options.get("pricing") or defaults.pricing
        if api_key is None and options.get("api_key_env") is None:
            for env in self.extra_api_key_envs:
                api_key = os.environ.get(env) or None
                if api_key:
                    break
        super().__init__(name, model, api_key=api_key, **options)  # type: ignore[misc, arg-type]

    @classmethod
    def _identity(
        cls, args: tuple[str | None, ...], options: ProviderOptions
    ) -> tuple[str, str, str | None]:
        """(name, model, api_key) from the positional arguments and keywords."""
        name = resolve_name(cls.__name__, options.pop("name", None), options.pop("id", None), "")
        model = options.pop("model", None)
        api_key = options.pop("api_key", None)
        count = len(args)
        if count > 3:
            raise InvalidArgumentsError(
                f"{cls.__name__}() takes at most 3 positional arguments (name, model, "
                "api_key); pass the others by keyword, e.g. "
                "generation=GenerationConfig(max_tokens=500), include_raw_output=True"
            )
        if count == 1 and model is None:
            model = args[0]  # the model alone: OpenAIProvider("gpt-4o-mini")
        elif count:
            if name or (count >= 2 and model is not None):
                raise InvalidArgumentsError(
                    f"{cls.__name__}() got the name or model both by position and by keyword"
                )
            name = args[0] or ""
            if count >= 2:
                model = args[1]
            if count == 3:
                if api_key is not None:
                    raise InvalidArgumentsError(
                        f"{cls.__name__}() got api_key by position and by keyword"
                    )
                api_key = args[2]
        if not model:
            raise InvalidArgumentsError(
                f"{cls.__name__}() needs a model, e.g. {cls.__name__}(model='...') or "
                f"{cls.__name__}({cls.kind!r}, '<model>')"
            )
        return name or cls.kind, model, api_key

    # --- what a format module provides ----------------------------------------------------

    def build_body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        """The request body for ``request`` in this provider's format."""
        raise NotImplementedError

    def _url(self, stream: bool) -> httpx.URL:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------

    def _settings(self, request: ProviderRequest) -> GenerationConfig:
        """The request's generation settings over this provider's defaults."""
        return request.generation.with_defaults(self.generation)

    def _shape_error(
        self, payload: Any, problem: BaseException | str, request_id: str | None
    ) -> APIResponseError:
        if isinstance(problem, str):
            detail = problem
        elif isinstance(problem, ShapeError):
            detail = str(problem)
        else:
            detail = f"{type(problem).__name__}: {problem}"
        key = self._api_key
        try:
            body = redact(payload, key)
        except RecursionError:  # absurdly deep JSON: the message still says what went wrong
            body = None
        return APIResponseError(
            f"the {self.kind} answer does not have the expected shape ({redact(detail, key)}); "
            "the server may not implement this API faithfully: check base_url and the "
            "provider class",
            provider=self.id,
            request_id=request_id,
            body=body,
        )

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Send ``request`` without streaming and return the whole answer.

        Raises:
            ProviderError: a subclass from :mod:`promptkit_async.errors` (see the class
                docstring); nothing is retried once the answer was read.
        """
        payload, call, request_id = await self._post_json(
            self._url(False), self.build_body(request, stream=False)
        )
        if type(payload) is not dict:
            raise self._shape_error(payload, "the answer is not a JSON object", request_id)
        reader = self.reader(self, request, call.started, None, request_id)
        try:
            reader.parse(payload)
            return reader.response(
                request_id, call.trace, payload if self.include_raw_output else None
            )
        except SHAPE_ERRORS as exc:
            raise self._shape_error(payload, exc, request_id) from None

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        """Stream the answer: text chunks (``delta``), tool-call fragments
        (``tool_call_deltas``), then one last chunk with ``response``, ``usage`` and
        ``finish_reason``.

        Each event is read and checked whole before its chunk is yielded. Close the
        iterator if you stop early (``contextlib.aclosing``); that, or cancelling the
        consuming task, closes the HTTP response at once.

        Raises:
            ProviderError: see the class docstring.
        """
        events = self._post_events(self._url(True), self.build_body(request, stream=True))
        reader = self.reader(self, request, events.started, events)
        feed = reader.feed
        loads = json_loads
        sentinel = self.end_sentinel
        raw: list[Any] | None = [] if self.include_raw_output else None
        try:
            while batch := await events.next_batch():
                if reader.done:
                    continue  # read on to the end of the body so the connection is reused
                for event in batch:
                    data = event.data
                    if data == sentinel:
                        reader.end()
                        break
                    try:
                        payload = loads(data)
                    except ValueError:
                        raise self._event_error(data, events.request_id, events.ended) from None
                    if type(payload) is not dict:
                        raise self._shape_error(
                            payload, "an event is not a JSON object", events.request_id
                        )
                    if raw is not None:
                        raw.append(payload)
                    try:
                        chunk = feed(event.event, payload)
                    except SHAPE_ERRORS as exc:
                        raise self._shape_error(payload, exc, events.request_id) from None
                    if chunk is not None:
                        yield chunk
                    # feed() may have set done (mypy keeps the narrowing from above)
                    if reader.done:
                        break  # type: ignore[unreachable]
        finally:
            await events.aclose()
        if not reader.complete:
            raise IncompleteStreamError(
                f"{reader.incomplete}; the connection or the server broke off the answer",
                provider=self.id,
                request_id=events.request_id,
            )
        try:
            response = reader.response(events.request_id, events.trace, raw)
        except SHAPE_ERRORS as exc:
            raise self._shape_error(None, exc, events.request_id) from None
        yield StreamChunk(
            finish_reason=response.finish_reason, usage=response.usage, response=response
        )
