"""One measured client run in its own process: N sessions x T turns on one event loop.

The harness (``bench.run``) starts this module once per client, loop and repeat::

    python -m bench.worker --client aiohttp --base-url http://127.0.0.1:PORT/v1 \\
        --sessions 1000 --turns 5 --loop asyncio --cpu 1 --out result.json

All sessions start at once; each runs its turns one after another, sending the whole
history every time. Imports and client set-up happen before the clock starts; the
measured window is from the first turn's start to the last turn's end. Results (JSON):
turns/s, time to first chunk and per-turn latency percentiles, CPU seconds of this
process (all threads), peak RSS, errors by type with samples, and correctness checks
(every session's history has 2 messages per successful turn, usage was reported).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from ._common import (
    LOOPS,
    cpu_seconds,
    current_rss_mb,
    peak_rss_mb,
    pin_to,
    raise_fd_limit,
    run_on,
    sched_wait_seconds,
    steal_ticks,
)
from .clients import CLIENTS, ClientConfig, make_client

__all__ = ["main", "percentiles", "run_clients"]


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50/p90/p99/max/mean of ``values`` (seconds) in milliseconds (nearest rank)."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, int(q * n + 0.999999) - 1))] * scale

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": ordered[-1] * scale,
        "mean": sum(ordered) / n * scale,
    }


def flat_profile(profiler: Any, wall: float, top: int = 30) -> str:
    """The functions with the most self time in a pyinstrument session, as a table."""
    session = profiler.last_session
    root = session.root_frame() if session is not None else None
    if root is None:
        return "(no samples)"
    totals: Counter[str] = Counter()
    stack = [root]
    while stack:
        frame = stack.pop()
        if frame.is_synthetic:
            continue  # "[self]" leaves are counted with their parent below
        stack.extend(frame.children)
        # Self time: the synthetic "[self]" children plus anything no child accounts for.
        own = frame.time - sum(c.time for c in frame.children if not c.is_synthetic_leaf)
        if own > 0:
            totals[f"{frame.function}  {frame.file_path_short}:{frame.line_no}"] += own
    sampled = sum(totals.values()) or 1.0
    lines = [
        f"sampled {sampled:.2f} s of {wall:.2f} s wall; self time, top {top}:",
        "   self s   share  function  file:line",
    ]
    for where, seconds in totals.most_common(top):
        lines.append(f"{seconds:9.3f}  {seconds / sampled:6.1%}  {where}")
    return "\n".join(lines)


def user_text(session: int, turn: int) -> str:
    """The user's message: distinct per turn, about the size of a real chat message."""
    return (
        f"Session {session}, turn {turn}: what happens next in the harbour town? "
        "Keep it short and keep the names consistent."
    )


async def run_clients(args: argparse.Namespace) -> dict[str, Any]:
    """Run the measured sessions and return the result record."""
    config = ClientConfig(
        base_url=args.base_url,
        stream=args.stream,
        max_connections=args.max_connections,
        redis_url=args.redis_url,
        postgres_url=args.postgres_url,
        sqlite_path=args.sqlite_path,
        run_tag=args.run_tag,
    )
    client = make_client(args.client, config)
    await client.open()
    sessions = [client.new_session(i) for i in range(args.sessions)]
    turns = args.turns
    ttfc: list[float] = []
    latency: list[float] = []
    ok_turns = [0] * args.sessions
    error_kinds: Counter[str] = Counter()
    error_samples: list[str] = []
    perf = time.perf_counter

    async def converse(index: int, state: Any) -> None:
        for t in range(turns):
            text = user_text(index, t)
            started = perf()
            try:
                first = await client.turn(state, text)
            except Exception as exc:
                error_kinds[type(exc).__name__] += 1
                if len(error_samples) < 5:
                    error_samples.append(
                        f"{type(exc).__module__}.{type(exc).__name__}: {exc}"[:300]
                    )
                continue
            ended = perf()
            ok_turns[index] += 1
            latency.append(ended - started)
            ttfc.append((first if first is not None else ended) - started)

    profiler = None
    if args.profiler == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001, async_mode="disabled")
    gc.collect()
    rss_before = current_rss_mb()
    cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    sched0, steal0 = sched_wait_seconds(), steal_ticks(cpus)
    cpu0 = cpu_seconds()
    trips0 = client.store_round_trips()
    t0 = perf()
    if profiler is not None:
        profiler.start()
    await asyncio.gather(*(converse(i, s) for i, s in enumerate(sessions)))
    if profiler is not None:
        profiler.stop()
    wall = perf() - t0
    cpu = cpu_seconds() - cpu0
    trips1 = client.store_round_trips()
    sched1, steal1 = sched_wait_seconds(), steal_ticks(cpus)
    # Time the loop thread was runnable but another process had the CPU: on a shared
    # machine this is what makes wall-clock figures noisy while CPU per turn is not.
    waited = sched1[1] - sched0[1] if sched0 and sched1 else None
    stolen = (
        (steal1 - steal0) / os.sysconf("SC_CLK_TCK")
        if steal0 is not None and steal1 is not None
        else None
    )
    rss_after = current_rss_mb()

    # Correctness, outside the measured window.
    mismatches = 0
    for i, state in enumerate(sessions):
        if await client.history_length(state) != 2 * ok_turns[i]:
            mismatches += 1
    for state in sessions:
        await client.end_session(state)
    await client.aclose()

    if profiler is not None and args.profile_out:
        base = Path(args.profile_out).with_suffix("")
        # After the measured window; a blocking write is harmless here.
        base.with_suffix(".txt").write_text(
            flat_profile(profiler, wall)
            + "\n\n# call tree\n\n"
            + profiler.output_text(unicode=True, color=False, show_all=False)
        )
        base.with_suffix(".html").write_text(profiler.output_html())

    done = sum(ok_turns)
    errors = sum(error_kinds.values())
    return {
        "client": args.client,
        "describe": CLIENTS[args.client].describe,
        "loop": args.loop,
        "sessions": args.sessions,
        "turns": turns,
        "stream": args.stream,
        "wall_s": wall,
        "turns_ok": done,
        "errors": errors,
        "error_kinds": dict(error_kinds),
        "error_samples": error_samples,
        "turns_per_s": done / wall if wall > 0 else 0.0,
        "ttfc_ms": percentiles(ttfc),
        "turn_ms": percentiles(latency),
        "cpu_s": cpu,
        "cpu_per_turn_ms": cpu / done * 1000 if done else None,
        "cpu_util": cpu / wall if wall > 0 else None,
        "runqueue_wait_s": waited,
        "runqueue_wait_share": waited / wall if waited is not None and wall > 0 else None,
        "steal_s": stolen,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
        "missing_usage": client.missing_usage,
        "store_round_trips_per_turn": (
            (trips1 - trips0) / done if trips0 is not None and trips1 is not None and done else None
        ),
        "history_mismatches": mismatches,
        "profiled": profiler is not None,
        "pid": os.getpid(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: ``python -m bench.worker --help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--cpu", type=int, action="append")
    parser.add_argument("--no-stream", dest="stream", action="store_false")
    parser.add_argument("--max-connections", type=int, default=0)
    parser.add_argument("--redis-url")
    parser.add_argument("--postgres-url")
    parser.add_argument("--sqlite-path")
    parser.add_argument("--run-tag", default=f"r{os.getpid()}")
    parser.add_argument("--profiler", choices=("none", "pyinstrument"), default="none")
    parser.add_argument("--profile-out")
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    if args.cpu:
        pin_to(set(args.cpu))
    raise_fd_limit()
    try:
        result = run_on(args.loop, run_clients(args))
    except Exception as exc:
        # A client that cannot even start is reported, not lost.
        result = {
            "client": args.client,
            "loop": args.loop,
            "failed": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()[-4000:],
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        sys.exit(1)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
