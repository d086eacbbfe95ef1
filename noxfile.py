"""Task runner: ``nox -s tests`` is the test command CI runs (see README)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - nox itself running on 3.10
    import tomli as tomllib

from packaging.requirements import Requirement

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]
ROOT = Path(__file__).parent


def _runs(command: str) -> bool:
    found = shutil.which(command)
    if found is None:
        return False
    try:
        return subprocess.run([found, "-c", ""], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# Interpreters installed with pyenv but not activated are present too (their shims exist
# but refuse to run): link just those binaries into a directory put first on PATH.
_PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
_LINKS = ROOT / ".nox" / "_interpreters"
for _v in SUPPORTED:
    if _runs(f"python{_v}"):
        continue
    for _exe in sorted(_PYENV.glob(f"{_v}.*/bin/python{_v}"), reverse=True):
        _LINKS.mkdir(parents=True, exist_ok=True)
        _link = _LINKS / _exe.name
        if not _link.exists():
            _link.symlink_to(_exe)
        if str(_LINKS) not in os.environ["PATH"].split(os.pathsep):
            os.environ["PATH"] = f"{_LINKS}{os.pathsep}{os.environ['PATH']}"
        break
# Run on every supported interpreter this machine has; the rest are skipped, not failed.
PRESENT = [v for v in SUPPORTED if _runs(f"python{v}")] or ["3.11"]


@nox.session(python=PRESENT)
def tests(session: nox.Session) -> None:
    """The whole test suite (Redis tests start their own redis-server)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


def lowest_constraints() -> str:
    """``name==X`` for every runtime dependency declared as ``name>=X`` in pyproject."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = []
    for text in project["dependencies"]:
        requirement = Requirement(text)
        lowest = [s.version for s in requirement.specifier if s.operator in (">=", "==", "~=")]
        if not lowest:
            raise ValueError(f"{text!r} in pyproject.toml has no lower bound; add one")
        lines.append(f"{requirement.name}=={lowest[0]}")
    return "\n".join(lines) + "\n"


@nox.session(python=PRESENT[0])
def tests_lowest(session: nox.Session) -> None:
    """The test suite against the lowest versions of the runtime dependencies we allow.

    Only the library's own dependencies are pinned to their lower bounds (that is what
    users may have); test tools come at their latest versions.
    """
    constraints = Path(session.create_tmp()) / "lowest-constraints.txt"
    constraints.write_text(lowest_constraints())
    session.log("pinning:\n" + constraints.read_text())
    session.install("-c", str(constraints), "-e", ".[test]")
    session.run("pip", "check")
    session.run("pytest", *session.posargs)


@nox.session(python=PRESENT[0])
def soak(session: nox.Session) -> None:
    """The long fault runs (tests/faults at soak scale: ~20x the CI sizes); minutes.

    ``nox -s tests`` runs the same suites small (``-m "not soak"`` in pyproject). Pass
    pytest options after ``--``; set ``PROMPTKIT_FAULTS_REPORT=figures.json`` to keep
    the figures each suite prints.
    """
    session.install("-e", ".[test]")
    session.run("pytest", "tests/faults", "-m", "soak", "--timeout=3600", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    # "speed" too: the package imports orjson when it is installed, and mypy must see it.
    session.install("-e", ".[test,lint,speed]")
    session.run("mypy", "--strict", "promptkit_async")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with ``mkdocs build --strict`` (into ``site/``).

    Fully offline: no web fonts, no remote inventories, no network plugins.
    """
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite (see docs/benchmarks.md); ``nox -s bench -- --smoke`` for seconds.

    Arguments after ``--`` go to ``python -m bench.run`` (default: ``--suite full``).
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "bench.run", *(session.posargs or ["--suite", "full"]))


@nox.session
def bench_smoke(session: nox.Session) -> None:
    """A few sessions per client and the micro-benchmarks at tiny sizes; seconds."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "bench.run", "--smoke", *session.posargs)
    session.run("python", "-m", "bench.micro", "--smoke", "--no-docs")
