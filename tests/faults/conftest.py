"""Fixtures of the fault suites: a scripted loopback HTTP server, real redis-servers, and
a figures report printed at the end of the run.

Every suite runs at two scales: ``ci`` (part of ``nox -s tests``, small) and ``soak``
(marked ``soak``, deselected by default; ``nox -s soak`` runs them). Set
``PROMPTKIT_FAULTS_REPORT=path.json`` to also write the figures to a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._redis_server import redis_factory, redis_server  # noqa: F401 (fixtures)
from tests.faults._http_server import ScriptedServer

#: How much bigger the soak runs are than the CI runs.
SOAK_FACTOR = 20

#: Parametrizes a test over the two scales; the test sizes itself by ``scale``.
scales = pytest.mark.parametrize(
    "scale",
    [
        pytest.param(1, id="ci"),
        pytest.param(SOAK_FACTOR, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(1800)]),
    ],
)

_FIGURES: list[dict[str, Any]] = []


class Report:
    """Collects the figures a test measured (turns checked, faults injected, losses)."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.figures: dict[str, Any] = {}

    def add(self, **figures: Any) -> None:
        for name, value in figures.items():
            if isinstance(value, (int, float)) and isinstance(self.figures.get(name), (int, float)):
                self.figures[name] += value
            else:
                self.figures[name] = value


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Report]:
    """Figures of this test, printed in the terminal summary when it passes."""
    collected = Report(request.node.nodeid.split("::", 1)[-1])
    yield collected
    if collected.figures:
        _FIGURES.append({"test": collected.test, **collected.figures})


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault suite figures")
    for entry in _FIGURES:
        figures = ", ".join(f"{k}={v}" for k, v in entry.items() if k != "test")
        terminalreporter.write_line(f"{entry['test']}: {figures}")
    path = os.environ.get("PROMPTKIT_FAULTS_REPORT")
    if path:
        Path(path).write_text(json.dumps(_FIGURES, indent=1) + "\n")


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    """A scripted loopback HTTP server (see ``_http_server``)."""
    scripted = await ScriptedServer().start()
    try:
        yield scripted
    finally:
        await scripted.aclose()
