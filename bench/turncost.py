"""Where a turn's CPU goes besides the code itself: garbage collection and live objects.

    python -m bench.turncost --clients aiohttp,promptkit-memory --loop uvloop
    python -m bench.turncost --clients promptkit-memory --baseline ../base   # A/B

Starts the mock upstream (``fast`` profile by default), then runs each client in its own
process, one after another and ``--repeat`` times interleaved: N sessions x T turns on one
loop, like ``bench.run``'s worker, and reports per turn

* CPU (process time), and the garbage collector's share of it, per generation (timed by
  ``gc.callbacks``): with a thousand turns in flight, every object a turn keeps alive
  across an await is scanned by young collections and pushes towards full ones;
* collections per 1,000 turns (generation 0 counts allocations minus frees of tracked
  objects: fewer objects per turn, fewer collections);
* with ``--live``, the tracked objects alive per session in flight at the half-way
  point, by type (what a turn keeps alive while it waits); the census's own CPU and the
  collections during it are left out of the figures, but the heap it walks is not left
  untouched: compare figures from runs without ``--live``.

``--gc-off`` runs the turns with the cyclic collector disabled: what a turn costs besides
the collector (the difference from a normal run is the collector's whole share, including
what its work does to the caches).

A client named ``NAME@baseline`` runs from the ``--baseline`` checkout. Figures go to
stdout only (a diagnostic, not a table of ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ._common import raise_fd_limit, run_on

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "@baseline"


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    from .clients import ClientConfig, make_client

    client = make_client(args.client, ClientConfig(base_url=args.base_url))
    await client.open()
    sessions, turns = args.sessions, args.turns
    done = [0]
    counting = [True]
    excluded = [0.0]  # CPU seconds of the census, left out of the figures
    live: dict[str, float] = {}
    before: Counter[str] = Counter()

    def census() -> Counter[str]:
        found: Counter[str] = Counter()
        for obj in gc.get_objects():
            kind = type(obj)
            name = f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', '?')}"
            if kind.__name__ in ("coroutine", "async_generator"):
                name += ":" + getattr(obj, "__qualname__", "?")
            found[name] += 1
        return found

    async def converse(index: int) -> None:
        state = client.new_session(index)
        for t in range(turns):
            await client.turn(state, f"hello {index} {t}")
            done[0] += 1
            if args.live and done[0] == sessions * turns // 2:
                # Not counted: neither the census's CPU nor the collections it causes.
                counting[0] = False
                spent_before = time.process_time()
                grown = census() - before
                live["total"] = sum(grown.values()) / sessions
                for name, count in grown.most_common(args.live_top):
                    live[name] = count / sessions
                excluded[0] += time.process_time() - spent_before
                counting[0] = True

    await converse(-1)  # warm-up: imports, first-call caches, the pool
    gc.collect()
    if args.gc_off:
        gc.disable()  # what a turn costs besides the collector (memory grows meanwhile)
    if args.live:
        before.update(census())
    spent = {0: 0.0, 1: 0.0, 2: 0.0}
    runs = {0: 0, 1: 0, 2: 0}
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if not counting[0]:
            return
        if phase == "start":
            started[0] = time.thread_time()
        else:
            spent[info["generation"]] += time.thread_time() - started[0]
            runs[info["generation"]] += 1

    gc.callbacks.append(on_gc)
    cpu = time.process_time()
    await asyncio.gather(*(converse(i) for i in range(sessions)))
    cpu = time.process_time() - cpu - excluded[0]
    gc.callbacks.remove(on_gc)
    await client.aclose()
    n = sessions * turns
    return {
        "cpu_per_turn_ms": cpu / n * 1e3,
        "gc_per_turn_us": sum(spent.values()) / n * 1e6,
        "gc_by_generation_us": {g: s / n * 1e6 for g, s in spent.items()},
        "collections_per_1000_turns": {g: c / n * 1e3 for g, c in runs.items()},
        "live_per_session": live,
    }


def _child(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument("--live", action="store_true")
    parser.add_argument("--gc-off", action="store_true")
    parser.add_argument("--live-top", type=int, default=25)
    args = parser.parse_args(argv)
    raise_fd_limit()
    print(json.dumps(run_on(args.loop, _measure(args))))


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: ``python -m bench.turncost --help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="aiohttp,promptkit-memory")
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", help="another checkout, for NAME@baseline clients")
    parser.add_argument("--live", action="store_true", help="count live objects per turn")
    parser.add_argument("--live-top", type=int, default=25, help="types listed by --live")
    parser.add_argument(
        "--gc-off", action="store_true", help="run the turns with the cyclic collector off"
    )
    args = parser.parse_args(argv)
    upstream = subprocess.Popen(
        # The upstream runs on the clients' loop, as bench.run does (uvloop is a bench
        # extra: a test run with only the test extra uses asyncio throughout).
        [
            *(sys.executable, "-m", "bench.upstream", "--profile", args.profile),
            *("--loop", args.loop, "--cpu", "0"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline().split()[1])  # "READY <port>"
        results: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.repeat):
            for name in args.clients.split(","):
                root = ROOT
                if name.endswith(BASELINE):
                    if not args.baseline:
                        parser.error(f"{name} needs --baseline DIR")
                    root = Path(args.baseline).resolve()
                env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{ROOT}"}
                command = [
                    sys.executable,
                    "-c",
                    "import sys; from bench.turncost import _child; _child(sys.argv[1:])",
                    "--client",
                    name.removesuffix(BASELINE),
                    "--base-url",
                    f"http://127.0.0.1:{port}/v1",
                    "--sessions",
                    str(args.sessions),
                    "--turns",
                    str(args.turns),
                    "--loop",
                    args.loop,
                    *(["--live", "--live-top", str(args.live_top)] if args.live else []),
                    *(["--gc-off"] if args.gc_off else []),
                ]
                if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
                    command = ["taskset", "-c", "1", *command]
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                results.setdefault(name, []).append(json.loads(out.stdout.splitlines()[-1]))
    finally:
        upstream.terminate()
        upstream.wait(10)
    print(
        f"{args.sessions} sessions x {args.turns} turns, {args.profile}, {args.loop}; "
        f"median (min-max) of {args.repeat}"
    )
    for name, runs in results.items():

        def spread(key: str, runs: list[dict[str, Any]] = runs) -> str:
            values = [r[key] for r in runs]
            return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

        collections = runs[-1]["collections_per_1000_turns"]
        by_gen = runs[-1]["gc_by_generation_us"]
        print(
            f"{name:32s} CPU/turn ms {spread('cpu_per_turn_ms')}  GC/turn us "
            f"{statistics.median(r['gc_per_turn_us'] for r in runs):.0f} "
            f"(gen 0/1/2: {by_gen['0']:.0f}/{by_gen['1']:.0f}/{by_gen['2']:.0f})  "
            f"collections per 1000 turns {collections['0']:.0f}/{collections['1']:.0f}/"
            f"{collections['2']:.1f}"
        )
        live = runs[-1]["live_per_session"]
        for key, value in live.items():
            print(f"    {value:7.2f}  {key}")


if __name__ == "__main__":
    main()
