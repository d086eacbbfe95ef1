"""Google's Gemini API: ``generateContent`` and ``streamGenerateContent`` (server-sent events).

::

    async with GeminiProvider("gemini", "gemini-2.5-flash") as provider:
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

Thought summaries (parts marked ``thought``) are not part of the reply's text.
Retries, timeouts, error mapping and the HTTP client are shared with the other HTTP
providers (:mod:`promptkit_async.providers._http`).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
from typing_extensions import Unpack

from ..errors import (
    APIResponseError,
    APIStatusError,
    AuthenticationError,
    IncompleteStreamError,
    InvalidRequestError,
)
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
_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def _finish(reason: str) -> str | None:
    if reason in _FINISH:
        return _FINISH[reason]
    if reason in _FILTERED:
        return "content_filter"
    if reason == "FINISH_REASON_UNSPECIFIED":
        return None
    return reason.lower()


def _args(arguments: str) -> dict[str, Any]:
    # functionCall.args must be an object; a malformed call was already answered with
    # an error tool result, so an empty object keeps the history valid.
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _split_id(call_id: str) -> tuple[str, str]:
    """A call id's own part and the thought signature carried with it ("" if none)."""
    base, _, signature = call_id.partition(_SIGNATURE)
    return base, signature


def _tool(tool: ToolDefinition) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name, "parametersJsonSchema": dict(tool.parameters)}
    if tool.description:
        out["description"] = tool.description
    return out


def _tool_config(choice: str) -> dict[str, Any]:
    mode = _MODES.get(choice)
    if mode is not None:
        return {"functionCallingConfig": {"mode": mode}}
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice]}}


def _usage(meta: Mapping[str, Any]) -> Usage:
    prompt = (meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0)
    completion = (meta.get("candidatesTokenCount") or 0) + (meta.get("thoughtsTokenCount") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=meta.get("totalTokenCount") or prompt + completion,
        cached_tokens=meta.get("cachedContentTokenCount") or 0,
    )


def _estimate_usage(messages: Sequence[Message], completion: str) -> Usage:
    # Only for servers that report no usage: ~4 characters per token, marked estimated.
    prompt = sum((len(m.content) + 3) // 4 + 4 for m in messages)
    return Usage(prompt, (len(completion) + 3) // 4, estimated=True)


def _deep_update(body: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        current = body.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            body[key] = {**current, **value}
        else:
            body[key] = value


class _Calls:
    """The function calls of one response, numbered in arrival order."""

    __slots__ = ("calls", "key")

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        self.key: str | None = None

    def add(self, part: Mapping[str, Any], response_id: str | None) -> tuple[int, ToolCall]:
        call = part["functionCall"]
        index = len(self.calls)
        call_id = call.get("id")
        if not call_id:
            if self.key is None:
                self.key = response_id or secrets.token_hex(8)
            call_id = f"{_SYNTHETIC}{self.key}_{index}"
        signature = part.get("thoughtSignature")
        if signature:
            call_id = f"{call_id}{_SIGNATURE}{signature}"
        args = call.get("args")
        made = ToolCall(
            call_id, call["name"], json.dumps(args, ensure_ascii=False) if args else "{}"
        )
        self.calls.append(made)
        return index, made


class GeminiProvider(HTTPProvider):
    """A provider for the Gemini API (see the module docstring for the mapping).

    Args:
        id: a short name for logs and errors (``"gemini"``).
        model: the model, e.g. ``"gemini-2.5-flash"`` (``"models/..."`` and
            ``"tunedModels/..."`` names work too).
        api_key: the API key, sent as ``x-goog-api-key``; ``None`` reads
            ``GOOGLE_API_KEY``, else ``GEMINI_API_KEY`` (the official SDK's order), or
            ``api_key_env`` when given. Never shown in URLs, ``repr``, logs or errors.
        defaults: temperature / max_tokens / top_p used when a request leaves them unset,
            and a pricing override.
        include_raw_output: put the raw payload in ``response.raw`` (the list of chunk
            payloads when streaming, the response payload otherwise).
        base_url: the API root (default ``https://generativelanguage.googleapis.com``).
        http_client: an ``httpx.AsyncClient`` to send through; it is not closed by us.
            By default the provider owns a client over aiohttp, closed by :meth:`aclose`.
        timeout: per-attempt timeouts (seconds or ``httpx.Timeout``).
        max_retries: retries of 408/409/429/5xx and connection errors (default 2).
        stream_idle_timeout: seconds without a streamed byte before
            :class:`~promptkit_async.errors.StreamIdleTimeoutError`.
        deadline: seconds for a whole call including retries and the full answer.
        retry_policy: backoff timing.
        default_headers: headers added to every request.
        api_key_env: one variable to read the key from instead.
        api_version: the API version path segment (default ``"v1beta"``).

    Errors: HTTP statuses map to :mod:`promptkit_async.errors` (429
    ``RateLimitError``, 400 ``ContextLengthExceededError`` when the input exceeds the
    model's limit, a 400 for an invalid API key → ``AuthenticationError``...); an error
    object inside the stream maps by its ``code``; a stream that ends before a
    ``finishReason`` raises ``IncompleteStreamError``.

    Concurrency: share one instance between any number of tasks and sessions on one
    event loop. Closing (or cancelling the consumer of) a stream closes its HTTP
    response at once.
    """

    default_base_url = "https://generativelanguage.googleapis.com"
    default_api_key_env = "GEMINI_API_KEY"
    request_id_headers = ("x-request-id", "x-goog-request-id")

    def __init__(
        self,
        id: str,
        model: str,
        api_key: str | None = None,
        defaults: ProviderDefaults | None = None,
        include_raw_output: bool = False,
        *,
        api_version: str = "v1beta",
        **options: Unpack[HTTPOptions],
    ) -> None:
        if api_key is None and options.get("api_key_env") is None:
            api_key = os.environ.get("GOOGLE_API_KEY") or None
        super().__init__(id, model, api_key, defaults, include_raw_output, **options)
        if not api_version or "/" in api_version:
            raise InvalidRequestError(f"api_version must be like 'v1beta', got {api_version!r}")
        path = model if "/" in model else f"models/{model}"
        root = f"{self.base_url}/{api_version}/{quote(path, safe='/')}"
        self._endpoint = httpx.URL(f"{root}:generateContent")
        self._stream_endpoint = httpx.URL(f"{root}:streamGenerateContent", params={"alt": "sse"})
        # Gemini 3 rejects replayed function calls without a thought signature.
        self._needs_signature = "gemini-3" in model

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    # --- request --------------------------------------------------------------------------

    def _contents(self, messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
        system: list[str] = []
        contents: list[dict[str, Any]] = []
        names: dict[str, str] = {}  # call id -> function name, for results without a name
        last_role: str | None = None
        for message in messages:
            role = message.role
            parts: list[dict[str, Any]] = []
            if role == "system":
                if message.content:
                    system.append(message.text)
                continue
            if role == "tool":
                call_id = message.tool_call_id or ""
                name = message.name or names.get(call_id)
                if not name:
                    raise InvalidRequestError(
                        f"the tool message answering {call_id!r} has no name and no earlier "
                        "assistant message made that call; Gemini pairs results with calls "
                        "by function name, so set Message.name to the tool's name"
                    )
                base, _ = _split_id(call_id)
                response: dict[str, Any] = {"name": name, "response": {"result": message.content}}
                if base and not base.startswith(_SYNTHETIC):
                    response["id"] = base
                parts.append({"functionResponse": response})
                gemini_role = "user"
            else:
                if message.content:
                    parts.append({"text": message.content})
                gemini_role = "model" if role == "assistant" else "user"
                if role == "assistant":
                    for position, call in enumerate(message.tool_calls):
                        names[call.id] = call.name
                        base, signature = _split_id(call.id)
                        function: dict[str, Any] = {
                            "name": call.name,
                            "args": _args(call.arguments),
                        }
                        if base and not base.startswith(_SYNTHETIC):
                            function["id"] = base
                        part: dict[str, Any] = {"functionCall": function}
                        if signature:
                            part["thoughtSignature"] = signature
                        elif position == 0 and self._needs_signature:
                            part["thoughtSignature"] = _SKIP_SIGNATURE
                        parts.append(part)
            if not parts:
                continue
            if gemini_role == last_role:
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": gemini_role, "parts": parts})
                last_role = gemini_role
        for content in contents:
            parts = content["parts"]
            if content["role"] == "user" and len(parts) > 1:
                # Function responses answer the previous model turn: keep them first.
                results = [p for p in parts if "functionResponse" in p]
                if results and len(results) < len(parts):
                    parts[:] = results + [p for p in parts if "functionResponse" not in p]
        return "\n\n".join(system), contents

    def build_body(self, request: ProviderRequest) -> dict[str, Any]:
        """The ``generateContent`` request body for ``request`` (the same for streaming).

        Request fields left ``None`` fall back to the provider's ``defaults``;
        ``extra_body`` is merged last, one level deep, and wins.

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
        defaults = self.defaults
        config: dict[str, Any] = {}
        max_tokens = request.max_tokens if request.max_tokens is not None else defaults.max_tokens
        if max_tokens is not None:
            config["maxOutputTokens"] = max_tokens
        temperature = (
            request.temperature if request.temperature is not None else defaults.temperature
        )
        if temperature is not None:
            config["temperature"] = temperature
        top_p = request.top_p if request.top_p is not None else defaults.top_p
        if top_p is not None:
            config["topP"] = top_p
        if request.stop:
            config["stopSequences"] = list(request.stop)
        if request.seed is not None:
            config["seed"] = request.seed
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [{"functionDeclarations": [_tool(t) for t in request.tools]}]
            if request.tool_choice:
                body["toolConfig"] = _tool_config(request.tool_choice)
        if request.extra_body:
            _deep_update(body, request.extra_body)
        return body

    # --- errors -----------------------------------------------------------------------------

    def _make_status_error(
        self,
        status: int,
        message: str,
        code: object,
        body: Any,
        request_id: str | None,
        retry_after: float | None = None,
    ) -> APIStatusError:
        # Gemini answers a wrong key with 400 INVALID_ARGUMENT and reason API_KEY_INVALID:
        # report it as the authentication problem it is.
        if status == 400 and "API_KEY_INVALID" in json.dumps(body):
            if not self._api_key:
                message += " (no API key was configured: pass api_key= or set GOOGLE_API_KEY)"
            return AuthenticationError(
                message,
                status_code=status,
                provider=self.id,
                request_id=request_id,
                body=body,
                retry_after=retry_after,
            )
        return super()._make_status_error(status, message, code, body, request_id, retry_after)

    # --- responses --------------------------------------------------------------------------

    def _check(self, payload: Any, request_id: str | None) -> dict[str, Any]:
        if type(payload) is not dict:
            raise APIResponseError(
                "the response is not a JSON object", provider=self.id, request_id=request_id
            )
        if "error" in payload:
            raise self._payload_error(payload, request_id)
        return payload

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Send ``request`` to ``generateContent`` and return the whole answer.

        Raises:
            ProviderError: a subclass from :mod:`promptkit_async.errors` (see the class
                docstring).
        """
        payload, call, request_id = await self._post_json(self._endpoint, self.build_body(request))
        payload = self._check(payload, request_id)
        texts: list[str] = []
        calls = _Calls()
        finish: str | None = None
        try:
            response_id = payload.get("responseId")
            candidates = payload.get("candidates") or ()
            if candidates:
                candidate = candidates[0]
                for part in (candidate.get("content") or {}).get("parts") or ():
                    if "functionCall" in part:
                        calls.add(part, response_id)
                    elif "text" in part and not part.get("thought"):
                        texts.append(part["text"])
                reason = candidate.get("finishReason")
                finish = _finish(reason) if reason else None
            elif (payload.get("promptFeedback") or {}).get("blockReason"):
                finish = "content_filter"
        except (KeyError, TypeError, AttributeError) as exc:
            raise APIResponseError(
                f"unexpected response shape ({type(exc).__name__}: {exc})",
                provider=self.id,
                request_id=request_id,
            ) from None
        content = "".join(texts)
        tool_calls = tuple(calls.calls)
        meta = payload.get("usageMetadata")
        usage = (
            _usage(meta)
            if isinstance(meta, Mapping)
            else _estimate_usage(request.messages, content)
        )
        if tool_calls and finish in (None, "stop"):
            finish = "tool_calls"
        return ProviderResponse(
            content=content,
            finish_reason=finish or "stop",
            usage=usage,
            cost=self.calculate_cost(usage),
            tool_calls=tool_calls,
            model=payload.get("modelVersion"),
            response_id=response_id,
            request_id=request_id,
            latency=time.perf_counter() - call.started,
            trace=tuple(call.trace),
            raw=payload if self.include_raw_output else None,
        )

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        """Stream the answer from ``streamGenerateContent?alt=sse``: text chunks
        (``delta``), each function call as one whole ``tool_call_deltas`` fragment (Gemini
        does not split calls), then one last chunk with ``response``, ``usage`` and
        ``finish_reason``.

        Close the iterator if you stop early (``contextlib.aclosing``); that, or
        cancelling the consuming task, closes the HTTP response at once. Retries happen
        only before the first event arrives.

        Raises:
            ProviderError: see the class docstring.
        """
        events = self._post_events(self._stream_endpoint, self.build_body(request))
        texts: list[str] = []
        calls = _Calls()
        finish: str | None = None
        finished = False
        usage: Usage | None = None
        response_id: str | None = None
        model: str | None = None
        first: float | None = None
        raw: list[Any] | None = [] if self.include_raw_output else None
        loads = json_loads
        try:
            while batch := await events.next_batch():
                for event in batch:
                    try:
                        payload = loads(event.data)
                    except ValueError:
                        raise self._event_error(
                            event.data, events.request_id, events.ended
                        ) from None
                    payload = self._check(payload, events.request_id)
                    if raw is not None:
                        raw.append(payload)
                    if response_id is None:
                        response_id = payload.get("responseId")
                        model = payload.get("modelVersion")
                    meta = payload.get("usageMetadata")
                    if meta:
                        usage = _usage(meta)  # cumulative: the last one is the total
                    candidates = payload.get("candidates")
                    if not candidates:
                        if (payload.get("promptFeedback") or {}).get("blockReason"):
                            finish, finished = "content_filter", True
                        continue
                    candidate = candidates[0]
                    try:
                        for part in (candidate.get("content") or {}).get("parts") or ():
                            if "functionCall" in part:
                                index, call = calls.add(part, response_id)
                                if first is None:
                                    first = time.perf_counter() - events.started
                                yield StreamChunk(
                                    tool_call_deltas=(
                                        ToolCallDelta(index, call.id, call.name, call.arguments),
                                    )
                                )
                            elif not part.get("thought"):
                                text = part.get("text")
                                if text:
                                    if first is None:
                                        first = time.perf_counter() - events.started
                                    texts.append(text)
                                    yield StreamChunk(delta=text)
                    except (KeyError, TypeError, AttributeError) as exc:
                        raise APIResponseError(
                            f"unexpected chunk shape ({type(exc).__name__}: {exc})",
                            provider=self.id,
                            request_id=events.request_id,
                        ) from None
                    reason = candidate.get("finishReason")
                    if reason and not finished:
                        finish, finished = _finish(reason), True
                        # The answer is complete: read on to the body's end only briefly.
                        events.expect_end(self.end_grace)
        finally:
            await events.aclose()
        if not finished:
            raise IncompleteStreamError(
                "the stream ended before the model finished (no finishReason)",
                provider=self.id,
                request_id=events.request_id,
            )
        content = "".join(texts)
        if usage is None:
            usage = _estimate_usage(request.messages, content)
        tool_calls = tuple(calls.calls)
        if tool_calls and finish in (None, "stop"):
            finish = "tool_calls"
        finish = finish or "stop"
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
