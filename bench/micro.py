"""Micro-benchmarks: pipeline overhead per turn, idle-session memory, truncation (hook).

    python -m bench.micro                  # all, writes bench/results/micro.json + docs
    python -m bench.micro --smoke --no-docs

1. **Pipeline overhead per turn** (µs of CPU): the same turns three ways with
   ``MockProvider`` (no network, 10 chunks per reply like the ``instant`` upstream
   profile): the provider's stream consumed directly with a hand-kept list (baseline),
   ``Pipeline.execute`` and ``Pipeline.stream`` with ``StateMiddleware(InMemoryStateStore)``
   + ``ProviderMiddleware``. Overhead = pipeline − baseline. The end-to-end cost with the
   real ``OpenAIProvider`` over HTTP is the ``instant`` profile of ``bench.run``.
2. **Idle sessions**: 10,000 sessions × 20 messages (10 turns of the benchmark's own user
   message and reply sizes) in ``InMemoryStateStore``, measured in a fresh interpreter as
   the RSS delta, and separately with ``tracemalloc``; the text itself is reported too,
   so the store's overhead per message is visible.
3. **Truncation vs history length**: owned by ``bench/truncation.py`` (the prompt
   package's engineer). If it defines ``run(smoke: bool) -> dict``, its result is stored
   under ``truncation`` (a list of flat dicts under ``rows`` becomes a table); otherwise
   ``python -m bench.truncation`` is run and its printed table kept.
"""

from __future__ import annotations

# Typeset for people: multiplication signs, en dashes, minus and micro signs.
# ruff: noqa: RUF001, RUF002
import argparse
import asyncio
import gc
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from ._common import current_rss_mb, machine_facts, run_on, uvloop_available

__all__ = ["idle_sessions", "main", "pipeline_overhead"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"

# The same sizes as the end-to-end run: the worker's user message, the upstream's reply.
REPLY = " Sure, here is the next part of our story: a quiet"


def _user(session: int, turn: int) -> str:
    from .worker import user_text

    return user_text(session, turn)


async def _overhead_once(sessions: int, turns: int, mode: str) -> float:
    """CPU seconds for sessions × turns in ``mode`` (baseline, execute, stream)."""
    from promptkit_async import (
        InMemoryStateStore,
        Message,
        MockProvider,
        Pipeline,
        ProviderMiddleware,
        ProviderRequest,
        StateMiddleware,
    )

    provider = MockProvider(handler=lambda request: REPLY, chunk_size=5, model="gpt-4o-mini")
    store = InMemoryStateStore()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))

    async def baseline(index: int) -> None:
        history: list[Message] = []
        for t in range(turns):
            history.append(Message("user", _user(index, t)))
            parts = []
            async for chunk in provider.stream(ProviderRequest(messages=history)):
                if chunk.delta:
                    parts.append(chunk.delta)
            history.append(Message("assistant", "".join(parts)))

    async def execute(index: int) -> None:
        sid = f"s{index}"
        for t in range(turns):
            await pipe.execute(sid, "user", _user(index, t))

    async def stream(index: int) -> None:
        sid = f"s{index}"
        for t in range(turns):
            async with pipe.stream(sid, "user", _user(index, t)) as chunks:
                async for _ in chunks:
                    pass

    run = {"baseline": baseline, "execute": execute, "stream": stream}[mode]
    gc.collect()
    started = time.process_time()
    await asyncio.gather(*(run(i) for i in range(sessions)))
    spent = time.process_time() - started
    # Don't let the recorded requests of the mock grow across repeats.
    provider.requests.clear()
    await pipe.shutdown()
    return spent


def pipeline_overhead(
    sessions: int = 1000, turns: int = 5, repeat: int = 5, loops: tuple[str, ...] = ("asyncio",)
) -> list[dict[str, Any]]:
    """µs of CPU per turn for each mode and loop, median and min–max over ``repeat``."""
    rows = []
    n = sessions * turns
    for loop in loops:
        per_mode: dict[str, list[float]] = {"baseline": [], "execute": [], "stream": []}
        for mode in per_mode:  # warm-up: imports, first-call caches
            run_on(loop, _overhead_once(min(sessions, 50), turns, mode))
        for _ in range(repeat):
            for mode in per_mode:  # interleaved, so machine noise hits all modes alike
                per_mode[mode].append(run_on(loop, _overhead_once(sessions, turns, mode)) / n)
        base = statistics.median(per_mode["baseline"])
        for mode, values in per_mode.items():
            us = [v * 1e6 for v in values]
            rows.append(
                {
                    "loop": loop,
                    "mode": mode,
                    "us_per_turn": statistics.median(us),
                    "min": min(us),
                    "max": max(us),
                    "overhead_us": None
                    if mode == "baseline"
                    else statistics.median(us) - base * 1e6,
                }
            )
    return rows


def _idle_child(sessions: int, per_session: int, traced: bool) -> dict[str, Any]:
    """Runs in a fresh interpreter: fill the store, report memory."""
    from promptkit_async import InMemoryStateStore, Message

    async def fill() -> tuple[InMemoryStateStore, int]:
        store = InMemoryStateStore()
        text = 0
        for s in range(sessions):
            sid = f"session-{s:06d}"
            for t in range(per_session // 2):
                user = _user(s, t)
                reply = f"{REPLY} (turn {t})"
                text += len(user) + len(reply)
                await store.append(sid, [Message("user", user), Message("assistant", reply)])
        return store, text

    gc.collect()
    if traced:
        tracemalloc.start()
    before = current_rss_mb()
    store, text = asyncio.run(fill())
    gc.collect()
    after = current_rss_mb()
    out: dict[str, Any] = {"rss_delta_mb": after - before, "text_mb": text / 1024 / 1024}
    if traced:
        current, _peak = tracemalloc.get_traced_memory()
        out["tracemalloc_mb"] = current / 1024 / 1024
    assert len(store._sessions) == sessions  # keep the store alive until measured
    return out


def idle_sessions(sessions: int = 10_000, per_session: int = 20) -> dict[str, Any]:
    """Memory of ``sessions`` idle sessions, each in a fresh interpreter (RSS, traced)."""

    def child(traced: bool) -> dict[str, Any]:
        code = (
            "import json, sys; from bench.micro import _idle_child; "
            f"print(json.dumps(_idle_child({sessions}, {per_session}, {traced})))"
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return data

    plain = child(False)
    traced = child(True)
    messages = sessions * per_session
    overhead = traced["tracemalloc_mb"] - traced["text_mb"]
    return {
        "sessions": sessions,
        "messages_per_session": per_session,
        "rss_delta_mb": plain["rss_delta_mb"],
        "tracemalloc_mb": traced["tracemalloc_mb"],
        "text_mb": plain["text_mb"],
        "bytes_per_message": traced["tracemalloc_mb"] * 1024 * 1024 / messages,
        "overhead_bytes_per_message": overhead * 1024 * 1024 / messages,
    }


def truncation(smoke: bool) -> dict[str, Any]:
    """Run ``bench/truncation.py`` if it exists (see the module docstring).

    Preferred: its ``run(smoke)`` returning a dict. A module with only a ``main()`` that
    prints a table (as written for issue 4) is run as ``python -m bench.truncation`` in a
    child process and its output kept as ``text``; smoke runs skip that (about 30 s).
    """
    if importlib.util.find_spec("bench.truncation") is None:
        return {"status": "bench/truncation.py is not written yet (prompt package, issue 4)"}
    module = importlib.import_module("bench.truncation")
    run = getattr(module, "run", None)
    if run is not None:
        result: dict[str, Any] = run(smoke=smoke)
        result.setdefault("status", "ok")
        return result
    if smoke:
        return {"status": "skipped in smoke runs (python -m bench.truncation takes ~30 s)"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.truncation"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {"status": f"python -m bench.truncation failed: {proc.stderr.strip()[-500:]}"}
    return {"status": "from `python -m bench.truncation`", "text": proc.stdout.rstrip()}


def markdown(record: dict[str, Any]) -> str:
    """The docs block for the micro-benchmarks."""
    out = [f"`{record['command']}` — {record['date']}", ""]
    rows = record["pipeline_overhead"]
    p = record["params"]
    out += [
        f"**Pipeline overhead per turn** ({p['sessions']:,} sessions × {p['turns']} turns, "
        f"MockProvider with 10 chunks per reply, CPU time, median of {p['repeat']} "
        "with min–max):",
        "",
        "| loop | how the turn runs | CPU µs/turn | over the bare provider |",
        "|---|---|---|---|",
    ]
    names = {
        "baseline": "MockProvider.stream consumed directly, hand-kept list",
        "execute": "Pipeline.execute (StateMiddleware in-memory + ProviderMiddleware)",
        "stream": "Pipeline.stream, every chunk read",
    }
    for r in rows:
        over = "–" if r["overhead_us"] is None else f"+{r['overhead_us']:.0f} µs"
        out.append(
            f"| {r['loop']} | {names[r['mode']]} | {r['us_per_turn']:.0f} "
            f"({r['min']:.0f}–{r['max']:.0f}) | {over} |"
        )
    idle = record["idle_sessions"]
    out += [
        "",
        f"**Idle sessions**: {idle['sessions']:,} sessions × {idle['messages_per_session']} "
        f"messages in `InMemoryStateStore`: **{idle['rss_delta_mb']:.1f} MB** RSS growth "
        f"({idle['tracemalloc_mb']:.1f} MB traced by tracemalloc), of which "
        f"{idle['text_mb']:.1f} MB is the message text itself; "
        f"{idle['bytes_per_message']:.0f} bytes per message in all, "
        f"{idle['overhead_bytes_per_message']:.0f} beyond the text.",
        "",
    ]
    trunc = record["truncation"]
    out.append(f"**Truncation vs history length**: {trunc.get('status')}.")
    if trunc.get("text"):
        out += ["", "```text", trunc["text"], "```"]
    table = trunc.get("rows")
    if isinstance(table, list) and table and isinstance(table[0], dict):
        keys = list(table[0])
        out += ["", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        out += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in table]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: ``python -m bench.micro --help``."""
    import datetime as dt
    import shlex

    from . import report

    parser = argparse.ArgumentParser(
        prog="python -m bench.micro", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--idle-sessions", type=int, default=10_000)
    parser.add_argument("--idle-messages", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--no-docs", dest="update_docs", action="store_false")
    parser.add_argument("--out", type=Path, default=None)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    if args.smoke:
        args.sessions, args.turns, args.repeat = 20, 3, 1
        args.idle_sessions, args.idle_messages = 200, 4
    loops = ("asyncio", "uvloop") if uvloop_available() else ("asyncio",)
    record: dict[str, Any] = {
        "key": "micro" if not args.smoke else "micro-smoke",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.micro " + shlex.join(raw),
        "machine": machine_facts(),
        "params": {"sessions": args.sessions, "turns": args.turns, "repeat": args.repeat},
    }
    record["pipeline_overhead"] = pipeline_overhead(args.sessions, args.turns, args.repeat, loops)
    record["idle_sessions"] = idle_sessions(args.idle_sessions, args.idle_messages)
    record["truncation"] = truncation(args.smoke)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"{record['key']}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    text = markdown(record)
    print(text)
    if args.update_docs and not args.smoke:
        report.update_section(DOCS, "micro", text)
        report.update_targets(DOCS, RESULTS)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
