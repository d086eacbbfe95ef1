"""The SSE decoder: line endings, fields, comments, chunk boundaries, end of stream."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from promptkit_async.providers._sse import ServerSentEvent, SSEDecoder


def decode(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for c in chunks:
        events.extend(decoder.feed(c))
    return events + decoder.flush()


def test_one_event_per_blank_line() -> None:
    assert decode(b"data: a\n\ndata: b\n\n") == [ServerSentEvent("a"), ServerSentEvent("b")]


def test_crlf_and_cr_line_endings() -> None:
    expected = [ServerSentEvent("a"), ServerSentEvent("b")]
    assert decode(b"data: a\r\n\r\ndata: b\r\n\r\n") == expected
    assert decode(b"data: a\r\rdata: b\r\r") == expected
    assert decode(b"data: a\r\n\rdata: b\n\r\n") == expected


def test_crlf_split_across_chunks_counts_once() -> None:
    # "\r" ends one chunk and "\n" starts the next: one line ending, not two (which
    # would dispatch an event between the two data lines).
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [ServerSentEvent("a\nb")]


def test_comments_are_ignored() -> None:
    assert decode(b": keep-alive\n\n:another\ndata: x\n\n") == [ServerSentEvent("x")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode(b"data: one\ndata: two\ndata:three\n\n") == [ServerSentEvent("one\ntwo\nthree")]


def test_only_one_leading_space_is_stripped() -> None:
    assert decode(b"data:  two spaces\n\n") == [ServerSentEvent(" two spaces")]


def test_event_id_and_retry_fields() -> None:
    events = decode(b"event: ping\nid: 7\nretry: 1500\ndata: {}\n\ndata: next\n\n")
    assert events == [
        ServerSentEvent("{}", event="ping", id="7", retry=1500),
        # The id persists; event type and retry do not.
        ServerSentEvent("next", event="message", id="7", retry=None),
    ]


def test_invalid_id_and_retry_are_ignored_and_unknown_fields_too() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(b"id: 1\n\nid: a\0b\nretry: 12x\nfoo: bar\ndata: d\n\n")
    assert events == [ServerSentEvent("d", id="1")]
    assert decoder.last_event_id == "1"
    assert decoder.reconnection_time is None


def test_retry_alone_sets_reconnection_time() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: 3000\n\n") == []
    assert decoder.reconnection_time == 3000


def test_field_without_colon() -> None:
    # "data" alone is a data line with an empty value.
    assert decode(b"data\ndata: x\n\n") == [ServerSentEvent("\nx")]


def test_event_with_empty_data_is_dispatched() -> None:
    assert decode(b"data:\n\n") == [ServerSentEvent("")]
    assert decode(b"event: done\n\n") == [ServerSentEvent("", event="done")]


def test_blank_lines_without_fields_dispatch_nothing() -> None:
    assert decode(b"\n\n\r\n") == []


def test_byte_order_mark_is_dropped_even_when_split() -> None:
    assert decode(b"\xef\xbb\xbfdata: a\n\n") == [ServerSentEvent("a")]
    assert decode(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == [ServerSentEvent("a")]
    # Only at the very start.
    assert decode(b"data: \xef\xbb\xbfa\n\n") == [ServerSentEvent("\ufeffa")]


def test_multibyte_character_split_across_chunks() -> None:
    raw = "data: héllo ✓\n\n".encode()
    cut = raw.index("✓".encode()) + 1
    assert decode(raw[:cut], raw[cut:]) == [ServerSentEvent("héllo ✓")]


def test_trailing_partial_line_is_flushed_at_eof() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DO") == []
    assert decoder.feed(b"NE]") == []
    assert decoder.flush() == [ServerSentEvent("[DONE]")]
    assert decoder.flush() == []


def test_pending_event_is_flushed_at_eof() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.flush() == [ServerSentEvent("a")]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert decode(b"data: \xff\n\n") == [ServerSentEvent("\ufffd")]


_STREAM = (
    b"\xef\xbb\xbf: comment\r\nevent: a\r\ndata: 1\r\n\r\n"
    b'data: two\rdata: lines\r\rid: 9\ndata: {"k": "\xc3\xa9"}\n\n'
    b"retry: 10\ndata\n\ndata: tail"
)


@given(st.lists(st.integers(min_value=0, max_value=len(_STREAM)), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    whole = decode(_STREAM)
    points = sorted(set(cuts))
    pieces = [_STREAM[a:b] for a, b in zip([0, *points], [*points, len(_STREAM)], strict=False)]
    assert decode(*pieces) == whole
    assert [e.data for e in whole] == ["1", "two\nlines", '{"k": "é"}', "", "tail"]


def test_whole_event_chunks_keep_pending_fields() -> None:
    # One "data: ...\n\n" per chunk is the usual case (and has a fast path); whatever is
    # pending from earlier chunks (an event name, an id, a partial line) still applies.
    decoder = SSEDecoder()
    events = [
        *decoder.feed(b"data: first\n\n"),
        *decoder.feed(b"data: plain\n\n"),
        *decoder.feed(b"event: named\n"),
        *decoder.feed(b"data: with name\n\n"),
        *decoder.feed(b"id: 7\n"),
        *decoder.feed(b"data: with id\n\n"),
        *decoder.feed(b"data: par"),
        *decoder.feed(b"data: tial\n\n"),
        *decoder.feed(b"data: multi\n"),
        *decoder.feed(b"data: line\n\n"),
        *decoder.feed(b"data: \xc3\xa9\n\n"),
    ]
    assert [(e.data, e.event, e.id) for e in events] == [
        ("first", "message", ""),
        ("plain", "message", ""),
        ("with name", "named", ""),
        ("with id", "message", "7"),
        ("pardata: tial", "message", "7"),
        ("multi\nline", "message", "7"),
        ("é", "message", "7"),
    ]


# Lines an event stream may carry; whole reads of them take the decoder's fast path when
# they are only "data: ...\n\n" events, and its general path otherwise.
_LINES = st.sampled_from(
    [
        b"data: plain",
        b'data: {"k": "\xc3\xa9"}',
        b"data:nospace",
        b"data: ",
        b"data",
        b"data: \xff",
        b"data: two  spaces",
        b": comment",
        b"event: named",
        b"id: 4",
        b"retry: 10",
        b"",
    ]
)


@given(st.lists(st.lists(_LINES, min_size=1, max_size=3), min_size=1, max_size=8))
def test_several_events_in_one_read_match_byte_by_byte(events: list[list[bytes]]) -> None:
    # Reads often hold several whole events (the reader was busy while they arrived):
    # decoded in one feed they must give what a byte-at-a-time feed gives.
    stream = b"".join(b"\n".join(lines) + b"\n\n" for lines in events)
    one_by_one = decode(*(stream[i : i + 1] for i in range(len(stream))))
    assert decode(stream) == one_by_one
    decoder = SSEDecoder()
    decoder.feed(b"data: warm-up\n\n")  # past the byte-order mark check, like a live stream
    assert decoder.feed(stream) + decoder.flush() == one_by_one


def test_several_data_events_in_one_read() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 3\n\n")
    assert decoder.feed(b"data: a\n\ndata: b\xc3\xa9\n\ndata: \n\n") == [
        ServerSentEvent("a", "message", "3"),
        ServerSentEvent("b\u00e9", "message", "3"),
        ServerSentEvent("", "message", "3"),
    ]
    # Not only "data: " events: the general path decides.
    assert decoder.feed(b"data: a\ndata: b\n\ndata: c\n\n") == [
        ServerSentEvent("a\nb", "message", "3"),
        ServerSentEvent("c", "message", "3"),
    ]
    assert decoder.feed(b"data: a\n\n: keep-alive\n\ndata: c\n\n") == [
        ServerSentEvent("a", "message", "3"),
        ServerSentEvent("c", "message", "3"),
    ]
