"""StateMiddleware with session leases (issue 15), in one process, on the memory store.

Two pipelines over one store stand for two worker processes: they share nothing but the
store, so everything that serialises them goes through the store's lease (the
multi-process tests in tests/multiproc run the same thing in real processes).
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from promptkit_async import (
    AmbiguousTurnError,
    BudgetExceededError,
    ConfigurationError,
    Cost,
    ExecutionResult,
    InMemoryStateStore,
    InvalidRequestError,
    LeaseLostError,
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderRequest,
    ProviderResponse,
    SessionBudget,
    SessionBusyError,
    StateMiddleware,
    StoreTimeoutError,
    StoreUnavailableError,
    StreamChunk,
    TurnInterruptedError,
    Usage,
)
from promptkit_async.providers.base import BaseProvider
from promptkit_async.statestore import (
    BlobOffloadStore,
    InMemoryBlobStore,
    TurnStore,
    finish_shielded,
)
from tests._plain_store import PlainStore


class Model(BaseProvider):
    """A provider the test steers: each request streams ``"<text>:"``, then waits for
    the gate of its message (if one was made), then ``"done"``. Records what it saw."""

    def __init__(self) -> None:
        super().__init__("steered", "gpt-4o-mini")
        self.seen: dict[str, list[str]] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.calls = 0
        self.failing: set[str] = set()  # these turns raise once released
        self.cancelled: set[str] = set()  # turns whose wait at the gate was cancelled

    def gate(self, text: str) -> tuple[asyncio.Event, asyncio.Event]:
        """(started, release) events for the turn whose message is ``text``."""
        self.started[text] = asyncio.Event()
        self.gates[text] = asyncio.Event()
        return self.started[text], self.gates[text]

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        text = str(request.messages[-1].content)
        self.seen[text] = [str(m.content) for m in request.messages]
        yield StreamChunk(delta=f"{text}:")
        if text in self.started:
            self.started[text].set()
            try:
                await self.gates[text].wait()
            except asyncio.CancelledError:
                self.cancelled.add(text)
                raise
        if text in self.failing:
            raise RuntimeError("model broke")
        yield StreamChunk(delta="done")
        yield StreamChunk(
            response=ProviderResponse(
                f"{text}:done",
                finish_reason="stop",
                usage=Usage(10, 5, 15),
                cost=Cost(total_cost=0.25),
            )
        )


def contents(messages: Sequence[Message]) -> list[str]:
    return [str(m.content) for m in messages]


def pipe_of(store: Any, model: BaseProvider, **options: Any) -> Pipeline:
    return Pipeline(StateMiddleware(store, **options), ProviderMiddleware(model))


@pytest.fixture
def model() -> Model:
    return Model()


async def collect(pipe: Pipeline, session: str, text: str, **kw: Any) -> list[str]:
    """Read a streamed turn to its end; the deltas."""
    deltas: list[str] = []
    async with pipe.stream(session, "user", text, **kw) as chunks:
        async for chunk in chunks:
            deltas.append(chunk.delta)
    return deltas


# --- queue -------------------------------------------------------------------------------


async def test_queue_across_pipelines_waits_and_sees_the_whole_history(
    store: InMemoryStateStore, model: Model
) -> None:
    one, two = pipe_of(store, model), pipe_of(store, model)
    started, release = model.gate("first")
    first = asyncio.ensure_future(one.execute("s", "user", "first"))
    await started.wait()
    second = asyncio.ensure_future(two.execute("s", "user", "second"))
    await asyncio.sleep(0.05)  # the second turn is parked (nothing can make it run)
    assert "second" not in model.seen
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert model.seen["second"] == ["first", "first:done", "second"]
    assert contents(await store.load("s")) == ["first", "first:done", "second", "second:done"]


async def test_queued_turns_of_one_pipeline_run_in_arrival_order(
    store: InMemoryStateStore, model: Model
) -> None:
    pipe = pipe_of(store, model)
    started, release = model.gate("t0")
    turns = [asyncio.ensure_future(pipe.execute("s", "user", "t0"))]
    await started.wait()
    turns += [asyncio.ensure_future(pipe.execute("s", "user", f"t{i}")) for i in range(1, 6)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(*turns), 5)
    assert contents(await store.load("s"))[::2] == [f"t{i}" for i in range(6)]
    assert model.seen["t5"][-1] == "t5"
    assert len(model.seen["t5"]) == 11


@pytest.mark.parametrize("same_pipeline", [True, False], ids=["in-process", "across"])
async def test_queue_gives_up_after_busy_timeout(
    store: InMemoryStateStore, model: Model, same_pipeline: bool
) -> None:
    one = pipe_of(store, model, busy_timeout=0.2)
    two = one if same_pipeline else pipe_of(store, model, busy_timeout=0.2)
    started, release = model.gate("long")
    first = asyncio.ensure_future(one.execute("s", "user", "long"))
    await started.wait()
    with pytest.raises(SessionBusyError) as caught:
        await asyncio.wait_for(two.execute("s", "user", "waits"), 5)
    assert caught.value.session_id == "s"
    assert 0.15 <= caught.value.waited < 2
    assert "waits" not in model.seen
    release.set()
    await first
    assert contents(await store.load("s")) == ["long", "long:done"]


# --- reject ------------------------------------------------------------------------------


@pytest.mark.parametrize("same_pipeline", [True, False], ids=["in-process", "across"])
@pytest.mark.parametrize("per_call", [True, False], ids=["per-call", "per-pipeline"])
async def test_reject_fails_at_once(
    store: InMemoryStateStore, model: Model, same_pipeline: bool, per_call: bool
) -> None:
    options: dict[str, Any] = {} if per_call else {"on_busy": "reject"}
    one = pipe_of(store, model)
    two = one if same_pipeline else pipe_of(store, model, **options)
    if same_pipeline and not per_call:
        one = two = pipe_of(store, model, on_busy="reject")
    call = {"on_busy": "reject"} if per_call else {}
    started, release = model.gate("long")
    first = asyncio.ensure_future(one.execute("s", "user", "long"))
    await started.wait()
    with pytest.raises(SessionBusyError) as caught:
        await two.execute("s", "user", "rejected", **call)
    assert caught.value.waited == 0
    assert "rejected" not in model.seen
    release.set()
    await first
    # Once free, the same call goes through.
    await two.execute("s", "user", "later", **call)
    assert contents(await store.load("s"))[::2] == ["long", "later"]


# --- interrupt ---------------------------------------------------------------------------


@pytest.mark.parametrize("same_pipeline", [True, False], ids=["in-process", "across"])
async def test_interrupt_stops_a_running_streamed_turn_which_stores_nothing(
    store: InMemoryStateStore, model: Model, same_pipeline: bool
) -> None:
    one = pipe_of(store, model)
    two = one if same_pipeline else pipe_of(store, model)
    await one.execute("s", "user", "before")
    started, release = model.gate("old")
    got: list[str] = []

    async def old_turn() -> None:
        async with one.stream("s", "user", "old") as chunks:
            async for chunk in chunks:
                got.append(chunk.delta)

    old = asyncio.ensure_future(old_turn())
    await started.wait()
    result = await asyncio.wait_for(two.execute("s", "user", "new", on_busy="interrupt"), 5)
    assert result.response.content == "new:done"
    release.set()  # the old turn's next chunk arrives: it must stop there
    with pytest.raises(TurnInterruptedError) as caught:
        await asyncio.wait_for(old, 5)
    assert caught.value.session_id == "s"
    assert got == ["old:"]
    assert model.seen["new"] == ["before", "before:done", "new"]
    assert contents(await store.load("s")) == ["before", "before:done", "new", "new:done"]
    assert (await store.get_ledger("s")).turns == 2
    # The session works on as usual.
    await one.execute("s", "user", "after")
    assert model.seen["after"][-3:] == ["new", "new:done", "after"]


needs_uncancel = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="without Task.uncancel an interrupt waits for a chunk"
)


@needs_uncancel
@pytest.mark.parametrize("same_pipeline", [True, False], ids=["in-process", "across"])
async def test_an_interrupt_stops_a_turn_waiting_on_the_model_at_once(
    store: InMemoryStateStore, model: Model, same_pipeline: bool
) -> None:
    """The old turn waits on a model that never answers: the interrupt cancels that wait
    (the model's call is cancelled), the turn raises TurnInterruptedError and stores
    nothing; the reader's task is left as it was (no cancellation pending)."""
    one = pipe_of(store, model)
    two = one if same_pipeline else pipe_of(store, model)
    started, _never = model.gate("old")
    left: list[int] = []

    async def old_turn() -> None:
        try:
            await one.execute("s", "user", "old")
        finally:
            task = asyncio.current_task()
            assert task is not None
            left.append(task.cancelling())

    old = asyncio.ensure_future(old_turn())
    await started.wait()
    result = await asyncio.wait_for(two.execute("s", "user", "new", on_busy="interrupt"), 5)
    assert result.response.content == "new:done"
    with pytest.raises(TurnInterruptedError):
        await asyncio.wait_for(old, 5)  # the gate is never opened
    assert model.cancelled == {"old"}
    assert left == [0]
    assert contents(await store.load("s")) == ["new", "new:done"]


@needs_uncancel
async def test_a_callers_timeout_around_an_interrupted_turn_is_not_confused(
    store: InMemoryStateStore, model: Model
) -> None:
    pipe = pipe_of(store, model)
    started, _never = model.gate("old")
    caught: list[BaseException] = []

    async def old_turn() -> None:
        try:
            async with asyncio.timeout(30):  # the caller's own, far off
                await pipe.execute("s", "user", "old")
        except BaseException as exc:
            caught.append(exc)
        # After the interrupt, the caller's next timeout works as usual.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()

    old = asyncio.ensure_future(old_turn())
    await started.wait()
    await pipe.execute("s", "user", "new", on_busy="interrupt")
    await asyncio.wait_for(old, 5)
    assert [type(e) for e in caught] == [TurnInterruptedError]


@needs_uncancel
async def test_a_callers_cancellation_racing_an_interrupt_stays_a_cancellation(
    store: InMemoryStateStore, model: Model
) -> None:
    pipe = pipe_of(store, model)
    started, _never = model.gate("old")
    old = asyncio.ensure_future(pipe.execute("s", "user", "old"))
    await started.wait()
    new = asyncio.ensure_future(pipe.execute("s", "user", "new", on_busy="interrupt"))
    # The interrupting turn's first step takes the session and cancels the old turn's
    # wait; the caller cancels the old turn too before that task runs again.
    await asyncio.sleep(0)
    assert not old.done()
    old.cancel()
    with pytest.raises(asyncio.CancelledError):
        await old
    assert (await asyncio.wait_for(new, 5)).response.content == "new:done"
    assert contents(await store.load("s")) == ["new", "new:done"]


class DeafStore(InMemoryStateStore):
    """A store whose lease watch never tells (a signal that is slow to arrive)."""

    def watch_lease(self, session_id: str, token: int, on_lost: Any) -> Any:
        return lambda: None


async def test_an_interrupted_turn_that_heard_nothing_is_fenced_at_its_save(
    model: Model,
) -> None:
    store = DeafStore()
    one, two = pipe_of(store, model), pipe_of(store, model)
    started, release = model.gate("old")
    old = asyncio.ensure_future(one.execute("s", "user", "old"))
    await started.wait()
    await two.execute("s", "user", "new", on_busy="interrupt")
    release.set()
    with pytest.raises(TurnInterruptedError):
        await asyncio.wait_for(old, 5)
    assert contents(await store.load("s")) == ["new", "new:done"]


async def test_queued_turns_keep_their_order_behind_an_interrupting_turn(
    store: InMemoryStateStore, model: Model
) -> None:
    pipe = pipe_of(store, model)
    started, release = model.gate("old")
    old = asyncio.ensure_future(pipe.execute("s", "user", "old"))
    await started.wait()
    queued = asyncio.ensure_future(pipe.execute("s", "user", "queued"))
    await asyncio.sleep(0)
    new_started, new_release = model.gate("new")
    new = asyncio.ensure_future(pipe.execute("s", "user", "new", on_busy="interrupt"))
    await new_started.wait()
    release.set()
    with pytest.raises(TurnInterruptedError):
        await old
    assert "queued" not in model.seen  # still waiting for the interrupting turn
    new_release.set()
    await asyncio.wait_for(asyncio.gather(new, queued), 5)
    assert contents(await store.load("s")) == ["new", "new:done", "queued", "queued:done"]


# --- leases: renewal, stalls, cancellation --------------------------------------------------


class CountingRenewals(InMemoryStateStore):
    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.renewals = 0
        self.renewed = asyncio.Event()
        self.fail = fail

    async def renew_turn(self, session_id: str, token: int, lease_ttl: float) -> bool:
        self.renewals += 1
        self.renewed.set()
        if self.fail:
            raise StoreUnavailableError("the store is unreachable (test)")
        return await super().renew_turn(session_id, token, lease_ttl)


async def test_a_turn_longer_than_the_lease_ttl_keeps_its_lease(model: Model) -> None:
    store = CountingRenewals()
    one = pipe_of(store, model, lease_ttl=0.2)
    two = pipe_of(store, model, on_busy="reject")
    started, release = model.gate("long")
    first = asyncio.ensure_future(one.execute("s", "user", "long"))
    await started.wait()
    for _ in range(4):  # four renewals, each lease_ttl / 3 apart: past the first TTL
        store.renewed.clear()
        await asyncio.wait_for(store.renewed.wait(), 5)
    with pytest.raises(SessionBusyError):
        await two.execute("s", "user", "other")
    release.set()
    await asyncio.wait_for(first, 5)
    assert contents(await store.load("s")) == ["long", "long:done"]
    renewals = store.renewals
    await asyncio.sleep(0.2)  # the turn is over: its renewal timer is gone
    assert store.renewals == renewals


async def test_a_turn_shorter_than_a_third_of_the_ttl_never_renews(model: Model) -> None:
    store = CountingRenewals()
    pipe = pipe_of(store, model, lease_ttl=30)
    for i in range(5):
        await pipe.execute("s", "user", f"m{i}")
    assert store.renewals == 0


async def test_a_stalled_turn_whose_lease_passed_on_gets_lease_lost(model: Model) -> None:
    store = CountingRenewals(fail=True)  # this worker cannot renew: it is as good as stalled
    one = pipe_of(store, model, lease_ttl=0.2)
    two = pipe_of(store, model, busy_timeout=5)
    started, release = model.gate("stalled")
    stalled = asyncio.ensure_future(one.execute("s", "user", "stalled"))
    await started.wait()
    taker_started, taker_release = model.gate("taker")
    taker = asyncio.ensure_future(two.execute("s", "user", "taker"))
    await taker_started.wait()  # the lease expired and the other worker took it
    release.set()
    with pytest.raises(LeaseLostError) as caught:
        await asyncio.wait_for(stalled, 5)
    assert caught.value.session_id == "s"
    taker_release.set()
    await taker
    assert contents(await store.load("s")) == ["taker", "taker:done"]


@pytest.mark.parametrize("how", ["cancel", "close", "error"])
async def test_a_turn_that_ends_early_releases_the_lease_at_once(
    store: InMemoryStateStore, model: Model, how: str
) -> None:
    one = pipe_of(store, model, lease_ttl=60)
    two = pipe_of(store, model, on_busy="reject")
    started, release = model.gate("doomed")
    if how == "close":
        chunks = one.stream("s", "user", "doomed")
        assert (await chunks.__anext__()).delta == "doomed:"
        await chunks.aclose()
    else:
        doomed = asyncio.ensure_future(one.execute("s", "user", "doomed"))
        await started.wait()
        if how == "cancel":
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
        else:
            model.failing.add("doomed")
            release.set()
            with pytest.raises(RuntimeError, match="model broke"):
                await doomed
    # Not waiting for the 60 s TTL: the other worker gets the session now.
    await two.execute("s", "user", "next")
    assert contents(await store.load("s")) == ["next", "next:done"]
    assert (await store.get_ledger("s")).turns == 1


# --- idempotent turns ----------------------------------------------------------------------


async def test_a_retried_turn_id_is_replayed_not_run_again(
    store: InMemoryStateStore, model: Model
) -> None:
    pipe = pipe_of(store, model)
    first = await pipe.execute("s", "user", "hello", turn_id="req-1")
    assert first.turn_id == "req-1"
    assert first.replayed is False
    again = await pipe.execute("s", "user", "hello", turn_id="req-1")
    assert again.replayed is True
    assert again.turn_id == "req-1"
    assert again.response.content == "hello:done"
    assert contents(again.messages) == ["hello", "hello:done"]
    assert again.usage == Usage()
    assert model.calls == 1
    assert contents(await store.load("s")) == ["hello", "hello:done"]
    assert (await store.get_ledger("s")).turns == 1
    # Streamed retries replay too.
    assert await collect(pipe, "s", "hello", turn_id="req-1") == [""]
    assert model.calls == 1


async def test_every_turn_gets_an_id(store: InMemoryStateStore, model: Model) -> None:
    pipe = pipe_of(store, model)
    one = await pipe.execute("s", "user", "a")
    two = await pipe.execute("s", "user", "b")
    assert one.turn_id is not None
    assert two.turn_id is not None
    assert re.fullmatch("[0-9a-f]{32}", one.turn_id)
    assert one.turn_id != two.turn_id
    assert await store.has_turn("s", one.turn_id)


async def test_a_turn_id_reused_for_another_message_is_refused(
    store: InMemoryStateStore, model: Model
) -> None:
    pipe = pipe_of(store, model)
    await pipe.execute("s", "user", "hello", turn_id="k")
    with pytest.raises(InvalidRequestError, match="different message"):
        await pipe.execute("s", "user", "something else", turn_id="k")
    assert model.calls == 1


async def test_concurrent_retries_of_one_turn_id_run_it_once(
    store: InMemoryStateStore, model: Model
) -> None:
    one, two = pipe_of(store, model), pipe_of(store, model)
    results = await asyncio.gather(
        *(p.execute("s", "user", "once", turn_id="dup") for p in (one, two, one, two))
    )
    assert sorted(r.replayed for r in results) == [False, True, True, True]
    assert model.calls == 1
    assert contents(await store.load("s")) == ["once", "once:done"]


class AmbiguousOnce(InMemoryStateStore):
    """A store whose first end_turn times out after it was sent: applied or not."""

    def __init__(self, *, applied: bool) -> None:
        super().__init__()
        self.applied = applied
        self.failed = False

    async def end_turn(
        self, session_id: str, token: int, messages: Sequence[Message], **kw: Any
    ) -> None:
        if self.failed:
            return await super().end_turn(session_id, token, messages, **kw)
        self.failed = True
        if self.applied:
            await super().end_turn(session_id, token, messages, **kw)
        raise StoreTimeoutError(
            "end_turn timed out (test)", operation="end_turn", timeout=1.0, maybe_applied=True
        )


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
async def test_an_ambiguous_save_is_reported_and_safe_to_retry(model: Model, applied: bool) -> None:
    store = AmbiguousOnce(applied=applied)
    pipe = pipe_of(store, model, lease_ttl=60)
    with pytest.raises(AmbiguousTurnError) as caught:
        await pipe.execute("s", "user", "pay", turn_id="order-7")
    error = caught.value
    assert error.turn_id == "order-7"
    assert error.session_id == "s"
    assert "order-7" in str(error)
    assert "retry" in str(error)
    assert isinstance(error.__cause__, StoreTimeoutError)
    assert await store.has_turn("s", "order-7") is applied
    # The retry with the same id: never stored twice, and the lease was not left
    # behind (a 60 s TTL would make this retry wait).
    retry = await asyncio.wait_for(pipe.execute("s", "user", "pay", turn_id="order-7"), 5)
    assert retry.replayed is applied
    assert model.calls == (1 if applied else 2)
    assert contents(await store.load("s")) == ["pay", "pay:done"]
    assert (await store.get_ledger("s")).turns == 1


async def test_a_save_that_certainly_failed_is_not_ambiguous(model: Model) -> None:
    class Down(InMemoryStateStore):
        async def end_turn(self, *args: Any, **kw: Any) -> None:
            raise StoreTimeoutError(
                "queued too long (test)", operation="end_turn", timeout=1.0, maybe_applied=False
            )

    pipe = pipe_of(Down(), model)
    with pytest.raises(StoreTimeoutError) as caught:
        await pipe.execute("s", "user", "x")
    assert not isinstance(caught.value, AmbiguousTurnError)


# --- budget --------------------------------------------------------------------------------


async def test_the_budget_stops_a_session_that_reached_it(
    store: InMemoryStateStore, model: Model
) -> None:
    pipe = pipe_of(store, model, budget=SessionBudget(max_cost_usd=0.5))
    await pipe.execute("s", "user", "one")
    await pipe.execute("s", "user", "two")  # 0.25 spent before it: allowed
    with pytest.raises(BudgetExceededError) as caught:
        await pipe.execute("s", "user", "three")
    error = caught.value
    assert error.session_id == "s"
    assert error.spent_usd == pytest.approx(0.5)
    assert error.limit_usd == 0.5
    assert error.spent_tokens == 30
    assert error.limit_tokens is None
    assert "0.5" in str(error)
    assert model.calls == 2
    assert "three" not in model.seen
    # Other sessions have their own ledgers; and the lease was released (reject works).
    await pipe.execute("t", "user", "fresh")
    await pipe_of(store, model, on_busy="reject").execute("s", "user", "unbudgeted")


async def test_the_token_budget(store: InMemoryStateStore, model: Model) -> None:
    pipe = pipe_of(store, model, budget=SessionBudget(max_total_tokens=15))
    await pipe.execute("s", "user", "one")
    with pytest.raises(BudgetExceededError) as caught:
        await pipe.execute("s", "user", "two")
    assert caught.value.spent_tokens == 15
    assert caught.value.limit_tokens == 15


async def test_the_ledger_sums_the_turns(store: InMemoryStateStore, model: Model) -> None:
    pipe = pipe_of(store, model)
    results: list[ExecutionResult] = [await pipe.execute("s", "user", f"m{i}") for i in range(3)]
    ledger = await store.get_ledger("s")
    assert ledger.turns == 3
    assert ledger.total_tokens == sum(r.usage.total_tokens for r in results)
    assert ledger.cost_usd == pytest.approx(sum(r.cost.total_cost for r in results))


# --- configuration, validation, other stores ---------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"on_busy": "wait"},
        {"busy_timeout": 0},
        {"busy_timeout": float("inf")},
        {"lease_ttl": -1},
        {"lease_ttl": "15"},
        {"budget": {"max_cost_usd": 1}},
        {"max_history_messages": -1},
    ],
    ids=repr,
)
def test_bad_settings_are_refused(store: InMemoryStateStore, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        StateMiddleware(store, **options)


@pytest.mark.parametrize(
    "budget", [{"max_cost_usd": -1}, {"max_cost_usd": float("nan")}, {"max_total_tokens": 1.5}]
)
def test_bad_budgets_are_refused(budget: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        SessionBudget(**budget)


@pytest.mark.parametrize(
    "call", [{"turn_id": ""}, {"turn_id": "a\nb"}, {"turn_id": "x" * 201}, {"on_busy": "wait"}]
)
async def test_bad_per_call_arguments_are_refused_before_any_io(
    store: InMemoryStateStore, model: Model, call: dict[str, Any]
) -> None:
    pipe = pipe_of(store, model)
    with pytest.raises(InvalidRequestError):
        await pipe.execute("s", "user", "x", **call)
    with pytest.raises(InvalidRequestError):
        pipe.stream("s", "user", "x", **call)
    assert model.calls == 0
    assert await store.count("s") == 0


async def test_a_store_of_your_own_without_leases_still_works(model: Model) -> None:
    store = PlainStore()
    assert not isinstance(store, TurnStore)
    with pytest.raises(ConfigurationError, match="PlainStore"):
        StateMiddleware(store, budget=SessionBudget(max_cost_usd=1))  # type: ignore[arg-type]
    pipe = pipe_of(store, model)
    started, release = model.gate("first")
    first = asyncio.ensure_future(pipe.execute("s", "user", "first"))
    await started.wait()
    second = asyncio.ensure_future(pipe.execute("s", "user", "second"))
    with pytest.raises(SessionBusyError):
        await pipe.execute("s", "user", "rejected", on_busy="reject")
    release.set()
    await asyncio.gather(first, second)
    assert model.seen["second"] == ["first", "first:done", "second"]
    # Turn ids are not deduplicated without a TurnStore (documented).
    await pipe.execute("t", "user", "same", turn_id="k")
    await pipe.execute("t", "user", "same", turn_id="k")
    assert await store.count("t") == 4


async def test_interrupt_without_leases_works_within_the_pipeline(model: Model) -> None:
    store = PlainStore()
    pipe = pipe_of(store, model)
    started, release = model.gate("old")
    old = asyncio.ensure_future(pipe.execute("s", "user", "old"))
    await started.wait()
    await pipe.execute("s", "user", "new", on_busy="interrupt")
    release.set()
    with pytest.raises(TurnInterruptedError):
        await old
    assert contents(await store.load("s")) == ["new", "new:done"]


async def test_blob_offload_store_is_a_turn_store_only_around_one(model: Model) -> None:
    blobs = InMemoryBlobStore()
    assert isinstance(BlobOffloadStore(InMemoryStateStore(), blobs), TurnStore)
    plain = BlobOffloadStore(PlainStore(), blobs)  # type: ignore[arg-type]
    assert isinstance(plain, BlobOffloadStore)
    assert not isinstance(plain, TurnStore)
    assert not hasattr(plain, "begin_turn")
    # Both work under StateMiddleware; the leased one replays turn ids.
    for store in (BlobOffloadStore(InMemoryStateStore(), blobs), plain):
        pipe = pipe_of(store, model)
        await pipe.execute("s", "user", "hi", turn_id="k")
        again = await pipe.execute("s", "user", "hi", turn_id="k")
        assert again.replayed is isinstance(store, TurnStore)


async def test_no_bookkeeping_is_left_behind(store: InMemoryStateStore, model: Model) -> None:
    state = StateMiddleware(store, busy_timeout=0.1)
    pipe = Pipeline(state, ProviderMiddleware(model))
    started, release = model.gate("long")
    first = asyncio.ensure_future(pipe.execute("s", "user", "long"))
    await started.wait()
    waiters = [asyncio.ensure_future(pipe.execute("s", "user", f"w{i}")) for i in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert all(isinstance(o, SessionBusyError) for o in outcomes[1:])
    release.set()
    await first
    await asyncio.gather(*(pipe.execute(f"x{i}", "user", "hi") for i in range(20)))
    assert state._holders == {}
    assert state._waiting == {}
    assert store._leases == {}
    assert store._waiters == {}


class SlowSaves(InMemoryStateStore):
    """end_turn spans a few loop iterations (finished through finish_shielded, as the
    contract asks), so that cancellations land during saves too."""

    async def end_turn(
        self, session_id: str, token: int, messages: Sequence[Message], **kw: Any
    ) -> None:
        await finish_shielded(self._slow_end(session_id, token, messages, **kw))

    async def _slow_end(
        self, session_id: str, token: int, messages: Sequence[Message], **kw: Any
    ) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        await super().end_turn(session_id, token, messages, **kw)


async def test_a_cancellation_storm_leaves_whole_turns_and_no_lease_behind() -> None:
    rng = random.Random(7)
    store = SlowSaves()
    provider = MockProvider(
        handler=lambda r: f"reply to {r.messages[-1].content}",
        chunk_size=4,
        chunk_delay=0.0001,  # the model pauses between chunks: cancellations land mid-turn
        model="gpt-4o-mini",
    )
    pipes = [
        Pipeline(
            StateMiddleware(store, lease_ttl=60, busy_timeout=30), ProviderMiddleware(provider)
        )
        for _ in range(3)  # three "workers" over one store
    ]
    sessions = [f"s{i}" for i in range(12)]

    async def turn(n: int) -> None:
        pipe, session = rng.choice(pipes), rng.choice(sessions)
        async with pipe.stream(session, "user", f"{session} q{n}") as chunks:
            async for _ in chunks:
                pass

    async def cancel_later(task: asyncio.Task[None], iterations: int) -> None:
        for _ in range(iterations):  # the fault: a cancellation at a random point
            await asyncio.sleep(0)
        task.cancel()

    tasks = [asyncio.ensure_future(turn(n)) for n in range(300)]
    killers = [
        asyncio.ensure_future(cancel_later(t, rng.randrange(60)))
        for t in tasks
        if rng.random() < 0.4
    ]
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    await asyncio.gather(*killers)
    assert all(o is None or isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
    assert any(isinstance(o, asyncio.CancelledError) for o in outcomes)
    for session in sessions:
        history = contents(await store.load(session))
        questions = history[::2]
        assert history[1::2] == [f"reply to {q}" for q in questions]  # whole turns only
        assert len(set(questions)) == len(questions)  # each at most once
        assert (await store.get_ledger(session)).turns == len(questions)
    # Every lease was given back: a reject turn gets every session at once.
    assert store._leases == {}
    for session in sessions:
        await pipes[0].execute(session, "user", "after", on_busy="reject")


async def test_the_fast_path_creates_no_task(store: InMemoryStateStore) -> None:
    provider = MockProvider(handler=lambda r: "ok", model="gpt-4o-mini")
    pipe = pipe_of(store, provider)
    loop = asyncio.get_running_loop()
    created: list[object] = []
    default = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        created.append(coro)
        if default is not None:
            return default(loop, coro, **kw)  # type: ignore[no-any-return]
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(counting)  # type: ignore[arg-type]
    try:
        for i in range(20):
            result = await pipe.execute(f"s{i % 3}", "user", "hi")
            assert result.turn_id is not None
    finally:
        loop.set_task_factory(default)
    assert created == []
    assert (await store.get_ledger("s0")).turns == 7


async def test_a_pipeline_without_state_carries_the_callers_turn_id() -> None:
    pipe = Pipeline(ProviderMiddleware(MockProvider(handler=lambda r: "ok", model="gpt-4o-mini")))
    result = await pipe.execute("s", "user", "hi", turn_id="given")
    assert result.turn_id == "given"
    assert result.replayed is False
    assert (await pipe.execute("s", "user", "hi")).turn_id is None


def test_renewal_follows_the_middleware_to_a_new_event_loop() -> None:
    state = StateMiddleware(InMemoryStateStore(), lease_ttl=0.2)

    async def long_turn() -> int:
        store = CountingRenewals()
        state.store = state._turns = store  # the same middleware, a fresh store per loop
        model = Model()
        pipe = Pipeline(state, ProviderMiddleware(model))
        started, release = model.gate("long")
        turn = asyncio.ensure_future(pipe.execute("s", "user", "long"))
        await started.wait()
        for _ in range(2):
            store.renewed.clear()
            await asyncio.wait_for(store.renewed.wait(), 5)
        release.set()
        await turn
        return store.renewals

    def in_new_loop() -> int:
        # A loop left while its renewal timer was armed: the timer never fires there.
        return asyncio.run(long_turn())

    assert in_new_loop() >= 2
    assert in_new_loop() >= 2
