"""An ambiguous save across processes on Redis: a turn's save reaches Redis and is
applied, but its reply is withheld past the store's timeout; the worker retries with the
same turn id and the retry finds the turn stored. (The scenarios every shared store
runs, Redis and Redis Cluster included, are in ``test_scenarios.py``; the harness that
checks them is ``_harness.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._redis_server import RedisServer
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
