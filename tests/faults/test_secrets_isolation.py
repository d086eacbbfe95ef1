"""Secrets and isolation.

API keys: turns fail in every way we can script while the server *echoes the key back*
everywhere it can (error bodies, plain-text bodies, SSE error events, broken JSON,
truncated events, the request-id header), with a distinctive fake key, at DEBUG on every
logger (``promptkit_async`` and its children, httpx, httpcore, aiohttp, asyncio, root).
Then the key must not appear in: any log record (message, arguments, extras,
formatted tracebacks), any exception (``str``, ``repr``, ``args``, attributes, the
whole ``__cause__`` / ``__context__`` chain, the formatted traceback), the ``repr`` of
the provider, pipeline or results, or the stored data (SQLite file bytes, Redis values).

Isolation: session ids crafted to look like another session's keys, glob patterns, hash
tags, percent-escapes or look-alike Unicode can never read, write, list, fork into or
delete another session, in any store; and stores with different prefixes never see
each other's sessions even when one prefix is a glob pattern matching the other.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType

import pytest
import redis.asyncio as aioredis

from promptkit_async import (
    InvalidRequestError,
    Message,
    Pipeline,
    PromptKitError,
    ProviderMiddleware,
    StateMiddleware,
)
from promptkit_async.pipeline.middleware import ProviderMiddlewareConfig
from promptkit_async.providers import OpenAIProvider, ProviderRequest, RetryPolicy, Secret
from promptkit_async.statestore import (
    InMemoryStateStore,
    RedisStateStore,
    SQLiteStateStore,
    StateStore,
)
from tests._redis_server import RedisServer, free_port
from tests.faults import _http_server as srv
from tests.faults._checks import all_sessions
from tests.faults._http_server import Conn, Request, ScriptedServer
from tests.faults.conftest import Report

KEY = "sk-proj-ZZ9PLURALZALPHA-secret-4242"
LOGGERS = ["promptkit_async", "httpx", "httpcore", "aiohttp", "asyncio", ""]
GUARD = 30.0


def texts_of_exception(exc: BaseException) -> list[str]:
    """Every text an exception shows: its formatted traceback, and ``str`` / ``repr`` /
    ``args`` of each exception of the chain a traceback displays (the ``__cause__``,
    else the ``__context__`` unless suppressed by ``raise ... from``), plus every
    attribute of the library's own errors (``body``, ``message``, ``request_id``...)."""
    found = ["".join(traceback.format_exception(exc))]
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found += [str(current), repr(current), repr(current.args)]
        if isinstance(current, PromptKitError):  # our errors: every attribute (body...)
            found += [repr(v) for v in vars(current).values()]
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return found


def texts_of_records(records: list[logging.LogRecord]) -> list[str]:
    found = []
    for record in records:
        found += [record.getMessage(), repr(record.args), repr(vars(record))]
        if record.exc_info:
            found.append("".join(traceback.format_exception(*record.exc_info)))
    return found


def database_bytes(directory: Path, stem: str) -> bytes:
    """Every byte of a SQLite database: the file and its WAL and shared-memory files."""
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith(stem))


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture DEBUG on every logger that could see a request."""
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    return caplog


def echoing(kind: str) -> srv.Behaviour:
    """A failure whose answer carries the Authorization header it received."""

    async def behaviour(request: Request, conn: Conn) -> bool:
        auth = request.headers.get("authorization", "")
        key = auth.removeprefix("Bearer ")
        echo = {"x-request-id": key, "x-echo": auth}
        if kind == "401 json":
            body = {"error": {"message": f"Incorrect API key provided: {key}", "code": key}}
            return await srv.status(401, body, echo)(request, conn)
        if kind == "500 text":
            return await srv.status(500, f"upstream said: {auth}".encode(), echo)(request, conn)
        if kind == "429 storm":
            return await srv.status(429, {"error": {"message": key}}, {**echo, "retry-after": "0"})(
                request, conn
            )
        if kind == "huge error":
            return await srv.status(503, (key + " ").encode() * 20_000, echo)(request, conn)
        if kind == "401 json, key as a key":
            body = {"error": {"message": "bad key", "details": {key: "unknown", auth: 1}}}
            return await srv.status(401, body, echo)(request, conn)
        if kind == "sse error event, key as a key":
            payload = {"error": {"message": "bad key", "type": "authentication_error", key: 1}}
            return await srv.sse([srv.event(payload)], headers=echo)(request, conn)
        if kind == "sse error event":
            payload = {"error": {"message": f"bad key {key}", "type": "invalid_request_error"}}
            return await srv.sse([srv.event(payload)], headers=echo)(request, conn)
        if kind == "sse invalid json":
            return await srv.sse([srv.event("{" + key)], headers=echo)(request, conn)
        if kind == "sse truncated":
            return await srv.sse([f'data: {{"key": "{key}'.encode()], headers=echo)(request, conn)
        if kind == "sse reset":
            return await srv.sse([srv.delta(key)], end="reset", headers=echo)(request, conn)
        if kind == "json instead of stream":
            return await srv.status(200, {"error": {"message": key}}, echo)(request, conn)
        if kind == "non-stream invalid json":
            return await srv.status(200, key.encode(), echo, content_type="application/json")(
                request, conn
            )
        raise AssertionError(kind)

    return behaviour


KINDS = [
    "401 json",
    "401 json, key as a key",
    "sse error event, key as a key",
    "500 text",
    "429 storm",
    "huge error",
    "sse error event",
    "sse invalid json",
    "sse truncated",
    "sse reset",
    "json instead of stream",
    "non-stream invalid json",
]


def frames_of(exc: BaseException) -> Iterator[FrameType]:
    """Every frame of the tracebacks of ``exc`` and of its whole cause / context chain:
    what an error tracker (Sentry captures local variables by default) would record."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            yield tb.tb_frame
            tb = tb.tb_next
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def key_in_locals(frame: FrameType) -> list[str]:
    """The names of ``frame``'s local variables that show the key: in their ``repr``, or
    as a plain ``str`` / ``bytes`` value."""
    found = []
    for name, value in frame.f_locals.items():
        try:
            shown = repr(value)
        except Exception:  # a half-built object: nothing to show
            continue
        plain = KEY in value if type(value) is str else False
        if isinstance(value, (bytes, bytearray)):
            plain = KEY.encode() in value
        if KEY in shown or plain:
            found.append(f"{frame.f_code.co_name}:{name}")
    return found


FRAME_CASES = ["401 json", "401 json, key as a key", "sse error event, key as a key", "500 text"]


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "complete"])
async def test_failed_calls_keep_no_key_in_their_frames(
    server: ScriptedServer, streaming: bool, report: Report
) -> None:
    """Walk the frames of failed calls (server errors echoing the key, a refused
    connection, an idle stream): no local variable of any frame shows the key, and the
    provider holds it as a Secret."""
    failures: list[BaseException] = []
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", KEY, base_url=server.url, max_retries=0
    ) as provider:
        assert isinstance(provider._api_key, Secret)
        for kind in FRAME_CASES:
            server.default = echoing(kind)
            failures.append(await _failure(provider, streaming))
        server.default = srv.stall()
        provider.stream_idle_timeout = 0.05  # a stream: StreamIdleTimeoutError
        provider.deadline = 0.2  # a whole answer: APITimeoutError (the deadline)
        failures.append(await _failure(provider, streaming))
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", KEY, base_url=f"http://127.0.0.1:{free_port()}/v1"
    ) as refused:
        failures.append(await _failure(refused, streaming))
    frames = 0
    for failure in failures:
        assert isinstance(failure, PromptKitError), repr(failure)
        for frame in frames_of(failure):
            frames += 1
            assert not key_in_locals(frame), f"{type(failure).__name__}: {key_in_locals(frame)}"
    report.add(failed_calls=len(failures), frames_walked=frames)


async def _failure(provider: OpenAIProvider, streaming: bool) -> BaseException:
    request = ProviderRequest([Message("user", "hi")])
    try:
        if streaming:
            async for _ in provider.stream(request):
                pass
        else:
            await asyncio.wait_for(provider.complete(request), GUARD)
    except Exception as exc:
        return exc
    raise AssertionError("the call should have failed")


def test_a_bad_base_url_error_shows_neither_the_url_nor_the_key() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        OpenAIProvider("openai", "gpt-4o-mini", KEY, base_url=f"ftp://user:{KEY}@host/{KEY}")
    assert KEY not in str(caught.value)
    assert "ftp" in str(caught.value)  # says what is wrong, without the value
    # From HTTPProvider.__init__ on, no frame holds the key (the caller's frames, and the
    # subclass's own __init__, hold what the caller passed).
    with pytest.raises(InvalidRequestError) as caught:
        OpenAIProvider("openai", "gpt-4o-mini", KEY, base_url="ftp://host/v1")
    ours = [f for f in frames_of(caught.value) if f.f_code.co_filename.endswith("_http.py")]
    assert ours
    assert not [name for frame in ours for name in key_in_locals(frame)]


def test_the_secret_type_never_shows_its_value() -> None:
    secret = Secret(KEY)
    assert secret.reveal() == KEY
    for shown in (repr(secret), str(secret), f"{secret}", repr([secret]), repr({"k": secret})):
        assert KEY not in shown
    assert secret == Secret(KEY)
    assert secret != Secret("other")
    assert secret
    assert not Secret("")
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    provider = OpenAIProvider("openai", "gpt-4o-mini", secret)  # type: ignore[arg-type]
    assert provider._api_key == secret
    assert KEY not in repr(vars(provider) if hasattr(provider, "__dict__") else provider)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    store: StateStore
    if request.param == "memory":
        store = InMemoryStateStore()
    elif request.param == "sqlite":
        store = SQLiteStateStore(tmp_path / "isolation.sqlite3")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = await RedisStateStore.connect(server.url, prefix=f"iso-{uuid.uuid4().hex[:8]}")
    yield store
    await store.aclose()


async def test_api_keys_never_leak(
    server: ScriptedServer, all_logs: pytest.LogCaptureFixture, tmp_path: Path, report: Report
) -> None:
    texts: list[tuple[str, str]] = []
    db = tmp_path / "secrets.sqlite3"
    store = SQLiteStateStore(db)
    retry = RetryPolicy(initial_delay=0.001, max_delay=0.002, max_retry_after=0.005)
    failures = 0
    async with OpenAIProvider(
        "openai", "gpt-4o-mini", KEY, base_url=server.url, retry_policy=retry, max_retries=2
    ) as provider:
        texts.append(("repr(provider)", repr(provider)))
        streamed = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
        whole = Pipeline(
            StateMiddleware(store),
            ProviderMiddleware(provider, config=ProviderMiddlewareConfig(stream=False)),
        )
        texts.append(("repr(pipeline)", repr(streamed)))
        for kind in KINDS:
            server.default = echoing(kind)
            pipe = whole if kind.startswith("non-stream") else streamed
            with pytest.raises(PromptKitError) as caught:
                await asyncio.wait_for(pipe.execute("s", "user", f"try {kind}"), GUARD)
            texts += [(kind, t) for t in texts_of_exception(caught.value)]
            failures += 1
        server.default = srv.answer
        result = await asyncio.wait_for(streamed.execute("s", "user", "works"), GUARD)
        texts += [("result", repr(result)), ("stored", repr(await store.load("s")))]
    # A key in the base URL (some gateways want that) is not shown either.
    port = free_port()
    async with OpenAIProvider(
        "gateway", "gpt-4o-mini", KEY, base_url=f"http://127.0.0.1:{port}/{KEY}/v1", max_retries=0
    ) as gateway:
        texts.append(("repr(gateway)", repr(gateway)))
        pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(gateway))
        with pytest.raises(PromptKitError) as caught:
            await asyncio.wait_for(pipe.execute("s", "user", "unreachable"), GUARD)
        texts += [("key in base_url", t) for t in texts_of_exception(caught.value)]
        failures += 1
    await store.aclose()
    texts += [("logs", t) for t in texts_of_records(all_logs.records)]
    stored = await asyncio.to_thread(database_bytes, tmp_path, "secrets")

    leaks = sorted({where for where, text in texts if KEY in text})
    assert not leaks, f"the key leaked in: {leaks}"
    assert KEY.encode() not in stored
    # The scan saw real material: the server did echo the key, and there were logs.
    assert any("[REDACTED]" in text for _, text in texts)
    assert all_logs.records
    report.add(
        failing_turns=failures,
        texts_scanned=len(texts),
        log_records_scanned=len(all_logs.records),
        leaks=0,
    )


async def test_stored_data_never_holds_the_key_in_redis(
    server: ScriptedServer, redis_server: RedisServer, report: Report
) -> None:
    prefix = f"secret-{uuid.uuid4().hex[:8]}"
    async with (
        await RedisStateStore.connect(redis_server.url, prefix=prefix) as store,
        OpenAIProvider("openai", "gpt-4o-mini", KEY, base_url=server.url) as provider,
    ):
        pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider))
        for i in range(5):
            await pipe.execute("s", "user", f"turn {i}")
        assert KEY not in repr(store)
    raw = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    values = []
    async for key in raw.scan_iter(match=f"{prefix}:*"):
        values += await raw.lrange(key, 0, -1) if key.endswith(b":m") else [key]
    await raw.aclose()
    assert values
    assert not any(KEY.encode() in v for v in values)
    report.add(records_scanned=len(values), leaks=0)


VICTIM = "victim"
ATTACKERS = [
    "victim*",
    "vic*",
    "*",
    "?ictim",
    "[v]ictim",
    "victim?",
    "victim}:m",
    "victim}:h",
    "{victim}",
    "{victim}:m",
    "victim:m",
    "promptkit:{victim}:m",
    "%76ictim",
    "victim%00",
    "Victim",
    "VICTIM",
    "victim ",
    " victim",
    "victim\u200b",
    "\uff56\uff49\uff43\uff54\uff49\uff4d",  # fullwidth "victim"
    "vi\u0301ctim",
    "victim\\",
    "victim/..",
    "victim' OR '1'='1",
    "victim%",
]


async def test_session_ids_never_reach_another_session(
    any_store: StateStore, report: Report
) -> None:
    store = any_store
    secret = [Message("user", "the victim's secret"), Message("assistant", "kept")]
    await store.append(VICTIM, secret)
    await store.merge_metadata(VICTIM, {"owner": VICTIM})
    for n, attacker in enumerate(ATTACKERS):
        assert await store.load(attacker) == []
        assert await store.count(attacker) == 0
        assert await store.get_metadata(attacker) == {}
        assert await store.delete(attacker) is False
        assert await store.fork(attacker, f"copy{n}") == 0
        await store.append(attacker, [Message("user", f"written by {attacker!r}")])
        await store.merge_metadata(attacker, {"owner": attacker})
        await store.save(attacker, [Message("user", f"saved by {attacker!r}")])
        assert [m.content for m in await store.load(attacker)] == [f"saved by {attacker!r}"]
        assert await store.get_metadata(attacker) == {"owner": attacker}
        assert await store.fork(attacker, f"copy{n}") == 1
        assert await store.load(VICTIM) == secret
        assert await store.get_metadata(VICTIM) == {"owner": VICTIM}
    assert await all_sessions(store) == (
        {VICTIM} | set(ATTACKERS) | {f"copy{n}" for n in range(len(ATTACKERS))}
    )
    for attacker in ATTACKERS:
        assert await store.delete(attacker) is True
    assert await store.load(VICTIM) == secret
    report.add(crafted_ids=len(ATTACKERS), operations=11 * len(ATTACKERS), crossings=0)


@pytest.mark.redis
async def test_prefixes_never_see_each_other(redis_server: RedisServer, report: Report) -> None:
    """A store whose prefix is a glob pattern matching another store's keys lists,
    reads and deletes only its own sessions."""
    base = f"tenant{uuid.uuid4().hex[:6]}"
    prefixes = [base, base + "*", base[:-1] + "?", base + ":x", f"[{base[0]}]{base[1:]}"]
    stores = [await RedisStateStore.connect(redis_server.url, prefix=p) for p in prefixes]
    try:
        for prefix, store in zip(prefixes, stores, strict=True):
            await store.append("shared-id", [Message("user", f"owned by {prefix}")])
            await store.merge_metadata("meta-only", {"prefix": prefix})
        for prefix, store in zip(prefixes, stores, strict=True):
            assert await all_sessions(store) == {"shared-id", "meta-only"}
            loaded = await store.load("shared-id")
            assert [m.content for m in loaded] == [f"owned by {prefix}"]
        assert await stores[1].delete("shared-id")
        assert [m.content for m in await stores[0].load("shared-id")] == [f"owned by {base}"]
        raw = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
        keys = [k.decode() async for k in raw.scan_iter(match=f"*{base[1:]}*")]
        await raw.aclose()
        assert all(k.endswith(("}:m", "}:h")) for k in keys)
    finally:
        for store in stores:
            await store.aclose()
    report.add(prefixes=len(prefixes), crossings=0)
