"""RedisStateStore beyond the shared contract: round trips, layout, TTLs, processes, faults.

Everything runs against real ``redis-server`` processes on loopback ports.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from promptkit_async import (
    InMemoryStateStore,
    InvalidRequestError,
    InvalidSessionIdError,
    LeaseLostError,
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    StateMiddleware,
    StoreDataError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from promptkit_async.statestore import RedisStateStore
from promptkit_async.statestore.redis import DEFAULT_TIMEOUT
from tests._redis_server import RedisClusterServers, RedisServer, command, free_port
from tests.statestore._proxy import CountingProxy, ReplyStallProxy
from tests.statestore._records import EXPECTED, check_loaded, raw_records

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_turns_worker.py")


def user(text: str, **kw: Any) -> Message:
    return Message("user", text, **kw)


def bot(text: str, **kw: Any) -> Message:
    return Message("assistant", text, **kw)


def contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def echo_pipeline(store: Any, handler: Any = None) -> Pipeline:
    provider = MockProvider(
        handler=handler or (lambda r: f"reply to {r.messages[-1].content}"), model="gpt-4o-mini"
    )
    return Pipeline(StateMiddleware(store), ProviderMiddleware(provider))


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def assert_whole_turns(stored: list[str]) -> list[str]:
    """Every question is directly followed by its reply; returns the questions in order."""
    assert len(stored) % 2 == 0
    questions = stored[0::2]
    assert stored[1::2] == [f"reply to {q}" for q in questions]
    return questions


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=None)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStateStore]:
    async with await RedisStateStore.connect(redis_server.url, prefix=unique_prefix()) as s:
        yield s


# --- round trips ---------------------------------------------------------------------------


@pytest.fixture(params=["standalone", "cluster"])
async def counted(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[RedisStateStore, list[CountingProxy], list[int]]]:
    """A store whose every connection goes through counting proxies, plus node ports."""
    if request.param == "standalone":
        server: RedisServer = request.getfixturevalue("redis_server")
        ports = [server.port]
    else:
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        ports = [n.port for n in cluster.nodes]
    proxies = {p: await CountingProxy(p).start() for p in ports}
    if request.param == "standalone":
        client: Any = aioredis.Redis(host="127.0.0.1", port=proxies[ports[0]].port)
    else:
        # The cluster announces its real ports; address_remap sends every connection
        # through the proxy in front of that node.
        client = RedisCluster(
            host="127.0.0.1",
            port=proxies[ports[0]].port,
            address_remap=lambda addr: (
                ("127.0.0.1", proxies[addr[1]].port) if addr[1] in proxies else addr
            ),
        )
    # No safety poll inside the counted window: on a slow machine its every-0.5 s check
    # of the watched leases would add a round trip that no turn made.
    store = RedisStateStore(client, prefix=unique_prefix(), ttl=300, signal_poll_interval=600)
    yield store, list(proxies.values()), ports
    await store.aclose()
    await client.aclose()
    for proxy in proxies.values():
        await proxy.aclose()


async def subscribed(store: RedisStateStore) -> None:
    """Wait until the store's subscriber (started by the pipeline's first lease watch)
    has connected and checked its watchers: its round trips are not a turn's."""
    if store._subscriber is not None:
        await store._listen()
    while store._tasks:
        await asyncio.wait(set(store._tasks))


def round_trips(proxies: list[CountingProxy]) -> int:
    return sum(p.round_trips for p in proxies)


def turn_requests(proxies: list[CountingProxy], marks: list[int]) -> list[bytes]:
    """The round trips made since ``marks`` (each proxy's request count) by turns: not
    the subscriber's (its connection carried a SUBSCRIBE), nor the one check of the
    watched leases it makes if it had to subscribe again (a lone GET), which no turn
    makes. The first bytes of each, so a failure shows what the extra one was."""
    found: list[bytes] = []
    for proxy, mark in zip(proxies, marks, strict=True):
        subscriber = {c for c, head in proxy.requests if b"SUBSCRIBE" in head.upper()}
        found += [
            head
            for c, head in proxy.requests[mark:]
            if c not in subscriber and not head.startswith(b"*2\r\n$3\r\nGET\r\n")
        ]
    return found


def command_calls(ports: list[int]) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, summed over the nodes."""
    calls: dict[str, int] = {}
    for port in ports:
        for line in command(port, "INFO", "commandstats").decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, stats = line[len("cmdstat_") :].partition(":")
                calls[name] = calls.get(name, 0) + int(stats.split(",")[0].split("=")[1])
    return calls


async def every_session(store: RedisStateStore) -> list[str]:
    """Every listed id, following cursors: the shared server holds other tests' keys, so
    a page may come back short (even empty) before the last."""
    found: list[str] = []
    cursor: str | None = None
    while True:
        page = await store.list_sessions(cursor=cursor)
        found += page.session_ids
        cursor = page.next_cursor
        if cursor is None:
            return found


async def test_a_turn_costs_two_round_trips_and_two_commands(
    counted: tuple[RedisStateStore, list[CountingProxy], list[int]],
) -> None:
    store, proxies, ports = counted
    pipeline = echo_pipeline(store)
    # Connect to the node of "s" (a new connection costs handshake round trips) and load
    # the script there.
    await pipeline.execute("s", "user", "warm-up")
    await subscribed(store)

    marks = [len(p.requests) for p in proxies]
    for port in ports:
        command(port, "CONFIG", "RESETSTAT")
    for i in range(10):
        await pipeline.execute("s", "user", f"q{i}")

    calls = command_calls(ports)
    requests = turn_requests(proxies, marks)
    assert len(requests) == 20, requests
    # begin_turn (lease + history + ledger) and end_turn (fenced append + release): one
    # script each, the history read inside the first.
    assert calls.get("evalsha") == 20, calls  # (commands inside scripts count too)
    assert "publish" not in calls  # nobody waited
    assert "keys" not in calls
    assert contents(await store.load("s", 2)) == ["q9", "reply to q9"]


async def test_each_operation_costs_one_round_trip(
    counted: tuple[RedisStateStore, list[CountingProxy], list[int]],
) -> None:
    store, proxies, _ = counted
    for session_id in ("s", "t"):  # connect to their nodes and load the script there
        await store.append(session_id, [user("warm-up")])
    refreshing = RedisStateStore(
        store.client, prefix=store.prefix, ttl=300, refresh_ttl_on_read=True
    )

    async def cost(operation: Any) -> int:
        before = round_trips(proxies)
        await operation
        return round_trips(proxies) - before

    assert await cost(store.load("s")) == 1
    assert await cost(store.load("s", 1)) == 1
    assert await cost(refreshing.load("s", 1)) == 1  # LRANGE + PEXPIREs pipelined
    assert await cost(refreshing.get_metadata("s")) == 1
    assert await cost(store.append("s", [user("a"), bot("b")])) == 1
    assert await cost(store.save("s", [user("a")])) == 1
    assert await cost(store.count("s")) == 1
    assert await cost(store.merge_metadata("s", {"k": 1})) == 1
    assert await cost(store.get_metadata("s")) == 1
    assert await cost(store.fork("s", "t")) == 2  # read the source, write the target
    assert await cost(store.delete("t")) == 1
    await refreshing.aclose()


async def test_concurrent_turns_share_round_trips(
    counted: tuple[RedisStateStore, list[CountingProxy], list[int]],
) -> None:
    store, proxies, _ = counted
    pipeline = echo_pipeline(store)
    await pipeline.execute("warm-up", "user", "hi")

    before = round_trips(proxies)
    await asyncio.gather(*(pipeline.execute(f"s{i}", "user", "hi") for i in range(200)))

    # 400 operations, far fewer round trips: concurrent commands travel together.
    assert round_trips(proxies) - before < 100
    for i in (0, 199):
        assert contents(await store.load(f"s{i}")) == ["hi", "reply to hi"]


# --- key layout ----------------------------------------------------------------------------

ODD_IDS = ["a:b", "a", "{a}", "a}:m", "*", "?", "[x]", "\\", "a b", "日本語", "%41", "x" * 1024]


async def test_keys_stay_under_the_prefix_and_each_session_in_one_slot(
    store: RedisStateStore, raw: aioredis.Redis
) -> None:
    others_before = {k async for k in raw.scan_iter(count=1000)}
    for session_id in ODD_IDS:
        await store.append(session_id, [user("x")])
        await store.merge_metadata(session_id, {"k": 1})

    ours = {k.decode() for k in await raw.keys(store.prefix + ":*")}
    assert len(ours) == 2 * len(ODD_IDS)
    all_after = {k async for k in raw.scan_iter(count=1000)}
    assert {k.decode() for k in all_after - others_before} == ours
    for key in ours:
        assert key.startswith(store.prefix + ":{")
        assert key.endswith(("}:m", "}:h"))
        tag = key[len(store.prefix) + 2 : -3]
        assert not set(tag) & set("{}:*?[]\\ ")
    for session_id in ODD_IDS:
        keys = [k for k in ours if store._id_of(k) and store._id_of(k)[0] == session_id]  # type: ignore[index]
        assert len(keys) == 2
        assert key_slot(keys[0].encode()) == key_slot(keys[1].encode())


async def test_listing_escapes_glob_characters_in_the_prefix(redis_server: RedisServer) -> None:
    base = unique_prefix()
    prefixes = [base + s for s in ("?", "a", "*", "[a]", "\\")]
    stores = [await RedisStateStore.connect(redis_server.url, prefix=p) for p in prefixes]
    try:
        for prefix, s in zip(prefixes, stores, strict=True):
            await s.append(f"only in {prefix}", [user("x")])
        for prefix, s in zip(prefixes, stores, strict=True):
            assert await every_session(s) == [f"only in {prefix}"]
    finally:
        for s in stores:
            await s.aclose()


async def test_listing_ignores_foreign_keys_under_the_prefix(
    store: RedisStateStore, raw: aioredis.Redis
) -> None:
    await store.append("mine", [user("x")])
    p = store.prefix
    for key in (f"{p}:{{%7a}}:m", f"{p}:{{a b}}:m", f"{p}:{{%zz}}:m", f"{p}:{{%ff}}:h", f"{p}:x"):
        await raw.rpush(key, "junk") if key.endswith(":m") else await raw.set(key, "junk")

    assert await every_session(store) == ["mine"]
    with pytest.raises(InvalidRequestError, match="cursor"):
        await store.list_sessions(cursor="not a cursor")


async def test_large_histories_and_metadata_are_written_in_one_script(
    store: RedisStateStore,
) -> None:
    # Lua's unpack() cannot take ~8000 values at once: the script pushes in chunks.
    history = [user(f"m{i}") for i in range(20_000)]
    await store.save("big", history)
    await store.append("big", history[:9000])
    assert await store.count("big") == 29_000
    assert contents(await store.load("big", 3)) == ["m8997", "m8998", "m8999"]
    merged = await store.merge_metadata("big", {f"k{i}": i for i in range(5000)})
    assert len(merged) == 5000
    assert await store.fork("big", "copy") == 29_000
    assert len(await store.get_metadata("copy")) == 5000


# --- TTL -----------------------------------------------------------------------------------


async def test_every_write_sets_the_ttl_of_all_keys_of_the_session(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    prefix = unique_prefix()
    m, h = f"{prefix}:{{s}}:m", f"{prefix}:{{s}}:h"
    async with await RedisStateStore.connect(redis_server.url, prefix=prefix, ttl=100) as store:
        await store.append("s", [user("x")])
        await store.merge_metadata("s", {"k": 1})

        writes = [
            store.append("s", [user("y")]),
            store.save("s", [user("z")]),
            store.merge_metadata("s", {"k": 2}),
        ]
        for write in writes:
            await raw.pexpire(m, 5000)
            await raw.pexpire(h, 5000)
            await write
            assert 95_000 < await raw.pttl(m) <= 100_000
            assert 95_000 < await raw.pttl(h) <= 100_000

        await raw.pexpire(m, 5000)
        await store.load("s")  # a plain store does not refresh on read
        assert await raw.pttl(m) <= 5000

        await store.fork("s", "t")
        assert 95_000 < await raw.pttl(f"{prefix}:{{t}}:m") <= 100_000
        assert 95_000 < await raw.pttl(f"{prefix}:{{t}}:h") <= 100_000

    # A store without a TTL makes the sessions it writes permanent again.
    async with await RedisStateStore.connect(redis_server.url, prefix=prefix) as forever:
        await forever.append("s", [user("w")])
        assert await raw.pttl(m) == -1
        assert await raw.pttl(h) == -1


async def test_refresh_on_read_restarts_the_ttl(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    prefix = unique_prefix()
    m, h = f"{prefix}:{{s}}:m", f"{prefix}:{{s}}:h"
    async with await RedisStateStore.connect(
        redis_server.url, prefix=prefix, ttl=100, refresh_ttl_on_read=True
    ) as store:
        await store.append("s", [user("x")])
        await store.merge_metadata("s", {"k": 1})
        for read in (store.load("s"), store.load("s", 1), store.get_metadata("s")):
            await raw.pexpire(m, 5000)
            await raw.pexpire(h, 5000)
            await read
            assert await raw.pttl(m) > 95_000
            assert await raw.pttl(h) > 95_000


# --- stored data ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(EXPECTED))
async def test_records_of_every_schema_version_load(
    store: RedisStateStore, raw: aioredis.Redis, version: int
) -> None:
    await raw.rpush(f"{store.prefix}:{{old}}:m", *raw_records(version))
    check_loaded(await store.load("old"), version)
    await store.append("old", [user("new turn")])
    loaded = await store.load("old")
    check_loaded(loaded[:-1], version)
    assert loaded[-1] == user("new turn")


async def test_corrupt_data_raises_store_data_error(
    store: RedisStateStore, raw: aioredis.Redis
) -> None:
    await raw.rpush(f"{store.prefix}:{{bad}}:m", "{not json")
    await raw.rpush(f"{store.prefix}:{{newer}}:m", '{"v": 99, "role": "user", "content": "x"}')
    await raw.hset(f"{store.prefix}:{{meta}}:h", "k", "{not json")

    with pytest.raises(StoreDataError, match="'bad'"):
        await store.load("bad")
    with pytest.raises(StoreDataError, match="upgrade"):
        await store.load("newer")
    with pytest.raises(StoreDataError, match="'meta'"):
        await store.get_metadata("meta")


async def test_server_errors_become_store_errors(
    store: RedisStateStore, raw: aioredis.Redis
) -> None:
    await raw.set(f"{store.prefix}:{{s}}:m", "a string, not a list")
    with pytest.raises(StoreError, match="WRONGTYPE") as caught:
        await store.load("s")
    assert not isinstance(caught.value, StoreUnavailableError)
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await store.append("s", [user("x")])
    assert await raw.get(f"{store.prefix}:{{s}}:m") == b"a string, not a list"


# --- many writers --------------------------------------------------------------------------


async def test_two_pipelines_with_separate_pools_lose_and_interleave_nothing(
    redis_server: RedisServer,
) -> None:
    prefix = unique_prefix()
    first = await RedisStateStore.connect(redis_server.url, prefix=prefix)
    second = await RedisStateStore.connect(redis_server.url, prefix=prefix)
    assert first.client.connection_pool is not second.client.connection_pool
    pipes = {"A": echo_pipeline(first), "B": echo_pipeline(second)}

    async def chat(tag: str) -> None:
        for i in range(150):
            await pipes[tag].execute("shared", "user", f"{tag}{i}")

    await asyncio.gather(chat("A"), chat("B"))

    questions = assert_whole_turns(contents(await first.load("shared")))
    assert len(questions) == 300
    for tag in "AB":
        assert [q for q in questions if q[0] == tag] == [f"{tag}{i}" for i in range(150)]
    await first.aclose()
    await second.aclose()


async def test_two_processes_appending_to_one_session_lose_and_interleave_nothing(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    prefix = unique_prefix()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = (redis_server.url, prefix, "shared")
    pipe = asyncio.subprocess.PIPE
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            WORKER,
            *args,
            tag,
            "3",
            "40",
            cwd=ROOT,
            env=env,
            stdout=pipe,
            stderr=pipe,
        )
        for tag in "AB"
    ]
    with anyio.fail_after(60):
        for _ in processes:
            assert await raw.blpop([f"{prefix}-ready"], timeout=30) is not None
        for tag in "AB":
            await raw.rpush(f"{prefix}-go-{tag}", "go")
        outputs = [await p.communicate() for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()

    async with await RedisStateStore.connect(redis_server.url, prefix=prefix) as store:
        questions = assert_whole_turns(contents(await store.load("shared")))
    assert len(questions) == 2 * 3 * 40
    for tag in "AB":
        for p in range(3):
            mine = [q for q in questions if q.startswith(f"{tag}-{p}-")]
            assert mine == [f"{tag}-{p}-{i}" for i in range(40)]


async def test_cancelled_operations_leave_no_stale_replies(store: RedisStateStore) -> None:
    for i in range(50):
        await store.append(f"s{i}", [user(f"only s{i}")])

    for round_ in range(5):
        tasks = [asyncio.create_task(store.load(f"s{i}")) for i in range(50)]
        for _ in range(round_):
            await asyncio.sleep(0)  # cancel at a different point of the batch each round
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for i in range(50):
            assert contents(await store.load(f"s{i}")) == [f"only s{i}"]


async def test_a_cancelled_append_that_was_not_sent_is_not_stored(store: RedisStateStore) -> None:
    task = asyncio.create_task(store.append("s", [user("never")]))
    await asyncio.sleep(0)  # the append is queued for the next batch, not sent yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.load("s") == []


# --- faults --------------------------------------------------------------------------------


async def test_an_unreachable_address_fails_fast_with_what_to_check() -> None:
    port = free_port()
    with anyio.fail_after(30):  # a guard against hanging, not a timing assertion
        with pytest.raises(StoreUnavailableError) as caught:
            await RedisStateStore.connect(f"127.0.0.1:{port}")
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert f"redis-cli -h 127.0.0.1 -p {port} ping" in message


async def test_an_unreachable_cluster_fails_fast() -> None:
    port = free_port()
    with anyio.fail_after(30), pytest.raises(StoreUnavailableError, match="redis-cli"):
        await RedisStateStore.connect(f"127.0.0.1:{port}", cluster=True)


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
async def test_a_server_that_never_answers_times_out(cluster: bool) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accept the connection, read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        with anyio.fail_after(30), pytest.raises(StoreTimeoutError) as caught:
            await RedisStateStore.connect(
                f"127.0.0.1:{port}", cluster=cluster, connect_timeout=0.5, socket_timeout=0.3
            )
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert loop.time() - start <= 0.3 + 0.3  # the timeout, plus scheduling slack
    assert "did not answer connect in time" in str(caught.value)
    assert f"redis-cli -h 127.0.0.1 -p {port} ping" in str(caught.value)


async def test_redis_stopped_mid_run_then_restarted(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    store = await RedisStateStore.connect(
        server.address, prefix="p", connect_timeout=2, socket_timeout=2
    )
    gate = asyncio.Event()
    waiting = asyncio.Semaphore(0)

    async def reply(request: Any) -> str:
        question = request.messages[-1].content
        if question == "during":
            waiting.release()
            await gate.wait()  # the model is "thinking" when Redis goes away
        return f"reply to {question}"

    pipeline = echo_pipeline(store, reply)
    for s in range(20):
        await pipeline.execute(f"s{s}", "user", "before")
    in_flight = [
        asyncio.create_task(pipeline.execute(f"s{s}", "user", "during")) for s in range(20)
    ]
    for _ in range(20):
        await waiting.acquire()

    server.kill()
    gate.set()
    results = await asyncio.gather(*in_flight, return_exceptions=True)
    assert all(isinstance(r, StoreUnavailableError) for r in results), results
    with pytest.raises(StoreUnavailableError, match=f"-p {server.port} ping"):
        await pipeline.execute("s0", "user", "while down")
    # Other work goes on meanwhile.
    memory = echo_pipeline(InMemoryStateStore())
    assert (await memory.execute("m", "user", "hi")).response.content == "reply to hi"

    server.start()  # same port, same data directory: the AOF is replayed
    for s in range(20):
        assert contents(await store.load(f"s{s}")) == ["before", "reply to before"]
    await pipeline.execute("s0", "user", "after")  # the same store object works again
    assert contents(await store.load("s0")) == [
        "before",
        "reply to before",
        "after",
        "reply to after",
    ]
    await store.aclose()


async def test_a_kill_during_writes_leaves_only_whole_turns(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    store = await RedisStateStore.connect(
        server.address, prefix="p", connect_timeout=2, socket_timeout=2
    )
    acknowledged = 0
    enough = asyncio.Event()

    async def writer(w: int) -> int:
        nonlocal acknowledged
        i = 0
        while True:
            try:
                await store.append(f"w{w}", [user(f"q{i}"), bot(f"reply to q{i}")])
            except StoreUnavailableError:
                return i
            i += 1
            acknowledged += 1
            if acknowledged >= 500:
                enough.set()

    writers = [asyncio.create_task(writer(w)) for w in range(50)]
    await enough.wait()
    server.kill()  # while appends are on the wire
    acks = await asyncio.gather(*writers)

    server.start()
    for w, acked in enumerate(acks):
        questions = assert_whole_turns(contents(await store.load(f"w{w}")))
        # Every acknowledged turn is there; the one in flight at the kill may be too.
        assert acked <= len(questions) <= acked + 1
        assert questions == [f"q{i}" for i in range(len(questions))]
    await store.aclose()


# --- clients, ownership, configuration --------------------------------------------------


async def test_a_client_passed_in_stays_open_and_a_closed_store_refuses_work(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    store = RedisStateStore(client, prefix=unique_prefix())
    await store.append("s", [user("x")])
    await store.aclose()
    await store.aclose()  # idempotent

    assert await client.ping() is True
    with pytest.raises(StoreError, match="closed"):
        await store.load("s")
    await client.aclose()


async def test_resp3_and_decoding_clients_work(redis_server: RedisServer) -> None:
    client = aioredis.Redis(
        host="127.0.0.1", port=redis_server.port, protocol=3, decode_responses=True
    )
    async with RedisStateStore(client, prefix=unique_prefix()) as store:
        await store.append("ü s", [user("x", metadata={"a": 1}), bot("y")])
        assert await store.merge_metadata("ü s", {"k": [1]}) == {"k": [1]}
        assert await store.get_metadata("ü s") == {"k": [1]}
        assert await store.fork("ü s", "t") == 2
        assert contents(await store.load("t")) == ["x", "y"]
        assert (await store.load("t"))[0].metadata == {"a": 1}
        assert sorted(await every_session(store)) == ["t", "ü s"]
    await client.aclose()


async def test_session_ids_are_checked_before_any_io() -> None:
    # Nothing listens on this port: any I/O would fail with StoreUnavailableError.
    # No connect retries: this client's owner wants failures at once.
    client = aioredis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    store = RedisStateStore(client)
    for call in (store.load(""), store.append(" ", [user("x")]), store.fork("ok", "\x00")):
        with pytest.raises(InvalidSessionIdError):
            await call
    with pytest.raises(StoreUnavailableError):
        await store.load("fine")
    await store.aclose()
    await client.aclose()


async def test_addresses_urls_and_databases(redis_server: RedisServer, raw: aioredis.Redis) -> None:
    prefix = unique_prefix()
    for address, db in [
        (f"127.0.0.1:{redis_server.port}", 0),
        (f"redis://127.0.0.1:{redis_server.port}/3", 3),
        (f"127.0.0.1:{redis_server.port}", 2),
    ]:
        async with await RedisStateStore.connect(address, db=db, prefix=prefix) as store:
            await store.append(f"in db {db}", [user("x")])
    for db in (0, 2, 3):
        await raw.execute_command("SELECT", db)
        assert await raw.exists(f"{prefix}:{{in%20db%20{db}}}:m") == 1
    await raw.execute_command("SELECT", 0)
    with pytest.raises(InvalidRequestError):
        await RedisStateStore.connect("http://example.com")
    with pytest.raises(InvalidRequestError):
        await RedisStateStore.connect("localhost:notaport")


async def test_passwords_never_show_in_errors_or_repr(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory("--requirepass", "s3cret-pw")
    with pytest.raises(StoreError, match="password") as caught:
        await RedisStateStore.connect(server.address, password="wrong-pw")
    assert not isinstance(caught.value, StoreUnavailableError)
    assert "wrong-pw" not in str(caught.value)

    url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
    async with await RedisStateStore.connect(url, prefix="p") as store:
        await store.append("s", [user("x")])
        assert "s3cret" not in repr(store)
    async with await RedisStateStore.connect(server.address, password="s3cret-pw") as store:
        assert "s3cret" not in repr(store)
        server.stop()
        with pytest.raises(StoreUnavailableError) as down:
            await store.load("s")
        assert "s3cret" not in str(down.value)


def test_constructor_checks_its_arguments() -> None:
    client = aioredis.Redis()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"prefix": "a{b}"}, "prefix"),
        ({"prefix": ""}, "prefix"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": math.inf}, "ttl"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"max_in_flight": 0}, "max_in_flight"),
    ]
    for kwargs, name in bad:
        with pytest.raises(InvalidRequestError, match=name):
            RedisStateStore(client, **kwargs)
    with pytest.raises(InvalidRequestError, match="connect"):
        RedisStateStore("localhost:6379")  # type: ignore[arg-type]


async def test_connect_checks_its_arguments_before_any_io() -> None:
    # Nothing listens on port 1: any I/O would fail with StoreUnavailableError instead.
    for kwargs in ({"socket_timeout": 0}, {"socket_timeout": -1.0}, {"ttl": -5}):
        with pytest.raises(InvalidRequestError):
            await RedisStateStore.connect("127.0.0.1:1", **kwargs)  # type: ignore[arg-type]


def test_a_wrapped_client_without_a_socket_timeout_still_gets_a_bound() -> None:
    assert RedisStateStore(aioredis.Redis(socket_timeout=None)).timeout == DEFAULT_TIMEOUT
    assert RedisStateStore(aioredis.Redis(socket_timeout=1.5)).timeout == 1.5
    assert RedisStateStore(aioredis.Redis(socket_timeout=None), timeout=0.2).timeout == 0.2
    cluster = RedisCluster(host="127.0.0.1", port=1, socket_timeout=None)  # no I/O yet
    assert RedisStateStore(cluster).timeout == DEFAULT_TIMEOUT


async def test_one_failing_operation_does_not_fail_its_batch(
    store: RedisStateStore, raw: aioredis.Redis
) -> None:
    await raw.set(f"{store.prefix}:{{broken}}:m", "not a list")
    results = await asyncio.gather(
        store.load("broken"),
        store.append("fine", [user("x")]),
        store.append("broken", [user("y")]),
        store.count("fine"),
        return_exceptions=True,
    )
    assert isinstance(results[0], StoreError)
    assert results[1] is None
    assert isinstance(results[2], StoreError)
    assert results[3] == 1  # sent after the append, in the same batch
    assert contents(await store.load("fine")) == ["x"]


async def test_a_stalled_server_times_out_and_the_store_recovers(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    async with await RedisStateStore.connect(
        redis_server.url, prefix=unique_prefix(), socket_timeout=0.2, max_connections=2
    ) as store:
        await store.append("s", [user("x")])
        # Writes stall (reads and CLIENT UNPAUSE still run, so the test can end it).
        await raw.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        try:
            for _ in range(4):  # more timeouts than pooled connections
                with pytest.raises(StoreUnavailableError, match="did not answer append in time"):
                    await store.append("stalled", [user("?")])
        finally:
            await raw.execute_command("CLIENT", "UNPAUSE")
        # Timed-out connections were dropped and given back: the pool still works.
        await store.append("s", [user("y")])
        assert contents(await store.load("s")) == ["x", "y"]


async def test_a_unix_socket_url_works(
    redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    socket_path = tmp_path / "redis.sock"
    redis_factory("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    async with await RedisStateStore.connect(f"unix://{socket_path}", prefix="p") as store:
        await store.append("s", [user("over a unix socket")])
        assert contents(await store.load("s")) == ["over a unix socket"]
        assert f"unix://{socket_path}" in repr(store)


# --- session leases (issue 15) ---------------------------------------------------------------


async def test_a_turn_through_the_lease_costs_two_round_trips(
    counted: tuple[RedisStateStore, list[CountingProxy], list[int]],
) -> None:
    """begin_turn is one round trip (lease, turn id, history, ledger), end_turn one
    (fence, append, turn id, ledger, release); nothing is published when nobody waits."""
    store, proxies, ports = counted
    claim = await store.begin_turn("s", owner="t", lease_ttl=5)  # connect, load the script
    assert claim.token is not None
    await store.end_turn("s", claim.token, [user("warm-up"), bot("ok")])

    before = round_trips(proxies)
    for port in ports:
        command(port, "CONFIG", "RESETSTAT")
    for i in range(10):
        claim = await store.begin_turn("s", owner="t", lease_ttl=5, turn_id=f"id{i}")
        assert claim.token is not None
        assert len(claim.messages) == 2 * (i + 1)
        await store.end_turn("s", claim.token, [user(f"q{i}"), bot(f"a{i}")], turn_id=f"id{i}")

    assert round_trips(proxies) - before == 20
    calls = command_calls(ports)
    assert calls.get("evalsha") == 20
    assert "publish" not in calls  # no waiter: a release publishes nothing
    assert "eval" not in calls

    async def cost(operation: Any) -> int:
        before = round_trips(proxies)
        await operation
        return round_trips(proxies) - before

    claim = await store.begin_turn("s", owner="t", lease_ttl=5)
    assert claim.token is not None
    assert await cost(store.renew_turn("s", claim.token, 5)) == 1
    assert await cost(store.release_turn("s", claim.token)) == 1
    assert await cost(store.has_turn("s", "id3")) == 1
    assert await cost(store.get_ledger("s")) == 1


async def test_lease_keys_share_the_session_slot_and_ttl(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    """The turn ids, ledger, lease and fencing keys sit in the session's hash slot; all
    but the lease take the session's TTL (the fence outlives it by the lease TTL while a
    turn runs); the lease takes the lease TTL; a store without TTL makes them permanent."""
    prefix = unique_prefix()
    key = {s: f"{prefix}:{{s}}:{s}" for s in "mhtglf"}
    async with await RedisStateStore.connect(redis_server.url, prefix=prefix, ttl=100) as store:
        claim = await store.begin_turn("s", owner="host:1:abc", lease_ttl=10)
        assert claim.token is not None
        lease = await raw.hgetall(key["l"])
        assert lease.pop(b"n")  # the taking call's nonce
        assert lease == {b"tok": str(claim.token).encode(), b"own": b"host:1:abc"}
        assert 9_000 < await raw.pttl(key["l"]) <= 10_000
        assert 105_000 < await raw.pttl(key["f"]) <= 110_000  # session TTL + lease TTL
        await store.end_turn("s", claim.token, [user("q"), bot("a")], turn_id="id")
        assert not await raw.exists(key["l"])
        for suffix in "mtgf":
            assert 95_000 < await raw.pttl(key[suffix]) <= 100_000, suffix
        assert await raw.hget(key["t"], "id") == b"0 2"  # position and count
        slots = {key_slot(k.encode()) for k in key.values()}
        assert len(slots) == 1

        # A plain write renews the TTL of the turn ids and the ledger too.
        await raw.pexpire(key["t"], 5000)
        await raw.pexpire(key["g"], 5000)
        await store.append("s", [user("x")])
        assert 95_000 < await raw.pttl(key["t"]) <= 100_000
        assert 95_000 < await raw.pttl(key["g"]) <= 100_000

    async with await RedisStateStore.connect(redis_server.url, prefix=prefix) as forever:
        claim = await forever.begin_turn("s", owner="o", lease_ttl=10)
        assert claim.token is not None
        await forever.end_turn("s", claim.token, [user("q2"), bot("a2")], turn_id="id2")
        for suffix in "mtgf":
            assert await raw.pttl(key[suffix]) == -1, suffix


async def test_a_session_with_only_a_lease_is_not_listed_and_does_not_exist(
    store: RedisStateStore, raw: aioredis.Redis
) -> None:
    claim = await store.begin_turn("ghost", owner="o", lease_ttl=10)
    assert claim.token is not None
    assert await raw.exists(f"{store.prefix}:{{ghost}}:l", f"{store.prefix}:{{ghost}}:f") == 2
    await store.append("real", [user("x")])
    assert await every_session(store) == ["real"]
    assert await store.count("ghost") == 0
    assert await store.delete("ghost") is False
    # delete drops the fencing key: the running turn is fenced, and a later token still grows.
    with pytest.raises(LeaseLostError):
        await store.end_turn("ghost", claim.token, [user("late")])
    assert await store.load("ghost") == []
    await store.release_turn("ghost", claim.token)
    later = await store.begin_turn("ghost", owner="o", lease_ttl=10)
    assert later.token is not None
    assert later.token > claim.token


async def test_turn_scripts_work_after_script_flush(
    store: RedisStateStore, raw: aioredis.Redis
) -> None:
    await store.append("s", [user("x")])  # loads the script
    await raw.script_flush()
    claim = await store.begin_turn("s", owner="o", lease_ttl=10)
    assert claim.token is not None
    assert contents(claim.messages) == ["x"]
    await raw.script_flush()
    await store.end_turn("s", claim.token, [user("q"), bot("a")], turn_id="id")
    assert await store.has_turn("s", "id")


async def subscribers(raw: aioredis.Redis, channel: str) -> int:
    return int(dict(await raw.pubsub_numsub(channel))[channel.encode()])


async def test_the_subscriber_starts_with_the_first_wait_and_aclose_closes_it(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    prefix = unique_prefix()
    channel = prefix + ":signals"
    store = await RedisStateStore.connect(redis_server.url, prefix=prefix)
    try:
        claim = await store.begin_turn("s", owner="o", lease_ttl=10)
        assert claim.token is not None
        await store.end_turn("s", claim.token, [user("q")])
        assert await subscribers(raw, channel) == 0  # turns alone never subscribe
        holder = await store.begin_turn("s", owner="o", lease_ttl=10)
        assert holder.token is not None
        assert (await store.begin_turn("s", owner="p", lease_ttl=10)).token is None
        waiting = asyncio.ensure_future(store.wait_turn("s", 10))
        await store._listen()  # the waiter's subscription is up
        assert await subscribers(raw, channel) == 1
        assert not waiting.done()
        await store.release_turn("s", holder.token)
        assert await asyncio.wait_for(waiting, 5) is True
    finally:
        await store.aclose()
    assert await subscribers(raw, channel) == 0


async def test_a_release_publishes_only_when_a_turn_waits(
    redis_server: RedisServer, store: RedisStateStore
) -> None:
    def published() -> int:
        stats = command(redis_server.port, "INFO", "commandstats").decode()
        line = next((x for x in stats.splitlines() if x.startswith("cmdstat_publish:")), "")
        return int(line.split("calls=")[1].split(",")[0]) if line else 0

    before = published()
    claim = await store.begin_turn("s", owner="o", lease_ttl=10)
    assert claim.token is not None
    await store.end_turn("s", claim.token, [user("q")])
    assert published() == before
    claim = await store.begin_turn("s", owner="o", lease_ttl=10)
    assert claim.token is not None
    assert (await store.begin_turn("s", owner="p", lease_ttl=10)).token is None  # flags it
    await store.release_turn("s", claim.token)
    assert published() == before + 1


async def test_a_waiter_notices_an_expired_lease_within_the_poll_interval(
    redis_server: RedisServer,
) -> None:
    """A holder that died publishes nothing; the waiter's poll notices the expiry."""
    async with await RedisStateStore.connect(
        redis_server.url, prefix=unique_prefix(), signal_poll_interval=0.2
    ) as store:
        assert (await store.begin_turn("s", owner="dead", lease_ttl=0.3)).token is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await store.wait_turn("s", 10) is True
        assert loop.time() - start <= 0.3 + 0.2 + 0.5  # TTL + poll interval + slack
        assert (await store.begin_turn("s", owner="next", lease_ttl=5)).token is not None


async def test_a_steal_from_another_store_reaches_the_watcher(
    redis_server: RedisServer,
) -> None:
    """Two store objects (two processes, as far as Redis can tell): the steal by one is
    published and the other's watcher is told."""
    prefix = unique_prefix()
    async with (
        await RedisStateStore.connect(redis_server.url, prefix=prefix) as first,
        await RedisStateStore.connect(redis_server.url, prefix=prefix) as second,
    ):
        token = (await first.begin_turn("s", owner="a", lease_ttl=30)).token
        assert token is not None
        lost = asyncio.Event()
        stop = first.watch_lease("s", token, lost.set)
        await first._listen()  # subscribed: the steal below is heard, not found by the check
        stolen = (await second.begin_turn("s", owner="b", lease_ttl=30, steal=True)).token
        assert stolen is not None
        await asyncio.wait_for(lost.wait(), 5)
        stop()
        with pytest.raises(LeaseLostError):
            await first.end_turn("s", token, [user("late")])
        await second.end_turn("s", stolen, [user("q")])
        assert contents(await first.load("s")) == ["q"]


async def test_a_lease_taken_by_a_begin_whose_reply_was_lost_is_released(
    redis_server: RedisServer,
) -> None:
    """begin_turn's script runs but its reply is withheld past the timeout: the caller
    gets StoreTimeoutError (maybe applied), and the store releases the lease it may
    have taken as soon as Redis answers again, so the session does not wait out the
    lease TTL."""
    proxy = await ReplyStallProxy(redis_server.port, b"\r\n$5\r\nbegin\r\n", stall=0.6).start()
    prefix = unique_prefix()
    try:
        async with (
            await RedisStateStore.connect(
                f"127.0.0.1:{proxy.port}", prefix=prefix, socket_timeout=0.2
            ) as stalled,
            await RedisStateStore.connect(redis_server.url, prefix=prefix) as other,
        ):
            await other.append("warm-up", [user("x")])  # the server knows the script
            with pytest.raises(StoreTimeoutError) as caught:
                await stalled.begin_turn("s", owner="lost", lease_ttl=60)
            assert caught.value.maybe_applied
            assert proxy.saves_seen == 1
            # The lost begin holds the lease (60 s) until the store releases it.
            assert (await other.begin_turn("s", owner="next", lease_ttl=60)).token is None
            loop = asyncio.get_running_loop()
            start = loop.time()
            assert await other.wait_turn("s", 10) is True  # woken by the release
            assert loop.time() - start < 5  # not the lease's 60 s
            assert (await other.begin_turn("s", owner="next", lease_ttl=60)).token is not None
    finally:
        await proxy.aclose()
