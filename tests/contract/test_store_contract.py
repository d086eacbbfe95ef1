"""The StateStore contract, checked against every store (memory, SQLite, Redis, cluster).

The ``harness`` / ``store`` fixtures (conftest.py) are parametrised over the store kinds,
so every test here runs once per kind.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from promptkit_async import (
    AudioPart,
    DocumentPart,
    ImagePart,
    InvalidMessageError,
    InvalidRequestError,
    InvalidSessionIdError,
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    StateMiddleware,
    TextPart,
    ToolCall,
)
from promptkit_async.providers.base import ProviderRequest
from promptkit_async.statestore import BlobOffloadStore, InMemoryBlobStore, StateStore
from promptkit_async.statestore.blobs import blob_key
from tests.contract._harness import StoreHarness
from tests.statestore._records import EXPECTED, PDF, PNG, WAV


def user(text: str, **kw: Any) -> Message:
    return Message("user", text, **kw)


def bot(text: str, **kw: Any) -> Message:
    return Message("assistant", text, **kw)


def contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def priced_mock(handler: Any) -> MockProvider:
    # A model with a known price, so the provider does not warn about missing prices.
    return MockProvider(handler=handler, model="gpt-4o-mini")


async def all_session_ids(store: StateStore, limit: int) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(10_000):
        page = await store.list_sessions(cursor=cursor, limit=limit)
        assert len(page.session_ids) <= limit
        ids += page.session_ids
        cursor = page.next_cursor
        if cursor is None:
            return ids
    raise AssertionError("list_sessions never finished")


# --- basics ----------------------------------------------------------------------------


async def test_unknown_session_is_empty(store: StateStore) -> None:
    assert await store.load("nobody") == []
    assert await store.load("nobody", 5) == []
    assert await store.count("nobody") == 0
    assert await store.get_metadata("nobody") == {}
    assert await store.delete("nobody") is False
    assert (await store.list_sessions()).session_ids == ()


async def test_append_keeps_order_and_load_last_n(store: StateStore) -> None:
    await store.append("s", [user("1"), bot("2")])
    await store.append("s", [user("3")])
    await store.append("s", [bot("4"), user("5"), bot("6")])

    assert contents(await store.load("s")) == ["1", "2", "3", "4", "5", "6"]
    assert contents(await store.load("s", 2)) == ["5", "6"]
    assert contents(await store.load("s", 1)) == ["6"]
    assert await store.load("s", 0) == []
    assert contents(await store.load("s", 100)) == ["1", "2", "3", "4", "5", "6"]
    assert await store.count("s") == 6


async def test_every_message_field_round_trips(store: StateStore) -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Zürich"}')
    messages = [
        Message("system", "Be brief. ✨"),
        user("Weather in Zürich?", name="alice", metadata={"lang": "de", "n": [1, 2.5, None]}),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '{"temp": 21}', tool_call_id="call_1", name="get_weather"),
        bot("21 °C\nsunny", metadata={"nested": {"ok": True}}),
    ]
    await store.append("s", messages)

    loaded = await store.load("s")
    assert loaded == messages
    assert [m.metadata for m in loaded] == [m.metadata for m in messages]
    assert loaded[2].tool_calls == (call,)


async def test_content_parts_and_every_record_version_round_trip(store: StateStore) -> None:
    # Every part type and source (fixture v2), next to messages decoded from the records
    # of older releases: append, load (whole and last_n), fork and save keep them all.
    history = [m for version in sorted(EXPECTED) for m in EXPECTED[version]]
    await store.append("s", history[:7])
    await store.append("s", history[7:])

    loaded = await store.load("s")
    assert loaded == history
    assert [m.metadata for m in loaded] == [m.metadata for m in history]
    assert loaded[-2].content == EXPECTED[2][-2].content  # a tool result holding an image
    image = loaded[-5].content[1]
    assert isinstance(image, ImagePart)
    assert image.data == PNG
    assert image.size() == (2, 3)
    assert await store.load("s", last_n=5) == history[-5:]

    assert await store.fork("s", "copy") == len(history)
    assert await store.load("copy") == history
    await store.save("copy", EXPECTED[2][1:3])
    assert await store.load("copy") == EXPECTED[2][1:3]


async def test_a_large_binary_part_round_trips_exactly(store: StateStore) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    message = user([TextPart("read this"), DocumentPart(blob, filename="big.pdf")])
    await store.append("s", [message])
    (loaded,) = await store.load("s")
    assert loaded == message
    assert loaded.content[1].data == blob  # type: ignore[index,union-attr]


async def test_large_parts_offloaded_to_a_blob_store_round_trip(store: StateStore) -> None:
    blobs = InMemoryBlobStore()
    offloading = BlobOffloadStore(store, blobs, min_bytes=len(WAV))
    history = [m for version in sorted(EXPECTED) for m in EXPECTED[version]]
    history.remove(EXPECTED[2][2])  # refers to a blob this store does not have
    history.append(user([AudioPart(WAV), DocumentPart(url="https://example.com/a.pdf")]))
    await offloading.append("s", history)

    assert await offloading.load("s") == history
    assert [m.metadata for m in await offloading.load("s")] == [m.metadata for m in history]
    assert set(blobs.blobs) == {blob_key(PNG), blob_key(PDF), blob_key(WAV)}  # PNG once
    # The records themselves hold keys (and the image's size, for token counts).
    stored = await store.load("s", last_n=5)
    image = stored[0].content[1]
    assert isinstance(image, ImagePart)
    assert (image.data, image.blob_key, image.size()) == (None, blob_key(PNG), (2, 3))
    assert await offloading.fork("s", "t") == len(history)
    assert await BlobOffloadStore(store, blobs, resolve=False).load("t", last_n=5) == stored


async def test_empty_append_is_a_no_op(store: StateStore) -> None:
    await store.append("s", [])
    assert await store.count("s") == 0
    assert (await store.list_sessions()).session_ids == ()


async def test_a_bad_message_stores_nothing_of_its_batch(store: StateStore) -> None:
    await store.append("s", [user("kept")])

    with pytest.raises(InvalidMessageError):
        await store.append("s", [user("a"), "not a message"])  # type: ignore[list-item]
    with pytest.raises(InvalidMessageError):
        await store.append("s", [user("a"), bot("b", metadata={"x": object()})])
    with pytest.raises(InvalidMessageError):
        await store.save("s", [user("a"), bot("b", metadata={"x": float("nan")})])

    assert contents(await store.load("s")) == ["kept"]


async def test_save_replaces_history_and_keeps_metadata(store: StateStore) -> None:
    await store.append("s", [user("old"), bot("old reply")])
    await store.merge_metadata("s", {"summary": "they said hello"})

    await store.save("s", [Message("system", "pirate"), user("new")])

    assert contents(await store.load("s")) == ["pirate", "new"]
    assert await store.get_metadata("s") == {"summary": "they said hello"}
    await store.append("s", [bot("arr")])
    assert contents(await store.load("s")) == ["pirate", "new", "arr"]


async def test_saving_an_empty_history_keeps_a_session_only_with_metadata(
    store: StateStore,
) -> None:
    await store.append("plain", [user("x")])
    await store.append("tagged", [user("x")])
    await store.merge_metadata("tagged", {"k": 1})

    await store.save("plain", [])
    await store.save("tagged", [])

    assert await store.count("plain") == 0
    assert await store.count("tagged") == 0
    assert await all_session_ids(store, 10) == ["tagged"]
    assert await store.delete("plain") is False
    assert await store.delete("tagged") is True


async def test_delete_removes_history_and_metadata(store: StateStore) -> None:
    await store.append("s", [user("x")])
    await store.merge_metadata("s", {"k": "v"})
    await store.append("other", [user("y")])

    assert await store.delete("s") is True
    assert await store.delete("s") is False
    assert await store.load("s") == []
    assert await store.get_metadata("s") == {}
    assert await all_session_ids(store, 10) == ["other"]
    assert contents(await store.load("other")) == ["y"]


async def test_list_sessions_pages_through_every_session(store: StateStore) -> None:
    expected = {f"session-{i:02d}" for i in range(25)}
    for session_id in expected:
        await store.append(session_id, [user("x")])
    await store.merge_metadata("metadata-only", {"k": 1})
    expected.add("metadata-only")

    ids = await all_session_ids(store, 7)

    assert sorted(ids) == sorted(expected)
    assert sorted(await all_session_ids(store, 1)) == sorted(expected)
    assert sorted(await all_session_ids(store, 1000)) == sorted(expected)
    with pytest.raises(InvalidRequestError):
        await store.list_sessions(limit=0)


async def test_fork_copies_history_and_metadata(store: StateStore) -> None:
    await store.append("src", [user("1"), bot("2", metadata={"m": 1})])
    await store.merge_metadata("src", {"summary": "s"})
    await store.append("dst", [user("to be replaced")])
    await store.merge_metadata("dst", {"old": True})

    assert await store.fork("src", "dst") == 2

    assert contents(await store.load("dst")) == ["1", "2"]
    assert (await store.load("dst"))[1].metadata == {"m": 1}
    assert await store.get_metadata("dst") == {"summary": "s"}
    # The copies are independent.
    await store.append("src", [user("3")])
    await store.append("dst", [user("three")])
    assert contents(await store.load("src")) == ["1", "2", "3"]
    assert contents(await store.load("dst")) == ["1", "2", "three"]


async def test_fork_of_an_unknown_session_clears_the_target(store: StateStore) -> None:
    await store.append("dst", [user("x")])
    await store.merge_metadata("dst", {"k": 1})

    assert await store.fork("nobody", "dst") == 0

    assert await store.load("dst") == []
    assert await store.get_metadata("dst") == {}
    assert await all_session_ids(store, 10) == []


async def test_fork_onto_itself_changes_nothing(store: StateStore) -> None:
    await store.append("s", [user("1"), bot("2")])
    assert await store.fork("s", "s") == 2
    assert contents(await store.load("s")) == ["1", "2"]


async def test_metadata_merges_shallowly_and_none_deletes(store: StateStore) -> None:
    assert await store.merge_metadata("s", {"a": 1, "b": {"x": 1}}) == {"a": 1, "b": {"x": 1}}
    merged = await store.merge_metadata("s", {"a": None, "b": {"y": 2}, "c": [1, "two"]})

    assert merged == {"b": {"y": 2}, "c": [1, "two"]}
    assert await store.get_metadata("s") == merged
    assert await store.load("s") == []
    with pytest.raises(InvalidMessageError):
        await store.merge_metadata("s", {"bad": object()})
    with pytest.raises(InvalidRequestError):
        await store.merge_metadata("s", ["not", "a", "mapping"])  # type: ignore[arg-type]
    assert await store.get_metadata("s") == merged
    # Removing the last key of a session without messages removes the session.
    await store.merge_metadata("s", {"b": None, "c": None})
    assert await all_session_ids(store, 10) == []


async def test_concurrent_metadata_merges_all_land(store: StateStore) -> None:
    await asyncio.gather(*(store.merge_metadata("s", {f"k{i}": i}) for i in range(100)))
    assert await store.get_metadata("s") == {f"k{i}": i for i in range(100)}


# --- copies ------------------------------------------------------------------------------


async def test_stored_data_cannot_be_changed_through_references(store: StateStore) -> None:
    tags: dict[str, Any] = {"tags": ["a"]}
    await store.append("s", [user("x", metadata=tags)])
    tags["tags"].append("changed after append")

    loaded = await store.load("s")
    loaded[0].metadata["tags"].append("changed after load")
    loaded.clear()
    assert (await store.load("s"))[0].metadata == {"tags": ["a"]}

    patch: dict[str, Any] = {"k": {"deep": 1}}
    merged = await store.merge_metadata("s", patch)
    patch["k"]["deep"] = 2
    merged["k"]["deep"] = 3
    (await store.get_metadata("s"))["k"]["deep"] = 4
    assert await store.get_metadata("s") == {"k": {"deep": 1}}


# --- TTL -----------------------------------------------------------------------------------


async def test_ttl_slides_with_every_write_and_expires_the_whole_session(
    harness: StoreHarness,
) -> None:
    store = await harness.make(ttl=10)
    await store.append("s", [user("1")])
    await store.merge_metadata("s", {"k": 1})
    await store.append("keep", [user("x")])

    await harness.advance(6)
    await store.append("s", [bot("2")])  # restarts the TTL of s (history and metadata)
    await harness.advance(6)

    assert contents(await store.load("s")) == ["1", "2"]
    assert await store.get_metadata("s") == {"k": 1}
    assert await all_session_ids(store, 10) == ["s"]  # "keep" expired
    assert await store.load("keep") == []

    await harness.advance(11)
    assert await store.load("s") == []
    assert await store.count("s") == 0
    assert await store.get_metadata("s") == {}
    assert await all_session_ids(store, 10) == []
    assert await store.delete("s") is False
    # A write after expiry starts a new, empty session.
    await store.append("s", [user("fresh")])
    assert contents(await store.load("s")) == ["fresh"]


async def test_ttl_is_restarted_by_reads_only_when_asked(harness: StoreHarness) -> None:
    refreshing = await harness.make(ttl=10, refresh_ttl_on_read=True)
    plain = await harness.make(ttl=10)
    for store in (refreshing, plain):
        await store.append("loaded", [user("x")])
        await store.merge_metadata("read", {"k": 1})

    await harness.advance(6)
    for store in (refreshing, plain):
        await store.load("loaded")
        await store.get_metadata("read")
        assert await store.count("loaded") == 1  # count never restarts the TTL
    await harness.advance(6)

    assert contents(await refreshing.load("loaded")) == ["x"]
    assert await refreshing.get_metadata("read") == {"k": 1}
    assert await plain.load("loaded") == []
    assert await plain.get_metadata("read") == {}


async def test_metadata_write_restarts_the_ttl_of_the_history(harness: StoreHarness) -> None:
    store = await harness.make(ttl=10)
    await store.append("s", [user("1")])
    await harness.advance(6)
    await store.merge_metadata("s", {"k": 1})
    await harness.advance(6)
    assert contents(await store.load("s")) == ["1"]


async def test_fork_gives_the_target_a_fresh_ttl(harness: StoreHarness) -> None:
    store = await harness.make(ttl=10)
    await store.append("src", [user("1")])
    await harness.advance(6)
    assert await store.fork("src", "dst") == 1
    await harness.advance(6)
    assert await store.load("src") == []
    assert contents(await store.load("dst")) == ["1"]


# --- validation ----------------------------------------------------------------------------

BAD_IDS = ["", "   ", "\t\n", "x" * 1025, "a\x00b", None, 42, b"bytes"]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
async def test_bad_session_ids_are_rejected_by_every_operation(store: StateStore, bad: Any) -> None:
    calls = [
        store.load(bad),
        store.append(bad, [user("x")]),
        store.save(bad, [user("x")]),
        store.delete(bad),
        store.count(bad),
        store.fork(bad, "ok"),
        store.fork("ok", bad),
        store.get_metadata(bad),
        store.merge_metadata(bad, {"k": 1}),
    ]
    for call in calls:
        with pytest.raises(InvalidSessionIdError):
            await call
    assert await store.count("ok") == 0
    assert await all_session_ids(store, 10) == []


async def test_bad_arguments_are_rejected(store: StateStore) -> None:
    with pytest.raises(InvalidRequestError):
        await store.load("s", -1)
    with pytest.raises(InvalidRequestError):
        await store.list_sessions(limit=-5)


SPECIAL_IDS = [
    "a:b",
    "a",
    "b",
    "a:b:m",
    "a}:m",
    "{a}",
    "{",
    "}",
    "{}",
    "*",
    "?",
    "[ab]",
    "a*",
    "a?",
    "\\",
    "a b",
    " a",
    "a\nb",
    "a%3Ab",
    "%",
    "ü",
    "u\u0308",
    "日本語",
    "emoji 😀",
    "x" * 1024,
    "ü" * 1024,
]


async def test_special_character_ids_never_collide(store: StateStore) -> None:
    for i, session_id in enumerate(SPECIAL_IDS):
        await store.append(session_id, [user(f"message {i}")])
        await store.merge_metadata(session_id, {"i": i})

    for i, session_id in enumerate(SPECIAL_IDS):
        assert contents(await store.load(session_id)) == [f"message {i}"], session_id
        assert await store.get_metadata(session_id) == {"i": i}
    assert sorted(await all_session_ids(store, 5)) == sorted(SPECIAL_IDS)

    assert await store.delete("a") is True
    assert contents(await store.load("a:b")) == [f"message {SPECIAL_IDS.index('a:b')}"]
    assert await store.fork("*", "?") == 1
    assert contents(await store.load("[ab]")) == [f"message {SPECIAL_IDS.index('[ab]')}"]


# --- concurrency ---------------------------------------------------------------------------


async def test_concurrent_appends_from_many_tasks_are_whole_and_adjacent(
    store: StateStore,
) -> None:
    async def turn(i: int) -> None:
        await store.append("s", [user(f"q{i}"), bot(f"a{i}"), bot(f"b{i}")])

    await asyncio.gather(*(turn(i) for i in range(300)))

    stored = contents(await store.load("s"))
    assert len(stored) == 900
    groups = [stored[i : i + 3] for i in range(0, 900, 3)]
    assert sorted(g[0] for g in groups) == sorted(f"q{i}" for i in range(300))
    for q, a, b in groups:
        assert (a, b) == (f"a{q[1:]}", f"b{q[1:]}")


async def test_thousand_concurrent_turns_on_one_session(store: StateStore) -> None:
    seen: dict[str, list[str]] = {}

    def reply(request: ProviderRequest) -> str:
        question = request.messages[-1].content
        seen[question] = [m.content for m in request.messages[:-1]]
        return f"reply to {question}"

    # History is capped at the last turn so the test stays fast; what matters is that
    # turns are serialised and stored whole, in the order they ran.
    pipeline = Pipeline(
        StateMiddleware(store, max_history_messages=2),
        ProviderMiddleware(priced_mock(reply)),
    )
    results = await asyncio.gather(*(pipeline.execute("s", "user", f"q{i}") for i in range(1000)))
    await pipeline.shutdown()

    assert [r.response.content for r in results] == [f"reply to q{i}" for i in range(1000)]
    stored = await store.load("s")
    assert len(stored) == 2000
    assert await store.count("s") == 2000
    pairs = [stored[i : i + 2] for i in range(0, 2000, 2)]
    assert sorted(q.content for q, _ in pairs) == sorted(f"q{i}" for i in range(1000))
    previous: list[str] = []
    for question, answer in pairs:
        assert (question.role, answer.role) == ("user", "assistant")
        assert answer.content == f"reply to {question.content}"
        # Each turn saw exactly the turn stored before it.
        assert seen[question.content] == previous
        previous = [question.content, answer.content]


async def test_many_sessions_run_concurrently(store: StateStore) -> None:
    pipeline = Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(priced_mock(lambda r: f"{len(r.messages)} messages")),
    )

    async def chat(session_id: str) -> None:
        for i in range(3):
            await pipeline.execute(session_id, "user", f"{session_id} turn {i}")

    await asyncio.gather(*(chat(f"user-{n}") for n in range(200)))
    await pipeline.shutdown()

    for n in (0, 99, 199):
        assert contents(await store.load(f"user-{n}")) == [
            f"user-{n} turn 0",
            "1 messages",
            f"user-{n} turn 1",
            "3 messages",
            f"user-{n} turn 2",
            "5 messages",
        ]
    assert len(await all_session_ids(store, 50)) == 200
