"""Conversation memory in Redis, falling back to an in-memory store when Redis is down.

The tutorial's production pattern in Python::

    REDIS_ADDR=localhost:6379 SESSION_ID=alice python examples/redis_fallback.py
    REDIS_ADDR=localhost:6379 SESSION_ID=alice python examples/redis_fallback.py "What's my name?"

With Redis the second run remembers the first: restart with the same session id to
continue. Without Redis it warns and keeps the conversation in memory for this run.
With ``OPENAI_API_KEY`` set it talks to gpt-4o-mini; otherwise a MockProvider answers,
so the example runs anywhere, offline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys

from promptkit_async import (
    GenerationConfig,
    InMemoryStateStore,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    StateMiddleware,
    StoreError,
)
from promptkit_async.providers.base import Provider, ProviderRequest
from promptkit_async.statestore import RedisStateStore, StateStore


async def open_store(address: str) -> StateStore:
    """Redis if it answers, else an in-memory store (conversations then end with the run)."""
    try:
        return await RedisStateStore.connect(address, connect_timeout=2.0)
    except StoreError as exc:
        logging.warning("Redis unavailable, using in-memory store: %s", exc)
        return InMemoryStateStore()


def offline_model(request: ProviderRequest) -> str:
    """A stand-in model that remembers names, to show the history at work."""
    said = request.messages[-1].content
    if match := re.search(r"my name is (\w+)", said, re.IGNORECASE):
        return f"Nice to meet you, {match.group(1)}!"
    if "my name" in said.lower():
        for message in reversed(request.messages[:-1]):
            if message.role == "user" and (
                match := re.search(r"my name is (\w+)", message.content, re.I)
            ):
                return f"Your name is {match.group(1)}."
        return "You haven't told me your name yet."
    return f"You said: {said}"


def make_provider() -> Provider:
    api_key = os.environ.get("OPENAI_API_KEY")
    if api_key:
        from promptkit_async.providers.openai import OpenAIProvider

        return OpenAIProvider("openai", "gpt-4o-mini", api_key)
    return MockProvider(handler=offline_model, model="gpt-4o-mini")


async def main(messages: list[str]) -> None:
    store = await open_store(os.environ.get("REDIS_ADDR", "localhost:6379"))
    provider = make_provider()
    session_id = os.environ.get("SESSION_ID", f"user-{os.getpid()}")
    print(f"Session: {session_id} ({type(store).__name__})")
    config = ProviderMiddlewareConfig(GenerationConfig(max_tokens=500, temperature=0.7))
    pipeline = Pipeline(StateMiddleware(store), ProviderMiddleware(provider, config=config))
    try:
        for text in messages:
            result = await pipeline.execute(session_id, "user", text)
            print(f"You: {text}\nBot: {result.response.content}")
            print(f"[tokens: {result.usage.total_tokens} | ${result.cost.total_cost:.6f}]")
    finally:
        await pipeline.shutdown()
        await provider.aclose()
        await store.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    asyncio.run(main(sys.argv[1:] or ["Hi! My name is Alice.", "What's my name?"]))
