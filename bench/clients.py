"""The clients the harness compares, each behind one small interface.

A client opens its resources once, keeps per-session state (a hand-kept message list for
the raw loops and SDKs, a session id for promptkit_async) and runs one turn at a time per
session: send the whole history plus the new user message, read the streamed reply, and
keep the answer for the next turn. ``turn`` returns the ``perf_counter()`` instant the
first non-empty content delta reached the caller, which gives the time to first chunk.

Every client is configured alike where the library allows it: one shared connection
pool per process with no connection cap (``max_connections=0`` means unlimited; a
number caps every pool at that), no retries (errors must be counted, not hidden), usage
requested with ``stream_options.include_usage``.

Adding a client: subclass :class:`Client`, set ``name`` / ``describe`` / ``needs``, and
register it in :data:`CLIENTS`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["CLIENTS", "DEFAULT_CLIENTS", "Client", "ClientConfig", "available", "make_client"]

perf_counter = time.perf_counter
API_KEY = "sk-bench-not-a-real-key"


@dataclass(frozen=True)
class ClientConfig:
    """What every client gets from the harness."""

    base_url: str
    model: str = "gpt-4o-mini"
    api_key: str = API_KEY
    stream: bool = True
    max_connections: int = 0
    redis_url: str | None = None
    postgres_url: str | None = None
    sqlite_path: str | None = None
    run_tag: str = "run"


class Client:
    """One way of talking to the upstream; subclasses implement the four hooks."""

    #: Registry name, used on the command line.
    name: ClassVar[str] = ""
    #: One line for the report: library and how it is configured.
    describe: ClassVar[str] = ""
    #: Distributions the client imports (to say why it is unavailable).
    needs: ClassVar[tuple[str, ...]] = ()
    #: Extra services the harness must start: "redis", "postgres".
    services: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.headers = {"Authorization": f"Bearer {config.api_key}"}
        #: Turns that ended without usage figures (a correctness check, not an error).
        self.missing_usage = 0

    async def open(self) -> None:
        """Create shared resources (on the running loop)."""

    def new_session(self, index: int) -> Any:
        """Per-session state; the default is a hand-kept list of message dicts."""
        return []

    async def turn(self, session: Any, text: str) -> float | None:
        """Run one turn; return when the first content delta arrived (None if none)."""
        raise NotImplementedError

    async def history_length(self, session: Any) -> int:
        """Messages the session holds after its turns (checked by the harness)."""
        return len(session)

    def store_round_trips(self) -> int | None:
        """Round trips to a store server so far (None: not counted for this client)."""
        return None

    async def end_session(self, session: Any) -> None:
        """Release per-session resources."""

    async def aclose(self) -> None:
        """Release shared resources."""

    # --- shared helpers for the hand-kept-list clients ---------------------------------

    def body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The request body every raw client sends."""
        body: dict[str, Any] = {"model": self.config.model, "messages": messages}
        if self.config.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def whole(self, data: dict[str, Any], turn: _Turn) -> None:
        """Handle a non-streamed completion."""
        turn.first = perf_counter()
        turn.usage = bool(data.get("usage"))
        turn.parts.append(data["choices"][0]["message"]["content"] or "")


class _Turn:
    """What one raw turn collects while it reads the stream."""

    __slots__ = ("first", "parts", "usage")

    def __init__(self) -> None:
        self.first: float | None = None
        self.parts: list[str] = []
        self.usage = False

    def event(self, data: bytes | str) -> None:
        """Handle one SSE ``data:`` payload (a ``chat.completion.chunk``)."""
        event = json.loads(data)
        for choice in event["choices"]:
            text = choice["delta"].get("content")
            if text:
                if self.first is None:
                    self.first = perf_counter()
                self.parts.append(text)
        if event.get("usage"):
            self.usage = True


class _RawSSE(Client):
    """Hand-written loops: check the usage arrived, keep the list."""

    def finish(self, messages: list[dict[str, str]], turn: _Turn) -> float | None:
        if not turn.usage:
            self.missing_usage += 1
        messages.append({"role": "assistant", "content": "".join(turn.parts)})
        return turn.first


class AiohttpClient(_RawSSE):
    """aiohttp ClientSession, SSE lines parsed by hand."""

    name = "aiohttp"
    describe = "aiohttp ClientSession (TCPConnector limit=0), hand-written SSE loop, list history"
    needs = ("aiohttp",)

    async def open(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_connections),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def turn(self, session: Any, text: str) -> float | None:
        messages: list[dict[str, str]] = session
        messages.append({"role": "user", "content": text})
        turn = _Turn()
        try:
            async with self.session.post(
                self.url, json=self.body(messages), headers=self.headers
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
                if not self.config.stream:
                    self.whole(await resp.json(), turn)
                else:
                    # Read to the end (not break at [DONE]) so the connection is reused.
                    async for line in resp.content:
                        if line.startswith(b"data: ") and line[6:11] != b"[DONE":
                            turn.event(line[6:])
        except BaseException:
            messages.pop()
            raise
        return self.finish(messages, turn)

    async def aclose(self) -> None:
        await self.session.close()


class _HttpxBase(_RawSSE):
    needs = ("httpx",)

    def _limits(self) -> Any:
        import httpx

        cap = self.config.max_connections or None
        return httpx.Limits(max_connections=cap, max_keepalive_connections=cap)

    async def _turn(self, client: Any, messages: list[dict[str, str]], text: str) -> float | None:
        messages.append({"role": "user", "content": text})
        turn = _Turn()
        try:
            if not self.config.stream:
                resp = await client.post(self.url, json=self.body(messages), headers=self.headers)
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}: {resp.text}")
                self.whole(resp.json(), turn)
            else:
                async with client.stream(
                    "POST", self.url, json=self.body(messages), headers=self.headers
                ) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        raise RuntimeError(f"HTTP {resp.status_code}: {resp.text}")
                    async for line in resp.aiter_lines():
                        if line.startswith("data: ") and line[6:11] != "[DONE":
                            turn.event(line[6:])
        except BaseException:
            messages.pop()
            raise
        return self.finish(messages, turn)


class HttpxSharedClient(_HttpxBase):
    """One httpx.AsyncClient (httpcore pool) shared by every session."""

    name = "httpx"
    describe = "httpx AsyncClient shared by all sessions (httpcore pool, no cap), list history"

    async def open(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(limits=self._limits(), timeout=None)

    async def turn(self, session: Any, text: str) -> float | None:
        return await self._turn(self.client, session, text)

    async def aclose(self) -> None:
        await self.client.aclose()


class HttpxPerSessionClient(_HttpxBase):
    """One httpx.AsyncClient per session (the usual workaround for the shared pool's cost).

    The clients are built before the clock starts and share one SSL context: building a
    context per client costs milliseconds of CPU and about a megabyte each, which would
    measure certificate loading rather than the HTTP loop.
    """

    name = "httpx-per-session"
    describe = "httpx AsyncClient per session (built up front, one shared SSL context), list"

    async def open(self) -> None:
        import httpx

        self._ssl = httpx.create_ssl_context()

    def new_session(self, index: int) -> Any:
        import httpx

        return {"messages": [], "client": httpx.AsyncClient(verify=self._ssl, timeout=None)}

    async def turn(self, session: Any, text: str) -> float | None:
        return await self._turn(session["client"], session["messages"], text)

    async def history_length(self, session: Any) -> int:
        return len(session["messages"])

    async def end_session(self, session: Any) -> None:
        await session["client"].aclose()


class HttpxAiohttpClient(_HttpxBase):
    """The httpx API over the httpx-aiohttp transport."""

    name = "httpx-aiohttp"
    describe = "httpx AsyncClient over httpx_aiohttp.AiohttpTransport (aiohttp limit=0)"
    needs = ("httpx", "httpx-aiohttp", "aiohttp")

    async def open(self) -> None:
        import aiohttp
        import httpx
        from httpx_aiohttp import AiohttpTransport

        limit = self.config.max_connections

        def session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))

        self.client = httpx.AsyncClient(transport=AiohttpTransport(client=session), timeout=None)

    async def turn(self, session: Any, text: str) -> float | None:
        return await self._turn(self.client, session, text)

    async def aclose(self) -> None:
        await self.client.aclose()


class OpenAISDKClient(Client):
    """The official SDK with a hand-kept list."""

    name = "openai"
    describe = "openai AsyncOpenAI, its default httpx client with the pool cap lifted, list"
    needs = ("openai",)

    def _http_client(self) -> Any:
        # The SDK brings its own httpx flavour; build its client with the common pool
        # settings (no cap, every connection kept alive) so only the SDK differs.
        import openai

        httpx_mod: Any
        try:
            import httpx2 as httpx_mod  # what openai>=3 is built on
        except ImportError:  # pragma: no cover - older SDKs use httpx
            import httpx as httpx_mod
        cap = self.config.max_connections or None
        return openai.DefaultAsyncHttpxClient(
            limits=httpx_mod.Limits(max_connections=cap, max_keepalive_connections=cap),
            timeout=600.0,
        )

    async def open(self) -> None:
        import openai

        self.client = openai.AsyncOpenAI(
            api_key=self.config.api_key,
            base_url=self.config.base_url,
            max_retries=0,
            http_client=self._http_client(),
        )

    async def turn(self, session: Any, text: str) -> float | None:
        messages: list[dict[str, str]] = session
        messages.append({"role": "user", "content": text})
        first: float | None = None
        parts: list[str] = []
        try:
            if not self.config.stream:
                completion = await self.client.chat.completions.create(
                    model=self.config.model, messages=messages
                )
                first = perf_counter()
                if completion.usage is None:
                    self.missing_usage += 1
                parts.append(completion.choices[0].message.content or "")
            else:
                usage = None
                stream = await self.client.chat.completions.create(
                    model=self.config.model,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async with stream:
                    async for chunk in stream:
                        if chunk.usage is not None:
                            usage = chunk.usage
                        if chunk.choices:
                            delta = chunk.choices[0].delta.content
                            if delta:
                                if first is None:
                                    first = perf_counter()
                                parts.append(delta)
                if usage is None:
                    self.missing_usage += 1
        except BaseException:
            messages.pop()
            raise
        messages.append({"role": "assistant", "content": "".join(parts)})
        return first

    async def aclose(self) -> None:
        await self.client.close()


class OpenAISDKAiohttpClient(OpenAISDKClient):
    """The official SDK on its optional aiohttp backend."""

    name = "openai-aiohttp"
    describe = "openai AsyncOpenAI with DefaultAioHttpClient (its aiohttp backend), list"
    needs = ("openai", "httpx-aiohttp")

    def _http_client(self) -> Any:
        import openai

        return openai.DefaultAioHttpClient(timeout=600.0)


class LiteLLMClient(Client):
    """LiteLLM's acompletion with a hand-kept list, default settings."""

    name = "litellm"
    describe = "litellm.acompletion(model='openai/…', api_base=…), defaults, list history"
    needs = ("litellm",)

    async def open(self) -> None:
        # No network here: keep LiteLLM on its bundled price map and quiet.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOG", "ERROR")
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        self.litellm = litellm

    async def turn(self, session: Any, text: str) -> float | None:
        messages: list[dict[str, str]] = session
        messages.append({"role": "user", "content": text})
        first: float | None = None
        parts: list[str] = []
        try:
            response = await self.litellm.acompletion(
                model=f"openai/{self.config.model}",
                messages=messages,
                api_base=self.config.base_url,
                api_key=self.config.api_key,
                stream=self.config.stream,
                stream_options={"include_usage": True} if self.config.stream else None,
                num_retries=0,
                max_retries=0,
            )
            if not self.config.stream:
                first = perf_counter()
                parts.append(response.choices[0].message.content or "")
                if getattr(response, "usage", None) is None:
                    self.missing_usage += 1
            else:
                usage = None
                async for chunk in response:
                    if getattr(chunk, "usage", None) is not None:
                        usage = chunk.usage
                    if chunk.choices:
                        delta = chunk.choices[0].delta.content
                        if delta:
                            if first is None:
                                first = perf_counter()
                            parts.append(delta)
                if usage is None:
                    self.missing_usage += 1
        except BaseException:
            messages.pop()
            raise
        messages.append({"role": "assistant", "content": "".join(parts)})
        return first


class _PromptKit(Client):
    """Pipeline(StateMiddleware(store), ProviderMiddleware(provider)); history in the store."""

    needs = ("promptkit-async",)
    store_kind: ClassVar[str] = "memory"

    def make_provider(self) -> Any:
        from promptkit_async.providers.openai import OpenAIProvider

        return OpenAIProvider(
            "openai",
            self.config.model,
            self.config.api_key,
            base_url=self.config.base_url,
            max_retries=0,
        )

    async def make_store(self) -> Any:
        kind = self.store_kind
        if kind == "memory":
            from promptkit_async.statestore import InMemoryStateStore

            return InMemoryStateStore()
        if kind == "sqlite":
            from promptkit_async.statestore import SQLiteStateStore  # type: ignore[attr-defined]

            assert self.config.sqlite_path, "the harness passes a SQLite path"
            return SQLiteStateStore(self.config.sqlite_path)
        if kind == "redis":
            from promptkit_async.statestore import RedisStateStore  # type: ignore[attr-defined]

            assert self.config.redis_url, "the harness starts redis-server and passes its URL"
            return await RedisStateStore.connect(
                self.config.redis_url,
                prefix=f"bench-{self.config.run_tag}",
                connection_class=_counting_redis_connection(),
            )
        if kind == "postgres":
            import hashlib

            from promptkit_async.statestore import PostgresStateStore  # type: ignore[attr-defined]

            assert self.config.postgres_url, "the harness starts PostgreSQL and passes its URL"
            schema = "bench_" + hashlib.sha1(self.config.run_tag.encode()).hexdigest()[:12]
            return await PostgresStateStore.connect(
                self.config.postgres_url, schema=schema, connection_class=_counting_connection()
            )
        raise ValueError(kind)

    async def open(self) -> None:
        from promptkit_async import (
            Pipeline,
            ProviderMiddleware,
            ProviderMiddlewareConfig,
            StateMiddleware,
        )

        self.store = await self.make_store()
        self.provider = self.make_provider()
        self.pipeline = Pipeline(
            StateMiddleware(self.store),
            ProviderMiddleware(
                self.provider, config=ProviderMiddlewareConfig(stream=self.config.stream)
            ),
        )

    def new_session(self, index: int) -> Any:
        return f"{self.config.run_tag}-s{index}"

    async def turn(self, session: Any, text: str) -> float | None:
        first: float | None = None
        result = None
        async with self.pipeline.stream(session, "user", text) as chunks:
            async for chunk in chunks:
                if chunk.delta and first is None:
                    first = perf_counter()
                if chunk.final_result is not None:
                    result = chunk.final_result
        if result is None or not result.usage.total_tokens:
            self.missing_usage += 1
        if first is None and result is not None:
            first = perf_counter()  # non-streamed: the whole answer is the first chunk
        return first

    async def history_length(self, session: Any) -> int:
        n: int = await self.store.count(session)
        return n

    async def aclose(self) -> None:
        await self.pipeline.shutdown()
        await self.provider.aclose()
        await self.store.aclose()


class PromptKitMemory(_PromptKit):
    name = "promptkit-memory"
    describe = "promptkit_async Pipeline + StateMiddleware(InMemoryStateStore) + OpenAIProvider"
    store_kind = "memory"


class PromptKitSQLite(_PromptKit):
    name = "promptkit-sqlite"
    describe = "promptkit_async Pipeline + StateMiddleware(SQLiteStateStore) + OpenAIProvider"
    store_kind = "sqlite"


class PromptKitRedis(_PromptKit):
    name = "promptkit-redis"
    describe = "promptkit_async Pipeline + StateMiddleware(RedisStateStore) + OpenAIProvider"
    store_kind = "redis"
    services = ("redis",)

    def store_round_trips(self) -> int | None:
        # Every write on a connection to Redis starts one round trip (a pipelined
        # batch of many sessions' commands is one write).
        return _REDIS_WRITES[0]


_REDIS_WRITES = [0]


def _counting_redis_connection() -> Any:
    """A redis-py connection class that counts its writes (round trips)."""
    from redis.asyncio.connection import Connection

    class CountingConnection(Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            _REDIS_WRITES[0] += 1
            await super().send_packed_command(command, check_health)

    return CountingConnection


class PromptKitPostgres(_PromptKit):
    name = "promptkit-postgres"
    describe = "promptkit_async Pipeline + StateMiddleware(PostgresStateStore) + OpenAIProvider"
    store_kind = "postgres"
    services = ("postgres",)

    def store_round_trips(self) -> int | None:
        # Every statement the store sends is one round trip (prepared once per
        # connection, then bind + execute + sync in one write).
        return _STATEMENTS[0]


_STATEMENTS = [0]


def _counting_connection() -> Any:
    """An asyncpg connection class that counts the statements it runs."""
    import asyncpg

    class CountingConnection(asyncpg.Connection):  # type: ignore[misc]
        # The store's operations use fetch(); its schema check and background purges
        # use fetchval() and execute() (transactions' BEGIN/COMMIT too).
        async def fetch(self, *args: Any, **kwargs: Any) -> Any:
            _STATEMENTS[0] += 1
            return await super().fetch(*args, **kwargs)

        async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
            _STATEMENTS[0] += 1
            return await super().fetchval(*args, **kwargs)

        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            _STATEMENTS[0] += 1
            return await super().execute(*args, **kwargs)

    return CountingConnection


class _Shim(_PromptKit):
    def make_provider(self) -> Any:
        from ._shim import AiohttpShimProvider

        return AiohttpShimProvider(
            self.config.model,
            self.config.api_key,
            self.config.base_url,
            self.config.max_connections,
        )


class PromptKitShimMemory(_Shim):
    name = "promptkit-shim-memory"
    describe = (
        "promptkit_async Pipeline + StateMiddleware(InMemoryStateStore) + bench-only aiohttp "
        "provider (pipeline cost without OpenAIProvider)"
    )
    store_kind = "memory"


class PromptKitShimSQLite(_Shim):
    name = "promptkit-shim-sqlite"
    describe = "as promptkit-shim-memory, with SQLiteStateStore"
    store_kind = "sqlite"


class PromptKitShimRedis(_Shim):
    name = "promptkit-shim-redis"
    describe = "as promptkit-shim-memory, with RedisStateStore"
    store_kind = "redis"
    services = ("redis",)


CLIENTS: dict[str, type[Client]] = {
    c.name: c
    for c in (
        AiohttpClient,
        HttpxAiohttpClient,
        HttpxSharedClient,
        HttpxPerSessionClient,
        OpenAISDKClient,
        OpenAISDKAiohttpClient,
        LiteLLMClient,
        PromptKitMemory,
        PromptKitSQLite,
        PromptKitRedis,
        PromptKitPostgres,
        PromptKitShimMemory,
        PromptKitShimSQLite,
        PromptKitShimRedis,
    )
}

#: What a plain ``python -m bench.run`` compares.
DEFAULT_CLIENTS = (
    "aiohttp",
    "httpx-aiohttp",
    "httpx",
    "httpx-per-session",
    "openai",
    "litellm",
    "promptkit-memory",
    "promptkit-sqlite",
    "promptkit-redis",
    "promptkit-postgres",
    "promptkit-shim-memory",
)


def _probe(name: str) -> str | None:
    """Why ``name`` cannot run here, or None when it can."""
    import importlib

    cls = CLIENTS[name]
    modules = {
        "aiohttp": "aiohttp",
        "httpx": "httpx",
        "httpx-aiohttp": "httpx_aiohttp",
        "openai": "openai",
        "promptkit-async": "promptkit_async",
    }
    for dist in cls.needs:
        if dist == "litellm":
            # Importing LiteLLM is slow and may reach for the network: only look for it.
            if importlib.util.find_spec("litellm") is None:
                return "litellm is not installed (pip install litellm)"
            continue
        try:
            importlib.import_module(modules[dist])
        except ImportError as exc:
            return f"{dist} is not importable ({exc})"
    if (
        issubclass(cls, _PromptKit)
        and not issubclass(cls, _Shim)
        and importlib.util.find_spec("promptkit_async.providers.openai") is None
    ):
        return "promptkit_async.providers.openai.OpenAIProvider is not merged yet"
    if issubclass(cls, _PromptKit):
        store = {
            "sqlite": "SQLiteStateStore",
            "redis": "RedisStateStore",
            "postgres": "PostgresStateStore",
        }.get(cls.store_kind)
        if store is not None:
            import promptkit_async.statestore as stores

            try:
                found = hasattr(stores, store)
            except ImportError as exc:  # an optional driver (asyncpg) is missing
                return str(exc)
            if not found:
                return f"promptkit_async.statestore.{store} is not merged yet"
    return None


def available(names: list[str]) -> dict[str, str | None]:
    """For each client name: None if it can run here, else the reason it cannot."""
    out: dict[str, str | None] = {}
    for name in names:
        if name not in CLIENTS:
            raise ValueError(f"unknown client {name!r}; known: {', '.join(CLIENTS)}")
        out[name] = _probe(name)
    return out


def make_client(name: str, config: ClientConfig) -> Client:
    """Instantiate the client registered as ``name``."""
    return CLIENTS[name](config)


ClientFactory = Callable[[ClientConfig], Client]
