"""Invariants the fault suites check on stored histories, and a store that can hold a save.

Every suite words its questions so the history itself can be audited: a question names
its session (``"<session>|<tag>"``) and the model (mock or loopback server) answers
``"reply to <question>"``. A history is then *whole* when it is a sequence of
``user question`` / ``assistant reply to question`` pairs, each question of this session.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from promptkit_async import (
    AmbiguousTurnError,
    Message,
    Pipeline,
    StoreError,
    StoreTimeoutError,
)
from promptkit_async.statestore import SessionPage, StateStore, finish_shielded

PHASE_GUARD = 60.0  # seconds: a load phase (faults observed, recovery) taking longer fails


class HistoryError(AssertionError):
    """A stored history broke an invariant (the message says which and where)."""


def question(session: str, tag: str) -> str:
    return f"{session}|{tag}"


def whole_turns(messages: Sequence[Message], session: str) -> list[str]:
    """The questions of ``session``'s history, checking that every turn is whole.

    Raises :class:`HistoryError` if a user message is not followed by its own reply, a
    reply stands alone, or a question belongs to another session (a cross-session
    write or a stale read).
    """
    questions = []
    if len(messages) % 2:
        raise HistoryError(f"{session!r}: odd number of messages ({len(messages)}): half a turn")
    for i in range(0, len(messages), 2):
        ask, reply = messages[i], messages[i + 1]
        if ask.role != "user" or reply.role != "assistant":
            raise HistoryError(
                f"{session!r}[{i}]: roles {ask.role}/{reply.role}, not user/assistant"
            )
        if reply.content != f"reply to {ask.content}":
            raise HistoryError(f"{session!r}[{i}]: {ask.content!r} answered by {reply.content!r}")
        owner = ask.content.rsplit("|", 1)[0]
        if owner != session:
            raise HistoryError(f"{session!r}[{i}]: holds {ask.content!r} of session {owner!r}")
        questions.append(ask.content)
    duplicates = [q for q, n in Counter(questions).items() if n > 1]
    if duplicates:
        raise HistoryError(f"{session!r}: turns stored twice: {duplicates[:5]}")
    return questions


async def all_sessions(store: StateStore) -> set[str]:
    """Every session id the store lists, following cursors."""
    found: set[str] = set()
    cursor: str | None = None
    while True:
        page: SessionPage = await store.list_sessions(cursor=cursor, limit=100)
        found.update(page.session_ids)
        cursor = page.next_cursor
        if cursor is None:
            return found


async def load_all(store: StateStore, sessions: Sequence[str]) -> dict[str, list[str]]:
    """``{session: questions}`` for ``sessions``, every history checked whole."""
    return {s: whole_turns(await store.load(s), s) for s in sessions}


class GatedStore:
    """A store wrapper whose ``append`` can be held, to cancel turns *during* the save.

    ``append`` records that the save began (``began``), then waits for ``gate`` (open by
    default) and for ``yields`` event-loop iterations, then calls the real store. Every
    other operation is passed straight through.
    """

    def __init__(self, inner: StateStore, *, yields: int = 0) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.yields = yields
        self.began: list[tuple[str, str]] = []
        self.finished: list[tuple[str, str]] = []
        self._changed = asyncio.Condition()

    async def wait_began(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.began) >= count)

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        # A store that suspends in append finishes a begun save through finish_shielded,
        # as the StateStore contract asks.
        await finish_shielded(self._append(session_id, messages))

    async def _append(self, session_id: str, messages: Sequence[Message]) -> None:
        key = (session_id, messages[0].content)
        self.began.append(key)
        async with self._changed:
            self._changed.notify_all()
        await self.gate.wait()
        for _ in range(self.yields):
            await asyncio.sleep(0)
        await self.inner.append(session_id, messages)
        self.finished.append(key)

    async def load(self, session_id: str, last_n: int | None = None) -> list[Message]:
        return await self.inner.load(session_id, last_n)

    async def save(self, session_id: str, messages: Sequence[Message]) -> None:
        await self.inner.save(session_id, messages)

    async def delete(self, session_id: str) -> bool:
        return await self.inner.delete(session_id)

    async def count(self, session_id: str) -> int:
        return await self.inner.count(session_id)

    async def list_sessions(self, *, cursor: str | None = None, limit: int = 100) -> SessionPage:
        return await self.inner.list_sessions(cursor=cursor, limit=limit)

    async def fork(self, source_id: str, target_id: str) -> int:
        return await self.inner.fork(source_id, target_id)

    async def get_metadata(self, session_id: str) -> dict[str, Any]:
        return await self.inner.get_metadata(session_id)

    async def merge_metadata(self, session_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.inner.merge_metadata(session_id, patch)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Load:
    """Workers running turns non-stop on shared sessions, and what happened to each turn.

    With ``turn_ids``, every turn is sent with its question as ``turn_id``, and a turn
    that fails with :class:`AmbiguousTurnError` is retried with the same id (up to
    ``retries`` times, as its worker's next turns) until it is acknowledged, stored or
    refused: ``ambiguous`` holds those questions, ``replayed`` counts the retries that
    found their turn already stored.
    """

    def __init__(
        self,
        pipe: Pipeline,
        sessions: list[str],
        seed: int,
        *,
        hang_guard: float,
        turn_ids: bool = False,
        retries: int = 100,
    ) -> None:
        self.pipe = pipe
        self.hang_guard = hang_guard  # seconds: a turn taking this long counts as a hang
        self.sessions = sessions
        self.rng = random.Random(seed)
        self.acked: dict[str, list[str]] = {s: [] for s in sessions}
        self.failed: set[str] = set()
        self.not_applied: set[str] = set()  # timed out, and said nothing was applied
        self.errors: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.unexpected: list[BaseException] = []
        self.hangs = 0
        self.ok = 0
        self.fail = 0
        self.stopping = False
        self.turn_ids = turn_ids
        self.retries = retries
        self.ambiguous: set[str] = set()
        self.replayed = 0
        self.replayed_asks: set[str] = set()  # acknowledged by a replay
        self._changed = asyncio.Condition()

    async def worker(self, w: int) -> None:
        i = 0
        retry: tuple[str, str] | None = None  # (session, question) of an ambiguous turn
        tries = 0
        while not self.stopping:
            if retry is not None:
                session, ask = retry
                retry = None
            else:
                session = self.rng.choice(self.sessions)
                ask = question(session, f"w{w}-{i}")
                i += 1
                tries = 0
            tries += 1
            turn_id = ask if self.turn_ids else None
            try:
                result = await asyncio.wait_for(
                    self.pipe.execute(session, "user", ask, turn_id=turn_id), self.hang_guard
                )
            except asyncio.TimeoutError:
                self.hangs += 1
                self.failed.add(ask)
            except StoreError as exc:
                self.errors[type(exc).__name__] += 1
                text = str(exc)
                kind = (
                    "timed out" if "did not answer" in text or "no connection" in text
                    else "loading" if "loading" in text.lower()
                    else "starting up" if "starting up" in text
                    else "refused/lost" if "cannot reach" in text or "cannot use" in text
                    else text[:60]
                )  # fmt: skip
                self.kinds[kind] += 1
                self.failed.add(ask)
                if isinstance(exc, StoreTimeoutError) and not exc.maybe_applied:
                    self.not_applied.add(ask)
                if isinstance(exc, AmbiguousTurnError):
                    self.ambiguous.add(ask)
                    if self.turn_ids and tries <= self.retries:
                        retry = (session, ask)
                self.fail += 1
            except Exception as exc:  # anything untyped fails the test at the end
                self.unexpected.append(exc)
                self.failed.add(ask)
                self.fail += 1
            else:
                if ask not in self.acked[session]:
                    self.acked[session].append(ask)
                if result.replayed:
                    self.replayed += 1
                    self.replayed_asks.add(ask)
                self.ok += 1
            async with self._changed:
                self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), PHASE_GUARD)


async def audit(load: Load, store: StateStore) -> tuple[set[str], int]:
    """Check the histories a faulted load left: (turns attempted, stored turns checked).

    No turn hung, every failure was a :class:`StoreError` with at least one
    ``StoreUnavailableError``; every stored history decodes and is whole, its own and
    free of duplicates; every acknowledged turn is stored, in acknowledgement order;
    nothing is stored that was not attempted.
    """
    assert load.hangs == 0
    assert load.unexpected == []
    assert load.errors["StoreUnavailableError"] > 0
    attempted = load.failed | {a for acked in load.acked.values() for a in acked}
    checked = 0
    for session in load.sessions:
        stored = whole_turns(await store.load(session), session)  # decodes, whole, own, once
        acked = load.acked[session]
        # All there; in acknowledgement order, except replays (acknowledged by a retry,
        # after turns stored later than they were).
        assert set(acked) <= set(stored)
        in_order = [a for a in acked if a not in load.replayed_asks]
        assert [q for q in stored if q in set(in_order)] == in_order
        assert set(stored) <= attempted  # nothing made up
        assert not set(stored) & load.not_applied  # "not applied" was true
        checked += len(stored)
    return attempted, checked
