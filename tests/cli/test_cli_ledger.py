"""The chat's session total: from the store's ledger when it keeps one, so it survives a
restart; this run's sum otherwise."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import pexpect
import pytest

from promptkit_async import DemoProvider, InMemoryStateStore, Pipeline, ProviderMiddleware
from promptkit_async.cli._chat import Chat, Persona
from promptkit_async.pipeline.middleware import StateMiddleware
from promptkit_async.statestore.base import TurnStore
from tests._plain_store import PlainStore

Spawn = Callable[..., pexpect.spawn]
TOKENS = re.compile(r"\[Tokens: \d+ \| This: \$(\d+\.\d{6}) \| Total: \$(\d+\.\d{6})\]")
EXIT = re.compile(r"Total cost this session: \$(\d+\.\d{6})")


async def run_chat(store: Any, lines: str) -> tuple[list[tuple[float, float]], float]:
    """One run of the chat on ``store`` (a priced demo model): each turn's (this, total),
    and the exit line's total."""
    out = io.StringIO()
    persona = Persona()
    provider = DemoProvider(model="gpt-4o-mini")
    chat = Chat(None, store, persona, "s", stdin=io.StringIO(lines), stdout=out)
    async with Pipeline(
        StateMiddleware(store), persona, ProviderMiddleware(provider)
    ) as chat.pipeline:
        await chat.run()
    await provider.aclose()
    text = out.getvalue()
    turns = [(float(a), float(b)) for a, b in TOKENS.findall(text)]
    found = EXIT.search(text)
    assert found is not None
    return turns, float(found.group(1))


async def test_total_survives_a_restart_with_a_ledger() -> None:
    store = InMemoryStateStore()
    assert isinstance(store, TurnStore)
    first, first_exit = await run_chat(store, "My name is Alice\nI love pizza\n")
    [(this1, total1), (this2, total2)] = first
    assert this1 > 0
    assert total1 == pytest.approx(this1, abs=1e-6)
    assert total2 == pytest.approx(this1 + this2, abs=2e-6)
    assert first_exit == pytest.approx(total2, abs=1e-6)

    # A second chat on the same store (as after a restart): the total goes on.
    second, second_exit = await run_chat(store, "What's my name?\n")
    [(this3, total3)] = second
    assert total3 == pytest.approx(total2 + this3, abs=2e-6)
    assert second_exit == pytest.approx(total3, abs=1e-6)
    ledger = await store.get_ledger("s")
    assert ledger.turns == 3
    assert ledger.cost_usd == pytest.approx(second_exit, abs=1e-6)

    # Clearing the conversation starts the total again.
    third, _ = await run_chat(store, "clear\nHello\n")
    [(this4, total4)] = third
    assert total4 == pytest.approx(this4, abs=1e-6)


async def test_without_a_ledger_the_total_is_this_runs() -> None:
    store = PlainStore()
    assert not isinstance(store, TurnStore)
    await run_chat(store, "My name is Alice\n")
    [(this, total)], exit_total = await run_chat(store, "What's my name?\n")
    assert total == pytest.approx(this, abs=1e-6)
    assert exit_total == pytest.approx(this, abs=1e-6)


def test_total_survives_a_restart_on_sqlite(spawn_chat: Spawn) -> None:
    def turn(child: pexpect.spawn, line: str) -> tuple[float, float]:
        child.expect_exact("You: ")
        child.sendline(line)
        child.expect(TOKENS)
        return float(child.match.group(1)), float(child.match.group(2))

    def leave(child: pexpect.spawn) -> float:
        child.expect_exact("You: ")
        child.sendline("exit")
        child.expect(EXIT)
        total = float(child.match.group(1))
        child.expect(pexpect.EOF)
        return total

    # The default store: SQLite, in the test's data directory.
    args = ("--session", "money", "--model", "gpt-4o-mini")
    child = spawn_chat(*args)
    this1, _ = turn(child, "My name is Alice")
    this2, total2 = turn(child, "I love pizza")
    assert total2 == pytest.approx(this1 + this2, abs=2e-6)
    assert leave(child) == pytest.approx(total2, abs=1e-6)

    child = spawn_chat(*args)
    this3, total3 = turn(child, "What's my name?")
    assert total3 == pytest.approx(total2 + this3, abs=2e-6)
    assert leave(child) == pytest.approx(total3, abs=1e-6)
