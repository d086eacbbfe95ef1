"""One OS process of the concurrency soak: random concurrent turns on shared sessions.

Usage: python _soak_worker.py CONFIG_JSON

The config names the Redis URL and key prefix, this process's tag, the session count,
the number of turns, concurrent workers and pipelines (each pipeline has its own
``StateMiddleware``, so turns of different pipelines on one session really do run at
the same time), a seed, the fraction of turns that fail, and the path of the log.

The process prints ``ready``, waits for ``go`` on stdin (so that both processes start
together), runs its turns, writes its log (one JSON object per turn: question, session,
pipeline, start and end on the system-wide monotonic clock, and the error if it failed)
and prints ``done``. Failures are injected two ways: the mock model raises
``InternalServerError`` before answering, or a middleware raises after the model
answered (just before the save). Neither kind of turn may be stored.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from promptkit_async import (
    InternalServerError,
    MockProvider,
    Pipeline,
    PipelineError,
    ProviderMiddleware,
    ProviderRequest,
    StateMiddleware,
)
from promptkit_async.pipeline import ExecutionContext, Next
from promptkit_async.statestore import RedisStateStore
from promptkit_async.types import StreamChunk


def fails(ask: str, seed: int, rate: float, kind: str) -> bool:
    """Whether the turn asking ``ask`` is one of the injected failures of ``kind``."""
    return random.Random(f"{seed}:{kind}:{ask}").random() < rate


async def main(config: dict[str, Any]) -> None:
    tag: str = config["tag"]
    seed: int = config["seed"]
    rate: float = config["fail_rate"]
    rng = random.Random(f"{seed}:{tag}")
    sessions = [f"soak{i}" for i in range(config["sessions"])]

    async def model(request: ProviderRequest) -> str:
        ask = request.messages[-1].content
        for _ in range(random.randrange(4)):
            await asyncio.sleep(0)  # interleave with other turns (not a synchronisation)
        if fails(ask, seed, rate, "model"):
            raise InternalServerError("injected model failure", status_code=500)
        return f"reply to {ask}"

    async def fail_after_model(ctx: ExecutionContext, next: Next) -> AsyncIterator[StreamChunk]:
        async for chunk in next(ctx):
            yield chunk
        if fails(ctx.input.content, seed, rate, "after"):
            raise PipelineError("injected failure after the model answered")

    store = await RedisStateStore.connect(config["url"], prefix=config["prefix"])
    provider = MockProvider(handler=model)
    pipes = [
        Pipeline(StateMiddleware(store), fail_after_model, ProviderMiddleware(provider))
        for _ in range(config["pipelines"])
    ]
    log: list[dict[str, Any]] = []
    counter = iter(range(config["turns"]))

    async def worker() -> None:
        for n in counter:
            session = rng.choice(sessions)
            p = rng.randrange(len(pipes))
            ask = f"{session}|{tag}-{n}"
            entry: dict[str, Any] = {"q": ask, "s": session, "p": f"{tag}/{p}"}
            entry["start"] = time.monotonic_ns()
            try:
                await pipes[p].execute(session, "user", ask)
            except (InternalServerError, PipelineError) as exc:
                entry["error"] = type(exc).__name__
            entry["end"] = time.monotonic_ns()
            log.append(entry)

    print("ready", flush=True)
    if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
        raise SystemExit("expected 'go'")
    await asyncio.gather(*(worker() for _ in range(config["workers"])))
    for pipe in pipes:
        await pipe.shutdown()
    await store.aclose()
    await asyncio.to_thread(Path(config["log"]).write_text, json.dumps(log), "utf-8")
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
