"""Redis faults under load: sleep, pause, freeze, stop, kill and slow restarts.

A private ``redis-server`` per test (AOF on, ``appendfsync always``, debug commands
enabled). Workers run conversation turns non-stop on shared sessions through one
pipeline and one ``RedisStateStore``, created once and never recreated, while a schedule
of faults hits the server:

* ``DEBUG SLEEP``: the server blocks, every operation times out;
* ``CLIENT PAUSE ... ALL``: the server stops answering clients;
* ``SIGSTOP`` / ``SIGCONT``: the process freezes (the kernel still accepts connections);
* ``SIGTERM`` then a restart on the same port (the AOF is replayed);
* ``SIGKILL`` then a restart that spends a while loading its data (``LOADING`` replies).

Checked: every failed turn raises a :class:`StoreError` subclass (no raw redis or OS
error) within a generous guard of the configured timeouts (no hang); after each fault
the same store and pipeline serve turns again; at the end every stored record decodes,
every turn is whole and in its own session, every acknowledged turn is stored exactly
once in acknowledgement order, and nothing is stored that was not attempted.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from promptkit_async import (
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderResponse,
    StateMiddleware,
    StoreTimeoutError,
    Usage,
)
from promptkit_async.statestore import RedisStateStore
from promptkit_async.statestore.records import decode_message
from tests._redis_server import RedisServer, command
from tests.faults._checks import Load, audit
from tests.faults.conftest import Report, scales

pytestmark = pytest.mark.redis

TIMEOUT = 0.25  # the store's connect and reply timeouts
USAGE = Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10)  # every turn's
HANG_GUARD = 20 * TIMEOUT + 5  # one turn is two store round trips; anything near this is a hang
PHASE_GUARD = 60.0


async def side(port: int, *args: str) -> bytes:
    """A command on a separate raw connection, in a thread (it may block for a while)."""
    return await asyncio.to_thread(command, port, *args)


async def fault_schedule(server: RedisServer, load: Load, report: Report, rounds: int) -> None:
    port = server.port

    async def observed(
        name: str, heal: Callable[[], Any] | None = None, *, failures: int = 1
    ) -> None:
        """Wait until the workers saw the fault (``failures`` more failed turns), heal
        it, then wait until they succeed again: recovery with the same store."""
        failed_before = load.fail
        await load.until(lambda: load.fail >= failed_before + failures)
        if heal is not None:
            await heal()
        ok_before = load.ok
        await load.until(lambda: load.ok >= ok_before + 10)
        report.add(faults=1)
        report.figures.setdefault("schedule", [])
        if name not in report.figures["schedule"]:
            report.figures["schedule"].append(name)

    for _ in range(rounds):
        # DEBUG SLEEP: the whole server blocks; the side connection returns when it ends.
        failed_before = load.fail
        await side(port, "DEBUG", "SLEEP", "0.6")
        assert load.fail > failed_before
        await observed("debug sleep", failures=0)

        # CLIENT PAUSE ALL: a PING on the side connection returns once the pause is over.
        failed_before = load.fail
        await side(port, "CLIENT", "PAUSE", "600", "ALL")
        await side(port, "PING")
        assert load.fail > failed_before
        await observed("client pause", failures=0)

        # SIGSTOP: frozen (connections are still accepted by the kernel) until SIGCONT.
        assert server.process is not None
        pid = server.process.pid
        os.kill(pid, signal.SIGSTOP)

        async def thaw(pid: int = pid) -> None:
            os.kill(pid, signal.SIGCONT)

        await observed("sigstop", thaw, failures=8)

        # SIGTERM and a restart on the same port.
        await asyncio.to_thread(server.stop)
        await observed("sigterm + restart", lambda: asyncio.to_thread(server.start), failures=8)

        # SIGKILL mid-write and a restart that takes a while to load (key-load-delay).
        await asyncio.to_thread(server.kill)
        await observed(
            "sigkill + slow restart", lambda: asyncio.to_thread(server.start), failures=8
        )


async def pad_dataset(port: int, keys: int) -> None:
    """Filler keys in the AOF base, so that a restart spends a while ``LOADING``."""
    raw = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        await raw.execute_command("DEBUG", "POPULATE", keys, "filler")
        await raw.bgrewriteaof()
        # Polling another process until its rewrite is done (nothing to wait on here).
        while (await raw.info("persistence"))["aof_rewrite_in_progress"]:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    finally:
        await raw.aclose()


@scales
async def test_redis_faults_under_load(
    redis_factory: Callable[..., RedisServer], report: Report, scale: int
) -> None:
    server = redis_factory(
        "--enable-debug-command", "yes",
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--key-load-delay", "50",  # microseconds per key while loading (a slow restart)
    )  # fmt: skip
    await pad_dataset(server.port, 20_000)
    store = await RedisStateStore.connect(
        server.address,
        prefix="faults",
        connect_timeout=TIMEOUT,
        socket_timeout=TIMEOUT,
        max_connections=8,
    )
    provider = MockProvider(
        handler=lambda r: ProviderResponse(f"reply to {r.messages[-1].content}", usage=USAGE)
    )
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
    sessions = [f"r{i}" for i in range(20 * scale)]
    # Turn ids: an ambiguous save (AmbiguousTurnError) is retried with its id.
    load = Load(pipe, sessions, seed=3, hang_guard=HANG_GUARD, turn_ids=True)
    workers = [asyncio.ensure_future(load.worker(w)) for w in range(8)]
    try:
        await load.until(lambda: load.ok >= 50)
        await fault_schedule(server, load, report, rounds=scale)
    finally:
        load.stopping = True
        await asyncio.wait_for(asyncio.gather(*workers), PHASE_GUARD)

    attempted, checked = await audit(load, store)
    # Stored but never acknowledged: only turns that were told their save was ambiguous
    # (and whose retry did not get through before the run ended).
    stored_turns: set[str] = set()
    for session in sessions:
        stored_turns.update(m.content for m in await store.load(session) if m.role == "user")
    acked = {a for asks in load.acked.values() for a in asks}
    failed_but_stored = stored_turns - acked
    unflagged = failed_but_stored - load.ambiguous
    # The ledger adds up after the faults: one entry per stored turn, with its usage.
    ledger_turns = 0
    for session in sessions:
        ledger = await store.get_ledger(session)
        stored_here = await store.count(session) // 2
        assert ledger.turns == stored_here, session
        assert (ledger.prompt_tokens, ledger.completion_tokens, ledger.total_tokens) == (
            USAGE.prompt_tokens * stored_here,
            USAGE.completion_tokens * stored_here,
            USAGE.total_tokens * stored_here,
        ), session
        ledger_turns += ledger.turns
    # Every raw record decodes (read around the store, straight from Redis).
    raw = aioredis.Redis(host="127.0.0.1", port=server.port)
    records = 0
    async for key in raw.scan_iter(match="faults:*:m"):
        for record in await raw.lrange(key, 0, -1):
            decode_message(record)
            records += 1
    await raw.aclose()
    await store.aclose()
    report.add(
        turns_attempted=len(attempted),
        turns_acknowledged=load.ok,
        turns_failed=load.fail,
        turns_checked=checked,
        records_decoded=records,
        failed_but_stored=len(failed_but_stored),
        failed_but_stored_not_flagged_ambiguous=len(unflagged),
        ambiguous=len(load.ambiguous),
        ambiguous_retried_replayed=load.replayed,
        ledger_turns=ledger_turns,
        timed_out_not_applied=len(load.not_applied),
        losses=0,
        errors=dict(load.errors),
        failures_by_kind=dict(load.kinds),
    )


async def test_every_redis_failure_is_a_typed_store_error_within_the_timeout(
    redis_factory: Callable[..., RedisServer], report: Report
) -> None:
    """Each operation of the store against a frozen server: StoreTimeoutError within the
    store's timeout (in total, for fork's and list_sessions' several round trips), and
    the same store works again once the server thaws."""
    server = redis_factory("--enable-debug-command", "yes")
    store = await RedisStateStore.connect(
        server.address, prefix="typed", connect_timeout=TIMEOUT, socket_timeout=TIMEOUT
    )
    await store.append("s", [Message("user", "x")])
    assert server.process is not None
    loop = asyncio.get_running_loop()
    operations: dict[str, Callable[[], Any]] = {
        "load": lambda: store.load("s"),
        "append": lambda: store.append("s", [Message("user", "y")]),
        "save": lambda: store.save("t", [Message("user", "y")]),
        "count": lambda: store.count("s"),
        "delete": lambda: store.delete("u"),
        "fork": lambda: store.fork("s", "v"),
        "get_metadata": lambda: store.get_metadata("s"),
        "merge_metadata": lambda: store.merge_metadata("s", {"k": 1}),
        "list_sessions": lambda: store.list_sessions(),
    }
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        for name, operation in operations.items():
            start = loop.time()
            with pytest.raises(StoreTimeoutError, match="did not answer") as caught:
                await asyncio.wait_for(operation(), HANG_GUARD)
            assert loop.time() - start <= TIMEOUT + 0.3, name  # 0.3 s: scheduling slack
            assert caught.value.operation == name
            report.add(faults=1)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    for _name, operation in operations.items():
        await asyncio.wait_for(operation(), HANG_GUARD)
    await store.aclose()
