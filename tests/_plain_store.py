"""A store of a user's own: the StateStore methods only (no session leases, no ledger)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from promptkit_async import InMemoryStateStore, Message
from promptkit_async.statestore import SessionPage


class PlainStore:
    """A StateStore that is not a TurnStore, over an in-memory store.

    Subclass it and override a method to make a custom store that misbehaves.
    """

    def __init__(self) -> None:
        self.inner = InMemoryStateStore()

    async def load(self, session_id: str, last_n: int | None = None) -> list[Message]:
        return await self.inner.load(session_id, last_n)

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        await self.inner.append(session_id, messages)

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

    async def __aenter__(self) -> PlainStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
