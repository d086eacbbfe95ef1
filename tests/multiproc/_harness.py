"""Turns on one session from many OS processes: store specs, a checking upstream, workers
and the checker. Generic over the store kinds that share a session across processes
(``redis``, ``redis-cluster``, ``postgres``, ``sqlite``).

* :class:`StoreSpec` names a store so that a worker process can rebuild it: kind, URL /
  DSN / file path, key prefix / schema, and JSON options for the store's constructor.
* :class:`CheckingUpstream` is a loopback OpenAI-compatible server (a thread of the test
  process). It logs every chat request (the message contents it carried, when it
  arrived) and answers ``reply to <question> #<request number>``, so the stored reply
  names the very request that produced it. It can hold requests (``hold()``) until the
  test lets them go, to stop a worker mid-turn.
* :class:`Worker` is one OS process (``_worker.py`` run with ``sys.executable``) running
  turns on one session through a real ``Pipeline(StateMiddleware(store),
  ProviderMiddleware(OpenAIProvider(base_url=<upstream>)))`` (``mode="pipeline"``), or
  through the :class:`~promptkit_async.statestore.TurnStore` protocol driven directly
  (``mode="protocol"``: a minimal turn of its own, for stores tested before the
  pipeline side exists). It writes one JSON result per turn.
* :func:`check_session` compares what is stored with what the upstream saw and what
  the workers were told: every stored turn's request carried exactly the stored
  conversation before it (the k-th turn saw 2k-1 messages), no acknowledged turn is
  missing, no turn is stored twice, no refused turn is stored, and the ledger equals
  the sum of the stored turns' usage.

Time: workers and the upstream stamp events with ``time.monotonic_ns()``, the
system-wide monotonic clock, so stamps from different processes compare.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from promptkit_async import Message, Usage
from promptkit_async.pricing import calculate_cost, lookup_pricing

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_worker.py")
MODEL = "gpt-4o-mini"
#: Seconds a worker may take to start, and a whole run to finish (a hang guard).
START_GUARD = 60.0
RUN_GUARD = 120.0
_REPLY = re.compile(r"^reply to (?P<q>.*) #(?P<n>\d+)$", re.DOTALL)


# --- store specs ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoreSpec:
    """What a worker process needs to open the same store as the test.

    Attributes:
        kind: ``redis``, ``redis-cluster``, ``postgres`` or ``sqlite``.
        url: the Redis URL, the PostgreSQL DSN, or the SQLite file path.
        prefix: the Redis key prefix or the PostgreSQL schema (unused for SQLite).
        options: JSON keyword arguments for the store (``ttl``, ``socket_timeout``...).
    """

    kind: str
    url: str
    prefix: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreSpec:
        return cls(data["kind"], data["url"], data.get("prefix", ""), data.get("options", {}))


def unique_prefix(tag: str = "mp") -> str:
    """A fresh key prefix / schema name (letters, digits and ``_`` only)."""
    return f"{tag}_{uuid.uuid4().hex[:10]}"


async def open_store(spec: StoreSpec) -> Any:
    """The store ``spec`` names, opened (close it with ``aclose()``)."""
    if spec.kind in ("redis", "redis-cluster"):
        from promptkit_async.statestore import RedisStateStore

        return await RedisStateStore.connect(
            spec.url, prefix=spec.prefix, cluster=spec.kind == "redis-cluster", **spec.options
        )
    if spec.kind == "postgres":
        from promptkit_async.statestore import PostgresStateStore

        return await PostgresStateStore.connect(spec.url, schema=spec.prefix, **spec.options)
    if spec.kind == "sqlite":
        from promptkit_async.statestore import SQLiteStateStore

        return SQLiteStateStore(spec.url, **spec.options)
    raise ValueError(f"unknown store kind {spec.kind!r}")


# --- the upstream ----------------------------------------------------------------------


@dataclass
class Request:
    """One chat request the upstream answered (or held)."""

    number: int
    contents: list[str]
    roles: list[str]
    arrived: int  # time.monotonic_ns()
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def question(self) -> str:
        return self.contents[-1]


class CheckingUpstream:
    """A loopback OpenAI-compatible chat server that logs what each request carried.

    Replies ``reply to <last message> #<request number>``, streamed like OpenAI (or as
    one JSON completion when not asked to stream), with usage ``prompt_tokens = 10 x
    messages sent``, ``completion_tokens = 7``. ``delay`` seconds pass before each
    answer (the model's latency, so that turns of different workers overlap).

    ``hold(text)``: requests whose last message contains ``text`` wait, after being
    logged, until :meth:`release` (``held`` is set when one arrives). A client that
    gave up meanwhile (an interrupted turn) just finds the connection closed.
    """

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._hold: str | None = None
        self._released = threading.Event()
        self.held = threading.Event()
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                upstream._answer(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> CheckingUpstream:
        self._thread.start()
        return self

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def hold(self, text: str) -> None:
        """Hold the requests whose question contains ``text`` until :meth:`release`."""
        self._released.clear()
        self.held.clear()
        self._hold = text

    def release(self) -> None:
        """Let the held requests be answered (and hold nothing more)."""
        self._hold = None
        self._released.set()

    async def wait_held(self, timeout: float = START_GUARD) -> Request:
        """Wait (in a thread) until a held request arrived; that request."""
        if not await asyncio.to_thread(self.held.wait, timeout):
            raise AssertionError(f"no held request arrived within {timeout}s")
        with self._lock:
            return next(r for r in reversed(self.requests) if self._hold_match(r))

    def _hold_match(self, request: Request) -> bool:
        return self._hold is not None and self._hold in request.question

    def by_number(self) -> dict[int, Request]:
        with self._lock:
            return {r.number: r for r in self.requests}

    def _answer(self, handler: http.server.BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        messages = body["messages"]
        contents = [m["content"] if isinstance(m["content"], str) else "" for m in messages]
        usage = {"prompt_tokens": 10 * len(messages), "completion_tokens": 7}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        with self._lock:
            request = Request(
                len(self.requests) + 1,
                contents,
                [m["role"] for m in messages],
                time.monotonic_ns(),
                usage,
            )
            self.requests.append(request)
            held = self._hold_match(request)
        if held:
            self.held.set()
            self._released.wait(RUN_GUARD)
        if self.delay:
            time.sleep(self.delay)  # the model's latency (a thread of its own)
        text = f"reply to {request.question} #{request.number}"
        with contextlib.suppress(OSError):  # the client gave up (an interrupted turn)
            _send(handler, body, text, usage)


def _send(
    handler: http.server.BaseHTTPRequestHandler,
    body: dict[str, Any],
    text: str,
    usage: dict[str, int],
) -> None:
    base = {"id": "c1", "created": 0, "model": body.get("model", MODEL)}
    if not body.get("stream"):
        reply = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        data = json.dumps(reply).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        return
    chunk = {**base, "object": "chat.completion.chunk"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": usage},
    ]
    data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


# --- workers ---------------------------------------------------------------------------


@dataclass
class WorkerConfig:
    """One worker process's job (sent to it as JSON).

    Attributes:
        spec / upstream / session: where the turns go.
        tag: names the worker; its questions are ``<tag>-<n>``.
        turns: how many turns it runs, one after another (``tasks`` at once).
        mode: ``pipeline`` (StateMiddleware) or ``protocol`` (the TurnStore calls).
        policy: ``queue``, ``reject`` or ``interrupt``.
        lease_ttl / queue_timeout: seconds.
        turn_ids: send a turn id (``<tag>-<n>``) with every turn.
        retry_ambiguous: retry an ambiguous or failed-to-reach-the-store turn with the
            same turn id, up to this many times (a retry that finds the turn stored
            counts as ``ok``).
        renew: renew the lease while a turn runs (protocol mode; the pipeline decides
            for itself).
        stream: use ``pipe.stream`` instead of ``execute``.
    """

    spec: StoreSpec
    upstream: str
    session: str
    tag: str
    turns: int
    results: str
    mode: str = "pipeline"
    policy: str = "queue"
    lease_ttl: float = 5.0
    queue_timeout: float = 60.0
    tasks: int = 1
    turn_ids: bool = True
    retry_ambiguous: int = 0
    renew: bool = True
    stream: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        data["spec"] = self.spec.to_json()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        data = json.loads(text)
        data["spec"] = StoreSpec.from_json(data["spec"])
        return cls(**data)


class Worker:
    """One worker OS process: start, ``go``, signals, and its results."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.process: asyncio.subprocess.Process | None = None
        self.results: list[dict[str, Any]] = []
        self.stderr = b""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> Worker:
        """Start the process and wait until it is ready (store open, waiting for go)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            self.config.to_json(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
            env=env,
        )
        line = await self._line(START_GUARD)
        if line != "ready":
            await self._fail(f"worker {self.config.tag} did not start (said {line!r})")
        return self

    async def go(self) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()

    def stop(self) -> None:
        """SIGSTOP: the whole process freezes (its timers, its lease renewals)."""
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT."""
        os.kill(self.pid, signal.SIGCONT)

    async def wait(self, timeout: float = RUN_GUARD) -> list[dict[str, Any]]:
        """Wait for the worker to finish; its per-turn results."""
        line = await self._line(timeout)
        if line != "done":
            await self._fail(f"worker {self.config.tag} did not finish (said {line!r})")
        assert self.process is not None
        await self._finish(timeout)
        text = await asyncio.to_thread(Path(self.config.results).read_text, "utf-8")
        self.results = json.loads(text)
        return self.results

    async def kill(self) -> None:
        """Kill the process (if still running) and reap it."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
            self.process.kill()
        await self._finish(START_GUARD)

    async def _finish(self, timeout: float) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.close()
        _, stderr = await asyncio.wait_for(self.process.communicate(), timeout)
        self.stderr += stderr or b""

    async def _line(self, timeout: float) -> str:
        assert self.process is not None
        assert self.process.stdout is not None
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            return "<no answer>"
        return raw.decode().strip()

    async def _fail(self, message: str) -> None:
        await self.kill()
        raise AssertionError(f"{message}:\n{self.stderr.decode(errors='replace')[-3000:]}")


async def run_workers(workers: list[Worker], timeout: float = RUN_GUARD) -> list[dict[str, Any]]:
    """Start every worker, let them go together, wait for all; all their results."""
    try:
        await asyncio.gather(*(w.start() for w in workers))
        for worker in workers:
            await worker.go()
        done = await asyncio.gather(*(w.wait(timeout) for w in workers))
    finally:
        for worker in workers:
            await worker.kill()
    return [result for results in done for result in results]


def worker_configs(
    spec: StoreSpec,
    upstream: CheckingUpstream,
    session: str,
    directory: Path,
    *,
    processes: int,
    turns: int,
    **options: Any,
) -> list[WorkerConfig]:
    """``processes`` configs ``w0``, ``w1``... of ``turns`` turns each on ``session``."""
    return [
        WorkerConfig(
            spec=spec,
            upstream=upstream.url,
            session=session,
            tag=f"w{i}",
            turns=turns,
            results=str(directory / f"w{i}.json"),
            **options,
        )
        for i in range(processes)
    ]


# --- the checker -----------------------------------------------------------------------


@dataclass
class Figures:
    """What a multi-process run did and what the checker found."""

    store: str
    scenario: str
    processes: int = 0
    turns: int = 0  # attempted
    acknowledged: int = 0
    stored: int = 0
    busy: int = 0
    interrupted: int = 0
    fenced: int = 0
    ambiguous: int = 0
    replayed: int = 0
    errors: int = 0
    violations: int = 0  # a stored turn's request did not carry exactly the history before it
    losses: int = 0  # acknowledged, not stored
    duplicates: int = 0  # stored more than once
    refused_but_stored: int = 0  # told busy/interrupted/fenced/failed, yet stored
    ledger_ok: bool = True
    interrupt_latency_s: float | None = None  # how long an interrupted turn took to learn it
    problems: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        """Zero violations, losses, duplicates, refused-but-stored; the ledger adds up."""
        assert not self.problems, "\n".join(self.problems[:20])
        assert (self.violations, self.losses, self.duplicates, self.refused_but_stored) == (
            0,
            0,
            0,
            0,
        )
        assert self.ledger_ok

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "problems"}


def _expected_ledger(usages: list[dict[str, int]]) -> tuple[int, int, int, int, float]:
    pricing = lookup_pricing(MODEL)
    prompt = completion = total = 0
    cost = 0.0
    for u in usages:
        usage = Usage(u["prompt_tokens"], u["completion_tokens"], u["total_tokens"])
        prompt += usage.prompt_tokens
        completion += usage.completion_tokens
        total += usage.total_tokens
        cost += calculate_cost(usage, pricing, model=MODEL).total_cost
    return len(usages), prompt, completion, total, cost


async def check_session(
    store: Any,
    session: str,
    upstream: CheckingUpstream,
    results: list[dict[str, Any]],
    figures: Figures,
    *,
    ledger: bool = True,
) -> list[Message]:
    """Check the stored session against the upstream's log and the workers' results.

    Fills ``figures`` (counts and ``problems``); returns the stored history. Each stored
    turn is a user question followed by ``reply to <question> #<request>``; request
    ``#n`` must have carried exactly the stored messages before that turn plus the
    question (so the k-th turn saw 2k-1 messages).
    """
    history = await store.load(session)
    requests = upstream.by_number()
    outcomes: dict[str, str] = {}
    for result in results:
        outcomes[result["q"]] = result["outcome"]
    figures.turns += len(results)
    count = Counter(r["outcome"] for r in results)
    figures.acknowledged += count["ok"] + count["replayed"]
    figures.replayed += count["replayed"]
    figures.busy += count["busy"]
    figures.interrupted += count["interrupted"]
    figures.fenced += count["fenced"]
    figures.ambiguous += count["ambiguous"]
    figures.errors += count["error"]
    for result in results:
        if result["outcome"] == "error":
            figures.problems.append(f"{result['q']}: unexpected {result.get('error')}")

    if len(history) % 2:
        figures.problems.append(f"odd number of stored messages: {len(history)}")
    contents = [m.content for m in history]
    stored: Counter[str] = Counter()
    usages: list[dict[str, int]] = []
    for k in range(0, len(history) - 1, 2):
        ask, answer = history[k], history[k + 1]
        match = _REPLY.match(answer.content)
        if ask.role != "user" or answer.role != "assistant" or match is None:
            figures.problems.append(f"message {k} is not a whole turn: {ask!r} / {answer!r}")
            figures.violations += 1
            continue
        question = ask.content
        stored[question] += 1
        request = requests.get(int(match["n"]))
        if match["q"] != question or request is None:
            figures.violations += 1
            figures.problems.append(f"turn {k // 2 + 1}: reply {answer.content!r} to {question!r}")
            continue
        usages.append(request.usage)
        expected = [*contents[:k], question]
        if request.contents != expected:
            figures.violations += 1
            figures.problems.append(
                f"turn {k // 2 + 1} ({question}): its request carried {len(request.contents)} "
                f"messages, the stored history before it has {k} (+1 question)"
            )
    figures.stored += sum(stored.values())
    figures.duplicates += sum(n - 1 for n in stored.values() if n > 1)
    for question, outcome in outcomes.items():
        if outcome in ("ok", "replayed") and not stored[question]:
            figures.losses += 1
            figures.problems.append(f"{question}: acknowledged but not stored")
        if outcome not in ("ok", "replayed", "ambiguous") and stored[question]:
            figures.refused_but_stored += 1
            figures.problems.append(f"{question}: told {outcome}, yet stored")
    unknown = [q for q in stored if q not in outcomes]
    if unknown:
        figures.problems.append(f"stored turns nobody attempted: {unknown[:5]}")
    if ledger:
        turns, prompt, completion, total, cost = _expected_ledger(usages)
        got = await store.get_ledger(session)
        figures.ledger_ok = (
            (got.turns, got.prompt_tokens, got.completion_tokens, got.total_tokens)
            == (turns, prompt, completion, total)
        ) and abs(got.cost_usd - cost) <= 1e-9 * max(1.0, turns)
        if not figures.ledger_ok:
            figures.problems.append(
                f"ledger {got} != the stored turns' sum "
                f"(turns={turns}, prompt={prompt}, completion={completion}, total={total}, "
                f"cost={cost})"
            )
    return history


async def checked(
    spec: StoreSpec,
    upstream: CheckingUpstream,
    results: list[dict[str, Any]],
    scenario: str,
    processes: int,
    session: str = "shared",
) -> Figures:
    """Open the store, check ``session`` (see :func:`check_session`); the figures."""
    figures = Figures(spec.kind, scenario, processes=processes)
    store = await open_store(spec)
    try:
        await check_session(store, session, upstream, results, figures)
    finally:
        await store.aclose()
    return figures


async def held_turn(
    spec: StoreSpec,
    upstream: CheckingUpstream,
    tmp_path: Path,
    session: str = "shared",
    **options: Any,
) -> Worker:
    """A started worker (tag ``holder``) whose one turn on ``session`` holds the lease:
    its request is held at the upstream until ``upstream.release()``."""
    config = WorkerConfig(
        spec=spec,
        upstream=upstream.url,
        session=session,
        tag="holder",
        turns=1,
        results=str(tmp_path / "holder.json"),
        **options,
    )
    upstream.hold("holder-0")
    holder = await Worker(config).start()
    await holder.go()
    await upstream.wait_held()
    return holder
