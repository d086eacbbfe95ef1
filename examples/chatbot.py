"""The tutorial's "complete multi-user chatbot", in async Python.

    python examples/chatbot.py            # USER=alice / USER=bob for separate histories

Uses OpenAI when ``OPENAI_API_KEY`` is set, otherwise an offline MockProvider (and says so).
Uses Redis at ``REDIS_ADDR`` (default localhost:6379) when it answers, otherwise the
in-memory store (and says why). Commands: ``exit`` to quit, ``clear`` to reset.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import date

from promptkit_async import (
    GenerationConfig,
    InMemoryStateStore,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    ProviderRequest,
    StateMiddleware,
    StateStore,
    StoreUnavailableError,
)
from promptkit_async.providers.base import Provider
from promptkit_async.providers.demo import answer
from promptkit_async.providers.openai import OpenAIProvider
from promptkit_async.statestore import RedisStateStore


def offline_reply(request: ProviderRequest) -> str:
    """The offline stand-in answers by the demo model's rules, from the history it is sent."""
    return answer(request.messages)


async def read_line(prompt: str) -> str | None:
    """input() off the event loop; None at end of input."""
    try:
        return await asyncio.to_thread(input, prompt)
    except EOFError:
        return None


async def main() -> None:
    api_key = os.environ.get("OPENAI_API_KEY")
    provider: Provider
    if api_key:
        provider = OpenAIProvider("openai", "gpt-4o-mini", api_key)
    else:
        print("OPENAI_API_KEY not set: using an offline MockProvider (rule-based demo replies).\n")
        provider = MockProvider(handler=offline_reply, model="gpt-4o-mini")

    redis_addr = os.environ.get("REDIS_ADDR", "localhost:6379")
    store: StateStore
    redis_store: RedisStateStore | None = None
    try:
        redis_store = await RedisStateStore.connect(redis_addr)
        store = redis_store
    except StoreUnavailableError as exc:
        print(f"Redis unavailable, using in-memory store: {exc}\n")
        store = InMemoryStateStore()

    username = os.environ.get("USER") or "guest"
    session_id = f"chat-{username}-{date.today().isoformat()}"
    config = ProviderMiddlewareConfig(GenerationConfig(max_tokens=500, temperature=0.7))
    total_cost = 0.0
    try:
        async with (
            provider,
            Pipeline(
                StateMiddleware(store), ProviderMiddleware(provider, None, None, config)
            ) as pipe,
        ):
            print("=== Chatbot ===")
            print(f"Session: {session_id}")
            print("Commands: 'exit' to quit, 'clear' to reset conversation\n")
            while True:
                line = await read_line("You: ")
                if line is None or line.strip() == "exit":
                    print(f"\nTotal cost this session: ${total_cost:.6f}\nGoodbye!")
                    return
                text = line.strip()
                if text == "clear":
                    await store.delete(session_id)
                    print("\n[Conversation cleared]\n")
                    continue
                if not text:
                    continue
                try:
                    result = await pipe.execute(session_id, "user", text)
                except Exception as exc:  # a chat loop reports the error and goes on
                    print(f"\nError: {exc}\n", file=sys.stderr)
                    continue
                print(f"\nBot: {result.response.content}")
                total_cost += result.cost.total_cost
                print(
                    f"\n[Tokens: {result.response.usage.total_tokens} | "
                    f"This: ${result.cost.total_cost:.6f} | Total: ${total_cost:.6f}]\n"
                )
    finally:
        if redis_store is not None:
            await redis_store.aclose()


if __name__ == "__main__":
    asyncio.run(main())
