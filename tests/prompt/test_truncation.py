"""truncate_messages / keep_last_messages: budgets, pinned system messages, whole tool groups."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptkit_async.errors import InvalidRequestError, TokenBudgetExceededError
from promptkit_async.prompt import (
    count_message_tokens,
    get_tokenizer,
    keep_last_messages,
    truncate_messages,
)
from promptkit_async.types import Message, ToolCall

MODEL = "gpt-4o-mini"


def tool_group(call_id: str, n_results: int = 1, text: str = "result") -> list[Message]:
    calls = tuple(ToolCall(f"{call_id}.{i}", "lookup", '{"q": "x"}') for i in range(n_results))
    return [
        Message("assistant", "", calls),
        *(Message("tool", f"{text} {i}", tool_call_id=c.id) for i, c in enumerate(calls)),
    ]


def conversation() -> list[Message]:
    return [
        Message("system", "You are terse."),
        Message("user", "first question " * 10),
        Message("assistant", "first answer " * 10),
        Message("user", "look something up"),
        *tool_group("a", 2, "a long tool result " * 10),
        Message("assistant", "here it is"),
        Message("user", "thanks, and now?"),
    ]


def test_a_history_that_fits_comes_back_whole() -> None:
    history = conversation()
    assert truncate_messages(history, 10_000, model=MODEL) == history
    assert truncate_messages([], 10, model=MODEL) == []


def test_keeps_system_and_newest_messages_within_budget() -> None:
    history = conversation()
    budget = count_message_tokens([history[0], *history[-2:]], MODEL) + 5
    trimmed = truncate_messages(history, budget, model=MODEL)
    assert trimmed[0] is history[0]
    assert trimmed[-1] is history[-1]
    assert count_message_tokens(trimmed, MODEL) <= budget
    # The tool group did not fit, so the run starts at the newest user message.
    assert [m.role for m in trimmed] == ["system", "user"]


def test_a_tool_group_is_kept_or_dropped_whole() -> None:
    history = conversation()
    group = history[4:7]
    for budget in range(40, count_message_tokens(history, MODEL) + 1, 3):
        trimmed = truncate_messages(history, budget, model=MODEL)
        kept = [any(m is g for m in trimmed) for g in group]
        assert all(kept) or not any(kept), budget
        assert count_message_tokens(trimmed, MODEL) <= budget


def test_never_starts_on_an_orphan_tool_result_and_prefers_a_user_start() -> None:
    history = [
        Message("tool", "orphan", tool_call_id="zzz"),
        Message("assistant", "stray answer"),
        Message("user", "question"),
        Message("assistant", "answer"),
    ]
    trimmed = truncate_messages(history, 10_000, model=MODEL)
    assert trimmed[0].role == "user"
    # With no user message at all, only the orphan tool result is dropped.
    no_user = [history[0], history[1], history[3]]
    assert truncate_messages(no_user, 10_000, model=MODEL) == [history[1], history[3]]


def test_mid_history_system_messages_are_pinned_too() -> None:
    history = [
        Message("system", "rules"),
        *[Message("user" if i % 2 == 0 else "assistant", f"turn {i} " * 20) for i in range(10)],
        Message("system", "a note injected later"),
        *[Message("user" if i % 2 == 0 else "assistant", f"more {i} " * 20) for i in range(10)],
        Message("user", "latest"),
    ]
    budget = count_message_tokens([history[0], history[11], history[-1]], MODEL) + 10
    trimmed = truncate_messages(history, budget, model=MODEL)
    assert trimmed == [history[0], history[11], history[-1]]
    # pin_system="leading" pins only the system prompt at the start.
    leading = truncate_messages(history, budget, model=MODEL, pin_system="leading")
    assert history[11] not in leading
    assert leading[0] is history[0]
    assert leading[-1] is history[-1]


def test_exceeded_error_carries_the_counts() -> None:
    history = [Message("system", "rule " * 100), Message("user", "question " * 100)]
    required = count_message_tokens(history, MODEL)
    with pytest.raises(TokenBudgetExceededError) as info:
        truncate_messages(history, required - 1, model=MODEL)
    assert info.value.required_tokens == required
    assert info.value.max_tokens == required - 1
    assert "max_tokens" in str(info.value)
    assert truncate_messages(history, required, model=MODEL) == history


def test_the_current_tool_loop_is_part_of_the_required_turn() -> None:
    history = [
        Message("user", "old " * 50),
        Message("user", "use the tool"),
        *tool_group("t", 1, "big result " * 50),
    ]
    required = count_message_tokens(history[1:], MODEL)
    assert truncate_messages(history, required, model=MODEL) == history[1:]
    with pytest.raises(TokenBudgetExceededError):
        truncate_messages(history, required - 1, model=MODEL)


def test_input_is_not_changed_and_bad_budgets_are_rejected() -> None:
    history = conversation()
    before = list(history)
    truncate_messages(history, 60, model=MODEL)
    assert history == before
    with pytest.raises(InvalidRequestError):
        truncate_messages(history, -1, model=MODEL)
    with pytest.raises(InvalidRequestError):
        truncate_messages(history, 1.5, model=MODEL)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        keep_last_messages(history, -1)


def test_keep_last_messages_by_count() -> None:
    history = conversation()
    assert keep_last_messages(history, 2) == [history[0], history[-1]]
    assert keep_last_messages(history, 0) == [history[0]]
    # 6 newest: "here it is", the 3-message tool group, "look something up", and the last.
    six = keep_last_messages(history, 6)
    assert six == [history[0], *history[3:]]
    # 4 would split the tool group: it is dropped whole, and the run starts on a user.
    assert keep_last_messages(history, 4) == [history[0], history[-1]]
    assert keep_last_messages(history, 100) == history


def test_windows_reuse_cached_counts() -> None:
    history = [Message("user" if i % 2 == 0 else "assistant", f"m{i} " * 30) for i in range(200)]
    truncate_messages(history, 2_000, model=MODEL)
    tokenizer = get_tokenizer(MODEL)
    from promptkit_async.prompt._tokens import _cached_count

    before = _cached_count.cache_info()
    truncate_messages(history, 2_000, model=MODEL)
    after = _cached_count.cache_info()
    assert after.misses == before.misses  # nothing was tokenized again
    assert after.hits > before.hits
    assert tokenizer.count_message(history[-1]) > 0


# --- properties ---------------------------------------------------------------------------

WORDS = st.text(alphabet="abcdefgh ,.!?é世", min_size=0, max_size=40)


@st.composite
def histories(draw: st.DrawFn) -> list[Message]:
    """Well-formed conversations with system notes, tool groups and the odd orphan."""
    blocks = draw(
        st.lists(
            st.sampled_from(["system", "user", "assistant", "tools", "orphan"]),
            min_size=0,
            max_size=30,
        )
    )
    out: list[Message] = []
    for i, kind in enumerate(blocks):
        if kind == "tools":
            n = draw(st.integers(1, 3))
            calls = tuple(
                ToolCall(f"c{i}.{k}", "f", draw(st.sampled_from(["{}", '{"a": 1}'])))
                for k in range(n)
            )
            out.append(Message("assistant", draw(WORDS), calls))
            out.extend(
                Message("tool", draw(WORDS), tool_call_id=c.id)
                for c in calls[: draw(st.integers(1, n))]
            )
        elif kind == "orphan":
            out.append(Message("tool", draw(WORDS), tool_call_id=f"gone{i}"))
        else:
            out.append(Message(kind, draw(WORDS)))  # type: ignore[arg-type]
    return out


def groups_of(history: Sequence[Message]) -> list[list[int]]:
    """Index lists of each tool group: an assistant call and the tool results after it."""
    found = []
    i = 0
    while i < len(history):
        if history[i].role == "assistant" and history[i].tool_calls:
            j = i + 1
            while j < len(history) and history[j].role == "tool":
                j += 1
            found.append(list(range(i, j)))
            i = j
        else:
            i += 1
    return found


def positions(result: Sequence[Message], history: Sequence[Message]) -> list[int]:
    """Where each result message sits in the input (by identity); asserts in-order."""
    index = {id(m): i for i, m in enumerate(history)}
    where = [index[id(m)] for m in result]
    assert where == sorted(set(where)), "not an in-order subsequence"
    return where


def check_structure(result: list[Message], history: list[Message]) -> set[int]:
    kept = set(positions(result, history))
    # Every system message is kept.
    assert {i for i, m in enumerate(history) if m.role == "system"} <= kept
    # No tool group is split.
    for group in groups_of(history):
        assert all(i in kept for i in group) or not any(i in kept for i in group)
    rest = [m for m in result if m.role != "system"]
    if rest:
        assert rest[0].role != "tool"
        if any(m.role == "user" for m in rest):
            assert rest[0].role == "user"
    return kept


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(histories(), st.integers(0, 400), st.sampled_from(["gpt-4o", "gpt-4", "claude-3-haiku"]))
def test_truncate_properties(history: list[Message], budget: int, model: str) -> None:
    newest_user = max((i for i, m in enumerate(history) if m.role == "user"), default=None)
    error: TokenBudgetExceededError | None = None
    try:
        result = truncate_messages(history, budget, model=model)
    except TokenBudgetExceededError as exc:
        error = exc
    if error is not None:
        # Only when the system messages and the newest user turn cannot fit.
        required = [
            m
            for i, m in enumerate(history)
            if (m.role == "system" and (newest_user is None or i < newest_user))
            or (newest_user is not None and i >= newest_user)
        ]
        assert error.required_tokens == count_message_tokens(required, model)
        assert error.required_tokens > budget
        assert error.max_tokens == budget
        return
    assert count_message_tokens(result, model) <= budget
    kept = check_structure(result, history)
    if newest_user is not None:
        assert set(range(newest_user, len(history))) <= kept
    if count_message_tokens(history, model) <= budget:
        # Everything fits: only a stray start (orphan result / pre-user messages) goes.
        assert all(history[i].role != "user" for i in range(len(history)) if i not in kept)


@SETTINGS
@given(histories(), st.integers(0, 12))
def test_keep_last_properties(history: list[Message], n: int) -> None:
    result = keep_last_messages(history, n)
    check_structure(result, history)
    assert sum(1 for m in result if m.role != "system") <= n
