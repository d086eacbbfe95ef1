"""Turns on one session from many OS processes sharing Redis or a Redis Cluster.

The scenarios every shared store runs are in ``_scenarios.py``: each starts worker
processes (``_worker.py``) that run turns on ONE session through the store, against a
loopback upstream that logs what every request carried, then checks: every stored
turn's request carried exactly the stored conversation before it, no acknowledged turn
is missing, none is stored twice, no refused turn is stored, and the ledger equals the
sum of the stored turns' usage. See ``_harness.py``. The ambiguous-save case is here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._redis_server import RedisServer
from tests.multiproc import _scenarios as scenarios
from tests.multiproc._harness import (
    CheckingUpstream,
    Figures,
    StoreSpec,
    checked,
    held_turn,
    unique_prefix,
)
from tests.statestore._proxy import ReplyStallProxy

pytestmark = pytest.mark.redis

#: How the workers run their turns: "pipeline" (StateMiddleware) or "protocol".
MODE = "pipeline"

KINDS = [pytest.param("redis", id="redis"), pytest.param("redis-cluster", id="redis-cluster")]


@pytest.fixture(params=KINDS)
def spec(request: pytest.FixtureRequest) -> StoreSpec:
    kind: str = request.param
    server = request.getfixturevalue("redis_cluster" if kind == "redis-cluster" else "redis_server")
    return StoreSpec(kind, server.url, unique_prefix())


async def test_queued_turns_from_many_processes_see_the_whole_conversation(
    spec: StoreSpec, upstream: CheckingUpstream, tmp_path: Path, figures_log: list[Figures]
) -> None:
    await scenarios.queued_turns(spec, upstream, tmp_path, figures_log)


async def test_reject_policy_across_processes(
    spec: StoreSpec, upstream: CheckingUpstream, tmp_path: Path, figures_log: list[Figures]
) -> None:
    await scenarios.rejected_turns(spec, upstream, tmp_path, figures_log)


async def test_interrupt_policy_across_processes(
    spec: StoreSpec, upstream: CheckingUpstream, tmp_path: Path, figures_log: list[Figures]
) -> None:
    await scenarios.interrupted_turn(spec, upstream, tmp_path, figures_log)


@pytest.mark.parametrize("holder_mode", ["protocol", "pipeline"])
async def test_a_stalled_worker_is_fenced(
    spec: StoreSpec,
    upstream: CheckingUpstream,
    tmp_path: Path,
    figures_log: list[Figures],
    holder_mode: str,
) -> None:
    await scenarios.stalled_worker(spec, upstream, tmp_path, figures_log, holder_mode)


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
    proxy = await ReplyStallProxy(redis_server.port, b"\r\n$3\r\nend\r\n", stall=1.0).start()
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
