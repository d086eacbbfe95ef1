"""One worker OS process of the multi-process tests: turns on one shared session.

Usage: python _worker.py CONFIG_JSON   (a ``_harness.WorkerConfig``)

Opens the store the config's spec names, prints ``ready``, waits for ``go`` on stdin
(so that every worker starts together), runs its turns, writes one JSON object per
turn to the results file and prints ``done``. Each result: ``q`` (the question,
``<tag>-<n>``), ``tid`` (the turn id or null), ``outcome`` (``ok``, ``replayed``,
``busy``, ``interrupted``, ``fenced``, ``ambiguous``, ``error``), ``error`` (the
exception's type and text; ``errors``: those of every try), ``t0``/``t1``
(``time.monotonic_ns()`` at the turn's call and at its end), ``tries``.

``mode="pipeline"`` runs each turn through ``Pipeline(StateMiddleware(store),
ProviderMiddleware(OpenAIProvider(base_url=<upstream>)))``; ``mode="protocol"`` drives
the TurnStore calls itself (begin/wait, watch, renew, end/release), the way
StateMiddleware does, with the same outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from promptkit_async import (
    AmbiguousTurnError,
    LeaseLostError,
    Message,
    OpenAIProvider,
    Pipeline,
    ProviderMiddleware,
    SessionBusyError,
    StateMiddleware,
    StoreTimeoutError,
    StoreUnavailableError,
    TurnInterruptedError,
)
from promptkit_async.providers import ProviderRequest
from tests.multiproc._harness import MODEL, WorkerConfig, open_store

OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (SessionBusyError, "busy"),
    (TurnInterruptedError, "interrupted"),
    (LeaseLostError, "fenced"),
    (AmbiguousTurnError, "ambiguous"),
)


def outcome_of(exc: BaseException) -> str:
    for kind, name in OUTCOMES:
        if isinstance(exc, kind):
            return name
    return "error"


class ProtocolTurns:
    """A turn driven through the TurnStore protocol directly (StateMiddleware's steps)."""

    def __init__(self, store: Any, provider: OpenAIProvider, config: WorkerConfig) -> None:
        self.store = store
        self.provider = provider
        self.config = config
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{config.tag}"

    async def run(self, question: str, turn_id: str | None) -> str:
        config, store, session = self.config, self.store, self.config.session
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            claim = await store.begin_turn(
                session,
                owner=self.owner,
                lease_ttl=config.lease_ttl,
                turn_id=turn_id,
                steal=config.policy == "interrupt",
            )
            if claim.stored_turn is not None:
                return "replayed"
            if claim.token is not None:
                break
            waited = loop.time() - start
            if config.policy == "reject" or waited >= config.queue_timeout:
                raise SessionBusyError("busy", session_id=session, waited=waited)
            await store.wait_turn(session, config.queue_timeout - waited)
        token: int = claim.token
        task = asyncio.current_task()
        assert task is not None
        lost = False

        def on_lost() -> None:
            nonlocal lost
            if not lost:
                lost = True
                task.cancel()

        stop = store.watch_lease(session, token, on_lost)
        renewer = loop.create_task(self._renew(token, on_lost)) if config.renew else None
        user = Message("user", question)
        try:
            try:
                response = await self.provider.complete(
                    ProviderRequest(messages=[*claim.messages, user])
                )
            finally:
                stop()
                if renewer is not None:
                    renewer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renewer
        except asyncio.CancelledError:
            if lost and task.uncancel() == 0:
                raise TurnInterruptedError("interrupted", session_id=session) from None
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                await store.release_turn(session, token)
            raise
        try:
            await store.end_turn(
                session,
                token,
                [user, Message("assistant", response.content)],
                turn_id=turn_id,
                usage=response.usage,
                cost=response.cost,
            )
        except (StoreTimeoutError, StoreUnavailableError) as exc:
            if turn_id is not None and getattr(exc, "maybe_applied", True):
                raise AmbiguousTurnError(
                    f"ambiguous: {exc}", session_id=session, turn_id=turn_id
                ) from exc
            raise
        return "ok"

    async def _renew(self, token: int, on_lost: Any) -> None:
        while True:
            await asyncio.sleep(self.config.lease_ttl / 3)
            if not await self.store.renew_turn(self.config.session, token, self.config.lease_ttl):
                on_lost()
                return


class PipelineTurns:
    """A turn through a real pipeline with StateMiddleware."""

    def __init__(self, store: Any, provider: OpenAIProvider, config: WorkerConfig) -> None:
        self.config = config
        self.pipe = Pipeline(
            StateMiddleware(
                store,
                on_busy=config.policy,
                lease_ttl=config.lease_ttl,
                queue_timeout=config.queue_timeout,
            ),
            ProviderMiddleware(provider),
        )

    async def run(self, question: str, turn_id: str | None) -> str:
        session = self.config.session
        if self.config.stream:
            async with self.pipe.stream(session, "user", question, turn_id=turn_id) as stream:
                async for _ in stream:
                    pass
            result = stream.result
        else:
            result = await self.pipe.execute(session, "user", question, turn_id=turn_id)
        replayed = result.metadata.get("replayed") if result.metadata else False
        return "replayed" if replayed else "ok"

    async def aclose(self) -> None:
        await self.pipe.shutdown()


async def main(config: WorkerConfig) -> None:
    store = await open_store(config.spec)
    provider = OpenAIProvider("openai", MODEL, "sk-multiproc", base_url=config.upstream)
    turns: Any = (
        PipelineTurns(store, provider, config)
        if config.mode == "pipeline"
        else ProtocolTurns(store, provider, config)
    )
    results: list[dict[str, Any]] = []
    numbers = iter(range(config.turns))

    async def worker() -> None:
        for n in numbers:
            question = f"{config.tag}-{n}"
            turn_id = question if config.turn_ids else None
            entry: dict[str, Any] = {"q": question, "tid": turn_id, "t0": time.monotonic_ns()}
            tries = 0
            while True:
                tries += 1
                try:
                    entry["outcome"] = await turns.run(question, turn_id)
                    break
                except Exception as exc:
                    entry["outcome"] = outcome_of(exc)
                    entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    entry.setdefault("errors", []).append(entry["error"])
                    retry = entry["outcome"] == "ambiguous" or isinstance(
                        exc, (StoreTimeoutError, StoreUnavailableError)
                    )
                    if not (retry and turn_id is not None and tries <= config.retry_ambiguous):
                        break
                    await asyncio.sleep(0.1 * tries)  # back off before the retry
            if entry["outcome"] in ("ok", "replayed"):
                entry.pop("error", None)  # the errors of earlier tries stay in "errors"
            entry["tries"] = tries
            entry["t1"] = time.monotonic_ns()
            results.append(entry)

    print("ready", flush=True)
    if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
        raise SystemExit("expected 'go'")
    try:
        await asyncio.gather(*(worker() for _ in range(config.tasks)))
    finally:
        if isinstance(turns, PipelineTurns):
            await turns.aclose()
        await provider.aclose()
        await store.aclose()
        await asyncio.to_thread(Path(config.results).write_text, json.dumps(results), "utf-8")
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(WorkerConfig.from_json(sys.argv[1])))
