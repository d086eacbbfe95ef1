"""Client CPU per streamed request over loopback, per HTTP transport.

A throwaway measurement (not a test): starts a fake OpenAI-style SSE server in a child
process, then streams ``--requests`` chat completions at ``--concurrency`` through each
client variant and prints the client process's CPU time per request.

    python bench/transport_cpu.py --requests 2000 --concurrency 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from aiohttp import web

if "--no-orjson" in sys.argv:  # before promptkit_async is imported
    sys.modules["orjson"] = None  # type: ignore[assignment]

from promptkit_async.providers._sse import SSEDecoder

BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
).encode()


def _chunk(text: str | None, finish: str | None = None, usage: bool = False) -> bytes:
    payload: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": []
        if usage
        else [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }
    if usage:
        payload["usage"] = {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _serve(port: int, chunks: int, gap: float, ready: multiprocessing.synchronize.Event) -> None:
    events = [_chunk(f"tok{i} ") for i in range(chunks)]
    tail = _chunk(None, "stop") + _chunk(None, usage=True) + b"data: [DONE]\n\n"

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
            if gap:
                await asyncio.sleep(gap)
        await response.write(tail)
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _consume(decoder: SSEDecoder, chunk: bytes, out: list[str]) -> bool:
    for event in decoder.feed(chunk):
        if event.data == "[DONE]":
            return True
        payload = json.loads(event.data)
        for choice in payload["choices"]:
            text = choice["delta"].get("content")
            if text:
                out.append(text)
    return False


async def _raw_aiohttp(url: str, requests: int, concurrency: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            async with session.post(
                url, data=BODY, headers={"Content-Type": "application/json"}
            ) as response:
                decoder, out = SSEDecoder(), []
                async for chunk in response.content.iter_any():
                    if _consume(decoder, chunk, out):
                        break

        await _run(one, requests, concurrency)


async def _httpx(client: httpx.AsyncClient, url: str, requests: int, concurrency: int) -> None:
    async with client:

        async def one() -> None:
            request = client.build_request(
                "POST", url, content=BODY, headers={"Content-Type": "application/json"}
            )
            response = await client.send(request, stream=True)
            try:
                decoder, out = SSEDecoder(), []
                async for chunk in response.aiter_bytes():
                    if _consume(decoder, chunk, out):
                        break
            finally:
                await response.aclose()

        await _run(one, requests, concurrency)


async def _provider(url: str, requests: int, concurrency: int) -> None:
    from promptkit_async.providers.base import ProviderRequest
    from promptkit_async.providers.openai import OpenAIProvider
    from promptkit_async.types import Message

    async with OpenAIProvider(
        "openai", "gpt-4o-mini", "sk-test", base_url=url.rsplit("/chat", 1)[0]
    ) as provider:
        request = ProviderRequest([Message("user", "hello")])

        async def one() -> None:
            async for _chunk in provider.stream(request):
                pass

        await _run(one, requests, concurrency)


async def _pipeline(url: str, requests: int, concurrency: int) -> None:
    from promptkit_async.pipeline import Pipeline
    from promptkit_async.pipeline.middleware import ProviderMiddleware, StateMiddleware
    from promptkit_async.providers.openai import OpenAIProvider
    from promptkit_async.statestore import InMemoryStateStore

    async with OpenAIProvider(
        "openai", "gpt-4o-mini", "sk-test", base_url=url.rsplit("/chat", 1)[0]
    ) as provider:
        store = InMemoryStateStore()
        pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
        counter = iter(range(10**9))

        async def one() -> None:
            # A new session per turn keeps the history (and so the body) constant.
            async for _chunk in pipe.stream(f"s{next(counter)}", "user", "hello"):
                pass

        await _run(one, requests, concurrency)
        await pipe.shutdown()


async def _run(one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> None:
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.002, help="server seconds per chunk")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (best kept)")
    parser.add_argument("--profile", action="store_true", help="cProfile the last variant")
    parser.add_argument(
        "--no-orjson", action="store_true", help="make the providers parse JSON with the stdlib"
    )
    parser.add_argument("--only", default="", help="comma-separated variants (default: all)")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = multiprocessing.Event()
    server = multiprocessing.Process(
        target=_serve, args=(port, args.chunks, args.gap, ready), daemon=True
    )
    server.start()
    ready.wait(10)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    big = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=None)

    def variants() -> dict[str, Callable[[int], Awaitable[None]]]:
        from httpx_aiohttp import AiohttpTransport as PackageTransport

        from promptkit_async.providers._transport import AiohttpTransport

        return {
            "aiohttp (raw)": lambda n: _raw_aiohttp(url, n, args.concurrency),
            "httpx + httpcore": lambda n: _httpx(
                httpx.AsyncClient(limits=big), url, n, args.concurrency
            ),
            "httpx + httpx-aiohttp": lambda n: _httpx(
                httpx.AsyncClient(transport=PackageTransport(limits=big)),
                url,
                n,
                args.concurrency,
            ),
            "httpx + our transport": lambda n: _httpx(
                httpx.AsyncClient(transport=AiohttpTransport()), url, n, args.concurrency
            ),
            "OpenAIProvider.stream": lambda n: _provider(url, n, args.concurrency),
            "Pipeline.stream (memory)": lambda n: _pipeline(url, n, args.concurrency),
        }

    only = {v.strip() for v in args.only.split(",") if v.strip()}
    print(
        f"{args.requests} streamed requests, {args.concurrency} concurrent, "
        f"{args.chunks} chunks each, pid {os.getpid()}"
    )
    for name, run in variants().items():
        if only and not any(o in name for o in only):
            continue
        try:
            asyncio.run(run(min(args.concurrency, args.requests)))  # warm up
        except ImportError as exc:
            print(f"{name:28s} skipped ({exc})")
            continue
        best_cpu = best_wall = float("inf")
        for _ in range(args.repeat):
            cpu, wall = time.process_time(), time.perf_counter()
            asyncio.run(run(args.requests))
            best_cpu = min(best_cpu, time.process_time() - cpu)
            best_wall = min(best_wall, time.perf_counter() - wall)
        cpu, wall = best_cpu, best_wall
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(asyncio.run, run(args.requests))
            pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
        print(
            f"{name:28s} {cpu / args.requests * 1e3:7.3f} ms CPU/request "
            f"{args.requests / wall:8.0f} req/s wall"
        )
    server.terminate()
    server.join()


if __name__ == "__main__":
    main()
