"""Fuzzing with hypothesis: the SSE decoder, the record codec, every store's round trip,
and session ids of arbitrary Unicode.

Properties:

* SSE: any split of a byte stream into pieces (empty pieces included) decodes to the
  events of feeding it whole; the decoder never raises anything but the library's
  :class:`APIResponseError`, and never holds more than its size cap.
* Codec: every message (any Unicode content, NULs, lone surrogates, tool calls,
  content parts of every kind, JSON metadata) round-trips exactly; arbitrary bytes or
  JSON raise only :class:`StoreDataError`.
* Stores (memory, SQLite, Redis, PostgreSQL): the same messages round-trip through each; huge
  contents too.
* Session ids: each id is either refused with :class:`InvalidSessionIdError` (nothing
  written) or round-trips faithfully; ``list_sessions`` returns exactly the accepted
  ids; distinct ids never share data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from promptkit_async import (
    AudioPart,
    DocumentPart,
    ImagePart,
    InvalidMessageError,
    InvalidSessionIdError,
    Message,
    StoreDataError,
    TextPart,
    ThinkingPart,
    ToolCall,
)
from promptkit_async._validation import check_session_id
from promptkit_async.errors import APIResponseError
from promptkit_async.providers._sse import MAX_EVENT_SIZE, ServerSentEvent, SSEDecoder
from promptkit_async.statestore import (
    InMemoryStateStore,
    PostgresStateStore,
    RedisStateStore,
    SQLiteStateStore,
    StateStore,
)
from promptkit_async.statestore.records import decode_message, encode_message
from tests._postgres_server import PostgresServer, unique_schema
from tests._redis_server import RedisServer
from tests._strategies import json_objects, json_values
from tests.faults._checks import all_sessions
from tests.faults.conftest import SOAK_FACTOR, Report

# Example counts: CI keeps them small; the soak variants multiply them.
CI = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SOAK = settings(CI, max_examples=120 * SOAK_FACTOR)
STORE_CI = settings(CI, max_examples=25)
STORE_SOAK = settings(CI, max_examples=25 * SOAK_FACTOR)

# --- strategies ---------------------------------------------------------------------------

#: Any code point, lone surrogates included, plus characters that mean something to one
#: layer or another (NUL, key separators, glob and hash-tag characters, escapes).
SPECIAL = list("\x00\ud800\udbff\udc00\udfff\U0001f600\u00e9e\u0301:{}*?[]%\\|/\n\r\t \x7f\ufeff")
any_char = st.one_of(st.characters(exclude_categories=()), st.sampled_from(SPECIAL))
any_text = st.text(any_char, max_size=60)

json_value = json_values(any_text)
json_object = json_objects(any_text)


opt_text = st.none() | any_text
any_bytes = st.binary(max_size=80)
#: One part of every kind, each source, any field values.
content_parts = st.one_of(
    st.builds(TextPart, any_text),
    st.builds(
        lambda source, value, mt, detail, size: ImagePart(
            **{source: value}, media_type=mt, detail=detail, width=size, height=size
        ),
        st.sampled_from(["url", "file_id", "blob_key"]),
        any_text,
        opt_text,
        st.none() | st.sampled_from(["auto", "low", "high"]),
        st.none() | st.integers(1, 10_000),
    ),
    st.builds(lambda data, mt: ImagePart(data, media_type=mt), any_bytes, any_text),
    st.builds(
        lambda data, mt, name: DocumentPart(data, media_type=mt, filename=name),
        any_bytes,
        any_text,
        opt_text,
    ),
    st.builds(lambda url: DocumentPart(url=url), any_text),
    st.builds(lambda data, fmt: AudioPart(data, fmt), any_bytes, any_text.filter(bool)),
    st.builds(ThinkingPart, any_text, opt_text, opt_text, opt_text),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    role = draw(st.sampled_from(["user", "assistant", "system", "tool"]))
    calls: tuple[ToolCall, ...] = ()
    if role == "assistant":
        calls = tuple(draw(st.lists(st.builds(ToolCall, any_text, any_text, any_text), max_size=3)))
    call_id = draw(any_text.filter(bool)) if role == "tool" else draw(st.none() | any_text)
    return Message(
        role,  # type: ignore[arg-type]
        draw(any_text | st.lists(content_parts, min_size=1, max_size=4)),
        calls,
        call_id,
        draw(st.none() | any_text),
        draw(json_object),
    )


# Text shaped like an event stream: field names, separators and line endings in any
# order, with stray bytes (invalid UTF-8, NUL, a byte-order mark) mixed in.
SSE_TOKENS = [
    b"data:",
    b"data: ",
    b"event:",
    b"event: x",
    b"id:",
    b"id: 7",
    b"retry: 15",
    b"retry:x",
    b":",
    b": ping",
    b"\n",
    b"\n\n",
    b"\r",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"\xef",
    b" ",
    b"{}",
    b"[DONE]",
    b"\xc3\xa9",
    b"\xc3",
    b"\xff",
    b"\x00",
    b"data",
]
sse_bytes = st.one_of(
    st.lists(st.sampled_from(SSE_TOKENS) | st.binary(max_size=4), max_size=40).map(b"".join),
    st.binary(max_size=200),
)


def decode_whole(data: bytes, cap: int = MAX_EVENT_SIZE) -> list[ServerSentEvent]:
    decoder = SSEDecoder(max_event_size=cap)
    return decoder.feed(data) + decoder.flush()


def decode_split(data: bytes, cuts: list[int], cap: int = MAX_EVENT_SIZE) -> list[ServerSentEvent]:
    decoder = SSEDecoder(max_event_size=cap)
    events: list[ServerSentEvent] = []
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        events += decoder.feed(data[start:cut])  # repeated cuts feed empty pieces
        start = cut
    events += decoder.feed(data[start:])
    return events + decoder.flush()


# --- SSE decoder ----------------------------------------------------------------------------


def _split_decodes_like_whole(report: Report, data: bytes, cuts: list[int]) -> None:
    report.add(examples=1, pieces=len(cuts) + 1)
    assert decode_split(data, cuts) == decode_whole(data)


_split_examples = given(sse_bytes, st.lists(st.integers(0, 10_000), max_size=12))
# Found by this suite: an empty piece between "\r" and "\n" made the "\n" a second line
# ending, splitting one event in two.
# (A byte-order mark split from its line is the regression of the size-cap rewrite.)
test_sse_any_split_decodes_like_one_feed = example(data=b"\xef\xbb\xbfdata:", cuts=[1])(
    example(data=b"data: a\r\ndata: b\n\n", cuts=[8, 8])(
        CI(_split_examples(_split_decodes_like_whole))
    )
)
test_sse_any_split_decodes_like_one_feed_soak = pytest.mark.soak(
    SOAK(_split_examples(_split_decodes_like_whole))
)


def _capped_decoder_raises_only_typed_errors(
    report: Report, data: bytes, cuts: list[int], cap: int
) -> None:
    report.add(examples=1)
    error: APIResponseError | None = None
    events: list[ServerSentEvent] = []
    try:
        events = decode_split(data, cuts, cap)
    except APIResponseError as exc:
        error = exc
    if error is not None:
        assert "max_event_size" in str(error)
        report.add(refused=1)
    for item in events:
        assert len(item.data) <= cap


_capped_examples = given(
    sse_bytes, st.lists(st.integers(0, 10_000), max_size=12), st.integers(1, 64)
)
test_sse_capped_decoder_raises_only_typed_errors = CI(
    _capped_examples(_capped_decoder_raises_only_typed_errors)
)
test_sse_capped_decoder_raises_only_typed_errors_soak = pytest.mark.soak(
    SOAK(_capped_examples(_capped_decoder_raises_only_typed_errors))
)


def test_sse_endless_line_is_refused_in_linear_time(report: Report) -> None:
    """Regression: one line that never ends used to grow the buffer forever, re-copying
    it on every read (quadratic); now it stops at the cap with a typed error."""
    fed: list[int] = []

    def feed(decoder: SSEDecoder, piece: bytes, times: int) -> None:
        for _ in range(times):
            decoder.feed(piece)
            fed.append(len(piece))

    with pytest.raises(APIResponseError, match="max_event_size"):
        feed(SSEDecoder(max_event_size=8 * 2**20), b"x" * 65536, 1000)  # 64 MB uncapped
    assert sum(fed) <= 8 * 2**20
    # Data lines that never end their event are capped as well.
    with pytest.raises(APIResponseError, match="max_event_size"):
        feed(SSEDecoder(max_event_size=2**20), b"data: " + b"y" * 1000 + b"\n", 2000)
    report.add(faults=2)


# --- the record codec -------------------------------------------------------------------


def as_stored(message: Message) -> Message:
    """What a record round trip gives back for ``message``.

    Exact, with one documented exception: JSON's ``\\uXXXX`` escapes are UTF-16 code
    units, so a string holding a high surrogate directly followed by a low one (two
    invalid code points) comes back as the one character that pair encodes. Lone
    surrogates stay as they are.
    """

    def text(value: str) -> str:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")

    def walk(value: object) -> object:
        if isinstance(value, str):
            return text(value)
        if isinstance(value, dict):
            return {text(k): walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    def part(value: Any) -> Any:
        changes = {
            f.name: text(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if isinstance(getattr(value, f.name), str)
        }
        return dataclasses.replace(value, **changes)

    content = message.content
    return Message(
        message.role,
        text(content) if isinstance(content, str) else tuple(map(part, content)),
        tuple(ToolCall(text(c.id), text(c.name), text(c.arguments)) for c in message.tool_calls),
        None if message.tool_call_id is None else text(message.tool_call_id),
        None if message.name is None else text(message.name),
        walk(json.loads(json.dumps(dict(message.metadata)))),  # type: ignore[arg-type]
    )


def same_as_stored(loaded: list[Message], written: list[Message]) -> None:
    expected = [as_stored(m) for m in written]
    assert loaded == expected
    assert [dict(m.metadata) for m in loaded] == [dict(m.metadata) for m in expected]


def _codec_round_trip(report: Report, message: Message) -> None:
    report.add(examples=1)
    record = encode_message(message)
    assert record.isascii()
    same_as_stored([decode_message(record)], [message])
    same_as_stored([decode_message(record.encode())], [message])


test_codec_round_trips_any_message = CI(given(messages())(_codec_round_trip))
test_codec_round_trips_any_message_soak = pytest.mark.soak(
    SOAK(given(messages())(_codec_round_trip))
)


def _codec_garbage(report: Report, record: str | bytes) -> None:
    report.add(examples=1)
    try:
        decoded = decode_message(record, session_id="fuzz")
    except StoreDataError:
        report.add(refused=1)
        return
    assert isinstance(decoded, Message)


garbage = st.one_of(
    st.binary(max_size=300),
    any_text,
    json_value.map(json.dumps),
    st.fixed_dictionaries(
        {"v": st.sampled_from([0, 1, 1.0, True, 2, "1", None])},
        optional={
            "role": json_value | st.sampled_from(["user", "assistant", "tool", "system"]),
            "content": json_value,
            "tool_calls": json_value
            | st.lists(
                st.dictionaries(
                    st.sampled_from(["id", "name", "arguments", "function", "type"]), json_value
                )
            ),
            "tool_call_id": json_value,
            "name": json_value,
            "metadata": json_value,
        },
    ).map(json.dumps),
)
_deep = '{"v":1,"role":"user","content":"x","metadata":{"a":' + "[" * 100_000 + "]" * 100_000 + "}}"
test_codec_refuses_garbage_with_store_data_error = example(record="[" * 100_000)(
    example(record=_deep)
)(CI(given(garbage)(_codec_garbage)))
test_codec_refuses_garbage_with_store_data_error_soak = pytest.mark.soak(
    SOAK(given(garbage)(_codec_garbage))
)


# --- every store: record round trip and session ids ------------------------------------------

StoreFactory = Callable[[], Awaitable[StateStore]]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Makes fresh, empty stores of one kind (one per hypothesis example)."""
    made: list[StateStore] = []
    client: aioredis.Redis | None = None
    pool: asyncpg.Pool | None = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        client = aioredis.Redis(host="127.0.0.1", port=server.port)
    elif request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=4)

    async def make() -> StateStore:
        store: StateStore
        if request.param == "memory":
            store = InMemoryStateStore()
        elif request.param == "sqlite":
            store = SQLiteStateStore(tmp_path / f"fuzz{len(made)}.sqlite3")
        elif pool is not None:
            store = PostgresStateStore(pool, schema=unique_schema())
        else:
            assert client is not None
            store = RedisStateStore(client, prefix=f"fuzz-{uuid.uuid4().hex[:12]}")
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()
    if client is not None:
        await client.aclose()
    if pool is not None:
        await pool.close()


async def _store_round_trip(
    make_store: StoreFactory, report: Report, history: list[Message]
) -> None:
    report.add(examples=1, messages=2 * len(history))
    store = await make_store()
    await store.append("s", history[:1])
    await store.append("s", history[1:])
    loaded = await store.load("s")
    if isinstance(store, InMemoryStateStore):
        assert loaded == history  # no record format: kept as given
    else:
        same_as_stored(loaded, history)
    await store.save("t", history)
    assert len(await store.load("t", 2)) == min(2, len(history))
    await store.aclose()


_histories = given(st.lists(messages(), min_size=1, max_size=5))
test_stores_round_trip_any_message = STORE_CI(_histories(_store_round_trip))
test_stores_round_trip_any_message_soak = pytest.mark.soak(
    STORE_SOAK(_histories(_store_round_trip))
)


async def test_stores_round_trip_huge_contents(make_store: StoreFactory, report: Report) -> None:
    # 3 million characters: astral, NUL, lone surrogates and ASCII (an escaped astral
    # character is 12 bytes of record: 14 MB on the wire for this message).
    content = ("\U0001f600\x00\ud800a" * 750_000)[:3_000_000]
    huge = [Message("user", content), Message("assistant", "x" * 5_000_000)]
    store = await make_store()
    await store.append("huge", huge)
    assert await store.load("huge") == huge
    report.add(bytes_round_tripped=len(encode_message(huge[0])) + 5_000_000)


ids = st.one_of(
    any_text,
    st.sampled_from(
        [
            "a",
            "A",
            "a ",
            " a",
            "é",
            "e\u0301",
            "*",
            "a*",
            "?",
            "[a-z]",
            "{a}",
            "a}:m",
            "a}:h",
            "{a}:m",
            "promptkit:{a}:m",
            "%41",
            "%",
            "a:b",
            "a%3Ab",
            "x" * 1024,
            "x" * 1025,
            "\x00",
            "\ud800",
            " ",
            "",
            "\u3000",
        ]
    ),
)


async def _session_ids(make_store: StoreFactory, report: Report, candidates: list[str]) -> None:
    report.add(examples=1, ids=len(candidates))
    store = await make_store()
    accepted: dict[str, int] = {}
    for n, session_id in enumerate(candidates):
        try:
            check_session_id(session_id)
        except InvalidSessionIdError:
            # Refused by every operation, before any I/O.
            with pytest.raises(InvalidSessionIdError):
                await store.append(session_id, [Message("user", f"#{n}")])
            with pytest.raises(InvalidSessionIdError):
                await store.load(session_id)
            with pytest.raises(InvalidSessionIdError):
                await store.merge_metadata(session_id, {"n": n})
            continue
        accepted.setdefault(session_id, n)
        await store.append(session_id, [Message("user", f"#{n}")])
        await store.merge_metadata(session_id, {"owner": session_id})
    assert await all_sessions(store) == set(accepted)
    for session_id, first in accepted.items():
        expected = [f"#{n}" for n, c in enumerate(candidates) if c == session_id]
        assert [m.content for m in await store.load(session_id)] == expected
        assert (await store.get_metadata(session_id))["owner"] == session_id
        assert expected[0] == f"#{first}"
    # Deleting one session touches no other.
    if accepted:
        victim = next(iter(accepted))
        assert await store.delete(victim)
        assert await all_sessions(store) == set(accepted) - {victim}
    await store.aclose()


_id_lists = given(st.lists(ids, max_size=12))
test_session_ids_refused_or_faithful = STORE_CI(_id_lists(_session_ids))
test_session_ids_refused_or_faithful_soak = pytest.mark.soak(STORE_SOAK(_id_lists(_session_ids)))


async def test_metadata_keys_every_store_can_hold_or_refused_before_io(
    make_store: StoreFactory, report: Report
) -> None:
    """Regression: a metadata key holding a lone surrogate (no UTF-8 form) reached the
    Redis batch encoder, raised UnicodeEncodeError there, and failed every other
    operation batched with it, another session's appends included. Every store now
    refuses such a key up front with InvalidMessageError, and writes nothing."""
    store = await make_store()
    await store.merge_metadata("s", {"fine\x00key \U0001f600": 1})
    bad, innocent = await asyncio.gather(
        store.merge_metadata("s", {"k\ud800": 1}),
        store.append("innocent", [Message("user", "hi")]),  # same Redis batch
        return_exceptions=True,
    )
    assert isinstance(bad, InvalidMessageError), bad
    assert "surrogate" in str(bad)
    assert innocent is None
    assert await store.get_metadata("s") == {"fine\x00key \U0001f600": 1}
    assert await store.load("innocent") == [Message("user", "hi")]
    report.add(faults=1)
