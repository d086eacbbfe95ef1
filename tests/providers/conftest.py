"""Fixtures for provider tests: respx-backed clients, OpenAI-, Anthropic- and Gemini-shaped
payloads built from the official SDKs' types (``openai``, ``anthropic``, ``google-genai``),
strict request validation, and a real loopback server."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import types
import typing
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import anthropic.types as anthropic_types
import google.genai.types as genai_types
import httpx
import pydantic
import pytest
import respx
import typing_extensions
from aiohttp import web
from anthropic.types import message_create_params as anthropic_params
from anthropic.types import raw_message_delta_event as anthropic_message_delta
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as CompletionChoice
from openai.types.chat.chat_completion_chunk import (
    Choice,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_message_tool_call import (
    ChatCompletionMessageToolCall,
    Function,
)
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from openai.types.completion_usage import PromptTokensDetails
from pydantic import TypeAdapter

from promptkit_async.providers import (
    AnthropicProvider,
    GeminiProvider,
    OpenAIProvider,
    RetryPolicy,
)

API_KEY = "sk-test-SECRET-0123456789abcdef"
BASE_URL = "https://api.openai.com/v1"
CHAT_URL = f"{BASE_URL}/chat/completions"
#: Retries without real waiting: tests check what was *asked* (trace), never elapsed time.
FAST_RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.002, max_retry_after=0.005)


# --- strict validation against the SDK's request TypedDicts ------------------------------


_STREAMING = TypeAdapter(CompletionCreateParamsStreaming)
_NON_STREAMING = TypeAdapter(CompletionCreateParamsNonStreaming)


def validate_request(body: dict[str, Any], *, stream: bool) -> None:
    """Assert ``body`` is a valid Chat Completions request per the ``openai`` SDK types."""
    tp = CompletionCreateParamsStreaming if stream else CompletionCreateParamsNonStreaming
    adapter = _STREAMING if stream else _NON_STREAMING
    validated = adapter.validate_python(body)
    for key in ("messages", "tools"):
        if key in validated:
            list(validated[key])  # pydantic validates Iterable fields lazily
    problem = conforms_params(body, tp)
    assert problem is None, problem


# --- response payloads built from the SDK's response types -------------------------------


def usage(prompt: int = 12, completion: int = 5, cached: int = 0) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached, audio_tokens=0),
    )


def chunk(
    content: str | None = None,
    *,
    role: str | None = None,
    finish_reason: str | None = None,
    tool_calls: Sequence[tuple[int, str | None, str | None, str | None]] = (),
    usage_: CompletionUsage | None = None,
    model: str = "gpt-4o-mini-2024-07-18",
) -> ChatCompletionChunk:
    """A chunk; ``tool_calls`` items are ``(index, id, name, arguments)``; with ``usage_``
    a usage-only chunk (no choices), as OpenAI sends last."""
    choices = []
    if usage_ is None:
        deltas = [
            ChoiceDeltaToolCall(
                index=index,
                id=call_id,
                type="function" if call_id else None,
                function=ChoiceDeltaToolCallFunction(name=name, arguments=arguments),
            )
            for index, call_id, name, arguments in tool_calls
        ]
        choices = [
            Choice(
                index=0,
                delta=ChoiceDelta(
                    content=content,
                    role=role,
                    tool_calls=deltas or None,  # type: ignore[arg-type]
                ),
                finish_reason=finish_reason,  # type: ignore[arg-type]
            )
        ]
    return ChatCompletionChunk(
        id="chatcmpl-abc123",
        choices=choices,
        created=1_700_000_000,
        model=model,
        object="chat.completion.chunk",
        system_fingerprint="fp_test",
        usage=usage_,
    )


def sse(*chunks: ChatCompletionChunk | bytes, done: bool = True) -> bytes:
    """An event-stream body: one ``data:`` event per chunk, then ``[DONE]``."""
    out = b"".join(
        c if isinstance(c, bytes) else b"data: " + c.model_dump_json().encode() + b"\n\n"
        for c in chunks
    )
    return out + (b"data: [DONE]\n\n" if done else b"")


def reasoning_chunk(text: Any, field: str = "reasoning_content") -> bytes:
    """One event of a compatible server's streamed reasoning (DeepSeek and vLLM put it in
    ``reasoning_content``, OpenRouter in ``reasoning``), beside an empty ``content``; the
    SDK's types have no such field, so the event is written by hand."""
    payload = {
        "id": "chatcmpl-r1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "deepseek-reasoner",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": None, field: text},
                "finish_reason": None,
            }
        ],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def hello_stream(text: str = "Hello there!", *, cached: int = 0) -> bytes:
    """A typical streamed answer: role chunk, text in pieces, finish, usage, [DONE]."""
    pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
    return sse(
        chunk("", role="assistant"),
        *(chunk(p) for p in pieces),
        chunk(finish_reason="stop"),
        chunk(usage_=usage(12, 5, cached)),
    )


def completion(
    content: str | None = "Hello there!",
    *,
    tool_calls: Sequence[tuple[str, str, str]] = (),
    finish_reason: str = "stop",
    usage_: CompletionUsage | None = None,
) -> dict[str, Any]:
    """A non-streamed response body (``tool_calls`` items: ``(id, name, arguments)``)."""
    message = ChatCompletionMessage(
        role="assistant",
        content=content,
        tool_calls=[
            ChatCompletionMessageToolCall(
                id=i, type="function", function=Function(name=n, arguments=a)
            )
            for i, n, a in tool_calls
        ]
        or None,
    )
    body = ChatCompletion(
        id="chatcmpl-xyz789",
        choices=[
            CompletionChoice(index=0, message=message, finish_reason=finish_reason)  # type: ignore[arg-type]
        ],
        created=1_700_000_000,
        model="gpt-4o-mini-2024-07-18",
        object="chat.completion",
        usage=usage_ or usage(),
    )
    return json.loads(body.model_dump_json())


class TrackedStream(httpx.AsyncByteStream):
    """A response body that records being closed, and can stall or break after its parts.

    ``after``: ``None`` ends normally; ``"hang"`` waits forever (until the reader gives
    up); an exception instance is raised.
    """

    def __init__(self, parts: Sequence[bytes], after: str | BaseException | None = None) -> None:
        self.parts = list(parts)
        self.after = after
        self.closed = False
        self.close_event = asyncio.Event()
        self.stalled = asyncio.Event()  # set once all parts were handed out
        self.delivered = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            self.delivered += 1
            yield part
        self.stalled.set()
        if self.after == "hang":
            await asyncio.Event().wait()
        elif isinstance(self.after, BaseException):
            raise self.after

    async def aclose(self) -> None:
        self.closed = True
        self.close_event.set()


def sse_response(
    body: bytes | Sequence[bytes] | TrackedStream,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    stream = (
        body
        if isinstance(body, TrackedStream)
        else TrackedStream([body] if isinstance(body, bytes) else list(body))
    )
    return httpx.Response(
        status,
        headers={
            "content-type": "text/event-stream",
            "x-request-id": "req_stream",
            **(headers or {}),
        },
        stream=stream,
    )


class Fakes:
    """The helpers above, handed to tests through the ``fakes`` fixture."""

    API_KEY = API_KEY
    BASE_URL = BASE_URL
    CHAT_URL = CHAT_URL
    FAST_RETRY = FAST_RETRY
    TrackedStream = TrackedStream
    chunk = staticmethod(chunk)
    completion = staticmethod(completion)
    hello_stream = staticmethod(hello_stream)
    reasoning_chunk = staticmethod(reasoning_chunk)
    sse = staticmethod(sse)
    sse_response = staticmethod(sse_response)
    usage = staticmethod(usage)
    validate_request = staticmethod(validate_request)


@pytest.fixture
def fakes() -> type[Fakes]:
    return Fakes


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must not depend on (or leak) a developer's real keys or endpoints.
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GROQ_API_KEY",
        "TOGETHER_API_KEY",
        "OPENROUTER_API_KEY",
        "OLLAMA_API_KEY",
        "OLLAMA_HOST",
        "VLLM_API_KEY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(assert_all_called=False)


@pytest.fixture
async def http_client(router: respx.MockRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as client:
        yield client


@pytest.fixture
async def provider(http_client: httpx.AsyncClient) -> AsyncIterator[OpenAIProvider]:
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", API_KEY, http_client=http_client, retry_policy=FAST_RETRY
    ) as p:
        yield p


# --- a real loopback server for the default (aiohttp) transport --------------------------


class LoopbackServer:
    """An OpenAI-like server on 127.0.0.1. The first path segment picks the behaviour:

    ``/ok`` a full stream (or JSON without ``stream``); ``/hang`` one event then silence
    until the client leaves; ``/stall`` headers then silence; ``/cut`` one event then the
    connection is dropped; ``/status/<code>`` an OpenAI-style error; ``/gzip`` like ``/ok``
    but gzip-compressed (``Content-Encoding: gzip``), ``/badgzip`` a body that claims to
    be gzip but is not.
    Counters: ``requests``, ``disconnects`` (handlers ended by the client leaving),
    ``peers`` (distinct client ports, i.e. connections).
    """

    def __init__(self) -> None:
        self.url = ""
        self.requests = 0
        self.disconnects = 0
        self.peers: set[int] = set()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[Mapping[str, str]] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def wait_for(self, predicate: typing.Callable[[], bool], timeout: float = 10) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = request.match_info["mode"]
        self.requests += 1
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add(peer[1])
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        await self._notify()
        if mode.startswith("status"):
            code = int(request.match_info.get("code") or 500)
            return web.json_response(
                {"error": {"message": f"failure {code}", "type": "server_error", "code": None}},
                status=code,
                headers={"x-request-id": f"req_{code}"},
            )
        if mode == "ok" and not body.get("stream"):
            return web.json_response(completion(), headers={"x-request-id": "req_json"})
        if mode in ("gzip", "badgzip"):
            return await self._compressed(
                request, stream=bool(body.get("stream")), bad=mode == "badgzip"
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-request-id": "req_loop"}
        )
        try:
            await response.prepare(request)
            if mode == "ok":
                await response.write(hello_stream())
                await response.write_eof()
                return response
            if mode == "cut":
                await response.write(sse(chunk("partial"), done=False))
                assert request.transport is not None
                request.transport.close()
                return response
            if mode == "hang":
                await response.write(sse(chunk("first"), done=False))
            await asyncio.Event().wait()  # until the client disconnects
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects += 1
            await asyncio.shield(self._notify())
            raise

    async def _compressed(
        self, request: web.Request, *, stream: bool, bad: bool
    ) -> web.StreamResponse:
        plain = hello_stream() if stream else json.dumps(completion()).encode()
        data = b"not gzip at all" if bad else gzip.compress(plain)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream" if stream else "application/json",
                "Content-Encoding": "gzip",
                "x-request-id": "req_gzip",
            }
        )
        await response.prepare(request)
        half = len(data) // 2  # two writes: the decoder must carry state across pieces
        await response.write(data[:half])
        await response.write(data[half:])
        await response.write_eof()
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{mode:status}/{code}/v1/chat/completions", self._handle)
        app.router.add_post("/{mode}/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock, backlog=2048)
        await site.start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def loopback() -> AsyncIterator[LoopbackServer]:
    server = LoopbackServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


# --- strict request validation against any SDK's param TypedDicts -------------------------


def conforms_params(value: Any, tp: Any, path: str = "body") -> str | None:
    """Why ``value`` does not match the SDK param type ``tp``, or None.

    Stricter than pydantic over TypedDicts (which ignores unknown keys): unknown keys,
    missing required keys and wrong literals are reported, and response models (pydantic
    classes an SDK also accepts in some unions) never match a dict we send.
    """

    if tp is Any or tp is object:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Annotated, typing_extensions.Annotated):
        return conforms_params(value, args[0], path)
    if typing_extensions.is_typeddict(tp):
        if not isinstance(value, dict):
            return f"{path}: expected an object for {tp.__name__}"
        hints = typing_extensions.get_type_hints(tp)
        unknown = set(value) - set(hints)
        if unknown:
            return f"{path}: {tp.__name__} has no field(s) {sorted(unknown)}"
        missing = set(tp.__required_keys__) - set(value)
        if missing:
            return f"{path}: {tp.__name__} misses {sorted(missing)}"
        for key, item in value.items():
            problem = conforms_params(item, hints[key], f"{path}.{key}")
            if problem:
                return problem
        return None
    if origin in (typing.Union, types.UnionType):
        problems = [conforms_params(value, arg, path) for arg in args]
        if all(problems):
            return " | ".join(p for p in problems if p)
        return None
    if origin in (typing.Literal, typing_extensions.Literal):
        return None if value in args else f"{path}: {value!r} not in {args}"
    if tp is type(None):
        return None if value is None else f"{path}: expected null"
    if tp in (str, int, float, bool):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"{path}: expected {tp.__name__}, got {value!r}"
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        return None if isinstance(value, dict) else f"{path}: expected an object"
    if origin is not None and getattr(origin, "__name__", "") == "SequenceNotStr":
        if not isinstance(value, list):
            return f"{path}: expected a list"
        return None
    if origin is not None and isinstance(origin, type) and issubclass(origin, Iterable):
        if not isinstance(value, list):
            return f"{path}: expected a list"
        for i, item in enumerate(value):
            problem = conforms_params(item, args[0] if args else Any, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return f"{path}: {tp.__name__} is a response model, not a request param"
    return f"{path}: cannot check against {tp!r}"


# --- Anthropic: payloads from the official ``anthropic`` SDK types ------------------------

ANTHROPIC_KEY = "sk-ant-test-SECRET-0123456789abcdef"
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
_A_STREAMING = TypeAdapter(anthropic_params.MessageCreateParamsStreaming)
_A_NON_STREAMING = TypeAdapter(anthropic_params.MessageCreateParamsNonStreaming)


class AnthropicFakes:
    """Anthropic wire payloads built from ``anthropic.types`` and strict request checks."""

    API_KEY = ANTHROPIC_KEY
    URL = ANTHROPIC_URL
    MODEL = ANTHROPIC_MODEL
    FAST_RETRY = FAST_RETRY
    TrackedStream = TrackedStream

    @staticmethod
    def validate_request(body: dict[str, Any], *, stream: bool) -> None:
        """Assert ``body`` is a valid Messages request per the ``anthropic`` SDK types."""
        tp = (
            anthropic_params.MessageCreateParamsStreaming
            if stream
            else anthropic_params.MessageCreateParamsNonStreaming
        )
        validated = (_A_STREAMING if stream else _A_NON_STREAMING).validate_python(body)
        for message in validated["messages"]:  # Iterable fields validate lazily
            if not isinstance(message["content"], str):
                list(message["content"])
        problem = conforms_params(body, tp)
        assert problem is None, problem

    @staticmethod
    def usage(
        input_tokens: int = 10, output_tokens: int = 5, cache_read: int = 0, cache_write: int = 0
    ) -> anthropic_types.Usage:
        return anthropic_types.Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_input_tokens=cache_read,
            cache_creation_input_tokens=cache_write,
        )

    @staticmethod
    def message(
        text: str | None = "Hello there!",
        *,
        tool_uses: Sequence[tuple[str, str, dict[str, Any]]] = (),
        stop_reason: str = "end_turn",
        usage_: anthropic_types.Usage | None = None,
    ) -> dict[str, Any]:
        """A non-streamed Message body (``tool_uses`` items: ``(id, name, input)``)."""
        content: list[Any] = []
        if text is not None:
            content.append(anthropic_types.TextBlock(type="text", text=text))
        content += [
            anthropic_types.ToolUseBlock(type="tool_use", id=i, name=n, input=a)
            for i, n, a in tool_uses
        ]
        message = anthropic_types.Message(
            id="msg_01XYZ",
            type="message",
            role="assistant",
            model=ANTHROPIC_MODEL + "-20250929",
            content=content,
            stop_reason=stop_reason,  # type: ignore[arg-type]
            stop_sequence=None,
            usage=usage_ or AnthropicFakes.usage(),
        )
        return json.loads(message.model_dump_json())

    @staticmethod
    def event(model: pydantic.BaseModel) -> bytes:
        """One SSE event as Anthropic sends it: ``event: <type>`` then its JSON."""
        kind = model.type  # type: ignore[attr-defined]
        return f"event: {kind}\ndata: {model.model_dump_json()}\n\n".encode()

    @staticmethod
    def start(usage_: anthropic_types.Usage | None = None) -> bytes:
        message = anthropic_types.Message(
            id="msg_01ABC",
            type="message",
            role="assistant",
            model=ANTHROPIC_MODEL + "-20250929",
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=usage_ or AnthropicFakes.usage(10, 1),
        )
        return AnthropicFakes.event(
            anthropic_types.RawMessageStartEvent(type="message_start", message=message)
        )

    @staticmethod
    def text_block(index: int, *pieces: str) -> bytes:
        out = AnthropicFakes.event(
            anthropic_types.RawContentBlockStartEvent(
                type="content_block_start",
                index=index,
                content_block=anthropic_types.TextBlock(type="text", text=""),
            )
        )
        for piece in pieces:
            out += AnthropicFakes.event(
                anthropic_types.RawContentBlockDeltaEvent(
                    type="content_block_delta",
                    index=index,
                    delta=anthropic_types.TextDelta(type="text_delta", text=piece),
                )
            )
        return out + AnthropicFakes.stop_block(index)

    @staticmethod
    def tool_block(index: int, call_id: str, name: str, *fragments: str) -> bytes:
        out = AnthropicFakes.event(
            anthropic_types.RawContentBlockStartEvent(
                type="content_block_start",
                index=index,
                content_block=anthropic_types.ToolUseBlock(
                    type="tool_use", id=call_id, name=name, input={}
                ),
            )
        )
        for fragment in fragments:
            out += AnthropicFakes.event(
                anthropic_types.RawContentBlockDeltaEvent(
                    type="content_block_delta",
                    index=index,
                    delta=anthropic_types.InputJSONDelta(
                        type="input_json_delta", partial_json=fragment
                    ),
                )
            )
        return out + AnthropicFakes.stop_block(index)

    @staticmethod
    def thinking_block(index: int, *pieces: str, signature: str) -> bytes:
        """A streamed thinking block: start, ``thinking_delta`` pieces, one
        ``signature_delta``, stop."""
        deltas: list[Any] = [
            anthropic_types.ThinkingDelta(type="thinking_delta", thinking=p) for p in pieces
        ]
        deltas.append(anthropic_types.SignatureDelta(type="signature_delta", signature=signature))
        out = AnthropicFakes.event(
            anthropic_types.RawContentBlockStartEvent(
                type="content_block_start",
                index=index,
                content_block=anthropic_types.ThinkingBlock(
                    type="thinking", thinking="", signature=""
                ),
            )
        )
        for delta in deltas:
            out += AnthropicFakes.event(
                anthropic_types.RawContentBlockDeltaEvent(
                    type="content_block_delta", index=index, delta=delta
                )
            )
        return out + AnthropicFakes.stop_block(index)

    @staticmethod
    def redacted_block(index: int, data: str) -> bytes:
        """A streamed ``redacted_thinking`` block (its data comes whole, with the start)."""
        block = anthropic_types.RedactedThinkingBlock(type="redacted_thinking", data=data)
        start = anthropic_types.RawContentBlockStartEvent(
            type="content_block_start", index=index, content_block=block
        )
        return AnthropicFakes.event(start) + AnthropicFakes.stop_block(index)

    @staticmethod
    def stop_block(index: int) -> bytes:
        return AnthropicFakes.event(
            anthropic_types.RawContentBlockStopEvent(type="content_block_stop", index=index)
        )

    @staticmethod
    def finish(stop_reason: str = "end_turn", output_tokens: int = 5) -> bytes:
        delta = anthropic_types.RawMessageDeltaEvent(
            type="message_delta",
            delta=anthropic_message_delta.Delta(stop_reason=stop_reason, stop_sequence=None),  # type: ignore[arg-type]
            usage=anthropic_types.MessageDeltaUsage(output_tokens=output_tokens),
        )
        return AnthropicFakes.event(delta) + AnthropicFakes.event(
            anthropic_types.RawMessageStopEvent(type="message_stop")
        )

    @staticmethod
    def ping() -> bytes:
        return b'event: ping\ndata: {"type": "ping"}\n\n'

    @staticmethod
    def error_body(kind: str, message: str) -> dict[str, Any]:
        classes = {
            "invalid_request_error": anthropic_types.InvalidRequestError,
            "authentication_error": anthropic_types.AuthenticationError,
            "billing_error": anthropic_types.BillingError,
            "permission_error": anthropic_types.PermissionError,
            "not_found_error": anthropic_types.NotFoundError,
            "rate_limit_error": anthropic_types.RateLimitError,
            "api_error": anthropic_types.APIErrorObject,
            "timeout_error": anthropic_types.GatewayTimeoutError,
            "overloaded_error": anthropic_types.OverloadedError,
        }
        error = classes[kind](type=kind, message=message)  # type: ignore[arg-type]
        body = anthropic_types.ErrorResponse(type="error", error=error, request_id=None)
        return json.loads(body.model_dump_json(exclude_none=True))

    @staticmethod
    def error_event(kind: str, message: str) -> bytes:
        data = json.dumps(AnthropicFakes.error_body(kind, message))
        return f"event: error\ndata: {data}\n\n".encode()

    @staticmethod
    def hello_stream(
        *pieces: str, usage_: anthropic_types.Usage | None = None, output_tokens: int = 5
    ) -> bytes:
        """A typical streamed answer: message_start, a ping, one text block, the end."""
        return (
            AnthropicFakes.start(usage_)
            + AnthropicFakes.ping()
            + AnthropicFakes.text_block(0, *(pieces or ("Hello", " there!")))
            + AnthropicFakes.finish("end_turn", output_tokens)
        )

    @staticmethod
    def sse_response(
        body: bytes | Sequence[bytes] | TrackedStream,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        return sse_response(
            body, status=status, headers={"request-id": "req_a1", **(headers or {})}
        )


@pytest.fixture
def afakes() -> type[AnthropicFakes]:
    return AnthropicFakes


@pytest.fixture
async def anthropic_provider(http_client: httpx.AsyncClient) -> AsyncIterator[AnthropicProvider]:
    async with AnthropicProvider(
        "anthropic",
        ANTHROPIC_MODEL,
        ANTHROPIC_KEY,
        http_client=http_client,
        retry_policy=FAST_RETRY,
    ) as p:
        yield p


# --- Gemini: payloads from the official ``google-genai`` SDK types ------------------------

GEMINI_KEY = "AIzaSy-test-SECRET-0123456789abcdef"
GEMINI_MODEL = "gemini-2.5-flash"
GEMINI_ROOT = f"https://generativelanguage.googleapis.com/v1beta/models/{GEMINI_MODEL}"
GEMINI_URL = f"{GEMINI_ROOT}:generateContent"
GEMINI_STREAM_URL = f"{GEMINI_ROOT}:streamGenerateContent"
#: The top-level fields of a ``GenerateContentRequest`` in the REST reference.
_G_REQUEST_FIELDS = {
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
}


_G_BYTES = frozenset(("data", "thoughtSignature"))  # bytes fields, base64 in JSON


def _g_base64(value: Any, key: str = "") -> Any:
    """``value`` with its bytes fields in one base64 alphabet: google-genai dumps bytes
    URL-safe, and the API takes either (proto3 JSON mapping)."""
    if isinstance(value, dict):
        return {k: _g_base64(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_g_base64(v) for v in value]
    if key in _G_BYTES and isinstance(value, str):
        return value.replace("-", "+").replace("_", "/")
    return value


def _g_round_trip(model: type[pydantic.BaseModel], value: Any, path: str) -> None:
    """``value`` validates as ``model`` (unknown fields forbidden) and dumps back to itself
    with REST (camelCase) names, so no field was misnamed, dropped or re-typed."""
    validated = model.model_validate_json(json.dumps(value))
    again = json.loads(validated.model_dump_json(by_alias=True, exclude_none=True))
    assert _g_base64(again) == _g_base64(value), (
        f"{path}: {value!r} does not round-trip through {model.__name__}"
    )


class GeminiFakes:
    """Gemini wire payloads built from ``google.genai.types`` and request checks."""

    API_KEY = GEMINI_KEY
    MODEL = GEMINI_MODEL
    URL = GEMINI_URL
    STREAM_URL = GEMINI_STREAM_URL
    FAST_RETRY = FAST_RETRY
    TrackedStream = TrackedStream

    @staticmethod
    def validate_request(body: dict[str, Any]) -> None:
        """Assert ``body`` is a GenerateContentRequest per the ``google-genai`` types."""
        unknown = set(body) - _G_REQUEST_FIELDS
        assert not unknown, f"not GenerateContentRequest fields: {sorted(unknown)}"
        assert body.get("contents"), "contents is required"
        for i, content in enumerate(body["contents"]):
            assert content.get("role") in ("user", "model"), content
            _g_round_trip(genai_types.Content, content, f"contents[{i}]")
        if "systemInstruction" in body:
            _g_round_trip(genai_types.Content, body["systemInstruction"], "systemInstruction")
        for i, tool in enumerate(body.get("tools", ())):
            _g_round_trip(genai_types.Tool, tool, f"tools[{i}]")
        if "toolConfig" in body:
            _g_round_trip(genai_types.ToolConfig, body["toolConfig"], "toolConfig")
        if "generationConfig" in body:
            _g_round_trip(
                genai_types.GenerationConfig, body["generationConfig"], "generationConfig"
            )

    @staticmethod
    def usage(
        prompt: int = 10,
        candidates: int = 5,
        cached: int | None = None,
        thoughts: int | None = None,
    ) -> genai_types.GenerateContentResponseUsageMetadata:
        return genai_types.GenerateContentResponseUsageMetadata(
            prompt_token_count=prompt,
            candidates_token_count=candidates,
            cached_content_token_count=cached,
            thoughts_token_count=thoughts,
            total_token_count=prompt + candidates + (thoughts or 0),
        )

    @staticmethod
    def response(
        *parts: genai_types.Part,
        finish: str | None = "STOP",
        usage_: genai_types.GenerateContentResponseUsageMetadata | None = None,
        response_id: str = "resp-G1",
    ) -> dict[str, Any]:
        """A ``GenerateContentResponse`` as REST JSON (camelCase, no nulls)."""
        candidates = []
        if parts or finish:
            candidates.append(
                genai_types.Candidate(
                    content=genai_types.Content(role="model", parts=list(parts)) if parts else None,
                    finish_reason=finish,  # type: ignore[arg-type]
                    index=0,
                )
            )
        payload = genai_types.GenerateContentResponse(
            candidates=candidates or None,
            usage_metadata=usage_,
            model_version=GEMINI_MODEL,
            response_id=response_id,
        )
        return json.loads(payload.model_dump_json(by_alias=True, exclude_none=True))

    @staticmethod
    def text(text: str, *, thought: bool | None = None) -> genai_types.Part:
        return genai_types.Part(text=text, thought=thought)

    @staticmethod
    def call(
        name: str, args: dict[str, Any], *, signature: bytes | None = None, id: str | None = None
    ) -> genai_types.Part:
        return genai_types.Part(
            function_call=genai_types.FunctionCall(name=name, args=args, id=id),
            thought_signature=signature,
        )

    @staticmethod
    def sse(*payloads: dict[str, Any]) -> bytes:
        # Google's servers end SSE lines with CRLF.
        return b"".join(b"data: " + json.dumps(p).encode() + b"\r\n\r\n" for p in payloads)

    @staticmethod
    def hello_stream(*pieces: str, usage_: Any = None) -> bytes:
        pieces = pieces or ("Hello", " there!")
        chunks = [
            GeminiFakes.response(GeminiFakes.text(p), finish=None, usage_=GeminiFakes.usage(10, i))
            for i, p in enumerate(pieces[:-1], 1)
        ]
        chunks.append(
            GeminiFakes.response(
                GeminiFakes.text(pieces[-1]), usage_=usage_ or GeminiFakes.usage(10, 5)
            )
        )
        return GeminiFakes.sse(*chunks)

    @staticmethod
    def error_body(code: int, message: str, status: str) -> dict[str, Any]:
        return {"error": {"code": code, "message": message, "status": status}}

    @staticmethod
    def sse_response(
        body: bytes | Sequence[bytes] | TrackedStream,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        return sse_response(body, status=status, headers=headers)


@pytest.fixture
def gfakes() -> type[GeminiFakes]:
    return GeminiFakes


@pytest.fixture
async def gemini_provider(http_client: httpx.AsyncClient) -> AsyncIterator[GeminiProvider]:
    async with GeminiProvider(
        "gemini", GEMINI_MODEL, GEMINI_KEY, http_client=http_client, retry_policy=FAST_RETRY
    ) as p:
        yield p
