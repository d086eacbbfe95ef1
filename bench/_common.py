"""Small helpers shared by the benchmark processes: CPU pinning, limits, loops, facts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import socket
import sys
from collections.abc import Callable, Coroutine
from importlib import metadata
from typing import Any, TypeVar

T = TypeVar("T")

#: The loops a benchmark process can run on.
LOOPS = ("asyncio", "uvloop")


def uvloop_available() -> bool:
    """True when ``uvloop`` can be imported here."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop constructor for ``name`` (``asyncio`` or ``uvloop``)."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"unknown loop {name!r}; choose one of {', '.join(LOOPS)}")


def run_on(loop_name: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on a fresh loop of the given kind (Python 3.10+)."""
    loop = loop_factory(loop_name)()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """CPUs for (server side, client side): split the usable CPUs when there are two or more.

    The server side (mock upstream, redis-server) gets the first CPU, the client the
    last, so the measured client never competes with the upstream for a core.
    """
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[-1]}


def pin_to(cpus: set[int] | None, pid: int = 0) -> bool:
    """Pin ``pid`` (0 = this process) to ``cpus``; False when not possible here."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return False
    return True


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (thousands of sockets); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for servers that cannot report their own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB.

    Linux: ``VmHWM`` from /proc, the high-water mark of this program's own memory.
    ``ru_maxrss`` is not used there because it survives ``exec``: a worker started by a
    large harness process would report the harness's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes there
        kib //= 1024
    return kib / 1024


def current_rss_mb() -> float:
    """Current resident set size in MB, from /proc (0.0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of another process from /proc (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # Fields after the command name (which may contain spaces) start after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def version_of(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge the figures: CPU, cores, memory, Python, versions."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
    except OSError:
        pass
    dists = (
        "aiohttp",
        "httpx",
        "httpx2",
        "httpx-aiohttp",
        "openai",
        "litellm",
        "uvloop",
        "redis",
        "hiredis",
    )
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "memory_gb": mem_gb,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "versions": {d: version_of(d) for d in dists},
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def sched_wait_seconds() -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of this thread so far.

    From ``/proc/self/schedstat``. On a shared machine the waiting time shows how much
    of a run's wall time the client lost to other processes; None where unavailable.
    """
    try:
        with open("/proc/thread-self/schedstat") as f:
            on_cpu, waiting, _ = f.read().split()
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def steal_ticks(cpus: set[int] | None = None) -> int | None:
    """Hypervisor steal ticks so far, summed over ``cpus`` (all when None), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu")]
    except OSError:
        return None
    total = 0
    for fields in lines:
        name = fields[0]
        if name == "cpu":
            continue
        if cpus is None or int(name[3:]) in cpus:
            total += int(fields[8])
    return total
