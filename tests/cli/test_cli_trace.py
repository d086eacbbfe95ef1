"""``promptkit-chat --trace``: each turn's spans printed through the SDK's console exporter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(PYTHONPATH=str(ROOT), PROMPTKIT_DEMO_CHUNK_DELAY="0")
    return env


def test_trace_prints_each_turns_spans() -> None:
    command = [sys.executable, "-m", "promptkit_async", "--store", "memory", "--trace"]
    done = subprocess.run(
        command,
        input="My name is Zed\nWhat's my name?\n",
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Bot: Your name is Zed." in done.stdout
    assert "[trace]" not in done.stdout  # spans go to stderr, the chat stays clean
    lines = [line for line in done.stderr.splitlines() if line.startswith("[trace]")]
    turns = [line for line in lines if "invoke_agent promptkit" in line]
    assert len(turns) == 2
    calls = [line for line in lines if "chat demo" in line]
    assert len(calls) == 2
    assert "input_tokens=" in calls[0]
    assert "gen_ai.response.finish_reasons=stop" in calls[0]
    assert sum("promptkit.store.append" in line for line in lines) == 2


def test_without_trace_nothing_is_printed() -> None:
    command = [sys.executable, "-m", "promptkit_async", "--store", "memory"]
    done = subprocess.run(
        command, input="hi\n", env=_env(), capture_output=True, text=True, timeout=60, check=True
    )
    assert "[trace]" not in done.stdout + done.stderr


def test_trace_without_the_sdk_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('opentelemetry'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from promptkit_async.cli import main\n"
        "sys.exit(main(['--store', 'memory', '--trace']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input="",
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--trace" in done.stderr
    assert "pip install" in done.stderr
