"""The benchmark harness produces well-formed results (a smoke run; nothing is timed)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.clients import CLIENTS, available
from bench.worker import percentiles

ROOT = Path(__file__).resolve().parents[2]


def test_percentiles_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    p = percentiles(values)
    assert p["p50"] == pytest.approx(50.0)
    assert p["p99"] == pytest.approx(99.0)
    assert p["max"] == pytest.approx(100.0)
    assert percentiles([])["p50"] is None


def test_unknown_client_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown client"):
        available(["no-such-client"])


def test_docs_section_is_replaced_in_place(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text(f"# T\n\nintro\n\n{report.RESULTS_ANCHOR}\n\ntail\n")
    report.update_section(doc, "k1", "first", "Heading")
    report.update_section(doc, "k1", "second", "Heading")
    report.update_section(doc, "k2", "other", "Other")
    text = doc.read_text()
    assert "first" not in text
    assert text.count("<!-- bench:k1:start -->") == 1
    assert text.count("### Heading") == 1
    assert text.index("second") < text.index("other") < text.index(report.RESULTS_ANCHOR)
    assert text.rstrip().endswith("tail")


def _smoke_clients() -> list[str]:
    wanted = ["aiohttp", "httpx", "openai", "promptkit-shim-memory", "promptkit-memory"]
    reasons = available(wanted)
    return [c for c in wanted if reasons[c] is None]


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    loops = "asyncio,uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    cmd = [
        sys.executable,
        "-m",
        "bench.run",
        "--smoke",
        "--sessions",
        "4",
        "--turns",
        "3",
        "--loops",
        loops,
        "--clients",
        ",".join(_smoke_clients()),
        "--no-docs",
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), LITELLM_LOCAL_MODEL_COST_MAP="True")
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record: dict[str, Any] = json.loads(out.read_text())
    record["_stdout"] = proc.stdout
    return record


def test_smoke_run_has_every_client_and_loop(smoke_record: dict[str, Any]) -> None:
    clients = _smoke_clients()
    loops = smoke_record["params"]["loops"]
    assert "asyncio" in loops
    seen = {(r["client"], r["loop"]) for r in smoke_record["runs"]}
    assert seen == {(c, lp) for c in clients for lp in loops}
    assert set(smoke_record["clients"]) == set(clients)
    assert smoke_record["machine"]["python"]
    assert smoke_record["command"].startswith("python -m bench.run")


def test_smoke_runs_are_complete_and_correct(smoke_record: dict[str, Any]) -> None:
    sessions, turns = smoke_record["params"]["sessions"], smoke_record["params"]["turns"]
    for r in smoke_record["runs"]:
        assert "failed" not in r, r
        assert r["errors"] == 0, r["error_samples"]
        assert r["turns_ok"] == sessions * turns
        # The upstream saw every turn send the whole growing history.
        assert r["upstream"]["requests"] == sessions * turns
        assert r["upstream"]["messages"] == sessions * turns * turns
        assert r["upstream_check"] is True
        assert r["history_mismatches"] == 0
        assert r["missing_usage"] == 0
        for metric in ("ttfc_ms", "turn_ms"):
            p = r[metric]
            assert 0 <= p["p50"] <= p["p90"] <= p["p99"] <= p["max"]
        assert r["turns_per_s"] > 0
        assert r["cpu_s"] > 0
        assert r["cpu_per_turn_ms"] > 0
        assert r["peak_rss_mb"] > 0


def test_smoke_summary_has_ratios_and_table(smoke_record: dict[str, Any]) -> None:
    summary = {(e["client"], e["loop"]): e for e in smoke_record["summary"]}
    for (client, _loop), e in summary.items():
        assert e["runs"] == 1
        assert e["x_aiohttp"]["median"] > 0
        assert e["x_httpx"]["median"] > 0
        if client == "aiohttp":
            assert e["x_aiohttp"]["median"] == pytest.approx(1.0)
    table = report.markdown(smoke_record)
    for client in _smoke_clients():
        assert f"`{client}`" in table
    assert table in smoke_record["_stdout"]


def test_report_outputs_from_a_record(smoke_record: dict[str, Any], tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        f"# B\n\n<!-- bench:targets:start -->\n<!-- bench:targets:end -->\n\n"
        f"{report.RESULTS_ANCHOR}\n"
    )
    svg = report.chart(smoke_record, tmp_path / "img" / "chart.svg")
    assert svg is not None
    assert svg.read_text().lstrip().startswith("<?xml")
    report.update_docs(doc, smoke_record, svg)
    results = tmp_path / "results"
    results.mkdir()
    report.update_targets(doc, results)
    text = doc.read_text()
    assert smoke_record["command"] in text
    assert "](img/chart.svg)" in text
    assert "| target | asyncio | uvloop | status |" in text
    assert "not measured" in text  # no stored results in this results dir


def test_micro_smoke(tmp_path: Path) -> None:
    out = tmp_path / "micro.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.micro", "--smoke", "--no-docs", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    modes = {(r["loop"], r["mode"]) for r in record["pipeline_overhead"]}
    assert ("asyncio", "baseline") in modes
    assert ("asyncio", "stream") in modes
    assert all(r["us_per_turn"] > 0 for r in record["pipeline_overhead"])
    idle = record["idle_sessions"]
    assert idle["sessions"] == 200
    assert idle["tracemalloc_mb"] > idle["text_mb"] > 0
    assert "status" in record["truncation"]


def test_every_client_is_described() -> None:
    for name, cls in CLIENTS.items():
        assert cls.name == name
        assert cls.describe


def test_run_key_names_the_scenario() -> None:
    args = argparse.Namespace(
        profile="fast", sessions=1000, turns=5, stream=True, max_connections=0, label=""
    )
    assert report.run_key(args) == "fast-1000x5"
    args.stream, args.label = False, "x"
    assert report.run_key(args) == "fast-1000x5-nostream-x"


def test_merge_keeps_only_runs_not_repeated(smoke_record: dict[str, Any]) -> None:
    from bench.run import merge_stored

    stored = json.loads(json.dumps(smoke_record))
    for r in stored["runs"]:
        r["turns_per_s"] *= 2  # mark the old runs
    fresh = json.loads(json.dumps(smoke_record))
    fresh["runs"] = [r for r in fresh["runs"] if r["client"] == "aiohttp"]
    merged = merge_stored(fresh, stored)
    pairs = [(r["client"], r["loop"]) for r in merged["runs"]]
    assert len(pairs) == len(set(pairs)) == len(smoke_record["runs"])
    old = {(r["client"], r["loop"]): r for r in stored["runs"]}
    for r in merged["runs"]:
        if r["client"] == "aiohttp":
            assert r["turns_per_s"] != old[(r["client"], r["loop"])]["turns_per_s"]
        else:
            assert r["turns_per_s"] == old[(r["client"], r["loop"])]["turns_per_s"]
    assert merged["merged_commands"] == [f"{stored['date']}: {stored['command']}"]
    assert {e["client"] for e in merged["summary"]} == {c for c, _ in pairs}


def test_turncost_smoke() -> None:
    # The GC and live-object diagnostic runs both kinds of client against the upstream.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.turncost",
            "--clients",
            "aiohttp,promptkit-memory",
            "--profile",
            "instant",
            "--sessions",
            "20",
            "--turns",
            "2",
            "--repeat",
            "1",
            "--loop",
            "asyncio",
            "--live",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines if "CPU/turn ms" in line}
    assert set(rows) == {"aiohttp", "promptkit-memory"}
    assert all("collections per 1000 turns" in row for row in rows.values())
    # A live-object census (objects per session in flight, by type) for each client.
    totals = [float(line.split()[0]) for line in lines if line.endswith("  total")]
    assert len(totals) == 2
    assert all(total > 0 for total in totals)
