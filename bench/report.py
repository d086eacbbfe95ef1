"""Aggregates, Markdown tables, the SVG chart and the docs/benchmarks.md sections."""

# The report is typeset for people: en dashes for ranges, multiplication signs for ratios.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = [
    "aggregate",
    "chart",
    "markdown",
    "one_line",
    "run_key",
    "targets_markdown",
    "update_docs",
    "update_profile",
    "update_section",
    "update_targets",
]

#: The raw loops every client is compared with.
BASELINES = ("aiohttp", "httpx")


def run_key(args: argparse.Namespace) -> str:
    """The name of a run's result file and docs section, e.g. ``fast-1000x5``."""
    key = f"{args.profile}-{args.sessions}x{args.turns}"
    if not args.stream:
        key += "-nostream"
    if args.max_connections:
        key += f"-cap{args.max_connections}"
    if args.label:
        key += f"-{args.label}"
    return key


def one_line(r: dict[str, Any]) -> str:
    """A progress line for one run."""
    if "failed" in r:
        return f"FAILED: {r['failed']}"
    return (
        f"{r['turns_per_s']:8.1f} turns/s  cpu/turn {r['cpu_per_turn_ms']:.3f} ms  "
        f"ttfc p50 {r['ttfc_ms']['p50']:.1f} ms  rss {r['peak_rss_mb']:.0f} MB  "
        f"errors {r['errors']}  upstream busy {r.get('upstream_busy', 0):.0%}"
    )


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (client, loop): medians over repeats with min-max, and paired ratios."""
    good = [r for r in runs if "failed" not in r and not r.get("profiled")]
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in good:
        by_key[(r["client"], r["loop"])].append(r)
    # Baseline throughput per (loop, repeat), for ratios taken within one repeat.
    base: dict[tuple[str, str, int], float] = {}
    base_cpu: dict[tuple[str, int], float] = {}
    for r in good:
        if r["client"] in (*BASELINES, "openai", "promptkit-memory"):
            base[(r["client"], r["loop"], r.get("repeat", 0))] = r["turns_per_s"]
        if r["client"] == "aiohttp" and r["cpu_per_turn_ms"]:
            base_cpu[(r["loop"], r.get("repeat", 0))] = r["cpu_per_turn_ms"]
    summary = []
    for (client, loop), rs in by_key.items():
        entry: dict[str, Any] = {
            "client": client,
            "loop": loop,
            "runs": len(rs),
            "describe": rs[0].get("describe", ""),
            "turns_per_s": _spread([r["turns_per_s"] for r in rs]),
            "cpu_per_turn_ms": _spread([r["cpu_per_turn_ms"] for r in rs if r["cpu_per_turn_ms"]]),
            "cpu_s": statistics.median(r["cpu_s"] for r in rs),
            "peak_rss_mb": _spread([r["peak_rss_mb"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "turns_ok": sum(r["turns_ok"] for r in rs),
            "missing_usage": sum(r["missing_usage"] for r in rs),
            "history_mismatches": sum(r["history_mismatches"] for r in rs),
            "upstream_check": all(r.get("upstream_check", False) for r in rs),
            "upstream_busy_max": max(r.get("upstream_busy", 0.0) for r in rs),
        }
        for metric in ("ttfc_ms", "turn_ms"):
            for q in ("p50", "p99"):
                vals = [r[metric][q] for r in rs if r[metric][q] is not None]
                entry[f"{metric}_{q}"] = statistics.median(vals) if vals else None
        waits = [r["runqueue_wait_share"] for r in rs if r.get("runqueue_wait_share") is not None]
        entry["runqueue_wait_share"] = statistics.median(waits) if waits else None
        # CPU efficiency against aiohttp: robust when neighbours steal wall-clock time.
        cpu_ratios = [
            base_cpu[(loop, r.get("repeat", 0))] / r["cpu_per_turn_ms"]
            for r in rs
            if r["cpu_per_turn_ms"] and (loop, r.get("repeat", 0)) in base_cpu
        ]
        if cpu_ratios:
            entry["cpu_x_aiohttp"] = _spread(cpu_ratios)
        trips = [
            r["store_round_trips_per_turn"]
            for r in rs
            if r.get("store_round_trips_per_turn") is not None
        ]
        if trips:
            entry["store_round_trips_per_turn"] = statistics.median(trips)
        if any("redis_busy" in r for r in rs):
            entry["redis_busy_max"] = max(r.get("redis_busy", 0.0) for r in rs)
        for ref in (*BASELINES, "openai", "promptkit-memory"):
            ratios = [
                r["turns_per_s"] / base[(ref, loop, r.get("repeat", 0))]
                for r in rs
                if base.get((ref, loop, r.get("repeat", 0)))
            ]
            if ratios:
                entry[f"x_{ref}"] = _spread(ratios)
        summary.append(entry)
    order = {name: i for i, name in enumerate(_ORDER)}
    summary.sort(key=lambda e: (order.get(e["client"], 99), e["client"], e["loop"]))
    return summary


_ORDER = (
    "aiohttp",
    "httpx-aiohttp",
    "httpx-per-session",
    "httpx",
    "openai",
    "openai-aiohttp",
    "litellm",
    "promptkit-memory",
    "promptkit-sqlite",
    "promptkit-redis",
    "promptkit-postgres",
    "promptkit-shim-memory",
    "promptkit-shim-sqlite",
    "promptkit-shim-redis",
)


def _f(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _range(s: dict[str, float] | None, digits: int = 0) -> str:
    if not s:
        return "–"
    if s["min"] == s["max"]:
        return _f(s["median"], digits)
    return f"{_f(s['median'], digits)} ({_f(s['min'], digits)}–{_f(s['max'], digits)})"


def markdown(record: dict[str, Any]) -> str:
    """The results table of one run record (medians over repeats, min–max in brackets)."""
    p = record["params"]
    lines = [
        "| client | loop | turns/s | TTFC p50 / p99 ms | turn p50 / p99 ms | CPU/turn ms "
        "| CPU s | peak RSS MB | errors | × aiohttp turns/s | × aiohttp CPU/turn "
        "| × httpx turns/s | CPU wait |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in record["summary"]:
        lines.append(
            "| "
            + " | ".join(
                [
                    f"`{e['client']}`",
                    e["loop"],
                    _range(e["turns_per_s"], 0),
                    f"{_f(e['ttfc_ms_p50'])} / {_f(e['ttfc_ms_p99'])}",
                    f"{_f(e['turn_ms_p50'])} / {_f(e['turn_ms_p99'])}",
                    _range(e["cpu_per_turn_ms"], 2),
                    _f(e["cpu_s"]),
                    _f(e["peak_rss_mb"]["max"], 0),
                    str(e["errors"]),
                    _range(e.get("x_aiohttp"), 2),
                    _range(e.get("cpu_x_aiohttp"), 2),
                    _range(e.get("x_httpx"), 1),
                    "–"
                    if e.get("runqueue_wait_share") is None
                    else f"{e['runqueue_wait_share']:.0%}",
                ]
            )
            + " |"
        )
    failed = [r for r in record["runs"] if "failed" in r]
    notes = []
    if failed:
        notes.append(
            "Failed runs: "
            + "; ".join(f"`{r['client']}` ({r['loop']}): {r['failed']}" for r in failed)
            + "."
        )
    for name, why in record.get("skipped", {}).items():
        notes.append(f"Not run: `{name}`: {why}.")
    checks = [e for e in record["summary"] if not e["upstream_check"] and e["errors"] == 0]
    bad = [e for e in record["summary"] if e["missing_usage"] or e["history_mismatches"]]
    if checks:
        notes.append(
            "Upstream message count differs from the expected growing history for: "
            + ", ".join(f"`{e['client']}`" for e in checks)
            + "."
        )
    if bad:
        notes.append(
            "Missing usage or wrong history length: "
            + ", ".join(f"`{e['client']}` ({e['loop']})" for e in bad)
            + "."
        )
    notes.append(
        "× aiohttp turns/s: throughput ratio to the raw aiohttp loop of the same repeat; "
        "× aiohttp CPU/turn: aiohttp's CPU per turn divided by this client's (1.0 = as "
        "cheap, higher is cheaper), which neighbours on a shared machine cannot distort; "
        "CPU wait: share of the wall time the client's loop was runnable but waiting for "
        "its CPU (other processes), the cause of the turns/s spread."
    )
    busy = max((e["upstream_busy_max"] for e in record["summary"]), default=0.0)
    notes.append(
        f"{p['sessions']:,} sessions × {p['turns']} turns, profile `{p['profile']}`, "
        f"{'streaming' if p['stream'] else 'non-streaming'}, {p['repeat']} repeat(s); "
        f"upstream CPU ≤ {busy:.0%} of its core during any run."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def chart(record: dict[str, Any], path: Path) -> Path | None:
    """An SVG with turns/s and CPU per turn per client and loop; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    summary = record["summary"]
    clients = list(dict.fromkeys(e["client"] for e in summary))
    loops = list(dict.fromkeys(e["loop"] for e in summary))
    if not clients:
        return None
    by = {(e["client"], e["loop"]): e for e in summary}
    height = 0.8 / max(1, len(loops))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(clients) * max(1, len(loops)) + 1.6))
    colours = ("#3b6ea5", "#e0a030", "#6aa84f")
    for panel, (metric, title) in enumerate(
        (
            ("turns_per_s", "turns/s (higher is better)"),
            ("cpu_per_turn_ms", "client CPU ms per turn"),
        )
    ):
        ax = axes[panel]
        for li, loop in enumerate(loops):
            ys, vals, lo, hi = [], [], [], []
            for ci, client in enumerate(clients):
                e = by.get((client, loop))
                if e is None or not e[metric]:
                    continue
                s = e[metric]
                ys.append(ci + li * height)
                vals.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
            ax.barh(
                ys,
                vals,
                height=height,
                xerr=[lo, hi],
                color=colours[li % len(colours)],
                label=loop,
                capsize=2,
            )
            for y, v in zip(ys, vals, strict=True):
                ax.text(
                    v,
                    y,
                    f" {v:,.0f}" if metric == "turns_per_s" else f" {v:.2f}",
                    va="center",
                    fontsize=7,
                )
        ax.set_yticks([i + height * (len(loops) - 1) / 2 for i in range(len(clients))])
        ax.set_yticklabels(clients if panel == 0 else [""] * len(clients), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        if metric == "cpu_per_turn_ms":
            # Log scale: 0.3 ms and 17 ms clients must both stay readable.
            ax.set_xscale("log")
            ax.axvline(1.0, color="#c00", lw=0.8, ls="--")
    axes[0].legend(fontsize=8, loc="lower right")
    p = record["params"]
    fig.suptitle(
        f"{p['sessions']:,} sessions × {p['turns']} turns, profile {p['profile']} "
        f"(median of {p['repeat']}, bars = min–max) — {record['date']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return path


# --- docs/benchmarks.md -----------------------------------------------------------------


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"


RESULTS_ANCHOR = "<!-- bench:results:insert-above -->"


def update_section(doc: Path, key: str, body: str, heading: str | None = None) -> None:
    """Replace the generated block ``key`` in ``doc``; add it (with ``heading``) if new."""
    text = doc.read_text() if doc.exists() else ""
    start, end = _markers(key)
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        section = (f"### {heading}\n\n" if heading else "") + block + "\n\n"
        if RESULTS_ANCHOR in text:
            text = text.replace(RESULTS_ANCHOR, section + RESULTS_ANCHOR)
        else:
            text = text.rstrip() + "\n\n" + section
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def _machine(record: dict[str, Any]) -> str:
    m = record["machine"]
    pin = record["params"].get("pinned", {})
    pinned = (
        f"upstream and redis-server on CPU {pin['upstream_and_redis']}, client on CPU "
        f"{pin['client']}"
        if pin.get("client")
        else "not pinned"
    )
    v = m.get("versions", {})
    libs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    load = m.get("loadavg_at_start")
    return (
        f"{m['cpu']}, {m['cpus']} CPUs, {m['memory_gb']} GB, {m['os']}, "
        f"{m['implementation']} {m['python']}; {pinned}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in load) if load else '?'} (shared machine). {libs}."
    )


def update_docs(doc: Path, record: dict[str, Any], chart_path: Path | None) -> None:
    """Write one run's section: command, date, machine, table, chart."""
    parts = [f"`{record['command']}` — {record['date']}", ""]
    for earlier in record.get("merged_commands", []):
        parts += [f"Merged with the stored runs of other clients from {earlier}", ""]
    parts += [
        f"Machine: {_machine(record)}",
        "",
        markdown(record),
    ]
    if chart_path is not None:
        rel = (
            Path(*chart_path.parts[len(doc.parent.parts) :])
            if chart_path.is_relative_to(doc.parent)
            else chart_path
        )
        parts.append(f"![{record['key']}]({rel.as_posix()})")
    p = record["params"]
    heading = f"`{record['key']}`: {p['sessions']:,} sessions × {p['turns']} turns, {p['profile']}"
    update_section(doc, record["key"], "\n".join(parts), heading)


def _load(results: Path, key: str) -> dict[str, Any] | None:
    path = results / f"{key}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _entry(record: dict[str, Any] | None, client: str, loop: str) -> dict[str, Any] | None:
    if record is None:
        return None
    for e in record["summary"]:
        if e["client"] == client and e["loop"] == loop:
            return e
    return None


def targets_markdown(results: Path) -> str:
    """The issue's targets against the stored results (met / missed / not measured)."""
    main = _load(results, "fast-1000x5")
    big = _load(results, "fast-2000x5")
    micro = _load(results, "micro")
    loops = ("asyncio", "uvloop")
    rows: list[str] = []

    def status(oks: list[bool | None]) -> str:
        known = [ok for ok in oks if ok is not None]
        if not known:
            return "not measured"
        if all(known):
            return "met"
        if not any(known):
            return "**missed**"
        return "; ".join(
            f"{loop} {'met' if ok else '**missed**'}"
            for loop, ok in zip(loops, oks, strict=True)
            if ok is not None
        )

    def row(label: str, cells: list[tuple[str, bool | None]]) -> None:
        texts = [c[0] for c in cells]
        rows.append(f"| {label} | {' | '.join(texts)} | {status([c[1] for c in cells])} |")

    def per_loop(
        record: dict[str, Any] | None,
        client: str,
        pick: Any,
        unit: str,
        test: Any,
        digits: int = 2,
    ) -> list[tuple[str, bool | None]]:
        out: list[tuple[str, bool | None]] = []
        for loop in loops:
            e = _entry(record, client, loop)
            value = pick(e) if e else None
            if not value:
                out.append(("–", None))
            else:
                out.append((f"{_range(value, digits)}{unit}", bool(test(value["median"]))))
        return out

    pk = "promptkit-memory"
    row(
        "1,000 sessions × 5 turns, fast: `promptkit-memory` ≥ 0.8× raw aiohttp turns/s",
        per_loop(main, pk, lambda e: e.get("x_aiohttp"), "×", lambda v: v >= 0.8),
    )
    row(
        "… ≥ 10× the openai SDK's turns/s",
        per_loop(main, pk, lambda e: e.get("x_openai"), "×", lambda v: v >= 10),
    )
    row(
        "… ≤ 1 ms client CPU per turn",
        per_loop(main, pk, lambda e: e["cpu_per_turn_ms"], " ms", lambda v: v <= 1.0),
    )
    row(
        "… peak RSS ≤ 100 MB",
        per_loop(
            main,
            pk,
            lambda e: dict.fromkeys(("median", "min", "max"), e["peak_rss_mb"]["max"]),
            " MB",
            lambda v: v <= 100,
            digits=0,
        ),
    )
    for client in ("promptkit-memory", "promptkit-sqlite", "promptkit-redis"):
        cells: list[tuple[str, bool | None]] = []
        for loop in loops:
            e = _entry(big, client, loop)
            cells.append(
                (f"{e['errors']} in {e['turns_ok'] + e['errors']:,} turns", e["errors"] == 0)
                if e
                else ("–", None)
            )
        row(f"2,000 sessions: `{client}` zero errors", cells)
    row(
        "Redis store ≥ 0.8× the in-memory store's turns/s (1,000 × 5)",
        per_loop(
            main, "promptkit-redis", lambda e: e.get("x_promptkit-memory"), "×", lambda v: v >= 0.8
        ),
    )
    if main and any(e["client"] == "promptkit-postgres" for e in main["summary"]):
        row(
            "PostgreSQL store ≥ 0.8× the in-memory store's turns/s (1,000 × 5)",
            per_loop(
                main,
                "promptkit-postgres",
                lambda e: e.get("x_promptkit-memory"),
                "×",
                lambda v: v >= 0.8,
            ),
        )
    idle = micro.get("idle_sessions") if micro else None
    if idle:
        figure = idle["rss_delta_mb"]
        rows.append(
            f"| {idle['sessions']:,} idle sessions × {idle['messages_per_session']} messages "
            f"(in-memory store) ≤ 100 MB | {figure:.1f} MB RSS "
            f"({idle['tracemalloc_mb']:.1f} MB traced) | (no loop) | "
            f"{'met' if figure <= 100 else '**missed**'} |"
        )
    else:
        rows.append("| 10,000 idle sessions × 20 messages ≤ 100 MB | – | – | not measured |")
    # Not a target, but the figure that survives a noisy machine.
    info = per_loop(main, pk, lambda e: e.get("cpu_x_aiohttp"), "×", lambda v: True)
    rows.append(
        "| (diagnostic) raw aiohttp CPU per turn ÷ `promptkit-memory` CPU per turn | "
        + " | ".join(c[0] for c in info)
        + " | – |"
    )
    out = ["| target | asyncio | uvloop | status |", "|---|---|---|---|", *rows]
    return "\n".join(out) + "\n"


def update_targets(doc: Path, results: Path) -> None:
    """Rewrite the targets block of ``doc`` from the stored results."""
    update_section(doc, "targets", targets_markdown(results))


def update_profile(doc: Path, record: dict[str, Any], texts: dict[str, Path]) -> None:
    """Put the flat self-time tables of profiled clients into the docs' profile block."""
    p = record["params"]
    parts = [
        f"`{record['command']}` — {record['date']}; {p['sessions']:,} sessions × "
        f"{p['turns']} turns, profile `{p['profile']}`, loop {', '.join(p['loops'])}. "
        f"Profiler: {p.get('profiler', '?')} (CPU samples of the event-loop thread; "
        "py-spy keeps only samples inside the running loop, pyinstrument only the measured "
        "window and adds its own overhead).",
        "",
    ]
    for client, path in texts.items():
        if not path.exists():
            continue
        text = path.read_text()
        flat = text.split("\n\n# call tree", 1)[0].strip()
        parts += [f"**`{client}`** (`{path.name}`):", "", "```text", flat, "```", ""]
    update_section(doc, "profile", "\n".join(parts))
