"""InMemoryStateStore specifics: copies, TTL with an injected clock, LRU eviction."""

from __future__ import annotations

import pytest

from promptkit_async import (
    InMemoryStateStore,
    InvalidMessageError,
    InvalidRequestError,
    InvalidSessionIdError,
    Message,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_load_returns_copies_callers_cannot_corrupt() -> None:
    store = InMemoryStateStore()
    meta = {"tags": ["a"]}
    original = [Message("user", "hi", metadata=meta)]
    await store.append("s", original)
    meta["tags"].append("mutated after append")
    original.append(Message("user", "sneaky"))

    loaded = await store.load("s")
    assert len(loaded) == 1
    assert loaded[0].metadata == {"tags": ["a"]}
    loaded[0].metadata["tags"].append("mutated after load")  # type: ignore[index]
    loaded.clear()
    again = await store.load("s")
    assert again[0].metadata == {"tags": ["a"]}


async def test_non_json_metadata_is_rejected_before_writing() -> None:
    store = InMemoryStateStore()
    bad = Message("user", "x", metadata={"o": object()})
    with pytest.raises(InvalidMessageError, match="JSON"):
        await store.append("s", [Message("user", "ok"), bad])
    assert await store.count("s") == 0


async def test_sliding_ttl_expires_idle_sessions() -> None:
    clock = FakeClock()
    store = InMemoryStateStore(ttl=60, clock=clock)
    await store.append("s", [Message("user", "hi")])
    clock.now += 59
    await store.append("s", [Message("user", "still here")])  # write refreshes the TTL
    clock.now += 59
    assert await store.count("s") == 2
    clock.now += 2
    assert await store.load("s") == []
    assert (await store.list_sessions()).session_ids == ()


async def test_ttl_refresh_ttl_on_read_is_optional() -> None:
    clock = FakeClock()
    store = InMemoryStateStore(ttl=10, refresh_ttl_on_read=True, clock=clock)
    await store.append("s", [Message("user", "hi")])
    for _ in range(5):
        clock.now += 9
        assert len(await store.load("s")) == 1


async def test_max_sessions_evicts_least_recently_used() -> None:
    store = InMemoryStateStore(max_sessions=2)
    await store.append("a", [Message("user", "a")])
    await store.append("b", [Message("user", "b")])
    await store.load("a")  # a is now more recent than b
    await store.append("c", [Message("user", "c")])
    assert (await store.list_sessions()).session_ids == ("a", "c")


@pytest.mark.parametrize(
    "kwargs", [{"ttl": 0}, {"ttl": float("nan")}, {"max_sessions": 0}, {"max_sessions": 1.5}]
)
def test_bad_configuration_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidRequestError):
        InMemoryStateStore(**kwargs)  # type: ignore[arg-type]


async def test_every_operation_validates_session_ids() -> None:
    store = InMemoryStateStore()
    for call in (
        store.load(""),
        store.append(" ", []),
        store.save("", []),
        store.delete(""),
        store.count(""),
        store.get_metadata(""),
        store.merge_metadata("", {}),
        store.fork("", "b"),
        store.fork("a", ""),
    ):
        with pytest.raises(InvalidSessionIdError):
            await call
