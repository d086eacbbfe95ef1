"""Messages and the stored record format."""

from __future__ import annotations

import dataclasses

import pytest

from promptkit_async import (
    Cost,
    InvalidMessageError,
    InvalidRequestError,
    InvalidRoleError,
    Message,
    StoreDataError,
    ToolCall,
    Usage,
)
from promptkit_async.statestore.records import decode_message, encode_message
from promptkit_async.types import MAX_TOKEN_COUNT


def test_message_validates_role_and_tool_fields() -> None:
    with pytest.raises(InvalidRoleError, match="unknown role 'bot'"):
        Message("bot", "hi")  # type: ignore[arg-type]
    with pytest.raises(InvalidMessageError, match="tool_call_id"):
        Message("tool", "42")
    with pytest.raises(InvalidMessageError, match="str"):
        Message("user", 42)  # type: ignore[arg-type]


def test_message_is_frozen_and_hashable_and_copies_tool_call_lists() -> None:
    calls = [ToolCall("c1", "f", "{}")]
    m = Message("assistant", "", calls)  # type: ignore[arg-type]
    calls.append(ToolCall("c2", "g"))
    assert m.tool_calls == (ToolCall("c1", "f", "{}"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.content = "changed"  # type: ignore[misc]
    assert hash(m) == hash(Message("assistant", "", (ToolCall("c1", "f", "{}"),)))
    assert Message("user", "x", metadata={"a": 1}) == Message("user", "x")


def test_usage_and_cost_add_up() -> None:
    total = Usage(10, 5, cached_tokens=2) + Usage(1, 1)
    assert total == Usage(11, 6, 17, 2)
    assert (Cost(1, 2, total_cost=3) + Cost(total_cost=1, priced=False)).total_cost == 4
    assert not (Cost() + Cost(priced=False)).priced


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt_tokens", -1),
        ("completion_tokens", 1e308),
        ("total_tokens", 5.0),
        ("cached_tokens", "3"),
        ("cache_write_tokens", True),
        ("prompt_tokens", MAX_TOKEN_COUNT + 1),
        ("completion_tokens", None),
    ],
)
def test_usage_rejects_nonsense_counts(field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError, match=f"Usage.{field} must be an int"):
        Usage(**{field: value})  # type: ignore[arg-type]


def test_usage_accepts_the_largest_count_and_sums_it() -> None:
    assert Usage(MAX_TOKEN_COUNT).total_tokens == MAX_TOKEN_COUNT
    with pytest.raises(InvalidRequestError):  # a sum past the cap is nonsense too
        Usage(MAX_TOKEN_COUNT) + Usage(1)


@pytest.mark.parametrize("value", [-0.01, float("inf"), float("nan"), "1"])
def test_cost_rejects_nonsense_figures(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="finite, non-negative"):
        Cost(total_cost=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [
        Message("user", "héllo 🌍 \x00 \ud800"),
        Message("assistant", "", (ToolCall("c1", "lookup", '{"q": 1}'),)),
        Message("tool", "result", tool_call_id="c1", name="lookup"),
        Message("system", "be brief", metadata={"source": "persona", "n": [1, 2]}),
    ],
)
def test_record_round_trip(message: Message) -> None:
    record = encode_message(message)
    assert record.isascii()
    decoded = decode_message(record)
    assert decoded == message
    assert decoded.metadata == message.metadata


def test_record_of_the_unversioned_go_shape_still_loads() -> None:
    old = (
        '{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",'
        '"function":{"name":"get_weather","arguments":"{\\"city\\":\\"Paris\\"}"}}]}'
    )
    assert decode_message(old) == Message(
        "assistant", "", (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)
    )


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ("not json", "corrupt"),
        ("[1]", "corrupt"),
        ('{"v":1,"role":"wizard","content":"x"}', "corrupt"),
        ('{"v":1,"role":"user","content":5}', "corrupt"),
        ('{"v":99,"role":"user","content":"x"}', "newer"),
    ],
)
def test_bad_records_raise_store_data_error(record: str, match: str) -> None:
    with pytest.raises(StoreDataError, match=match):
        decode_message(record, session_id="s1")
