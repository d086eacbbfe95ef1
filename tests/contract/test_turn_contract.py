"""The TurnStore contract (issue 15): session leases, fencing, turn ids and the ledger.

Parametrised over every store kind by the ``harness`` / ``store`` fixtures (conftest.py),
like the StateStore contract. Leases expire by the store's clock, which
``harness.advance`` moves (a fake clock for memory and SQLite, shortened key TTLs for
Redis, earlier expiry times for PostgreSQL), so no test waits for a TTL. Long leases
are long (``LONG``) so that a real clock never expires one during a test.

Round trips per operation are counted by each store's own tests, not here.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from promptkit_async import (
    InvalidMessageError,
    InvalidRequestError,
    InvalidSessionIdError,
    LeaseLostError,
    Message,
)
from promptkit_async.statestore import Ledger, StateStore, TurnClaim, TurnStore
from promptkit_async.types import Cost, Usage
from tests.contract._harness import StoreHarness

#: A lease TTL no test outlives in real time.
LONG = 60.0
OWNER = "test-host:1:abc"


def user(text: str) -> Message:
    return Message("user", text)


def bot(text: str) -> Message:
    return Message("assistant", text)


def turn(n: int) -> list[Message]:
    return [user(f"q{n}"), bot(f"a{n}")]


def contents(messages: Any) -> list[str]:
    return [m.content for m in messages]


@pytest.fixture
async def ts(store: StateStore) -> TurnStore:
    assert isinstance(store, TurnStore), f"{type(store).__name__} is not a TurnStore"
    return store


async def take(store: TurnStore, session: str = "s", **kw: Any) -> TurnClaim:
    kw.setdefault("owner", OWNER)
    kw.setdefault("lease_ttl", LONG)
    return await store.begin_turn(session, **kw)


async def taken(store: TurnStore, session: str = "s", **kw: Any) -> int:
    claim = await take(store, session, **kw)
    assert claim.token is not None, "the lease should have been free"
    assert claim.stored_turn is None
    return claim.token


async def is_busy(store: TurnStore, session: str = "s") -> bool:
    """Whether a plain begin_turn finds the lease held (releasing it again if not)."""
    claim = await take(store, session)
    if claim.token is None:
        return True
    await store.release_turn(session, claim.token)
    return False


# --- taking, busy, ending ----------------------------------------------------------------


async def test_a_free_session_is_taken_with_its_history_and_ledger(ts: TurnStore) -> None:
    await ts.append("s", turn(1))
    claim = await take(ts)
    assert claim.token is not None
    assert claim.stored_turn is None
    assert contents(claim.messages) == ["q1", "a1"]
    assert claim.ledger == Ledger()
    assert all(isinstance(m, Message) for m in claim.messages)


async def test_load_false_and_last_n_choose_the_history(ts: TurnStore) -> None:
    await ts.append("s", turn(1) + turn(2))
    token = await taken(ts, load=False)
    await ts.release_turn("s", token)
    claim = await take(ts, load=False)
    assert claim.token is not None
    assert claim.messages == []
    await ts.release_turn("s", claim.token)
    claim = await take(ts, last_n=3)
    assert contents(claim.messages) == ["a1", "q2", "a2"]
    await ts.release_turn("s", claim.token or 0)
    claim = await take(ts, last_n=0)
    assert claim.messages == []


async def test_a_held_lease_makes_the_session_busy(ts: TurnStore) -> None:
    await taken(ts)
    claim = await take(ts)
    assert claim.token is None
    assert claim.stored_turn is None
    # Other sessions are independent.
    await taken(ts, "other")


async def test_one_of_many_concurrent_takers_wins(ts: TurnStore) -> None:
    claims = await asyncio.gather(*(take(ts) for _ in range(12)))
    assert sum(c.token is not None for c in claims) == 1


async def test_taking_a_lease_creates_no_session(ts: TurnStore) -> None:
    token = await taken(ts, "ghost")
    assert (await ts.list_sessions()).session_ids == ()
    assert await ts.count("ghost") == 0
    assert await ts.delete("ghost") is False
    await ts.release_turn("ghost", token)
    assert (await ts.list_sessions()).session_ids == ()


async def test_end_turn_appends_and_releases(ts: TurnStore) -> None:
    await ts.append("s", turn(1))
    token = await taken(ts)
    await ts.end_turn("s", token, turn(2))
    assert contents(await ts.load("s")) == ["q1", "a1", "q2", "a2"]
    claim = await take(ts)  # released: free at once
    assert claim.token is not None
    assert claim.token > token
    assert contents(claim.messages) == ["q1", "a1", "q2", "a2"]


async def test_release_frees_without_writing(ts: TurnStore) -> None:
    token = await taken(ts)
    await ts.release_turn("s", token)
    assert await ts.load("s") == []
    assert await ts.get_ledger("s") == Ledger()
    assert not await is_busy(ts)


async def test_tokens_keep_growing_also_across_delete(ts: TurnStore) -> None:
    tokens = []
    for n in range(3):
        token = await taken(ts)
        tokens.append(token)
        await ts.end_turn("s", token, turn(n))
    assert await ts.delete("s") is True
    tokens.append(await taken(ts))
    assert tokens == sorted(set(tokens)), tokens


# --- expiry and fencing ------------------------------------------------------------------


async def test_an_expired_lease_can_be_taken_and_the_old_holder_is_fenced(
    harness: StoreHarness, ts: TurnStore
) -> None:
    await ts.append("s", turn(1))
    old = await taken(ts, lease_ttl=10)
    assert (await take(ts)).token is None
    await harness.advance(11)
    new = await taken(ts)
    assert new > old
    with pytest.raises(LeaseLostError) as caught:
        await ts.end_turn("s", old, turn(2), turn_id="stale", usage=Usage(1, 1, 2))
    assert caught.value.session_id == "s"
    assert caught.value.token == old
    # Nothing of the fenced turn is visible: not its messages, id or figures.
    assert contents(await ts.load("s")) == ["q1", "a1"]
    assert not await ts.has_turn("s", "stale")
    assert await ts.get_ledger("s") == Ledger()
    assert await ts.renew_turn("s", old, LONG) is False
    # The new holder is unaffected and ends normally.
    await ts.end_turn("s", new, turn(3))
    assert contents(await ts.load("s")) == ["q1", "a1", "q3", "a3"]


async def test_an_expired_lease_nobody_took_still_ends(
    harness: StoreHarness, ts: TurnStore
) -> None:
    token = await taken(ts, lease_ttl=10)
    await harness.advance(11)
    await ts.end_turn("s", token, turn(1), turn_id="t1", usage=Usage(3, 4, 7))
    assert contents(await ts.load("s")) == ["q1", "a1"]
    assert await ts.has_turn("s", "t1")
    assert (await ts.get_ledger("s")).total_tokens == 7


async def test_an_expired_lease_nobody_took_can_be_renewed(
    harness: StoreHarness, ts: TurnStore
) -> None:
    token = await taken(ts, lease_ttl=10)
    await harness.advance(11)
    assert await ts.renew_turn("s", token, LONG) is True
    assert await is_busy(ts)


async def test_renewal_keeps_the_lease_past_its_first_ttl(
    harness: StoreHarness, ts: TurnStore
) -> None:
    token = await taken(ts, lease_ttl=10)
    await harness.advance(6)
    assert await ts.renew_turn("s", token, 10) is True
    await harness.advance(6)  # 12 s after the take, 6 s after the renewal
    assert (await take(ts)).token is None
    await ts.end_turn("s", token, turn(1))
    assert contents(await ts.load("s")) == ["q1", "a1"]


async def test_ending_after_a_newer_turn_ended_is_fenced(
    harness: StoreHarness, ts: TurnStore
) -> None:
    old = await taken(ts, lease_ttl=10)
    await harness.advance(11)
    new = await taken(ts)
    await ts.end_turn("s", new, turn(2))
    # The session is free now, but ``old`` is still not its newest token.
    with pytest.raises(LeaseLostError):
        await ts.end_turn("s", old, turn(1))
    assert contents(await ts.load("s")) == ["q2", "a2"]


async def test_release_with_a_stale_token_is_a_no_op(harness: StoreHarness, ts: TurnStore) -> None:
    old = await taken(ts, lease_ttl=10)
    await harness.advance(11)
    new = await taken(ts)
    await ts.release_turn("s", old)  # must not free the new holder's lease
    assert (await take(ts)).token is None
    await ts.end_turn("s", new, turn(1))
    await ts.release_turn("s", new)  # ended already: nothing to release, no error
    assert contents(await ts.load("s")) == ["q1", "a1"]


# --- steal -------------------------------------------------------------------------------


async def test_steal_takes_a_live_lease_and_fences_its_holder(ts: TurnStore) -> None:
    await ts.append("s", turn(1))
    old = await taken(ts)
    claim = await take(ts, steal=True)
    assert claim.token is not None
    assert claim.token > old
    assert contents(claim.messages) == ["q1", "a1"]
    assert await ts.renew_turn("s", old, LONG) is False
    assert await ts.renew_turn("s", claim.token, LONG) is True
    with pytest.raises(LeaseLostError):
        await ts.end_turn("s", old, turn(2))
    await ts.end_turn("s", claim.token, turn(3))
    assert contents(await ts.load("s")) == ["q1", "a1", "q3", "a3"]


async def test_steal_of_a_free_session_just_takes_it(ts: TurnStore) -> None:
    token = await taken(ts, steal=True)
    assert await is_busy(ts)
    await ts.release_turn("s", token)
    assert not await is_busy(ts)


async def test_watch_lease_is_told_when_the_lease_is_stolen(ts: TurnStore) -> None:
    old = await taken(ts)
    lost = asyncio.Event()
    stop = ts.watch_lease("s", old, lost.set)
    try:
        await taken(ts, steal=True)
        await asyncio.wait_for(lost.wait(), 5)
    finally:
        stop()


async def test_a_stopped_watch_is_not_told(ts: TurnStore) -> None:
    token = await taken(ts)
    told: list[str] = []
    stop = ts.watch_lease("s", token, lambda: told.append("lost"))
    stop()
    stop()  # stopping twice is harmless
    await ts.end_turn("s", token, turn(1))
    other = await taken(ts)
    witness = asyncio.Event()
    stop_witness = ts.watch_lease("s", other, witness.set)
    try:
        await taken(ts, steal=True)
        await asyncio.wait_for(witness.wait(), 5)  # the store did signal this steal
    finally:
        stop_witness()
    assert told == []


async def test_ending_normally_does_not_tell_the_watchers(ts: TurnStore) -> None:
    token = await taken(ts)
    told: list[str] = []
    stop = ts.watch_lease("s", token, lambda: told.append("lost"))
    await ts.end_turn("s", token, turn(1))
    stop()
    await asyncio.sleep(0.05)  # a wrong call_soon would have run by now
    assert told == []


# --- wait_turn ---------------------------------------------------------------------------


async def test_wait_turn_returns_at_once_for_a_free_session(ts: TurnStore) -> None:
    started = time.perf_counter()
    assert await ts.wait_turn("s", 10) is True
    assert time.perf_counter() - started < 2


async def test_wait_turn_is_woken_by_a_release(ts: TurnStore) -> None:
    token = await taken(ts)
    assert (await take(ts)).token is None
    waiting = asyncio.ensure_future(ts.wait_turn("s", 30))
    await asyncio.sleep(0.05)  # let it park (a release before it parks must wake it too)
    started = time.perf_counter()
    await ts.release_turn("s", token)
    assert await asyncio.wait_for(waiting, 10) is True
    assert time.perf_counter() - started < 5  # each store bounds its wake-up latency
    assert (await take(ts)).token is not None


async def test_a_release_between_the_busy_claim_and_the_wait_is_not_lost(ts: TurnStore) -> None:
    token = await taken(ts)
    assert (await take(ts)).token is None
    await ts.release_turn("s", token)  # before the waiter even starts waiting
    started = time.perf_counter()
    assert await ts.wait_turn("s", 30) is True
    assert time.perf_counter() - started < 5


async def test_wait_turn_is_woken_by_an_ended_turn(ts: TurnStore) -> None:
    token = await taken(ts)
    waiting = asyncio.ensure_future(ts.wait_turn("s", 30))
    await asyncio.sleep(0.05)
    await ts.end_turn("s", token, turn(1))
    assert await asyncio.wait_for(waiting, 10) is True


async def test_wait_turn_gives_up_after_its_timeout(ts: TurnStore) -> None:
    await taken(ts)
    started = time.perf_counter()
    assert await ts.wait_turn("s", 0.3) is False
    elapsed = time.perf_counter() - started
    assert 0.25 <= elapsed < 3, elapsed


async def test_wait_turn_with_zero_timeout_does_not_wait(ts: TurnStore) -> None:
    await taken(ts)
    started = time.perf_counter()
    assert await ts.wait_turn("s", 0) is False
    assert time.perf_counter() - started < 2


async def test_a_cancelled_wait_turn_leaves_the_store_usable(ts: TurnStore) -> None:
    token = await taken(ts)
    waiting = asyncio.ensure_future(ts.wait_turn("s", 30))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await ts.release_turn("s", token)
    assert await ts.wait_turn("s", 5) is True
    assert (await take(ts)).token is not None


# --- turn ids ----------------------------------------------------------------------------


async def test_a_turn_id_is_stored_once(ts: TurnStore) -> None:
    token = await taken(ts)
    await ts.end_turn("s", token, turn(1), turn_id="t1", usage=Usage(1, 2, 3))
    assert await ts.has_turn("s", "t1")
    assert not await ts.has_turn("s", "t2")
    # The retry of an ambiguous save, under a fresh lease: writes nothing, raises nothing,
    # and still releases the lease.
    token = await taken(ts)
    await ts.end_turn("s", token, turn(1), turn_id="t1", usage=Usage(1, 2, 3))
    assert contents(await ts.load("s")) == ["q1", "a1"]
    assert (await ts.get_ledger("s")).turns == 1
    assert not await is_busy(ts)


async def test_begin_turn_with_a_stored_id_returns_that_turn_and_no_lease(ts: TurnStore) -> None:
    await ts.append("s", turn(0))
    token = await taken(ts)
    await ts.end_turn("s", token, turn(1), turn_id="t1")
    token = await taken(ts)
    await ts.end_turn("s", token, turn(2), turn_id="t2")
    claim = await take(ts, turn_id="t1")
    assert claim.token is None
    assert claim.stored_turn is not None
    assert contents(claim.stored_turn) == ["q1", "a1"]
    assert claim.stored_turn[-1].role == "assistant"
    # No lease was taken: the session is free.
    assert not await is_busy(ts)
    # Even while another turn holds the lease, the stored turn is found.
    holder = await taken(ts)
    claim = await take(ts, turn_id="t2")
    assert claim.stored_turn is not None
    assert contents(claim.stored_turn) == ["q2", "a2"]
    await ts.release_turn("s", holder)


async def test_begin_turn_with_an_unknown_id_takes_the_lease(ts: TurnStore) -> None:
    claim = await take(ts, turn_id="fresh")
    assert claim.token is not None
    assert claim.stored_turn is None
    assert not await ts.has_turn("s", "fresh")  # recorded only by end_turn


async def test_turn_ids_are_per_session(ts: TurnStore) -> None:
    token = await taken(ts, "a")
    await ts.end_turn("a", token, turn(1), turn_id="same")
    assert await ts.has_turn("a", "same")
    assert not await ts.has_turn("b", "same")
    claim = await take(ts, "b", turn_id="same")
    assert claim.token is not None


async def test_has_turn_of_an_unknown_session_is_false(ts: TurnStore) -> None:
    assert await ts.has_turn("nobody", "t") is False


async def test_a_stored_turn_keeps_its_messages_after_later_appends(ts: TurnStore) -> None:
    token = await taken(ts)
    await ts.end_turn("s", token, [user("q1"), bot("tool?"), bot("a1")], turn_id="t1")
    await ts.append("s", turn(9))
    token = await taken(ts)
    await ts.end_turn("s", token, turn(2), turn_id="t2")
    claim = await take(ts, turn_id="t1")
    assert claim.stored_turn is not None
    assert contents(claim.stored_turn) == ["q1", "tool?", "a1"]


async def test_save_and_delete_forget_turn_ids(ts: TurnStore) -> None:
    token = await taken(ts)
    await ts.end_turn("s", token, turn(1), turn_id="t1")
    await ts.save("s", turn(5))
    assert not await ts.has_turn("s", "t1")
    token = await taken(ts)
    await ts.end_turn("s", token, turn(2), turn_id="t2")
    assert await ts.delete("s") is True
    assert not await ts.has_turn("s", "t2")
    claim = await take(ts, turn_id="t2")
    assert claim.token is not None


async def test_fork_copies_no_turn_ids(ts: TurnStore) -> None:
    token = await taken(ts, "src")
    await ts.end_turn("src", token, turn(1), turn_id="t1")
    token = await taken(ts, "dst")
    await ts.end_turn("dst", token, turn(7), turn_id="old")
    assert await ts.fork("src", "dst") == 2
    assert await ts.has_turn("src", "t1")  # the source keeps its own
    assert not await ts.has_turn("dst", "t1")
    assert not await ts.has_turn("dst", "old")


# --- ledger ------------------------------------------------------------------------------


async def test_the_ledger_sums_the_turns(ts: TurnStore) -> None:
    assert await ts.get_ledger("s") == Ledger()
    figures = [
        (Usage(10, 5, 15, cached_tokens=4), Cost(total_cost=0.1)),
        (Usage(20, 7, 27), Cost(total_cost=0.2)),
        (Usage(1, 1, 2, cached_tokens=1), Cost(total_cost=0.000123)),
    ]
    expected = Ledger()
    for n, (usage, cost) in enumerate(figures):
        token = await taken(ts)
        await ts.end_turn("s", token, turn(n), usage=usage, cost=cost)
        expected = expected.add(usage, cost)
    ledger = await ts.get_ledger("s")
    assert ledger.turns == 3
    assert ledger.prompt_tokens == 31
    assert ledger.completion_tokens == 13
    assert ledger.cached_tokens == 5
    assert ledger.total_tokens == 44
    assert math.isclose(ledger.cost_usd, expected.cost_usd, rel_tol=1e-9)
    claim = await take(ts)
    assert claim.ledger == ledger  # begin_turn reads it in the same trip


async def test_a_turn_without_figures_counts_as_a_turn(ts: TurnStore) -> None:
    token = await taken(ts)
    await ts.end_turn("s", token, turn(1))
    assert await ts.get_ledger("s") == Ledger(turns=1)


async def test_plain_appends_are_not_in_the_ledger(ts: TurnStore) -> None:
    await ts.append("s", turn(1))
    assert await ts.get_ledger("s") == Ledger()


async def test_the_ledger_goes_with_delete_stays_with_save_and_is_copied_by_fork(
    ts: TurnStore,
) -> None:
    token = await taken(ts)
    await ts.end_turn("s", token, turn(1), usage=Usage(1, 2, 3), cost=Cost(total_cost=0.5))
    ledger = await ts.get_ledger("s")
    assert ledger.turns == 1
    assert ledger.total_tokens == 3
    await ts.save("s", turn(2))
    assert await ts.get_ledger("s") == ledger
    assert await ts.fork("s", "copy") == 2
    assert await ts.get_ledger("copy") == ledger
    assert await ts.get_ledger("s") == ledger  # the source keeps its own
    assert await ts.delete("s") is True
    assert await ts.get_ledger("s") == Ledger()
    assert await ts.get_ledger("copy") == ledger
    await ts.fork("nobody", "copy")  # forking an unknown source empties the target
    assert await ts.get_ledger("copy") == Ledger()


async def test_a_fenced_or_repeated_turn_leaves_the_ledger_alone(
    harness: StoreHarness, ts: TurnStore
) -> None:
    token = await taken(ts, lease_ttl=10)
    await ts.end_turn("s", token, turn(1), turn_id="t1", usage=Usage(1, 1, 2))
    stale = await taken(ts, lease_ttl=10)
    await harness.advance(11)
    fresh = await taken(ts)
    with pytest.raises(LeaseLostError):
        await ts.end_turn("s", stale, turn(2), usage=Usage(100, 100, 200))
    await ts.end_turn("s", fresh, turn(1), turn_id="t1", usage=Usage(1, 1, 2))
    assert await ts.get_ledger("s") == Ledger(1, 1, 1, 0, 2, 0.0)
    assert contents(await ts.load("s")) == ["q1", "a1"]


# --- TTL ---------------------------------------------------------------------------------


async def test_turn_ids_and_ledger_expire_with_the_session(harness: StoreHarness) -> None:
    ts = await harness.make(ttl=100)
    assert isinstance(ts, TurnStore)
    token = await ts.begin_turn("s", owner=OWNER, lease_ttl=10)
    assert token.token is not None
    await ts.end_turn("s", token.token, turn(1), turn_id="t1", usage=Usage(1, 1, 2))
    await harness.advance(60)
    # end_turn is a write: it restarts the session's TTL, for everything of the session.
    token = await ts.begin_turn("s", owner=OWNER, lease_ttl=10)
    assert token.token is not None
    await ts.end_turn("s", token.token, turn(2), turn_id="t2", usage=Usage(1, 1, 2))
    await harness.advance(60)  # 120 s after the first turn, 60 s after the second
    assert await ts.has_turn("s", "t1")
    assert (await ts.get_ledger("s")).turns == 2
    await harness.advance(50)  # past the TTL of the last write
    assert await ts.load("s") == []
    assert not await ts.has_turn("s", "t1")
    assert not await ts.has_turn("s", "t2")
    assert await ts.get_ledger("s") == Ledger()
    claim = await ts.begin_turn("s", owner=OWNER, lease_ttl=10, turn_id="t1")
    assert claim.token is not None
    assert claim.stored_turn is None


# --- validation --------------------------------------------------------------------------

BAD_TURN_IDS = ["", "x" * 201, "a\nb", "nul\x00", "\x7f", 7, None]
BAD_TTLS = [0, -1.0, math.nan, math.inf, "10", True, None]
BAD_TOKENS = ["1", 1.0, True, None, -1]


@pytest.mark.parametrize("bad", BAD_TURN_IDS, ids=repr)
async def test_bad_turn_ids_are_refused_before_any_io(ts: TurnStore, bad: Any) -> None:
    token = await taken(ts)
    with pytest.raises(InvalidRequestError):
        await ts.has_turn("s", bad)
    if bad is not None:  # None means "no id" for begin_turn/end_turn
        with pytest.raises(InvalidRequestError):
            await ts.begin_turn("s", owner=OWNER, lease_ttl=LONG, turn_id=bad, steal=True)
        with pytest.raises(InvalidRequestError):
            await ts.end_turn("s", token, turn(1), turn_id=bad)
    assert await ts.load("s") == []
    assert await ts.renew_turn("s", token, LONG) is True  # not stolen, not released


async def test_turn_ids_may_be_long_printable_unicode(ts: TurnStore) -> None:
    for turn_id in [
        "x" * 200,
        "Idempotency: ü 键 🙂 {a}*:b",
        "550e8400-e29b-41d4-a716-446655440000",
    ]:
        token = await taken(ts)
        await ts.end_turn("s", token, turn(1), turn_id=turn_id)
        assert await ts.has_turn("s", turn_id)
        claim = await take(ts, turn_id=turn_id)
        assert claim.stored_turn is not None


@pytest.mark.parametrize("bad", BAD_TTLS, ids=repr)
async def test_bad_lease_ttls_are_refused_before_any_io(ts: TurnStore, bad: Any) -> None:
    with pytest.raises(InvalidRequestError):
        await ts.begin_turn("s", owner=OWNER, lease_ttl=bad)
    token = await taken(ts)
    with pytest.raises(InvalidRequestError):
        await ts.renew_turn("s", token, bad)
    await ts.release_turn("s", token)
    assert not await is_busy(ts)


@pytest.mark.parametrize("bad", BAD_TOKENS, ids=repr)
async def test_bad_tokens_are_refused_before_any_io(ts: TurnStore, bad: Any) -> None:
    token = await taken(ts)
    with pytest.raises(InvalidRequestError):
        await ts.end_turn("s", bad, turn(1))
    with pytest.raises(InvalidRequestError):
        await ts.renew_turn("s", bad, LONG)
    with pytest.raises(InvalidRequestError):
        await ts.release_turn("s", bad)
    assert await ts.load("s") == []
    assert await ts.renew_turn("s", token, LONG) is True


async def test_other_bad_arguments_are_refused_before_any_io(ts: TurnStore) -> None:
    with pytest.raises(InvalidSessionIdError):
        await ts.begin_turn("", owner=OWNER, lease_ttl=LONG)
    with pytest.raises(InvalidSessionIdError):
        await ts.get_ledger(" ")
    with pytest.raises(InvalidSessionIdError):
        await ts.has_turn("\x00", "t")
    with pytest.raises(InvalidSessionIdError):
        await ts.wait_turn("", 1)
    with pytest.raises(InvalidRequestError):
        await ts.begin_turn("s", owner="", lease_ttl=LONG)
    with pytest.raises(InvalidRequestError):
        await ts.begin_turn("s", owner=OWNER, lease_ttl=LONG, last_n=-1)
    for timeout in (-1, math.nan, math.inf, "1"):
        with pytest.raises(InvalidRequestError):
            await ts.wait_turn("s", timeout)  # type: ignore[arg-type]
    token = await taken(ts)
    with pytest.raises(InvalidMessageError):
        await ts.end_turn("s", token, [user("ok"), "not a message"])  # type: ignore[list-item]
    with pytest.raises(InvalidRequestError):
        await ts.end_turn("s", token, turn(1), usage={"prompt_tokens": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        await ts.end_turn("s", token, turn(1), cost=0.5)  # type: ignore[arg-type]
    # Nothing of it was written, and the lease is still this turn's.
    assert await ts.load("s") == []
    assert await ts.get_ledger("s") == Ledger()
    await ts.end_turn("s", token, turn(1))
    assert contents(await ts.load("s")) == ["q1", "a1"]
