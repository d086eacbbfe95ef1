"""Runs conversation turns on one Redis session from its own OS process.

Usage: python _turns_worker.py REDIS_URL PREFIX SESSION TAG PIPELINES TURNS

It announces itself on the list ``PREFIX-ready``, waits for ``PREFIX-go-TAG`` (so both
workers of the test start together), then runs PIPELINES pipelines (each its own
StateMiddleware) of TURNS turns each, concurrently, on SESSION. Questions are
``TAG-<pipeline>-<turn>``; the mock model answers ``reply to <question>``.
"""

from __future__ import annotations

import asyncio
import sys

from promptkit_async import MockProvider, Pipeline, ProviderMiddleware, StateMiddleware
from promptkit_async.statestore import RedisStateStore


async def main(url: str, prefix: str, session: str, tag: str, pipelines: int, turns: int) -> None:
    async with await RedisStateStore.connect(url, prefix=prefix) as store:
        await store.client.rpush(f"{prefix}-ready", tag)
        await store.client.blpop([f"{prefix}-go-{tag}"], timeout=4)
        provider = MockProvider(
            handler=lambda r: f"reply to {r.messages[-1].content}", model="gpt-4o-mini"
        )

        async def run(p: int) -> None:
            pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
            for i in range(turns):
                await pipe.execute(session, "user", f"{tag}-{p}-{i}")
            await pipe.shutdown()

        await asyncio.gather(*(run(p) for p in range(pipelines)))


if __name__ == "__main__":
    url, prefix, session, tag, pipelines, turns = sys.argv[1:]
    asyncio.run(main(url, prefix, session, tag, int(pipelines), int(turns)))
