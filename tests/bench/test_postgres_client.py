"""The ``promptkit-postgres`` bench client: the harness starts PostgreSQL, counts round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._postgres_server import require_postgres

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.postgres


def test_smoke_run_of_the_postgres_client(tmp_path: Path) -> None:
    require_postgres()
    out = tmp_path / "smoke.json"
    cmd = [
        sys.executable, "-m", "bench.run", "--smoke",
        "--sessions", "4", "--turns", "3", "--loops", "asyncio",
        "--clients", "promptkit-postgres", "--no-docs", "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert "failed" not in run, run
    assert run["errors"] == 0
    assert run["turns_ok"] == 12
    assert run["history_mismatches"] == 0
    assert run["upstream_check"] is True
    # Counted on the store's connections: never more than load + append per turn.
    assert 0 < run["store_round_trips_per_turn"] <= 2
