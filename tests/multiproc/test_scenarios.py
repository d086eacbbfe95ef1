"""Turns on one session from many OS processes, on every shared store.

The scenarios of ``_scenarios.py`` (queue, reject, interrupt, a SIGSTOPped holder
fenced), each run on:

* SQLite: the workers open the same database file in ``tmp_path`` (WAL); leases are
  seen across processes by polling the lease row (the store's docstring bounds it);
* PostgreSQL: every worker on the shared test server, a schema of its own per test;
* Redis and Redis Cluster: the shared test servers, a key prefix of its own per test.

The ambiguous-save cases, which need a connection whose answer can be lost after the
write was applied, are in ``test_postgres.py`` and ``test_redis.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._postgres_server import unique_schema
from tests.multiproc import _scenarios as scenarios
from tests.multiproc._harness import CheckingUpstream, Figures, StoreSpec, unique_prefix

KINDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("redis-cluster", id="redis-cluster", marks=pytest.mark.redis),
]


@pytest.fixture(params=KINDS)
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    kind: str = request.param
    if kind == "sqlite":
        return StoreSpec("sqlite", str(tmp_path / "shared.sqlite3"))
    if kind == "postgres":
        return StoreSpec(
            "postgres", request.getfixturevalue("postgres_server").dsn, unique_schema()
        )
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
