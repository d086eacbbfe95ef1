"""Turns on one session from many OS processes sharing one SQLite file (WAL).

The scenarios of ``_scenarios.py`` (queue, reject, interrupt, a SIGSTOPped holder
fenced), with the workers opening the same database file in ``tmp_path``. Leases are
seen across processes by polling the lease row (the store's docstring bounds it).
The ambiguous-save scenario is PostgreSQL's and Redis's: a local file has no
connection whose answer can be lost after the write was applied.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.multiproc import _scenarios as scenarios
from tests.multiproc._harness import CheckingUpstream, Figures, StoreSpec


@pytest.fixture
def spec(tmp_path: Path) -> StoreSpec:
    return StoreSpec("sqlite", str(tmp_path / "shared.sqlite3"))


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
