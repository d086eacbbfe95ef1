"""examples/bot.py: many users served at once on one loop, each in order and isolated."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from examples.bot import FOODS, ChatBot, Incoming, Outgoing, simulate
from promptkit_async import (
    DemoProvider,
    InMemoryStateStore,
    InternalServerError,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderRequest,
    StateMiddleware,
)

ROOT = Path(__file__).resolve().parents[2]


async def test_many_users_at_once_each_get_their_own_answers() -> None:
    store = InMemoryStateStore()
    replies = await simulate(300, DemoProvider(), store)
    assert len(replies) == 300
    for i in range(300):
        food = FOODS[i % len(FOODS)]
        assert replies[f"user{i}"] == [
            f"Hello User{i}! It's nice to meet you.",
            f"That's great! {food.capitalize()} is delicious.",
            f"Your name is User{i}.",
            f"You mentioned that you love {food}!",
        ]
        assert len(await store.load(f"bot-user{i}")) == 8


async def test_users_run_concurrently_not_one_after_another() -> None:
    # Every user's first turn must start before any finishes: the provider holds each
    # call until all 50 users are inside it at once.
    users = 50
    inside = 0
    all_in = asyncio.Event()

    async def handler(request: ProviderRequest) -> str:
        nonlocal inside
        inside += 1
        if inside == users:
            all_in.set()
        await all_in.wait()
        return "ok"

    store = InMemoryStateStore()
    sent: list[Outgoing] = []

    async def send(reply: Outgoing) -> None:
        sent.append(reply)

    inbox: asyncio.Queue[Incoming | None] = asyncio.Queue()
    for i in range(users):
        inbox.put_nowait(Incoming(f"u{i}", "hello"))
    inbox.put_nowait(None)
    provider = MockProvider(handler=handler)
    async with Pipeline(StateMiddleware(store), ProviderMiddleware(provider)) as pipeline:
        await asyncio.wait_for(ChatBot(pipeline, store, send).serve(inbox), 30)
    assert len(sent) == users


async def test_failure_apologises_stores_nothing_and_reset_forgets() -> None:
    store = InMemoryStateStore()
    sent: list[Outgoing] = []

    async def send(reply: Outgoing) -> None:
        sent.append(reply)

    provider = MockProvider(
        ["Hi Ann!", InternalServerError("boom", status_code=500, provider="mock"), "Again"]
    )
    inbox: asyncio.Queue[Incoming | None] = asyncio.Queue()
    for text in ("My name is Ann", "What's my name?", "/reset", "hello?"):
        inbox.put_nowait(Incoming("ann", text))
    inbox.put_nowait(None)
    async with Pipeline(StateMiddleware(store), ProviderMiddleware(provider)) as pipeline:
        bot = ChatBot(pipeline, store, send)
        await bot.serve(inbox)
    texts = [r.text for r in sent]
    assert texts[0] == "Hi Ann!"
    assert texts[1].startswith("Sorry, something went wrong")
    assert texts[2:] == ["Conversation reset.", "Again"]
    # After /reset only the last turn is stored; the failed one never was.
    assert [m.content for m in await store.load("bot-ann")] == ["hello?", "Again"]
    assert bot.turns == 2


def test_script_runs() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "examples/bot.py", "--users", "20"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "20 users, 80 turns" in out
    assert "Your name is User0." in out
