"""Turns on one session from many OS processes sharing Redis or a Redis Cluster.

Each test starts worker processes (``_worker.py``) that run turns on ONE session through
the store, against a loopback upstream that logs what every request carried, then
checks: every stored turn's request carried exactly the stored conversation before it,
no acknowledged turn is missing, none is stored twice, no refused turn is stored, and
the ledger equals the sum of the stored turns' usage. See ``_harness.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests._redis_server import RedisServer
from tests.multiproc._harness import (
    CheckingUpstream,
    Figures,
    StoreSpec,
    Worker,
    checked,
    held_turn,
    run_workers,
    unique_prefix,
    worker_configs,
)

pytestmark = pytest.mark.redis

#: How the workers run their turns: "pipeline" (StateMiddleware) or "protocol".
MODE = "protocol"
#: Seconds the interrupted worker may take to learn of the interrupt.
INTERRUPT_BOUND = 1.0

KINDS = [pytest.param("redis", id="redis"), pytest.param("redis-cluster", id="redis-cluster")]


@pytest.fixture(params=KINDS)
def spec(request: pytest.FixtureRequest) -> StoreSpec:
    kind: str = request.param
    server = request.getfixturevalue("redis_cluster" if kind == "redis-cluster" else "redis_server")
    return StoreSpec(kind, server.url, unique_prefix())


async def test_queued_turns_from_many_processes_see_the_whole_conversation(
    spec: StoreSpec, upstream: CheckingUpstream, tmp_path: Path, figures_log: list[Figures]
) -> None:
    """N processes x M turns on one session, queue policy: every turn waits for the one
    before it, in whichever process: the k-th stored turn saw 2k-1 messages."""
    upstream.delay = 0.01  # the model's latency, so that turns contend for the lease
    configs = worker_configs(
        spec, upstream, "shared", tmp_path, processes=4, turns=8, mode=MODE, tasks=2
    )
    results = await run_workers([Worker(c) for c in configs])
    figures = await checked(spec, upstream, results, "queue", len(configs))
    figures_log.append(figures)
    figures.assert_clean()
    assert figures.acknowledged == figures.stored == 4 * 8


async def test_reject_policy_across_processes(
    spec: StoreSpec, upstream: CheckingUpstream, tmp_path: Path, figures_log: list[Figures]
) -> None:
    """While one process holds the session, turns of other processes under ``reject``
    fail with SessionBusyError at once, and nothing of them is stored."""
    holder = await held_turn(spec, upstream, tmp_path, mode=MODE)
    try:
        configs = worker_configs(
            spec, upstream, "shared", tmp_path, processes=2, turns=3, mode=MODE, policy="reject"
        )
        rejected = await run_workers([Worker(c) for c in configs])
    finally:
        upstream.release()
    results = [*rejected, *await holder.wait()]
    figures = await checked(spec, upstream, results, "reject", 3)
    figures_log.append(figures)
    figures.assert_clean()
    assert [r["outcome"] for r in rejected] == ["busy"] * 6
    assert figures.stored == 1
    # Rejected turns never reached the model.
    assert sorted(r.question for r in upstream.requests) == ["holder-0"]


async def test_interrupt_policy_across_processes(
    spec: StoreSpec, upstream: CheckingUpstream, tmp_path: Path, figures_log: list[Figures]
) -> None:
    """A turn under ``interrupt`` takes the session from a turn running in another
    process: that turn stops with TurnInterruptedError within the bound, and stores
    nothing; the interrupting turn is stored."""
    holder = await held_turn(spec, upstream, tmp_path, mode=MODE)
    try:
        (config,) = worker_configs(
            spec, upstream, "shared", tmp_path, processes=1, turns=1, mode=MODE, policy="interrupt"
        )
        interrupting = await run_workers([Worker(config)])
        interrupted = await holder.wait()
    finally:
        upstream.release()
    figures = await checked(spec, upstream, [*interrupting, *interrupted], "interrupt", 2)
    figures_log.append(figures)
    figures.assert_clean()
    assert [r["outcome"] for r in interrupting] == ["ok"]
    assert [r["outcome"] for r in interrupted] == ["interrupted"]
    # Learned within the bound, counted from the interrupting turn's call (an upper
    # bound of the time since its steal).
    latency = (interrupted[0]["t1"] - interrupting[0]["t0"]) / 1e9
    figures.interrupt_latency_s = round(latency, 3)
    assert latency <= INTERRUPT_BOUND, latency


async def test_a_stalled_worker_is_fenced(
    spec: StoreSpec, upstream: CheckingUpstream, tmp_path: Path, figures_log: list[Figures]
) -> None:
    """A worker SIGSTOPped while holding the lease loses it after its TTL; another
    worker's turn runs; SIGCONT: the stalled worker's end_turn is refused
    (LeaseLostError) and nothing it wrote is visible."""
    holder = await held_turn(spec, upstream, tmp_path, lease_ttl=1.0, mode="protocol", renew=False)
    holder.stop()
    try:
        upstream.release()  # its reply waits in the socket while it is frozen
        (config,) = worker_configs(
            spec, upstream, "shared", tmp_path, processes=1, turns=1, mode=MODE
        )
        # Queued behind the frozen holder until its lease expires (the store's poll
        # notices the expiry), then runs.
        successor = await run_workers([Worker(config)])
    finally:
        holder.cont()
    stalled = await holder.wait()
    figures = await checked(spec, upstream, [*successor, *stalled], "sigstop", 2)
    figures_log.append(figures)
    figures.assert_clean()
    assert [r["outcome"] for r in successor] == ["ok"]
    assert [r["outcome"] for r in stalled] == ["fenced"], stalled
    assert figures.stored == 1


class ReplyStallProxy:
    """A loopback TCP proxy to Redis that, once it forwards a turn's save (the ``end``
    script), withholds every reply for ``stall`` seconds: the save is applied by Redis,
    but its caller times out waiting (an ambiguous outcome), as do its first retries."""

    def __init__(self, upstream: int, stall: float) -> None:
        self.upstream = upstream
        self.stall = stall
        self.port = 0
        self.saves_seen = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> ReplyStallProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _reopen_later(self) -> None:
        self._open.clear()
        asyncio.get_running_loop().call_later(self.stall, self._open.set)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def requests() -> None:
            while data := await reader.read(1 << 16):
                if b"\r\n$3\r\nend\r\n" in data and not self.saves_seen:
                    self.saves_seen += 1
                    self._reopen_later()
                up_writer.write(data)
                await up_writer.drain()

        async def replies() -> None:
            while data := await up_reader.read(1 << 16):
                await self._open.wait()
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(requests(), replies())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._tasks.discard(task)


async def test_an_ambiguous_save_retried_with_its_turn_id_is_stored_once(
    redis_server: RedisServer,
    upstream: CheckingUpstream,
    tmp_path: Path,
    figures_log: list[Figures],
) -> None:
    """A turn's save reaches Redis and is applied, but its reply is withheld past the
    store's timeout: the turn fails as ambiguous. The worker retries with the same turn
    id until the store answers again: the retry finds the turn stored (replayed), so
    it is stored once and counted once in the ledger."""
    proxy = await ReplyStallProxy(redis_server.port, stall=1.0).start()
    try:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        spec = StoreSpec("redis", url, unique_prefix(), {"socket_timeout": 0.3})
        holder = await held_turn(spec, upstream, tmp_path, mode=MODE, retry_ambiguous=10)
        upstream.release()
        results = await holder.wait()
        assert proxy.saves_seen == 1
        figures = await checked(spec, upstream, results, "ambiguous retry", 1)
    finally:
        await proxy.aclose()
    figures_log.append(figures)
    figures.assert_clean()
    (result,) = results
    assert result["outcome"] == "replayed", result
    assert result["errors"][0].startswith("AmbiguousTurnError"), result
    assert figures.stored == 1
    assert figures.duplicates == 0
    assert figures.replayed == 1
