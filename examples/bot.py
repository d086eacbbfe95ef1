"""An asyncio chat bot serving many users at once, all on one event loop.

A stand-in for a chat platform integration (Slack, Discord, Telegram...): messages from
many users arrive on one inbox; the bot answers each user in order, while different
users are served concurrently; replies go out through a ``send`` callback. One pipeline
and one store serve everybody; each user's conversation is the session ``bot-<user>``.

Run a simulation of many users talking to it at once::

    python examples/bot.py --users 500

It uses OpenAI when ``OPENAI_API_KEY`` is set (mind the bill), else the offline demo model.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from promptkit_async import (
    DemoProvider,
    InMemoryStateStore,
    Pipeline,
    PromptKitError,
    Provider,
    ProviderMiddleware,
    StateMiddleware,
    StateStore,
)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message a user sent to the bot."""

    user_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Outgoing:
    """The bot's reply to a user."""

    user_id: str
    text: str
    tokens: int = 0
    cost: float = 0.0


Send = Callable[[Outgoing], Awaitable[None]]


class ChatBot:
    """Answers every user's messages in order, many users concurrently.

    Each user with pending messages gets one worker task that drains their mailbox, so
    a user's replies are produced and sent in the order the messages came, while other
    users never wait for them. Workers end when their mailbox is empty, so idle users
    cost nothing. ``/reset`` forgets a user's conversation.
    """

    def __init__(self, pipeline: Pipeline, store: StateStore, send: Send) -> None:
        self.pipeline = pipeline
        self.store = store
        self.send = send
        self._mailboxes: dict[str, deque[Incoming]] = {}
        self.total_cost = 0.0
        self.turns = 0

    def session_id(self, user_id: str) -> str:
        """The session holding ``user_id``'s conversation."""
        return f"bot-{user_id}"

    async def serve(self, inbox: asyncio.Queue[Incoming | None]) -> None:
        """Handle messages from ``inbox`` until it yields ``None``, then finish the backlog."""
        async with anyio.create_task_group() as tasks:
            while (message := await inbox.get()) is not None:
                mailbox = self._mailboxes.get(message.user_id)
                if mailbox is not None:
                    mailbox.append(message)  # that user's worker will get to it
                else:
                    self._mailboxes[message.user_id] = deque((message,))
                    tasks.start_soon(self._worker, message.user_id)

    async def _worker(self, user_id: str) -> None:
        mailbox = self._mailboxes[user_id]
        try:
            while mailbox:
                await self.send(await self.handle(mailbox.popleft()))
        finally:
            del self._mailboxes[user_id]

    async def handle(self, message: Incoming) -> Outgoing:
        """The reply to one message (an apology if the model or the store failed)."""
        session_id = self.session_id(message.user_id)
        if message.text.strip() == "/reset":
            await self.store.delete(session_id)
            return Outgoing(message.user_id, "Conversation reset.")
        try:
            result = await self.pipeline.execute(session_id, "user", message.text)
        except PromptKitError as exc:
            # Nothing of a failed turn is stored, so the user can simply try again.
            return Outgoing(message.user_id, f"Sorry, something went wrong ({exc}).")
        self.turns += 1
        self.total_cost += result.cost.total_cost
        return Outgoing(
            message.user_id,
            result.response.content,
            result.usage.total_tokens,
            result.cost.total_cost,
        )


def make_provider() -> Provider:
    """OpenAI when ``OPENAI_API_KEY`` is set, else the offline demo model."""
    if os.environ.get("OPENAI_API_KEY"):
        from promptkit_async.providers.openai import OpenAIProvider

        return OpenAIProvider("openai", "gpt-4o-mini")
    return DemoProvider()


SCRIPT = ("My name is {name}", "I love {food}", "What's my name?", "What food do I love?")
FOODS = ("pizza", "sushi", "tacos", "ramen", "curry")


async def simulate(users: int, provider: Provider, store: StateStore) -> dict[str, list[str]]:
    """``users`` users each chat through :data:`SCRIPT` at once; returns their replies."""
    replies: dict[str, list[str]] = {f"user{i}": [] for i in range(users)}

    async def send(reply: Outgoing) -> None:
        replies[reply.user_id].append(reply.text)

    inbox: asyncio.Queue[Incoming | None] = asyncio.Queue()
    async with Pipeline(StateMiddleware(store), ProviderMiddleware(provider)) as pipeline:
        bot = ChatBot(pipeline, store, send)
        # Interleave everybody's messages, as a busy platform would deliver them.
        for line in SCRIPT:
            for i in range(users):
                text = line.format(name=f"User{i}", food=FOODS[i % len(FOODS)])
                inbox.put_nowait(Incoming(f"user{i}", text))
        inbox.put_nowait(None)
        await bot.serve(inbox)
    return replies


async def main(users: int) -> None:
    """Run the simulation and print a summary."""
    provider = make_provider()
    try:
        started = time.perf_counter()
        replies = await simulate(users, provider, InMemoryStateStore())
        elapsed = time.perf_counter() - started
    finally:
        await provider.aclose()
    turns = sum(len(r) for r in replies.values())
    print(f"{users} users, {turns} turns in {elapsed:.2f}s on one event loop")
    print("user0:", " | ".join(replies["user0"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    asyncio.run(main(parser.parse_args().users))
