"""A minimal aiohttp chat provider, for the benchmark only (not the library's provider).

It lets the harness measure the promptkit_async pipeline (state, usage, cost, streaming
through the onion) separately from the library's ``OpenAIProvider``: the
``promptkit-shim-*`` clients put this provider under the real ``Pipeline``,
``StateMiddleware`` and ``ProviderMiddleware``. Its per-turn work is the same as the raw
aiohttp loop's (one POST, SSE lines, ``json.loads`` per event), so the difference between
``promptkit-shim-memory`` and ``aiohttp`` is the cost of the pipeline itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from promptkit_async import BaseProvider, ProviderRequest, ProviderResponse, StreamChunk, Usage

__all__ = ["AiohttpShimProvider"]


class AiohttpShimProvider(BaseProvider):
    """OpenAI-compatible streaming over one shared ``aiohttp.ClientSession``."""

    def __init__(self, model: str, api_key: str, base_url: str, max_connections: int = 0) -> None:
        super().__init__("shim", model)
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._limit = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    def _body(self, request: ProviderRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        max_tokens = request.generation.max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:  # type: ignore[override]
        """Stream SSE deltas, then one chunk carrying the whole response."""
        started = time.perf_counter()
        first: float | None = None
        parts: list[str] = []
        usage = Usage()
        finish: str | None = None
        loads = json.loads
        async with self._client().post(
            self._url, json=self._body(request, True), headers=self._headers
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"upstream answered {resp.status}: {await resp.text()}")
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].rstrip()
                if data == b"[DONE]":
                    continue
                event = loads(data)
                u = event.get("usage")
                if u:
                    usage = Usage(u["prompt_tokens"], u["completion_tokens"], u["total_tokens"])
                for choice in event["choices"]:
                    text = choice["delta"].get("content")
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if text:
                        if first is None:
                            first = time.perf_counter() - started
                        parts.append(text)
                        yield StreamChunk(delta=text)
        yield StreamChunk(
            finish_reason=finish,
            usage=usage,
            response=ProviderResponse(
                "".join(parts),
                finish_reason=finish,
                usage=usage,
                cost=self.calculate_cost(usage),
                model=self.model,
                latency=time.perf_counter() - started,
                time_to_first_chunk=first,
            ),
        )

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """One non-streamed request."""
        started = time.perf_counter()
        async with self._client().post(
            self._url, json=self._body(request, False), headers=self._headers
        ) as resp:
            if resp.status != 200:
                raise RuntimeError(f"upstream answered {resp.status}: {await resp.text()}")
            data = await resp.json()
        u = data["usage"]
        usage = Usage(u["prompt_tokens"], u["completion_tokens"], u["total_tokens"])
        choice = data["choices"][0]
        return ProviderResponse(
            choice["message"]["content"] or "",
            finish_reason=choice["finish_reason"],
            usage=usage,
            cost=self.calculate_cost(usage),
            model=self.model,
            latency=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        """Close the aiohttp session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
