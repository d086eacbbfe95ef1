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
)
from promptkit_async.statestore import BlobOffloadStore, BlobStore, InMemoryBlobStore
from promptkit_async.statestore.blobs import blob_key
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
