"""BlobOffloadStore: large parts in a blob store, only keys in the history."""

from __future__ import annotations

import asyncio

import pytest

from promptkit_async import (
    DocumentPart,
    ImagePart,
    InMemoryStateStore,
    InvalidMessageError,
    InvalidRequestError,
    InvalidSessionIdError,
    Message,
    StoreDataError,
    TextPart,
    Usage,
)
from promptkit_async.statestore import (
    BlobOffloadStore,
    BlobStore,
    InMemoryBlobStore,
    StateStore,
    TurnStore,
)
from promptkit_async.statestore.blobs import blob_key
from tests._plain_store import PlainStore
from tests.statestore._records import PDF, PNG

BIG = PDF + bytes(100_000)


def doc(data: bytes = BIG) -> Message:
    return Message("user", [TextPart("read"), DocumentPart(data, filename="a.pdf")])


class FailingBlobs(InMemoryBlobStore):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def put(self, key: str, data: bytes, media_type: str) -> None:
        raise self.error


def test_the_in_memory_blob_store_fulfils_the_protocol() -> None:
    assert isinstance(InMemoryBlobStore(), BlobStore)


async def test_only_parts_above_the_threshold_are_offloaded() -> None:
    inner, blobs = InMemoryStateStore(), InMemoryBlobStore()
    store = BlobOffloadStore(inner, blobs)  # 64 KiB default
    await store.append("s", [doc(), doc(PDF), Message("user", "text")])
    raw = await inner.load("s")
    assert raw[0].content[1] == DocumentPart(blob_key=blob_key(BIG), filename="a.pdf")  # type: ignore[index]
    assert raw[1] == doc(PDF)  # small: inline
    assert blobs.blobs == {blob_key(BIG): BIG}
    assert await store.load("s") == [doc(), doc(PDF), Message("user", "text")]


async def test_a_missing_blob_is_a_store_data_error_naming_the_session() -> None:
    inner, blobs = InMemoryStateStore(), InMemoryBlobStore()
    store = BlobOffloadStore(inner, blobs)
    await store.save("s", [doc()])
    blobs.blobs.clear()
    with pytest.raises(StoreDataError, match=f"session 's' refers to blob '{blob_key(BIG)}'"):
        await store.load("s")


async def test_a_failed_blob_write_writes_no_history_and_raises_the_error_itself() -> None:
    inner = InMemoryStateStore()
    store = BlobOffloadStore(inner, FailingBlobs(OSError("bucket gone")))
    with pytest.raises(OSError, match="bucket gone"):
        await store.append("s", [Message("user", "kept?"), doc()])
    assert await inner.count("s") == 0


async def test_bad_input_writes_no_blob() -> None:
    blobs = InMemoryBlobStore()
    store = BlobOffloadStore(InMemoryStateStore(), blobs)
    with pytest.raises(InvalidSessionIdError):
        await store.append(" ", [doc()])
    with pytest.raises(InvalidMessageError):
        await store.save("s", [doc(), "not a message"])  # type: ignore[list-item]
    assert blobs.blobs == {}
    with pytest.raises(InvalidRequestError, match="min_bytes"):
        BlobOffloadStore(InMemoryStateStore(), blobs, min_bytes=-1)


async def test_gets_run_concurrently_and_a_cancelled_load_leaves_nothing_running() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    calls: list[str] = []

    class SlowBlobs(InMemoryBlobStore):
        async def get(self, key: str) -> bytes:
            calls.append(key)
            if len(calls) == 2:
                started.set()
            await release.wait()
            return await super().get(key)

    blobs = SlowBlobs()
    store = BlobOffloadStore(InMemoryStateStore(), blobs, min_bytes=1)
    await store.append("s", [doc(), Message("user", [ImagePart(PNG)])])
    load = asyncio.create_task(store.load("s"))
    await asyncio.wait_for(started.wait(), 5)  # both gets in flight at once
    load.cancel()
    with pytest.raises(asyncio.CancelledError):
        await load
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
    release.set()
    assert (await store.load("s"))[1] == Message("user", [ImagePart(PNG)])


# --- session leases through the wrapper (issue 15) --------------------------------------


async def test_turns_offload_on_end_and_resolve_on_begin() -> None:
    inner, blobs = InMemoryStateStore(), InMemoryBlobStore()
    store = BlobOffloadStore(inner, blobs)
    assert isinstance(store, TurnStore)
    claim = await store.begin_turn("s", owner="o", lease_ttl=30)
    assert claim.token is not None
    reply = Message("assistant", "a pdf")
    await store.end_turn(
        "s", claim.token, [doc(), reply], turn_id="t1", usage=Usage(1, 1, 2), cost=None
    )
    raw = await inner.load("s")
    assert raw[0].content[1] == DocumentPart(blob_key=blob_key(BIG), filename="a.pdf")  # type: ignore[index]
    assert blobs.blobs == {blob_key(BIG): BIG}
    claim = await store.begin_turn("s", owner="o", lease_ttl=30)
    assert claim.messages == [doc(), reply]
    assert claim.token is not None
    await store.release_turn("s", claim.token)
    replay = await store.begin_turn("s", owner="o", lease_ttl=30, turn_id="t1")
    assert replay.token is None
    assert replay.stored_turn == (doc(), reply)
    assert await store.has_turn("s", "t1")
    assert (await store.get_ledger("s")).total_tokens == 2
    # Without resolve, the keys come back as they are stored.
    lazy = BlobOffloadStore(inner, blobs, resolve=False)
    claim = await lazy.begin_turn("s", owner="o", lease_ttl=30)
    assert claim.messages == raw


async def test_a_begin_turn_whose_blobs_are_missing_gives_the_lease_back() -> None:
    inner, blobs = InMemoryStateStore(), InMemoryBlobStore()
    store = BlobOffloadStore(inner, blobs)
    claim = await store.begin_turn("s", owner="o", lease_ttl=30)
    assert claim.token is not None
    await store.end_turn("s", claim.token, [doc()])
    blobs.blobs.clear()
    with pytest.raises(StoreDataError):
        await store.begin_turn("s", owner="o", lease_ttl=30)
    # The caller never saw that token: the wrapper released it, the session is free.
    claim = await inner.begin_turn("s", owner="o", lease_ttl=30)
    assert claim.token is not None


async def test_the_wrapper_forwards_waits_and_watches() -> None:
    inner = InMemoryStateStore()
    store = BlobOffloadStore(inner, InMemoryBlobStore())
    claim = await store.begin_turn("s", owner="o", lease_ttl=30)
    assert claim.token is not None
    lost = asyncio.Event()
    stop = store.watch_lease("s", claim.token, lost.set)
    stolen = await store.begin_turn("s", owner="o", lease_ttl=30, steal=True)
    await asyncio.wait_for(lost.wait(), 5)
    stop()
    assert await store.renew_turn("s", claim.token, 30) is False
    waiting = asyncio.ensure_future(store.wait_turn("s", 30))
    await asyncio.sleep(0)
    assert stolen.token is not None
    await store.release_turn("s", stolen.token)
    assert await asyncio.wait_for(waiting, 5) is True


def test_around_a_store_without_leases_the_wrapper_has_none() -> None:
    plain = BlobOffloadStore(PlainStore(), InMemoryBlobStore())  # type: ignore[arg-type]
    assert not isinstance(plain, TurnStore)
    assert isinstance(plain, StateStore)
    assert type(plain) is BlobOffloadStore
