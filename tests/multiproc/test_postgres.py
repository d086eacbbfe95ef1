"""An ambiguous save across processes on PostgreSQL: the server applies a turn's
``end_turn`` but its answer is held back past the store's timeout; the worker retries
with the same turn id and the retry finds the turn stored. (The scenarios every shared
store runs are in ``test_scenarios.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._pg_proxy import AmbiguousProxy
from tests._postgres_server import PostgresServer, unique_schema
from tests.multiproc import _scenarios as scenarios
from tests.multiproc._harness import CheckingUpstream, Figures, StoreSpec, checked, held_turn

pytestmark = pytest.mark.postgres


async def test_an_ambiguous_save_retried_with_its_turn_id_is_stored_once(
    postgres_server: PostgresServer,
    upstream: CheckingUpstream,
    tmp_path: Path,
    figures_log: list[Figures],
) -> None:
    """The turn's end_turn is applied, its answer withheld for 1 s past the store's
    0.3 s timeout: the turn fails as ambiguous (AmbiguousTurnError). The worker retries
    with the same turn id: the retry finds the turn stored (replayed), so it is stored
    once and counted once in the ledger."""
    proxy = await AmbiguousProxy(
        postgres_server.port, b'end_turn"', every=1, mode="stall", stall=1.0
    ).start()
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        spec = StoreSpec("postgres", dsn, unique_schema(), {"timeout": 0.3})
        holder = await held_turn(spec, upstream, tmp_path, mode=scenarios.MODE, retry_ambiguous=10)
        upstream.release()
        results = await holder.wait()
        assert proxy.faults == 1
        figures = await checked(spec, upstream, results, "ambiguous retry", 1)
    finally:
        await proxy.aclose()
    figures_log.append(figures)
    figures.assert_clean()
    (result,) = results
    assert result["outcome"] == "replayed", result
    assert result["errors"][0].startswith("AmbiguousTurnError"), result
    assert figures.stored == 1
    assert figures.replayed == 1
