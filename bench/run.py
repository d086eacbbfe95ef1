"""The end-to-end benchmark: every client against the mock upstream, side by side.

Typical commands (from the repository root)::

    python -m bench.run --profile fast --sessions 1000 --turns 5 --loops asyncio,uvloop \\
        --repeat 3                              # the headline comparison
    python -m bench.run --clients aiohttp,promptkit-memory --sessions 2000 --repeat 1
    python -m bench.run --profile instant       # pure client CPU per turn
    python -m bench.run --suite full            # everything nox -s bench runs
    python -m bench.run --smoke                 # seconds; what CI may run
    python -m bench.run --clients promptkit-memory --profiler pyinstrument --repeat 1

What happens: the mock upstream (``bench.upstream``) starts in its own process pinned to
one CPU; a ``redis-server`` (or PostgreSQL, ``initdb`` + ``pg_ctl``) is started on a free
loopback port, on the same CPU, if a Redis (PostgreSQL) client is selected; then each
client runs in a fresh process (``bench.worker``) pinned to the other CPU, one after
another (never two at once), for every loop and repeat. The client order rotates between
repeats so slow drifts of a shared machine spread over all clients.
After each run the upstream's counters prove that every turn sent the growing history.

Outputs: ``bench/results/<key>.json`` (every run and the aggregates), a Markdown table
and an SVG chart, and the matching section of ``docs/benchmarks.md`` (rewritten between
its ``<!-- bench:<key> -->`` markers), plus the targets table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import report
from ._common import (
    cpu_plan,
    free_port,
    machine_facts,
    proc_cpu_seconds,
    raise_fd_limit,
    uvloop_available,
)
from ._profile import summarize_collapsed
from .clients import CLIENTS, DEFAULT_CLIENTS, available

__all__ = ["main", "run_benchmark"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
SMOKE_CLIENTS = ("aiohttp", "httpx-aiohttp", "promptkit-shim-memory", "promptkit-memory")


#: A client named ``NAME@baseline`` runs ``NAME`` from the ``--baseline`` tree (another
#: checkout, e.g. ``git worktree add /tmp/base main``): before/after side by side in one run.
BASELINE = "@baseline"


def _base(client: str) -> str:
    """The registered client name behind ``client`` (``NAME`` for ``NAME@baseline``)."""
    return client.removesuffix(BASELINE)


def _env(root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    # The worktree's package, whatever is installed, and no network for LiteLLM.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _cpu_args(cpus: set[int] | None) -> list[str]:
    return [a for c in sorted(cpus or ()) for a in ("--cpu", str(c))]


@contextlib.contextmanager
def upstream(profile: str, loop: str, cpus: set[int] | None) -> Iterator[tuple[int, int]]:
    """Start the mock upstream; yield (port, pid); stop it afterwards."""
    cmd = [sys.executable, "-m", "bench.upstream", "--profile", profile, "--loop", loop]
    proc = subprocess.Popen(
        cmd + _cpu_args(cpus),
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=_env(),
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"the mock upstream did not start (said {line!r})")
        yield int(line.split()[1]), proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def redis_server(cpus: set[int] | None) -> Iterator[tuple[str, int]]:
    """Start a throwaway redis-server on a free loopback port; yield (url, pid)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--maxclients",
            "10000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if cpus and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, cpus)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _postgres_bin() -> Path:
    for directory in [*sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("pg_ctl")
    if found is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(found).resolve().parent


@contextlib.contextmanager
def postgres_server(cpus: set[int] | None) -> Iterator[tuple[str, int]]:
    """Start a throwaway PostgreSQL (initdb + pg_ctl) on a free loopback port; yield (url, pid).

    Like the Redis server here, it trades durability for speed: ``synchronous_commit=off``
    (a commit returns before its WAL reaches the disk; a crash loses the last fraction of
    a second, never consistency). As root, the server runs as the ``postgres`` user.
    """
    bindir = _postgres_bin()
    user = "postgres" if os.geteuid() == 0 else None
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    if user is not None:
        shutil.chown(workdir, user, user)
    data = workdir / "data"

    def run(*argv: str) -> None:
        subprocess.run(argv, user=user, check=True, capture_output=True, timeout=120, cwd=workdir)

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={workdir} "
            "-c max_connections=200 -c shared_buffers=128MB -c synchronous_commit=off"
        )
        run(str(bindir / "pg_ctl"), "start", "-w", "-D", str(data), "-l",
            str(workdir / "postgres.log"), "-o", options)  # fmt: skip
        started = True
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        if cpus and hasattr(os, "sched_setaffinity"):
            # Backends fork from the postmaster after this, so they inherit the CPUs.
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", pid
    finally:
        if started:
            with contextlib.suppress(subprocess.SubprocessError):
                run(str(bindir / "pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(data))
        shutil.rmtree(workdir, ignore_errors=True)


def _http(port: int, method: str, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        return data
    finally:
        conn.close()


def run_worker(
    *,
    client: str,
    loop: str,
    port: int,
    args: argparse.Namespace,
    cpus: set[int] | None,
    redis_url: str | None,
    run_tag: str,
    upstream_pid: int,
    redis_pid: int | None,
    postgres_url: str | None = None,
) -> dict[str, Any]:
    """Run one client once in a fresh process and return its enriched result."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    out = workdir / "result.json"
    root = Path(args.baseline) if client.endswith(BASELINE) else ROOT
    cmd = [
        sys.executable,
        "-m",
        "bench.worker",
        "--client",
        _base(client),
        "--base-url",
        f"http://127.0.0.1:{port}/v1",
        "--sessions",
        str(args.sessions),
        "--turns",
        str(args.turns),
        "--loop",
        loop,
        "--max-connections",
        str(args.max_connections),
        "--run-tag",
        run_tag,
        "--sqlite-path",
        str(workdir / "bench.sqlite3"),
        "--out",
        str(out),
        *_cpu_args(cpus),
    ]
    if not args.stream:
        cmd.append("--no-stream")
    services = CLIENTS[_base(client)].services
    if redis_url and "redis" in services:
        cmd += ["--redis-url", redis_url]
    if postgres_url and "postgres" in services:
        cmd += ["--postgres-url", postgres_url]
    profiled = args.profiler != "none"
    if args.profiler == "pyinstrument":
        cmd += ["--profiler", "pyinstrument", "--profile-out", str(_profile_path(args, client))]
    elif args.profiler == "py-spy":
        cmd = _spy_cmd(args, client, cmd)
    _http(port, "POST", "/__reset")
    redis_cpu0 = proc_cpu_seconds(redis_pid) if redis_pid else None
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=root,
            env=_env(root),
            timeout=args.timeout,
            capture_output=True,
            text=True,
            check=False,
        )
        stderr = proc.stderr
        code = proc.returncode
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        code = None
    elapsed = time.perf_counter() - started
    stats = _http(port, "GET", "/__stats")
    redis_cpu = None
    if redis_pid and redis_cpu0 is not None:
        now = proc_cpu_seconds(redis_pid)
        redis_cpu = None if now is None else now - redis_cpu0
    if out.exists():
        result: dict[str, Any] = json.loads(out.read_text())
        result["client"] = client  # NAME@baseline stays apart from NAME
    else:
        result = {"client": client, "loop": loop}
        result["failed"] = (
            f"timed out after {args.timeout}s" if code is None else f"worker exited {code}"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    if code not in (0, None) and "failed" not in result:
        result["failed"] = f"worker exited {code}"
    if "failed" in result:
        result["stderr_tail"] = (stderr or "")[-2000:]
    result["process_s"] = elapsed
    result["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result["profiled"] = profiled
    result["upstream"] = stats
    wall = result.get("wall_s")
    if wall:
        # Upstream CPU over the measured window: near 1.0 would mean it was the bottleneck.
        result["upstream_busy"] = stats["cpu_s"] / wall
        if redis_cpu is not None:
            result["redis_cpu_s"] = redis_cpu
            result["redis_busy"] = redis_cpu / wall
    if result.get("errors") == 0 and "failed" not in result:
        expected_requests = args.sessions * args.turns
        expected_messages = args.sessions * args.turns * args.turns  # sum of 2t+1, t<T
        result["upstream_check"] = (
            stats["requests"] == expected_requests and stats["messages"] == expected_messages
        )
    return result


def _spy_cmd(args: argparse.Namespace, client: str, worker_cmd: list[str]) -> list[str]:
    # py-spy samples the worker from outside (low overhead, no pauses with
    # --nonblocking); bench._profile keeps only the samples inside the event loop.
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    target = _profile_path(args, client).with_suffix(".collapsed")
    return [
        spy,
        "record",
        "--rate",
        "500",
        "--nonblocking",
        "--format",
        "raw",
        "-o",
        str(target),
        "--",
        *worker_cmd,
    ]


def _profile_path(args: argparse.Namespace, client: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"profile-{client}-{args.profile}-{args.sessions}x{args.turns}.txt"


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every selected client x loop x repeat; return the full report record."""
    raise_fd_limit()
    server_cpus, client_cpus = cpu_plan(args.pin)
    reasons = available(sorted({_base(c) for c in args.clients}))
    clients = [c for c in args.clients if reasons[_base(c)] is None]
    skipped = {c: r for c, r in reasons.items() if r is not None}
    for name, why in skipped.items():
        print(f"skip {name}: {why}", file=sys.stderr)
    loops = list(args.loops)
    if "uvloop" in loops and not uvloop_available():
        loops.remove("uvloop")
        skipped["loop uvloop"] = "uvloop is not installed"
    facts = machine_facts()
    record: dict[str, Any] = {
        "key": report.run_key(args),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.run " + shlex.join(args.argv),
        "machine": facts,
        "params": {
            "profile": args.profile,
            "sessions": args.sessions,
            "turns": args.turns,
            "stream": args.stream,
            "loops": loops,
            "repeat": args.repeat,
            "max_connections": args.max_connections,
            "upstream_loop": args.upstream_loop,
            "profiler": args.profiler,
            "pinned": {
                "upstream_and_redis": sorted(server_cpus) if server_cpus else None,
                "client": sorted(client_cpus) if client_cpus else None,
            },
        },
        "clients": {
            c: CLIENTS[_base(c)].describe + (f" (from {args.baseline})" if c != _base(c) else "")
            for c in clients
        },
        "skipped": skipped,
        "runs": [],
    }
    needs_redis = any("redis" in CLIENTS[_base(c)].services for c in clients)
    needs_postgres = any("postgres" in CLIENTS[_base(c)].services for c in clients)
    with contextlib.ExitStack() as stack:
        port, up_pid = stack.enter_context(upstream(args.profile, args.upstream_loop, server_cpus))
        redis_url, redis_pid = None, None
        if needs_redis:
            redis_url, redis_pid = stack.enter_context(redis_server(server_cpus))
        postgres_url = None
        if needs_postgres:
            postgres_url, _ = stack.enter_context(postgres_server(server_cpus))
        for rep in range(args.repeat):
            order = clients[rep % len(clients) :] + clients[: rep % len(clients)] if clients else []
            for loop in loops:
                for client in order:
                    tag = f"{client}-{loop}-{rep}-{os.getpid()}"
                    print(f"[{rep + 1}/{args.repeat}] {loop:8} {client} ...", file=sys.stderr)
                    result = run_worker(
                        client=client,
                        loop=loop,
                        port=port,
                        args=args,
                        cpus=client_cpus,
                        redis_url=redis_url,
                        run_tag=tag,
                        upstream_pid=up_pid,
                        redis_pid=redis_pid,
                        postgres_url=postgres_url,
                    )
                    result["repeat"] = rep
                    record["runs"].append(result)
                    print("    " + report.one_line(result), file=sys.stderr)
    record["machine"]["loadavg_at_end"] = list(os.getloadavg())
    record["summary"] = report.aggregate(record["runs"])
    return record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--profile", choices=("fast", "realistic", "instant"), default="fast")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument(
        "--clients",
        default=",".join(DEFAULT_CLIENTS),
        help=f"comma-separated, or 'all' (known: {', '.join(CLIENTS)})",
    )
    parser.add_argument("--loops", default="asyncio,uvloop", help="asyncio, uvloop or both")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-stream", dest="stream", action="store_false")
    parser.add_argument("--max-connections", type=int, default=0, help="0 = no pool cap")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--upstream-loop", choices=("asyncio", "uvloop"), default=None)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per client run")
    parser.add_argument("--profiler", choices=("none", "pyinstrument", "py-spy"), default="none")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/<key>.json)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="Markdown file to update")
    parser.add_argument("--no-docs", dest="update_docs", action="store_false")
    parser.add_argument("--label", default="", help="suffix for the result key")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout; clients named NAME@baseline run NAME from it (A/B in one run)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the stored runs of clients not run now (e.g. re-run only promptkit-*)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few sessions on the instant profile, available fast clients, no docs",
    )
    parser.add_argument(
        "--suite",
        choices=("full",),
        help="full: fast 1000x5 both loops, 2000 sessions, instant, micro-benchmarks",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and normalise the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    if args.smoke:
        args.profile = "instant" if "--profile" not in argv else args.profile
        if "--sessions" not in argv:
            args.sessions = 10
        if "--turns" not in argv:
            args.turns = 3
        if "--repeat" not in argv:
            args.repeat = 1
        if "--clients" not in argv:
            args.clients = ",".join(SMOKE_CLIENTS)
        if "--docs" not in argv:
            args.update_docs = False
        args.label = args.label or "smoke"
    names = list(CLIENTS) if args.clients == "all" else args.clients.split(",")
    args.clients = [n.strip() for n in names if n.strip()]
    unknown = [n for n in args.clients if _base(n) not in CLIENTS]
    if any(n.endswith(BASELINE) for n in args.clients) and not args.baseline:
        _parser().error("a NAME@baseline client needs --baseline DIR (another checkout)")
    if unknown:
        _parser().error(f"unknown client(s) {', '.join(unknown)}; known: {', '.join(CLIENTS)}")
    args.loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    if args.upstream_loop is None:
        args.upstream_loop = "uvloop" if uvloop_available() else "asyncio"
    if args.profiler != "none":
        args.label = "-".join(x for x in (args.label, f"profiled-{args.profiler}") if x)
    if args.smoke and args.clients:
        # Smoke runs keep to what is importable; a full run reports what it skipped.
        reasons = available(args.clients)
        args.clients = [c for c in args.clients if reasons[c] is None]
    return args


def merge_stored(record: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """Add the stored runs of (client, loop) pairs this record did not run again."""
    fresh = {(r["client"], r["loop"]) for r in record["runs"]}
    kept = [r for r in stored.get("runs", []) if (r["client"], r["loop"]) not in fresh]
    if not kept:
        return record
    record["runs"] = kept + record["runs"]
    record["clients"] = {**stored.get("clients", {}), **record["clients"]}
    ran = {r["client"] for r in record["runs"]}
    record["skipped"] = {k: v for k, v in record["skipped"].items() if k not in ran}
    earlier = [*stored.get("merged_commands", []), f"{stored['date']}: {stored['command']}"]
    record["merged_commands"] = earlier
    record["summary"] = report.aggregate(record["runs"])
    return record


def write_outputs(record: dict[str, Any], args: argparse.Namespace) -> Path:
    """Write the JSON, the chart and (unless disabled) the docs section."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"{record['key']}.json"
    if args.merge and out.exists():
        record = merge_stored(record, json.loads(out.read_text()))
    out.write_text(json.dumps(record, indent=1) + "\n")
    if args.profiler != "none":
        # A profiled run measures the profiler too: its figures go nowhere but the profile.
        texts = {c: _profile_path(args, c) for c in record["clients"]}
        if args.profiler == "py-spy":
            for path in texts.values():
                collapsed = path.with_suffix(".collapsed")
                if collapsed.exists():
                    path.write_text(summarize_collapsed(collapsed) + "\n")
        for path in texts.values():
            if path.exists():
                print(f"profile: {path}\n{path.read_text()[:3000]}")
        if args.update_docs:
            report.update_profile(args.docs, record, texts)
        return out
    table = report.markdown(record)
    print(table)
    if args.update_docs:
        chart = report.chart(record, args.docs.parent / "img" / f"bench-{record['key']}.svg")
        report.update_docs(args.docs, record, chart)
        report.update_targets(args.docs, RESULTS)
    return out


FULL_SUITE: list[list[str]] = [
    ["--profile", "fast", "--sessions", "1000", "--turns", "5", "--repeat", "3"],
    [
        "--profile",
        "fast",
        "--sessions",
        "2000",
        "--turns",
        "5",
        "--repeat",
        "1",
        "--loops",
        "asyncio,uvloop",
        "--clients",
        "aiohttp,promptkit-memory,promptkit-sqlite,promptkit-redis,promptkit-shim-memory",
    ],
    [
        "--profile",
        "instant",
        "--sessions",
        "1000",
        "--turns",
        "5",
        "--repeat",
        "3",
        "--loops",
        "asyncio,uvloop",
        "--clients",
        "aiohttp,httpx-aiohttp,promptkit-memory,promptkit-shim-memory,openai",
    ],
]


def _stop_on_sigterm() -> None:
    # SIGTERM becomes SystemExit, so the upstream, redis-server and a running worker
    # (subprocess.run kills its child on any exception) are stopped, not orphaned.
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point: ``python -m bench.run --help``."""
    _stop_on_sigterm()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--suite" in argv:
        rest = [a for a in argv if a not in ("--suite", "full")]
        for step in FULL_SUITE:
            main(step + rest)
        subprocess.run(
            [sys.executable, "-m", "bench.micro", *(["--no-docs"] if "--no-docs" in rest else [])],
            cwd=ROOT,
            env=_env(),
            check=True,
        )
        return
    args = parse_args(argv)
    if not args.clients:
        print("no client can run here", file=sys.stderr)
        sys.exit(2)
    record = run_benchmark(args)
    out = write_outputs(record, args)
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    failed = [r for r in record["runs"] if "failed" in r]
    if failed:
        for r in failed:
            print(f"FAILED {r['client']} ({r['loop']}): {r['failed']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
