"""Cancellation storm: streams cancelled at random points, then every invariant checked.

Hundreds of concurrent ``Pipeline.stream`` turns (and some ``execute``) on a few shared
sessions, over ``MockProvider`` and over ``OpenAIProvider`` against the loopback server.
Each turn follows a random plan: read to the end; break out after k chunks; drop the
stream without closing it; or have its task cancelled after n event-loop iterations,
which lands anywhere: before the request, while waiting for the session lock, mid-
stream, or during the save (the store is wrapped so that a save takes a few iterations,
and one test holds every save until all of their turns are cancelled).

Afterwards: every session holds whole turns only, each turn at most once, exactly the
turns whose save began (a save that began is finished even if its turn was cancelled),
in the order their saves began; every turn whose last chunk was read is stored. The
HTTP pool is healthy (every abandoned response was closed: the server sees no handler
left waiting; new turns succeed; a four-connection pool is not exhausted; closing the
provider closes every connection) and so is the Redis pool (no more connections than
allowed, new operations succeed). ``gc.collect()`` at the end turns a leaked socket
into a failing ``ResourceWarning``.
"""

from __future__ import annotations

import asyncio
import gc
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis

from promptkit_async import (
    InMemoryStateStore,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderRequest,
    StateMiddleware,
)
from promptkit_async.providers import AiohttpTransport, OpenAIProvider
from promptkit_async.statestore import RedisStateStore, StateStore
from tests._redis_server import RedisServer
from tests.faults import _http_server as srv
from tests.faults._checks import GatedStore, question, whole_turns
from tests.faults._http_server import Conn, Request, ScriptedServer
from tests.faults.conftest import Report, scales

KEY = "sk-fault-STORM-51e2"
GUARD = 60.0
REDIS_POOL = 4


@dataclass
class Turn:
    session: str
    ask: str
    plan: str
    n: int
    finished: bool = False  # the caller read the last chunk (the turn's result)
    outcome: str = ""


async def consume(pipe: Pipeline, turn: Turn) -> None:
    """Run ``turn`` by its plan (the ``cancel`` plans are cancelled from outside)."""
    if turn.plan == "execute":
        await pipe.execute(turn.session, "user", turn.ask)
        turn.finished = True
        return
    if turn.plan == "drop":
        # Read n chunks, then drop the stream without closing it: collecting it cancels
        # the turn (CPython collects it at once, on the last reference).
        stream = pipe.stream(turn.session, "user", turn.ask)
        for _ in range(turn.n):
            chunk = await stream.__anext__()
            if chunk.final_result is not None:
                turn.finished = True
                return
        del stream
        return
    async with pipe.stream(turn.session, "user", turn.ask) as chunks:
        read = 0
        async for chunk in chunks:
            if chunk.final_result is not None:
                turn.finished = True
            read += 1
            if turn.plan == "break" and read >= turn.n:
                break


async def run_storm(pipe: Pipeline, turns: list[Turn], rng: random.Random) -> Counter[str]:
    """Run every turn at once; cancel the ``cancel`` ones after n loop iterations."""
    outcomes: Counter[str] = Counter()

    async def one(turn: Turn) -> None:
        task = asyncio.ensure_future(consume(pipe, turn))
        if turn.plan in ("cancel", "execute"):
            for _ in range(turn.n):
                await asyncio.sleep(0)  # yield n times: a random point in the turn
            task.cancel()
        try:
            await task
            turn.outcome = "finished" if turn.finished else "abandoned"
        except asyncio.CancelledError:
            turn.outcome = "cancelled"
        outcomes[turn.outcome] += 1

    await asyncio.gather(*(one(t) for t in turns))
    return outcomes


def make_turns(rng: random.Random, sessions: list[str], count: int, *, hang: bool) -> list[Turn]:
    plans = ["complete", "break", "drop", "cancel", "cancel", "cancel", "execute"]
    turns = []
    for i in range(count):
        plan = rng.choice(plans)
        tag = f"t{i}"
        if hang and plan == "cancel" and rng.random() < 0.5:
            tag += "-hang"  # the server answers part, then waits for the client to leave
        session = rng.choice(sessions)
        # break / drop: after n chunks (a reply has a dozen); cancel: after n iterations.
        n = rng.randint(1, 8) if plan in ("break", "drop") else rng.randint(0, 150)
        turns.append(Turn(session, question(session, tag), plan, n))
    return turns


async def check_storm(
    store: StateStore, gated: GatedStore, turns: list[Turn], sessions: list[str]
) -> dict[str, int]:
    """The invariants of the module docstring; returns the figures."""
    began = Counter(ask for _, ask in gated.began)
    assert all(n == 1 for n in began.values())
    stored_total = 0
    for session in sessions:
        stored = whole_turns(await store.load(session), session)  # whole, own, once
        order = [ask for s, ask in gated.began if s == session]
        assert stored == order, f"{session}: stored {stored} but saves began {order}"
        stored_total += len(stored)
    for turn in turns:
        if turn.finished:
            assert turn.ask in began, f"{turn.ask} finished but was not stored"
    return {
        "turns": len(turns),
        "stored": stored_total,
        "finished": sum(t.finished for t in turns),
        "saved_after_cancel": sum(1 for t in turns if t.ask in began and not t.finished),
        "not_stored": len(turns) - stored_total,
        "losses": 0,
        "duplicates": 0,
    }


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def storm_store(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[StateStore, Callable[[], Awaitable[int]]]]:
    """(store, count of its Redis connections now) for each store kind."""
    if request.param == "memory":

        async def no_connections() -> int:
            return 0

        yield InMemoryStateStore(), no_connections
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    name = f"storm-{uuid.uuid4().hex[:8]}"
    store = await RedisStateStore.connect(
        server.url, prefix=name, max_connections=REDIS_POOL, client_name=name
    )
    raw = aioredis.Redis(host="127.0.0.1", port=server.port)

    async def connections() -> int:
        clients = await raw.client_list()
        return sum(1 for c in clients if c.get("name") == name)

    yield store, connections
    await store.aclose()
    await raw.aclose()


@scales
async def test_mock_provider_storm(
    storm_store: tuple[StateStore, Callable[[], Awaitable[int]]], report: Report, scale: int
) -> None:
    store, connections = storm_store
    rng = random.Random(1)
    sessions = [f"m{i}" for i in range(60 * scale)]
    gated = GatedStore(store, yields=2)

    def reply(request: ProviderRequest) -> str:
        return f"reply to {request.messages[-1].content}"

    # A dozen chunks per reply, a pause before each (a slow model, so that cancellations
    # land mid-stream too; the pause is the simulated fault, not a synchronisation).
    provider = MockProvider(handler=reply, chunk_size=3, chunk_delay=0.0001)
    pipe = Pipeline(StateMiddleware(gated), ProviderMiddleware(provider))
    turns = make_turns(rng, sessions, 600 * scale, hang=False)
    outcomes = await asyncio.wait_for(run_storm(pipe, turns, rng), GUARD * scale)
    figures = await check_storm(store, gated, turns, sessions)
    asked = {r.messages[-1].content for r in provider.requests}
    cancelled_before_request = sum(1 for t in turns if t.ask not in asked)
    saved = {ask for _, ask in gated.began}
    mid_stream = sum(1 for t in turns if t.ask in asked and t.ask not in saved)
    assert cancelled_before_request > 0
    assert figures["saved_after_cancel"] > 0
    # The store (and its pool) still works, and stays within its connection limit.
    await asyncio.wait_for(pipe.execute(sessions[0], "user", question(sessions[0], "after")), GUARD)
    assert await connections() <= REDIS_POOL
    gc.collect()
    report.add(
        **figures,
        cancelled=outcomes["cancelled"],
        abandoned=outcomes["abandoned"],
        cancelled_before_request=cancelled_before_request,
        cancelled_mid_stream=mid_stream,
    )


async def cancel_or_answer(request: Request, conn: Conn) -> bool:
    """Full answers, or (for ``-hang`` questions) part of one, then wait for the client."""
    if request.question.endswith("-hang"):
        return await srv.sse(srv.reply_events(f"reply to {request.question}")[:2], end="hang")(
            request, conn
        )
    return await srv.answer(request, conn)


@scales
@pytest.mark.parametrize("pool", ["default", "four connections"])
async def test_openai_stream_storm(
    server: ScriptedServer,
    storm_store: tuple[StateStore, Callable[[], Awaitable[int]]],
    report: Report,
    scale: int,
    pool: str,
) -> None:
    store, connections = storm_store
    rng = random.Random(2)
    server.default = cancel_or_answer
    sessions = [f"o{i}" for i in range(50 * scale)]
    gated = GatedStore(store, yields=2)
    client: httpx.AsyncClient | None = None
    if pool == "four connections":
        client = httpx.AsyncClient(transport=AiohttpTransport(max_connections=4))
    provider = OpenAIProvider("openai", "gpt-4o-mini", KEY, base_url=server.url, http_client=client)
    try:
        pipe = Pipeline(StateMiddleware(gated), ProviderMiddleware(provider))
        turns = make_turns(rng, sessions, 400 * scale, hang=True)
        outcomes = await asyncio.wait_for(run_storm(pipe, turns, rng), GUARD * scale)
        figures = await check_storm(store, gated, turns, sessions)
        # Every abandoned response was closed: no server handler still waits for its client.
        await asyncio.wait_for(server.wait_for(lambda: server.busy == 0), GUARD)
        asked = {r.question for r in server.requests}
        reached = sum(1 for t in turns if t.ask in asked)
        saved = {ask for _, ask in gated.began}
        mid_stream = sum(1 for t in turns if t.ask in asked and t.ask not in saved)
        # The pool still serves: a burst of new turns all succeed.
        after = [question(s, "after") for s in sessions]
        results = await asyncio.wait_for(
            asyncio.gather(*(pipe.execute(a.split("|")[0], "user", a) for a in after)), GUARD
        )
        assert [r.response.content for r in results] == [f"reply to {a}" for a in after]
        if client is not None:
            assert server.open <= 4
        open_before_close = server.open
    finally:
        await provider.aclose()  # closing twice is fine
        if client is not None:
            await client.aclose()
    await asyncio.wait_for(server.wait_for(lambda: server.open == 0), GUARD)
    assert await connections() <= REDIS_POOL
    gc.collect()
    report.add(
        **figures,
        cancelled=outcomes["cancelled"],
        abandoned=outcomes["abandoned"],
        cancelled_before_request=len(turns) - reached,
        cancelled_mid_stream=mid_stream,
        requests=len(server.requests),
        connections_opened=server.accepted,
        idle_connections_at_end=open_before_close,
    )


async def test_turns_cancelled_during_their_save_are_stored_whole(
    server: ScriptedServer,
    storm_store: tuple[StateStore, Callable[[], Awaitable[int]]],
    report: Report,
) -> None:
    """Hold every save, cancel every turn while its save waits, then let the saves go:
    each turn is stored whole, once, and its caller saw the cancellation at once."""
    store, _ = storm_store
    gated = GatedStore(store)
    gated.gate.clear()
    async with OpenAIProvider("openai", "gpt-4o-mini", KEY, base_url=server.url) as provider:
        pipe = Pipeline(StateMiddleware(gated), ProviderMiddleware(provider))
        sessions = [f"h{i}" for i in range(20)]

        async def read(session: str) -> None:
            async with pipe.stream(session, "user", question(session, "held")) as chunks:
                async for _ in chunks:
                    pass

        tasks = [asyncio.ensure_future(read(s)) for s in sessions]
        await asyncio.wait_for(gated.wait_began(len(sessions)), GUARD)
        for task in tasks:
            task.cancel()
        gated.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GUARD)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        for session in sessions:
            assert whole_turns(await store.load(session), session) == [question(session, "held")]
    gc.collect()
    report.add(turns=len(sessions), cancelled_during_save=len(sessions), stored=len(sessions))


async def test_streams_closed_or_cancelled_before_their_request_send_nothing(
    server: ScriptedServer, report: Report
) -> None:
    store = InMemoryStateStore()
    async with OpenAIProvider("openai", "gpt-4o-mini", KEY, base_url=server.url) as provider:
        pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
        for i in range(20):
            stream = pipe.stream("b", "user", question("b", f"closed{i}"))
            await stream.aclose()  # never iterated
            task = asyncio.ensure_future(pipe.execute("b", "user", question("b", f"cancelled{i}")))
            task.cancel()  # before it ever ran
            with pytest.raises(asyncio.CancelledError):
                await task
        assert server.requests == []
        assert await store.load("b") == []
        result = await pipe.execute("b", "user", question("b", "after"))
        assert result.response.content == f"reply to {question('b', 'after')}"
    report.add(turns=40, requests_sent=0)
