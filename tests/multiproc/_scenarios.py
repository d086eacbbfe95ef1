"""The multi-process scenarios every shared store runs (Redis and Redis Cluster, SQLite
with several processes on one file, PostgreSQL with several processes on one schema),
on the harness (``_harness.py``): each a coroutine that a store's test module calls with
its own :class:`StoreSpec`.

Every scenario checks the stored session against what the upstream saw and what the
workers were told (:func:`~tests.multiproc._harness.checked`): every stored turn's
request carried exactly the conversation before it (the k-th turn saw 2k-1 messages),
nothing acknowledged is missing, nothing is stored twice, nothing refused is stored,
and the ledger equals the sum of the stored turns' usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.multiproc._harness import (
    CheckingUpstream,
    Figures,
    StoreSpec,
    Worker,
    checked,
    held_turn,
    run_workers,
    worker_configs,
)

#: How the workers run their turns: through StateMiddleware.
MODE = "pipeline"
#: Seconds an interrupted worker may take to learn of the interrupt.
INTERRUPT_BOUND = 1.0


async def queued_turns(
    spec: StoreSpec,
    upstream: CheckingUpstream,
    tmp_path: Path,
    figures_log: list[Figures],
    *,
    processes: int = 4,
    turns: int = 8,
) -> Figures:
    """N processes x M turns (two at a time in each) on one session, queue policy."""
    upstream.delay = 0.01  # the model's latency, so that turns contend for the lease
    configs = worker_configs(
        spec, upstream, "shared", tmp_path, processes=processes, turns=turns, mode=MODE, tasks=2
    )
    results = await run_workers([Worker(c) for c in configs])
    figures = await checked(spec, upstream, results, "queue", len(configs))
    figures_log.append(figures)
    figures.assert_clean()
    assert figures.acknowledged == figures.stored == processes * turns
    return figures


async def rejected_turns(
    spec: StoreSpec, upstream: CheckingUpstream, tmp_path: Path, figures_log: list[Figures]
) -> None:
    """While one process holds the session, the turns of two others under ``reject``
    fail with SessionBusyError at once; none of them reaches the model or the store."""
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
    assert sorted(r.question for r in upstream.requests) == ["holder-0"]


async def interrupted_turn(
    spec: StoreSpec, upstream: CheckingUpstream, tmp_path: Path, figures_log: list[Figures]
) -> None:
    """A turn under ``interrupt`` takes the session from a turn running in another
    process: that one stops with TurnInterruptedError within the bound and stores
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
    latency = (interrupted[0]["t1"] - interrupting[0]["t0"]) / 1e9
    figures.interrupt_latency_s = round(latency, 3)
    assert latency <= INTERRUPT_BOUND, latency


async def stalled_worker(
    spec: StoreSpec,
    upstream: CheckingUpstream,
    tmp_path: Path,
    figures_log: list[Figures],
    holder_mode: str,
) -> None:
    """A worker SIGSTOPped while holding the lease loses it after its TTL; another
    process's turn runs; SIGCONT: the stalled worker's turn fails with LeaseLostError
    and nothing it wrote is visible (``protocol``: its end_turn is fenced by the token;
    ``pipeline``: StateMiddleware's renewal is refused first)."""
    options: dict[str, Any] = {"renew": False} if holder_mode == "protocol" else {}
    holder = await held_turn(spec, upstream, tmp_path, lease_ttl=1.0, mode=holder_mode, **options)
    holder.stop()
    try:
        upstream.release()  # its reply waits in the socket while it is frozen
        (config,) = worker_configs(
            spec, upstream, "shared", tmp_path, processes=1, turns=1, mode=MODE
        )
        successor = await run_workers([Worker(config)])  # queued until the lease expires
    finally:
        holder.cont()
    stalled = await holder.wait()
    figures = await checked(
        spec, upstream, [*successor, *stalled], f"sigstop ({holder_mode} holder)", 2
    )
    figures_log.append(figures)
    figures.assert_clean()
    assert [r["outcome"] for r in successor] == ["ok"]
    assert [r["outcome"] for r in stalled] == ["fenced"], stalled
    assert figures.stored == 1
