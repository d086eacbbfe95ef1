"""Fixtures of the multi-process suite: the checking upstream, and the figures table.

The figures of every passing test (processes, turns, violations, losses, duplicates,
fenced writes...) are printed at the end of the run; set
``PROMPTKIT_MULTIPROC_REPORT=path.json`` to also write them to a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.multiproc._harness import CheckingUpstream, Figures

_FIGURES: list[dict[str, Any]] = []


@pytest.fixture
def upstream() -> Iterator[CheckingUpstream]:
    """A loopback OpenAI-compatible upstream that logs what every request carried."""
    server = CheckingUpstream().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def figures_log() -> Iterator[list[Figures]]:
    """Append a test's :class:`Figures` here; they are printed if the test passes."""
    collected: list[Figures] = []
    yield collected
    _FIGURES.extend(f.row() for f in collected)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("multi-process figures")
    for row in _FIGURES:
        terminalreporter.write_line(", ".join(f"{k}={v}" for k, v in row.items()))
    path = os.environ.get("PROMPTKIT_MULTIPROC_REPORT")
    if path:
        Path(path).write_text(json.dumps(_FIGURES, indent=1) + "\n")
