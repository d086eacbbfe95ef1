"""What observing turns costs: µs of CPU per turn, side by side, in one run.

    python -m bench.observability --base /path/to/a/copy/of/main
    python -m bench.observability --smoke

The turns of ``bench.micro``'s pipeline-overhead benchmark (``MockProvider``, 10 chunks
per reply, ``StateMiddleware(InMemoryStateStore)`` + ``ProviderMiddleware``, sessions ×
turns run concurrently), ``Pipeline.execute`` and ``Pipeline.stream``, in these variants:

* ``base``: the library from ``--base`` (a checkout from before events existed);
* ``none``: this tree, no listener (the emission points return at once);
* ``otel``: this tree with ``OpenTelemetryListener`` on the OpenTelemetry SDK: a
  ``TracerProvider`` whose ``BatchSpanProcessor`` feeds an exporter that drops
  everything, and a ``MeterProvider`` with a reader that is never collected (so the cost
  is creating spans and recording measurements, not exporting them);
* ``logging``: this tree with ``LoggingListener`` and logging at its default WARNING.

It also times the emission points a turn passes with no listener, directly
(``timeit``), since that cost is far below the noise of whole turns.

Each measurement runs in a fresh interpreter (so the two libraries never share a
process), the variants interleaved ``--repeat`` times so machine noise hits all alike;
each process keeps the least disturbed of ``--inner`` runs (other processes only ever add
CPU time), and the table reports the median and min–max of those per turn
(``time.process_time``).
Results go to ``bench/results/observability.json`` unless ``--no-save``.
"""

from __future__ import annotations

# Typeset for people: multiplication and micro signs.
# ruff: noqa: RUF001, RUF002
import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
REPLY = " Sure, here is the next part of our story: a quiet"
VARIANTS = ("base", "none", "otel", "logging")


def _listeners(variant: str) -> tuple[list[Any], Any]:
    """The listeners for ``variant`` and a clean-up callable."""
    if variant == "otel":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from promptkit_async.telemetry.otel import OpenTelemetryListener

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        listener = OpenTelemetryListener(
            tracer_provider=tracer_provider, meter_provider=meter_provider
        )

        def close() -> None:
            tracer_provider.shutdown()
            meter_provider.shutdown()

        return [listener], close
    if variant == "logging":
        from promptkit_async.telemetry import LoggingListener

        return [LoggingListener()], lambda: None
    return [], lambda: None


async def _turns(sessions: int, turns: int, mode: str, variant: str) -> float:
    """CPU seconds for sessions × turns."""
    from promptkit_async import (
        InMemoryStateStore,
        MockProvider,
        Pipeline,
        ProviderMiddleware,
        StateMiddleware,
    )

    provider = MockProvider(handler=lambda request: REPLY, chunk_size=5, model="gpt-4o-mini")
    listeners, close = _listeners(variant)
    layers = (StateMiddleware(InMemoryStateStore()), ProviderMiddleware(provider))
    pipe = Pipeline(*layers, listeners=listeners) if listeners else Pipeline(*layers)

    async def execute(index: int) -> None:
        sid = f"s{index}"
        for t in range(turns):
            await pipe.execute(sid, "user", f"user {index} says {t}: tell me more")

    async def stream(index: int) -> None:
        sid = f"s{index}"
        for t in range(turns):
            async with pipe.stream(sid, "user", f"user {index} says {t}: tell me more") as chunks:
                async for _ in chunks:
                    pass

    run = execute if mode == "execute" else stream
    await asyncio.gather(*(run(i) for i in range(min(sessions, 50))))  # warm-up
    gc.collect()
    started = time.process_time()
    await asyncio.gather(*(run(i) for i in range(sessions)))
    spent = time.process_time() - started
    provider.requests.clear()
    await pipe.shutdown()
    close()
    return spent


def _child(sessions: int, turns: int, mode: str, variant: str, inner: int = 5) -> None:
    # The least disturbed of ``inner`` runs: on a shared machine other processes only
    # ever add CPU time (cache and frequency effects), so the minimum is the estimate.
    spent = min(asyncio.run(_turns(sessions, turns, mode, variant)) for _ in range(inner))
    print(json.dumps({"us_per_turn": spent / (sessions * turns) * 1e6}))


def _measure(
    variant: str, mode: str, sessions: int, turns: int, base: Path | None, inner: int
) -> float:  # pragma: no cover - subprocess plumbing
    tree = base if variant == "base" else ROOT
    assert tree is not None
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from bench.observability import _child; "
        f"_child({sessions}, {turns}, {mode!r}, {'none' if variant == 'base' else variant!r}, "
        f"{inner})"
    )
    # The bench package comes from this tree; promptkit_async from ``tree`` (first on
    # PYTHONPATH, which Python puts before sys.path entries added at runtime... so check).
    check = f"import promptkit_async, sys; print(promptkit_async.__file__, file=sys.stderr)\n{code}"
    done = subprocess.run(
        [sys.executable, "-c", check],
        env=env,
        cwd=str(tree),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    where = done.stderr.strip().splitlines()[0]
    assert where.startswith(str(tree)), f"{variant} imported {where}, not from {tree}"
    value: float = json.loads(done.stdout.strip().splitlines()[-1])["us_per_turn"]
    return value


def run(
    sessions: int,
    turns: int,
    repeat: int,
    base: Path | None,
    variants: tuple[str, ...],
    inner: int = 5,
) -> list[dict[str, Any]]:
    """Median and min–max µs of CPU per turn, for each mode and variant."""
    rows = []
    for mode in ("execute", "stream"):
        samples: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(repeat):
            for variant in variants:  # interleaved
                samples[variant].append(_measure(variant, mode, sessions, turns, base, inner))
        reference = statistics.median(samples[variants[0]])
        for variant, values in samples.items():
            median = statistics.median(values)
            rows.append(
                {
                    "mode": mode,
                    "variant": variant,
                    "us_per_turn": round(median, 2),
                    "min": round(min(values), 2),
                    "max": round(max(values), 2),
                    "vs_first": round(median / reference - 1, 4),
                }
            )
    return rows


def emission_cost(number: int = 1_000_000) -> float:
    """ns of CPU the emission points of one plain turn cost with no listener.

    Calls them as a turn through ``StateMiddleware`` + ``ProviderMiddleware`` does
    (started, load, completed, store, the provider's check), minus an empty loop.
    """
    import timeit

    from promptkit_async import events
    from promptkit_async._context import ExecutionContext
    from promptkit_async.events import ListenerSet
    from promptkit_async.types import Message

    ctx = ExecutionContext("s", Message("user", "hi"))
    listeners = ListenerSet()

    def turn() -> None:
        events.turn_started(ctx, listeners)
        since = events.clock(ctx)
        events.history_loaded(ctx, 0, since)
        _ = ctx.events is None  # ProviderMiddleware._call's check
        since = events.clock(ctx)
        events.turn_stored(ctx, since)
        events.turn_completed(ctx)

    def empty() -> None:
        pass

    best = min(timeit.repeat(turn, number=number, repeat=5)) / number
    floor = min(timeit.repeat(empty, number=number, repeat=5)) / number
    return (best - floor) * 1e9


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows``."""
    lines = [
        "| mode | variant | µs CPU / turn (median) | min – max | vs first |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['variant']} | {r['us_per_turn']:.1f} | "
            f"{r['min']:.1f} – {r['max']:.1f} | {r['vs_first']:+.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.observability", description=__doc__)
    parser.add_argument("--base", type=Path, help="a checkout of the library before events")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--inner", type=int, default=5, help="runs per process (min kept)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--no-save", dest="save", action="store_false")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sessions, args.turns, args.repeat, args.inner = 20, 2, 1, 1
    variants = VARIANTS if args.base else VARIANTS[1:]
    rows = run(args.sessions, args.turns, args.repeat, args.base, variants, args.inner)
    print(table(rows))
    nanoseconds = emission_cost(10_000 if args.smoke else 1_000_000)
    print(f"\nemission points of one turn with no listener: {nanoseconds:.0f} ns")
    if args.save and not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        record = {
            "sessions": args.sessions,
            "turns": args.turns,
            "repeat": args.repeat,
            "inner": args.inner,
            "python": sys.version.split()[0],
            "rows": rows,
            "emission_ns_per_turn_no_listener": round(nanoseconds),
        }
        (RESULTS / "observability.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
