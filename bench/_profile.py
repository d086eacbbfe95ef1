"""Summaries of py-spy's collapsed stacks: where a client process spends its CPU.

``py-spy record --format raw`` writes one line per distinct stack,
``frame;frame;...;leaf <count>``, each frame ``function (file:line)``. Idle samples are
left out by py-spy, so the counts are CPU samples. Only samples taken inside the event
loop (a ``run_until_complete`` frame) count: process start-up and imports are dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

__all__ = ["summarize_collapsed"]

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Package groups, first match wins.
_GROUPS = (
    ("promptkit_async", "promptkit_async/"),
    ("bench harness", "bench/"),
    ("aiohttp", "aiohttp/"),
    ("httpx / httpcore", "httpx"),
    ("httpx / httpcore", "httpcore"),
    ("openai", "openai/"),
    ("json", "json/"),
    ("asyncio", "asyncio/"),
    ("uvloop", "uvloop"),
)


def _parse(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    if m is None:
        return frame, ""
    return m["func"], m["file"]


def _group(file: str) -> str:
    for name, marker in _GROUPS:
        if marker in file:
            return name
    return "other (stdlib, builtins, C)"


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Self time per function, time per package, inclusive time per promptkit_async function."""
    own: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or "run_until_complete" not in stack:
            continue
        if "_find_and_load" in stack:
            continue  # imports done lazily while the client opens: not per-turn work
        n = int(count)
        total += n
        frames = stack.split(";")
        func, file = _parse(frames[-1])
        own[f"{func}  {file}"] += n
        groups[_group(file)] += n
        seen: set[str] = set()
        for frame in frames:
            f, fl = _parse(frame)
            if "promptkit_async/" in fl:
                key = f"{f}  {fl}"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += n
    if not total:
        return "(no samples inside the event loop)"

    def share(n: int) -> str:
        return f"{n / total:6.1%}"

    out = [f"{total} CPU samples inside the event loop", "", "self time by package:"]
    out += [f"  {share(n)}  {name}" for name, n in groups.most_common()]
    out += ["", f"self time, top {top} functions:"]
    out += [f"  {share(n)}  {name}" for name, n in own.most_common(top)]
    if inclusive:
        out += ["", "inclusive time of promptkit_async functions (callees included):"]
        out += [f"  {share(n)}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)
