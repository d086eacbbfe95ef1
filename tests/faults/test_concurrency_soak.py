"""Concurrency soak: two OS processes, random concurrent turns on shared sessions, one Redis.

Each process (``_soak_worker.py``) runs many concurrent workers over two pipelines of its
own (separate ``StateMiddleware``s, so even one process has turns of one session in
flight at once) on sessions both processes share. Some turns fail on purpose: the model
raises before answering, or a middleware raises after it answered. Each process logs
every turn: question, pipeline, start and end on the system-wide monotonic clock, and
whether ``execute()`` returned (acknowledged) or raised.

Afterwards every history is checked against the logs:

* whole: user question, then its own reply, of this session (``whole_turns``);
* every acknowledged turn is stored exactly once; nothing unacknowledged is stored;
* order: the turns of one pipeline on one session are stored in acknowledgement order,
  and across pipelines and processes a turn acknowledged before another *started* is
  stored before it (appends are linearizable);
* ``list_sessions`` returns exactly the sessions that hold a turn.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from promptkit_async.statestore import RedisStateStore
from tests._redis_server import RedisServer
from tests.faults._checks import all_sessions, whole_turns
from tests.faults.conftest import Report, scales

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_soak_worker.py")


async def run_workers(configs: list[dict[str, Any]], guard: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pipe = asyncio.subprocess.PIPE
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            json.dumps(c),
            cwd=ROOT,
            env=env,
            stdin=pipe,
            stdout=pipe,
            stderr=pipe,
        )
        for c in configs
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), guard)
            if line.strip() != b"ready":
                _, err = await process.communicate()
                pytest.fail(f"worker did not start: {line!r} {err.decode()[-2000:]}")
        outputs = await asyncio.wait_for(
            asyncio.gather(*(p.communicate(b"go\n") for p in processes)), guard
        )
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()[-3000:]
        assert out.strip().endswith(b"done")


@scales
async def test_two_processes_lose_duplicate_and_reorder_nothing(
    redis_server: RedisServer, tmp_path: Path, report: Report, scale: int
) -> None:
    prefix = f"soak-{uuid.uuid4().hex[:12]}"
    sessions = 30 * max(1, scale // 4)  # the soak adds sessions, but keeps them contended
    configs = [
        {
            "url": redis_server.url,
            "prefix": prefix,
            "tag": tag,
            "sessions": sessions,
            "turns": 400 * scale,
            "workers": 16,
            "pipelines": 2,
            "seed": 8,
            "fail_rate": 0.1,
            "log": str(tmp_path / f"{tag}.json"),
        }
        for tag in ("A", "B")
    ]
    await run_workers(configs, guard=120.0 * scale)

    logs = [await asyncio.to_thread(Path(c["log"]).read_text) for c in configs]
    turns = [t for log in logs for t in json.loads(log)]
    acked = {t["q"]: t for t in turns if "error" not in t}
    failed = {t["q"]: t for t in turns if "error" in t}
    assert len(acked) + len(failed) == len(turns) == sum(c["turns"] for c in configs)
    assert failed
    assert acked

    ordered_pairs = 0
    overlapping = 0
    checked = 0
    async with await RedisStateStore.connect(redis_server.url, prefix=prefix) as store:
        holding = set()
        for s in range(sessions):
            session = f"soak{s}"
            stored = whole_turns(await store.load(session), session)  # whole, own, once
            mine = {q for q, t in acked.items() if t["s"] == session}
            assert set(stored) == mine, (
                f"{session}: lost {sorted(mine - set(stored))[:5]}, "
                f"unacknowledged {sorted(set(stored) - mine)[:5]}"
            )
            # One pipeline's turns on one session: stored in acknowledgement order.
            by_pipeline: dict[str, list[dict[str, Any]]] = {}
            for q in stored:
                by_pipeline.setdefault(acked[q]["p"], []).append(acked[q])
            for entries in by_pipeline.values():
                assert [e["end"] for e in entries] == sorted(e["end"] for e in entries)
            # Any turns: acknowledged before another started => stored before it.
            latest_start = 0
            for q in stored:
                turn = acked[q]
                assert turn["end"] >= latest_start, f"{session}: {q} stored after a later turn"
                latest_start = max(latest_start, turn["start"])
            ordered_pairs += len(stored) * (len(stored) - 1) // 2
            spans = [(acked[q]["start"], acked[q]["end"]) for q in stored]
            overlapping += sum(
                1
                for i, a in enumerate(spans)
                for b in spans[i + 1 :]
                if a[0] < b[1] and b[0] < a[1]
            )  # turns of one session that were in flight at the same time
            if stored:
                holding.add(session)
            checked += len(stored)
        assert await all_sessions(store) == holding
    errors = Counter(t["error"] for t in failed.values())
    report.add(
        processes=len(configs),
        sessions=sessions,
        turns=len(turns),
        acknowledged=len(acked),
        failed_on_purpose=len(failed),
        failures=dict(errors),
        turns_checked=checked,
        order_pairs_checked=ordered_pairs,
        concurrent_turn_pairs=overlapping,
        losses=len(acked) - checked,
        duplicates=0,
        unacknowledged_stored=0,
    )
