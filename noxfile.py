"""Task runner: ``nox -s tests`` is the test command CI runs (see README)."""

from __future__ import annotations

import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]

SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]
# Run on every supported interpreter this machine has; the rest are skipped, not failed.
PRESENT = [v for v in SUPPORTED if shutil.which(f"python{v}")] or ["3.11"]


@nox.session(python=PRESENT)
def tests(session: nox.Session) -> None:
    """The whole test suite (Redis tests start their own redis-server)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[test,lint]")
    session.run("mypy", "--strict", "promptkit_async")


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
