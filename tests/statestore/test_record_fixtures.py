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


def test_a_newer_record_version_is_refused_with_a_hint() -> None:
    record = json.dumps({"v": SCHEMA_VERSION + 1, "role": "user", "content": "x"})
    with pytest.raises(StoreDataError, match="upgrade"):
        decode_message(record, session_id="s")
