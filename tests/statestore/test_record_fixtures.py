"""Every record version this library ever wrote still decodes (the schema promise)."""

from __future__ import annotations

import json

import pytest

from promptkit_async import StoreDataError
from promptkit_async.statestore.records import SCHEMA_VERSION, decode_message, encode_message
from tests.statestore._records import EXPECTED, check_loaded, raw_records


@pytest.mark.parametrize("version", sorted(EXPECTED))
def test_fixture_records_decode(version: int) -> None:
    check_loaded([decode_message(r) for r in raw_records(version)], version)


def test_the_current_version_has_a_frozen_fixture() -> None:
    # Bumping SCHEMA_VERSION needs a new fixture file (and decoding of the old ones).
    assert SCHEMA_VERSION in EXPECTED
    assert [encode_message(m) for m in EXPECTED[SCHEMA_VERSION]] == raw_records(SCHEMA_VERSION)


def test_text_messages_are_still_written_as_version_1() -> None:
    # A process still running the previous release keeps reading text-only sessions.
    assert [encode_message(m) for m in EXPECTED[1]] == raw_records(1)
    lines = raw_records(SCHEMA_VERSION)
    for message, line in zip(EXPECTED[SCHEMA_VERSION], lines, strict=True):
        expected_version = 1 if isinstance(message.content, str) else 2
        assert json.loads(line)["v"] == expected_version


@pytest.mark.parametrize(
    "part",
    [
        {"type": "video", "data": ""},
        {"type": "image", "url": "https://x", "colour": "red"},
        {"type": "image", "data": "not base64!"},
        {"type": "image"},
        {"type": "image", "url": "https://x", "detail": "ultra"},
        "text",
    ],
)
def test_a_corrupt_part_is_a_store_data_error(part: object) -> None:
    record = json.dumps({"v": 2, "role": "user", "content": [part]})
    with pytest.raises(StoreDataError, match="corrupt message record in session 's'"):
        decode_message(record, session_id="s")


def test_a_newer_record_version_is_refused_with_a_hint() -> None:
    record = json.dumps({"v": SCHEMA_VERSION + 1, "role": "user", "content": "x"})
    with pytest.raises(StoreDataError, match="upgrade"):
        decode_message(record, session_id="s")
