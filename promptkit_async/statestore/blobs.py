"""Large binary parts kept out of the history: a blob store of your choice holds the bytes.

By default every store keeps a part's bytes inline, in the message record (base64, so
4/3 of the size). Every turn loads the history again, so a session with a 2 MB image
reads ~2.7 MB per turn from SQLite or Redis, and Redis keeps it all in memory.
:class:`BlobOffloadStore` wraps any :class:`~promptkit_async.statestore.StateStore` and
moves parts of at least ``min_bytes`` into a :class:`BlobStore` you provide (S3, a
filesystem, a Redis hash...): the record then holds only a key (``sha256-<hex>`` of the
bytes), the part's media type and (for images) its size, so token counting still works.

Keys are content addresses: the same image stored twice is one blob, a retried write is
harmless, and a blob is never changed. Deleting a session does not delete its blobs
(other sessions, or forks, may share them): expire them in the blob store (for example
by an object lifecycle rule), or collect the keys still referenced.

A URL (``ImagePart(url=...)``) or a provider file id is a reference too, and costs
nothing to store; the provider fetches it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar, runtime_checkable

from typing_extensions import Self

from .._concurrency import finish_shielded
from .._lifecycle import AsyncResource
from .._validation import check_session_id
from ..errors import InvalidMessageError, InvalidRequestError, StoreDataError
from ..types import AudioPart, ContentPart, Cost, DocumentPart, ImagePart, Message, Usage
from .base import Ledger, SessionPage, StateStore, TurnClaim, TurnStore

__all__ = ["DEFAULT_MIN_BYTES", "BlobOffloadStore", "BlobStore", "InMemoryBlobStore", "blob_key"]

#: Parts at least this large are offloaded by default (64 KiB).
DEFAULT_MIN_BYTES = 64 * 1024

_Binary = ImagePart | DocumentPart | AudioPart
_T = TypeVar("_T")


@runtime_checkable
class BlobStore(Protocol):
    """Where offloaded bytes live; implement these two methods over your storage.

    ``put`` must be idempotent (the same key always comes with the same bytes); ``get``
    raises :class:`KeyError` for an unknown key. Both may be called concurrently.
    """

    async def put(self, key: str, data: bytes, media_type: str) -> None:
        """Store ``data`` under ``key``."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key``."""
        ...


class InMemoryBlobStore:
    """A :class:`BlobStore` in a dict of this process (for tests and examples)."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes, media_type: str) -> None:
        """Store ``data`` under ``key``."""
        self.blobs[key] = data

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key`` (:class:`KeyError` if none)."""
        return self.blobs[key]


def blob_key(data: bytes) -> str:
    """The content address under which ``data`` is offloaded: ``sha256-<hex digest>``."""
    return "sha256-" + hashlib.sha256(data).hexdigest()


async def _all(calls: Sequence[Awaitable[_T]]) -> list[_T]:
    """Await ``calls`` concurrently; the first error is raised as itself, and the calls
    still running are cancelled and awaited before it propagates (also on cancellation)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" log for a second error


def _media_type(part: _Binary) -> str:
    if isinstance(part, AudioPart):
        return f"audio/{part.format}"
    return part.media_type or "application/octet-stream"


class BlobOffloadStore(AsyncResource):
    """A :class:`~promptkit_async.statestore.StateStore` that keeps large parts in a blob store.

    Args:
        store: the store that keeps the histories (any store).
        blobs: where the bytes of large parts go.
        min_bytes: parts with at least this many bytes are offloaded; smaller ones stay
            inline.
        resolve: load fetches offloaded bytes back into the parts (``data``), so
            providers and exports get whole messages. With ``False`` loaded parts keep
            only their ``blob_key`` (cheaper for listing and UIs that fetch on demand).

    Costs: each ``append``/``save`` writes each new large part once to the blob store
    (before the history, so a failed write leaves at most an unreferenced blob); each
    ``load`` with ``resolve=True`` reads every offloaded part of the loaded messages
    (fetched concurrently, each key once per load).

    Safe to share between tasks like the wrapped store; a blob store error propagates
    unchanged and the history is then not written. Closing this closes the wrapped
    store, not the blob store.

    Session leases: when the wrapped store is a
    :class:`~promptkit_async.statestore.TurnStore` (every store of the library is),
    the wrapper is one too: ``BlobOffloadStore(store, blobs)`` is then an instance of
    a subclass with the TurnStore methods, which offload on ``end_turn`` and resolve
    ``begin_turn``'s history and stored turn. Around a store of yours that is not a
    TurnStore, the wrapper has no such methods, so ``isinstance(wrapper, TurnStore)``
    tells the truth and ``StateMiddleware`` falls back to plain loads and appends.
    """

    def __new__(cls, store: StateStore, *args: Any, **kwargs: Any) -> Self:
        # Only the exact class picks its flavour: a subclass of yours stays what it is.
        if cls is BlobOffloadStore and isinstance(store, TurnStore):
            return super().__new__(_TurnBlobOffloadStore)  # type: ignore[return-value]
        return super().__new__(cls)

    def __init__(
        self,
        store: StateStore,
        blobs: BlobStore,
        *,
        min_bytes: int = DEFAULT_MIN_BYTES,
        resolve: bool = True,
    ) -> None:
        if type(min_bytes) is not int or min_bytes < 0:
            raise InvalidRequestError(f"min_bytes must be a non-negative int, got {min_bytes!r}")
        self.store = store
        self.blobs = blobs
        self.min_bytes = min_bytes
        self.resolve = resolve

    def __repr__(self) -> str:
        return f"BlobOffloadStore({self.store!r}, min_bytes={self.min_bytes})"

    # --- offloading ----------------------------------------------------------------------

    async def _offload(self, session_id: str, messages: Sequence[Message]) -> list[Message]:
        # Bad input is refused before any blob is written.
        check_session_id(session_id)
        puts: dict[str, tuple[bytes, str]] = {}
        out: list[Message] = []
        for message in messages:
            if not isinstance(message, Message):
                raise InvalidMessageError(f"expected Message, got {type(message).__name__}")
            content = message.content
            if isinstance(content, str) or not any(self._large(p) for p in content):
                out.append(message)
                continue
            parts: list[ContentPart] = []
            for part in content:
                if self._large(part):
                    binary: Any = part
                    key = blob_key(binary.data)
                    puts[key] = (binary.data, _media_type(binary))
                    extra: dict[str, Any] = {}
                    if isinstance(binary, ImagePart):
                        size = binary.size()
                        if size is not None:
                            extra = {"width": size[0], "height": size[1]}
                    part = replace(binary, data=None, blob_key=key, **extra)
                parts.append(part)
            out.append(replace(message, content=tuple(parts)))
        if puts:
            await _all([self.blobs.put(key, data, mt) for key, (data, mt) in puts.items()])
        return out

    def _large(self, part: ContentPart) -> bool:
        data = getattr(part, "data", None)
        return isinstance(data, bytes) and len(data) >= self.min_bytes

    async def _resolve(self, session_id: str, messages: list[Message]) -> list[Message]:
        keys = {
            p.blob_key
            for m in messages
            if not isinstance(m.content, str)
            for p in m.content
            if isinstance(p, (ImagePart, DocumentPart, AudioPart)) and p.blob_key is not None
        }
        if not keys:
            return messages
        ordered = sorted(keys)
        try:
            blobs = await _all([self.blobs.get(key) for key in ordered])
        except KeyError as missing:
            raise StoreDataError(
                f"session {session_id!r} refers to blob {missing}, which the blob store does "
                "not have; restore it, or save the session without that message"
            ) from None
        found = dict(zip(ordered, blobs, strict=True))
        out = []
        for message in messages:
            content = message.content
            if isinstance(content, str) or not any(
                getattr(p, "blob_key", None) in found for p in content
            ):
                out.append(message)
                continue
            parts: list[ContentPart] = []
            for part in content:
                key = getattr(part, "blob_key", None)
                if key in found:
                    binary: Any = part
                    data = found[key]
                    extra: dict[str, Any] = {}
                    if isinstance(binary, ImagePart):
                        # Sizes recorded at offload time are what the bytes say: drop them,
                        # so the part equals the one that was stored.
                        probe = ImagePart(data, media_type=binary.media_type)
                        if probe.size() == (binary.width, binary.height):
                            extra = {"width": None, "height": None}
                    part = replace(binary, data=data, blob_key=None, **extra)
                parts.append(part)
            out.append(replace(message, content=tuple(parts)))
        return out

    # --- the StateStore protocol ---------------------------------------------------------

    async def load(self, session_id: str, last_n: int | None = None) -> list[Message]:
        """The session's messages; offloaded bytes fetched back if ``resolve``."""
        messages = await self.store.load(session_id, last_n)
        return await self._resolve(session_id, messages) if self.resolve else messages

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        """Offload large parts, then append (atomic as the wrapped store's append)."""
        await self.store.append(session_id, await self._offload(session_id, messages))

    async def save(self, session_id: str, messages: Sequence[Message]) -> None:
        """Offload large parts, then replace the history."""
        await self.store.save(session_id, await self._offload(session_id, messages))

    async def delete(self, session_id: str) -> bool:
        """Delete the session (its blobs stay; see the module docs)."""
        return await self.store.delete(session_id)

    async def count(self, session_id: str) -> int:
        """How many messages the session holds."""
        return await self.store.count(session_id)

    async def list_sessions(self, *, cursor: str | None = None, limit: int = 100) -> SessionPage:
        """A page of session ids (as the wrapped store)."""
        return await self.store.list_sessions(cursor=cursor, limit=limit)

    async def fork(self, source_id: str, target_id: str) -> int:
        """Copy a session; blobs are shared by key, not copied."""
        return await self.store.fork(source_id, target_id)

    async def get_metadata(self, session_id: str) -> dict[str, Any]:
        """The session's metadata."""
        return await self.store.get_metadata(session_id)

    async def merge_metadata(self, session_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Shallow-merge ``patch`` into the session's metadata."""
        return await self.store.merge_metadata(session_id, patch)

    async def aclose(self) -> None:
        """Close the wrapped store (the blob store is yours to close)."""
        await self.store.aclose()


class _TurnBlobOffloadStore(BlobOffloadStore):
    """A :class:`BlobOffloadStore` around a TurnStore: the TurnStore methods, forwarded."""

    store: TurnStore

    async def begin_turn(
        self,
        session_id: str,
        *,
        owner: str,
        lease_ttl: float,
        load: bool = True,
        last_n: int | None = None,
        turn_id: str | None = None,
        steal: bool = False,
    ) -> TurnClaim:
        """The wrapped store's claim, its history and stored turn resolved if ``resolve``."""
        claim = await self.store.begin_turn(
            session_id,
            owner=owner,
            lease_ttl=lease_ttl,
            load=load,
            last_n=last_n,
            turn_id=turn_id,
            steal=steal,
        )
        if not self.resolve:
            return claim
        try:
            messages = await self._resolve(session_id, claim.messages)
            stored = claim.stored_turn
            if stored is not None:
                stored = tuple(await self._resolve(session_id, list(stored)))
        except BaseException:
            if claim.token is not None:  # the caller never sees the token: give it back
                await finish_shielded(self.store.release_turn(session_id, claim.token))
            raise
        return replace(claim, messages=messages, stored_turn=stored)

    async def renew_turn(self, session_id: str, token: int, lease_ttl: float) -> bool:
        """Extend the lease (as the wrapped store)."""
        return await self.store.renew_turn(session_id, token, lease_ttl)

    async def end_turn(
        self,
        session_id: str,
        token: int,
        messages: Sequence[Message],
        *,
        turn_id: str | None = None,
        usage: Usage | None = None,
        cost: Cost | None = None,
    ) -> None:
        """Offload large parts, then end the turn (a fenced turn may leave its blobs
        unreferenced, like a failed append)."""
        offloaded = await self._offload(session_id, messages)
        await self.store.end_turn(
            session_id, token, offloaded, turn_id=turn_id, usage=usage, cost=cost
        )

    async def release_turn(self, session_id: str, token: int) -> None:
        """Give the lease back (as the wrapped store)."""
        await self.store.release_turn(session_id, token)

    async def wait_turn(self, session_id: str, timeout: float) -> bool:
        """Wait for the lease (as the wrapped store)."""
        return await self.store.wait_turn(session_id, timeout)

    def watch_lease(
        self, session_id: str, token: int, on_lost: Callable[[], None]
    ) -> Callable[[], None]:
        """Watch the lease (as the wrapped store)."""
        return self.store.watch_lease(session_id, token, on_lost)

    async def has_turn(self, session_id: str, turn_id: str) -> bool:
        """Whether the turn is stored (as the wrapped store)."""
        return await self.store.has_turn(session_id, turn_id)

    async def get_ledger(self, session_id: str) -> Ledger:
        """The session's totals (as the wrapped store)."""
        return await self.store.get_ledger(session_id)
