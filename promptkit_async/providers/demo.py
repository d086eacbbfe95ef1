"""An offline, rule-based demo model that answers only from the messages it is sent.

:class:`DemoProvider` is what ``promptkit-chat`` talks to when no API key is set. It keeps
no memory of its own: every answer is computed from ``request.messages`` alone, so when it
remembers your name, that memory is the pipeline's (``StateMiddleware`` and its store),
not the model's::

    You: My name is Alice
    Bot: Hello Alice! It's nice to meet you.
    You: What's my name?
    Bot: Your name is Alice.

It understands a handful of facts (your name, what you love or like, where you live,
what you do) and questions about them; anything else gets a friendly generic reply. It
streams word by word, reports usage (about 4 characters per token) and costs nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from typing_extensions import Unpack

from .._media import image_size
from ..errors import ConfigurationError
from ..pricing import ModelPricing
from ..types import (
    AudioPart,
    DocumentPart,
    ImagePart,
    Message,
    ProviderResponse,
    StreamChunk,
    Usage,
)
from .base import BaseProvider, ProviderIdentity, ProviderRequest

__all__ = ["DemoProvider"]

_FREE = ModelPricing(0.0, 0.0)

# A fact is captured up to the end of its clause; ", " / "." / "!" / " and I" end it.
_END = r"(?=\s*(?:[.!?,;]|\band\s+i\b|\bbut\b|$))"
_FACTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "name",
        re.compile(
            r"\b(?:my\s+name\s+is|my\s+name's|call\s+me|i\s+am\s+called)\s+"
            r"([A-Za-z\u00c0-\uffff][\w'\-]*(?:\s+[A-Z\u00c0-\u024f][\w'\-]*){0,2})",
            re.IGNORECASE,
        ),
    ),
    ("love", re.compile(r"\bi\s+(?:really\s+)?(?:love|adore)\s+(.+?)" + _END, re.IGNORECASE)),
    (
        "like",
        re.compile(r"\bi\s+(?:really\s+)?(?:like|enjoy)\s+(.+?)" + _END, re.IGNORECASE),
    ),
    (
        "favourite",
        re.compile(
            r"\bmy\s+favou?rite\s+(\w+)\s+is\s+(.+?)" + _END,
            re.IGNORECASE,
        ),
    ),
    ("home", re.compile(r"\bi\s+live\s+in\s+(.+?)" + _END, re.IGNORECASE)),
    ("job", re.compile(r"\bi\s+work\s+((?:as|at|for|in)\s+.+?)" + _END, re.IGNORECASE)),
)

_ASK_NAME = re.compile(
    r"\b(?:what(?:'s|\s+is)\s+my\s+name|who\s+am\s+i|(?:do|did)\s+you\s+(?:know|remember)"
    r"\s+my\s+name)\b",
    re.IGNORECASE,
)
_ASK_LOVE = re.compile(
    r"\bwhat\s+(?:\w+\s+)?do\s+i\s+(?:really\s+)?(love|like|enjoy|adore)\b", re.IGNORECASE
)
_ASK_FAVOURITE = re.compile(r"\bwhat(?:'s|\s+is)\s+my\s+favou?rite\s+(\w+)", re.IGNORECASE)
_ASK_HOME = re.compile(r"\bwhere\s+do\s+i\s+live\b", re.IGNORECASE)
_ASK_JOB = re.compile(r"\b(?:what|where)\s+do\s+i\s+(?:do|work)\b", re.IGNORECASE)
_ASK_RECALL = re.compile(
    r"\bwhat\s+(?:have\s+i|did\s+i)\s+(?:just\s+)?(?:said|say|told|tell)\b|"
    r"\bwhat\s+do\s+you\s+(?:know|remember)\s+about\s+me\b",
    re.IGNORECASE,
)
_GREETING = re.compile(r"^\s*(?:hi|hello|hey|good\s+(?:morning|afternoon|evening))\b", re.I)
_THANKS = re.compile(r"\b(?:thanks|thank\s+you)\b", re.IGNORECASE)
_FOODS = frozenset(
    (
        "pizza", "pasta", "sushi", "burger", "burgers", "tacos", "curry", "ramen", "noodles",
        "chocolate", "ice", "cake", "salad", "steak", "bread", "cheese", "pancakes",
        "waffles", "dumplings", "fries",
    )
)  # fmt: skip


@dataclass(slots=True)
class _Facts:
    name: str | None = None
    love: str | None = None
    like: str | None = None
    home: str | None = None
    job: str | None = None
    favourites: dict[str, str] | None = None
    user_turns: int = 0


def _clean(value: str) -> str:
    return value.strip().strip("\"'").rstrip(".!?,;")


def _facts(messages: Sequence[Message]) -> _Facts:
    """What the user has said about themselves in ``messages`` (later statements win)."""
    facts = _Facts()
    for message in messages:
        if message.role != "user":
            continue
        facts.user_turns += 1
        text = message.text
        if "?" in text:
            # Questions ("do I like pizza?") state nothing.
            continue
        for kind, pattern in _FACTS:
            for match in pattern.finditer(text):
                if kind == "favourite":
                    if facts.favourites is None:
                        facts.favourites = {}
                    facts.favourites[match.group(1).lower()] = _clean(match.group(2))
                else:
                    setattr(facts, kind, _clean(match.group(1)))
    return facts


def _persona(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.role == "system":
            return message.text.lower()
    return ""


def _is_food(thing: str) -> bool:
    return any(word in _FOODS for word in thing.lower().split())


def answer(messages: Sequence[Message]) -> str:
    """The demo model's reply to ``messages`` (a pure function of them)."""
    last = next((m for m in reversed(messages) if m.role == "user"), None)
    if last is None:
        return "Hello! I'm the promptkit demo model. Tell me your name to get started."
    text = last.text.strip()
    facts = _facts(messages)
    reply = _reply(text, facts)
    if not isinstance(last.content, str) and (seen := _attachments(last)):
        reply = seen if reply.startswith(_GENERIC) else f"{seen} {reply}"
    if "pirate" in _persona(messages):
        reply = "Arr! " + reply
    return reply


def _reply(text: str, facts: _Facts) -> str:
    if _ASK_NAME.search(text):
        if facts.name:
            return f"Your name is {facts.name}."
        return "I don't know your name yet. Tell me with 'My name is ...'."
    if asked := _ASK_FAVOURITE.search(text):
        what = asked.group(1).lower()
        if facts.favourites and what in facts.favourites:
            return f"Your favourite {what} is {facts.favourites[what]}."
        return f"You haven't told me your favourite {what} yet."
    if asked := _ASK_LOVE.search(text):
        verb = asked.group(1).lower()
        thing = facts.love if verb in ("love", "adore") else facts.like
        thing = thing or facts.love or facts.like
        if thing:
            verb = "love" if thing == facts.love else "like"
            return f"You mentioned that you {verb} {thing}!"
        return "You haven't told me what you love yet. Try 'I love pizza'."
    if _ASK_HOME.search(text):
        if facts.home:
            return f"You told me you live in {facts.home}."
        return "You haven't told me where you live."
    if _ASK_JOB.search(text):
        if facts.job:
            return f"You told me you work {facts.job}."
        return "You haven't told me what you do."
    if _ASK_RECALL.search(text):
        return _recall(facts)
    # Statements: acknowledge what was just said.
    said = _facts([Message("user", text)])
    if said.name:
        return f"Hello {said.name}! It's nice to meet you."
    if said.love or said.like:
        thing = said.love or said.like or ""
        if _is_food(thing):
            return f"That's great! {thing[:1].upper()}{thing[1:]} is delicious."
        return f"That's great! {thing[:1].upper()}{thing[1:]} sounds wonderful."
    if said.home:
        return f"{said.home} sounds like a lovely place to live."
    if said.job:
        return "That sounds interesting! Tell me more about your work."
    if said.favourites:
        what, value = next(iter(said.favourites.items()))
        return f"Noted: your favourite {what} is {value}."
    if _GREETING.search(text):
        if facts.name:
            return f"Hello again, {facts.name}! What would you like to talk about?"
        return "Hello! I'm the promptkit demo model. What's your name?"
    if _THANKS.search(text):
        return "You're welcome!"
    return (
        f"{_GENERIC} (you said: {text!r}). "
        "Tell me your name or what you love, then ask me about it: the conversation's "
        "memory comes from the pipeline, not from me."
    )


_GENERIC = "I'm only a demo model, so I can't really answer that"


def _attachments(message: Message) -> str:
    """What the demo model says about a message's images, documents and audio."""
    seen = []
    for part in message.parts:
        if isinstance(part, ImagePart):
            kind = (part.media_type or "image/?").rpartition("/")[2].upper()
            size = image_size(part.data) if part.data else None
            seen.append(f"an image ({kind}" + (f", {size[0]}x{size[1]})" if size else ")"))
        elif isinstance(part, DocumentPart):
            seen.append(f"a document ({part.filename or part.media_type})")
        elif isinstance(part, AudioPart):
            seen.append(f"an audio clip ({part.format})")
    if not seen:
        return ""
    them, stay = ("it", "it stays") if len(seen) == 1 else ("them", "they stay")
    return (
        f"You sent me {' and '.join(seen)}. I'm an offline demo model, so I can't look "
        f"inside {them}, but {stay} in the conversation's history."
    )


def _recall(facts: _Facts) -> str:
    known = []
    if facts.name:
        known.append(f"your name is {facts.name}")
    if facts.love:
        known.append(f"you love {facts.love}")
    if facts.like:
        known.append(f"you like {facts.like}")
    if facts.home:
        known.append(f"you live in {facts.home}")
    if facts.job:
        known.append(f"you work {facts.job}")
    if not known:
        return f"You've sent {facts.user_turns} message(s), but nothing I can remember yet."
    return (
        "You told me that "
        + ", ".join(known[:-1])
        + (" and " if known[:-1] else "")
        + (known[-1] + ".")
    )


def _tokens(text: str) -> int:
    # Roughly 4 characters per token (OpenAI's rule of thumb); never 0 for text.
    return (len(text) + 3) // 4


_WORDS = re.compile(r"\S+\s*|\s+")


class DemoProvider(BaseProvider):
    """A stateless, rule-based model for demos and offline examples. No network, no key.

    Args:
        chunk_delay: seconds to wait between streamed chunks (the first chunk is sent at
            once), to make streaming visible. ``0`` streams as fast as possible.
        model / name: names reported in responses (``"demo"`` by default; ``id=`` is a
            deprecated spelling of ``name=``). Named after a model in the price table
            (say ``"gpt-4o-mini"``), costs are what that model would charge for the
            estimated tokens; otherwise they are zero.
        generation / pricing: as for real providers (``pricing`` sets the price;
            ``defaults=`` is deprecated).

    It answers from ``request.messages`` only (see :func:`answer`): state lives in the
    pipeline. Usage is estimated at about 4 characters per token. Safe to share between
    any number of tasks; it holds no state.
    """

    kind = "demo"

    def __init__(
        self,
        *,
        chunk_delay: float = 0.0,
        model: str = "demo",
        **options: Unpack[ProviderIdentity],
    ) -> None:
        if chunk_delay < 0:
            raise ConfigurationError("chunk_delay must be >= 0 seconds")
        super().__init__(model=model, **options)
        self.pricing = self.pricing or _FREE
        self.chunk_delay = chunk_delay

    def _response(self, request: ProviderRequest, started: float) -> ProviderResponse:
        text = answer(request.messages)
        usage = Usage(sum(_tokens(m.text) + 4 for m in request.messages), _tokens(text))
        return ProviderResponse(
            text,
            finish_reason="stop",
            usage=usage,
            cost=self.calculate_cost(usage),
            model=self.model,
            latency=time.perf_counter() - started,
        )

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """Answer at once, without streaming."""
        return self._response(request, time.perf_counter())

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        """Stream the reply word by word, then the final response with usage."""
        started = time.perf_counter()
        response = self._response(request, started)
        first: float | None = None
        for index, match in enumerate(_WORDS.finditer(response.content)):
            if index and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            if first is None:
                first = time.perf_counter() - started
            yield StreamChunk(delta=match.group())
        yield StreamChunk(
            finish_reason="stop",
            usage=response.usage,
            response=ProviderResponse(
                response.content,
                finish_reason="stop",
                usage=response.usage,
                cost=response.cost,
                model=self.model,
                latency=time.perf_counter() - started,
                time_to_first_chunk=first,
            ),
        )
