"""ProviderMiddleware's tool loop, end to end through a Pipeline with a MockProvider."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import pytest

from promptkit_async import (
    BaseProvider,
    ExecutionContext,
    GenerationConfig,
    InMemoryStateStore,
    Message,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderMiddlewareConfig,
    ProviderRequest,
    ProviderResponse,
    StateMiddleware,
    StreamChunk,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolError,
    ToolPolicy,
    ToolRegistry,
    Usage,
    tool,
)
from promptkit_async.statestore.records import decode_message, encode_message

SESSION = "user-1"


def calls(*items: tuple[str, str, str]) -> ProviderResponse:
    """A scripted assistant reply asking for tool calls ``(id, name, arguments)``."""
    return ProviderResponse(tool_calls=tuple(ToolCall(*c) for c in items))


def make_pipeline(
    provider: MockProvider,
    tools: object,
    policy: ToolPolicy | None = None,
    store: InMemoryStateStore | None = None,
    config: ProviderMiddlewareConfig | None = None,
) -> tuple[Pipeline, InMemoryStateStore]:
    store = store or InMemoryStateStore()
    pipe = Pipeline(
        StateMiddleware(store),
        ProviderMiddleware(provider, tools, policy, config),  # type: ignore[arg-type]
    )
    return pipe, store


def tool_messages(request: ProviderRequest) -> list[Message]:
    return [m for m in request.messages if m.role == "tool"]


class Weather:
    """A weather tool that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

        @tool
        async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
            """Current weather for a city.

            Args:
                city: the city name.
            """
            self.calls.append((city, unit))
            return f"sunny, 21 {unit} in {city}"

        self.tool = get_weather


# --- one round ---------------------------------------------------------------------------


async def test_single_tool_round_sends_definitions_then_results() -> None:
    weather = Weather()
    provider = MockProvider(
        [calls(("c1", "get_weather", '{"city": "Paris"}')), "It is sunny in Paris."]
    )
    pipe, _ = make_pipeline(provider, [weather.tool])

    result = await pipe.execute(SESSION, "user", "Weather in Paris?")

    assert weather.calls == [("Paris", "C")]
    assert result.response.content == "It is sunny in Paris."
    first, second = provider.requests
    # Round 1: the tool's definition, derived from its hints and docstring.
    assert [d.name for d in first.tools] == ["get_weather"]
    params = first.tools[0].parameters
    assert params["required"] == ["city"]
    assert params["properties"]["unit"] == {"type": "string", "enum": ["C", "F"], "default": "C"}
    assert first.tools[0].description == "Current weather for a city."
    assert [m.role for m in first.messages] == ["user"]  # a snapshot, not the live list
    # Round 2: the assistant's tool-call message and the tool result, matched by id.
    assert [m.role for m in second.messages] == ["user", "assistant", "tool"]
    assert second.messages[1].tool_calls == (ToolCall("c1", "get_weather", '{"city": "Paris"}'),)
    assert second.messages[2] == Message(
        "tool", "sunny, 21 C in Paris", tool_call_id="c1", name="get_weather"
    )
    assert second.tools == first.tools


async def test_usage_and_cost_sum_every_round_and_trace_records_the_round() -> None:
    weather = Weather()
    provider = MockProvider(
        [
            ProviderResponse(
                tool_calls=(ToolCall("c1", "get_weather", '{"city": "Oslo"}'),),
                usage=Usage(100, 10),
            ),
            ProviderResponse("Cold.", usage=Usage(130, 3)),
        ],
        model="gpt-4o-mini",
    )
    pipe, _ = make_pipeline(provider, [weather.tool])

    result = await pipe.execute(SESSION, "user", "Oslo?")

    assert result.usage == Usage(230, 13)
    expected = provider.calculate_cost(Usage(100, 10)) + provider.calculate_cost(Usage(130, 3))
    assert result.cost.total_cost == pytest.approx(expected.total_cost)
    assert result.cost.total_cost > 0
    assert result.response.usage == Usage(130, 3)  # the final response, not the sum
    rounds = [e for e in result.trace if e.kind == "tool_round"]
    assert len(rounds) == 1
    (record,) = rounds[0].detail["calls"]
    assert (record["id"], record["name"], record["status"]) == ("c1", "get_weather", "ok")


async def test_streamed_text_of_every_round_reaches_the_caller() -> None:
    weather = Weather()
    provider = MockProvider(
        [
            ProviderResponse(
                "Let me check. ", tool_calls=(ToolCall("c1", "get_weather", '{"city": "Rome"}'),)
            ),
            "Warm in Rome.",
        ],
        chunk_size=4,
    )
    pipe, store = make_pipeline(provider, [weather.tool])

    chunks = [c async for c in pipe.stream(SESSION, "user", "Rome?")]

    text = "".join(c.delta for c in chunks)
    assert text == "Let me check. Warm in Rome."
    deltas = [d for c in chunks for d in c.tool_call_deltas]
    assert [(d.id, d.name) for d in deltas] == [("c1", "get_weather")]
    final = chunks[-1].final_result
    assert final is not None
    assert final.response.content == "Warm in Rome."
    # The first round's text is part of the stored assistant tool-call message.
    stored = await store.load(SESSION)
    assert stored[1].content == "Let me check. "
    assert stored[1].tool_calls


async def test_non_streaming_config_runs_the_same_loop() -> None:
    weather = Weather()
    provider = MockProvider([calls(("c1", "get_weather", '{"city": "Lima"}')), "Mild."])
    pipe, store = make_pipeline(
        provider,
        [weather.tool],
        config=ProviderMiddlewareConfig(GenerationConfig(max_tokens=50), stream=False),
    )

    result = await pipe.execute(SESSION, "user", "Lima?")

    assert result.response.content == "Mild."
    assert weather.calls == [("Lima", "C")]
    assert all(r.generation.max_tokens == 50 for r in provider.requests)
    assert len(await store.load(SESSION)) == 4


# --- parallel calls ----------------------------------------------------------------------


async def test_parallel_calls_in_one_message_run_concurrently_and_answer_in_order() -> None:
    b_started = asyncio.Event()
    finished: list[str] = []

    @tool
    async def slow_a() -> str:
        """Finishes only once slow_b has started: deadlocks (times out) if run serially."""
        await b_started.wait()
        finished.append("a")
        return "A"

    @tool
    async def fast_b() -> str:
        """Starts and finishes at once."""
        b_started.set()
        finished.append("b")
        return "B"

    provider = MockProvider([calls(("c1", "slow_a", "{}"), ("c2", "fast_b", "{}")), "done"])
    # If the calls ran one after the other, slow_a would hit this timeout.
    pipe, _ = make_pipeline(provider, [slow_a, fast_b], ToolPolicy(timeout=10))

    result = await pipe.execute(SESSION, "user", "go")

    assert finished == ["b", "a"]  # b finished first...
    results = tool_messages(provider.requests[1])
    # ...but the results follow the order of the calls.
    assert [(m.tool_call_id, m.content) for m in results] == [("c1", "A"), ("c2", "B")]
    statuses = [r["status"] for r in result.trace[0].detail["calls"]]
    assert statuses == ["ok", "ok"]


async def test_one_failing_call_does_not_spoil_its_siblings() -> None:
    @tool
    async def ok() -> str:
        """Works."""
        return "fine"

    @tool
    async def broken() -> str:
        """Fails."""
        raise RuntimeError("disk on fire")

    provider = MockProvider(
        [calls(("c1", "broken", "{}"), ("c2", "ok", "{}"), ("c3", "missing", "{}")), "ok"]
    )
    pipe, _ = make_pipeline(provider, [ok, broken])

    await pipe.execute(SESSION, "user", "go")

    contents = [m.content for m in tool_messages(provider.requests[1])]
    assert "RuntimeError: disk on fire" in contents[0]
    assert contents[1] == "fine"
    assert "no tool named 'missing'" in contents[2]


# --- limits ------------------------------------------------------------------------------


def always_calls_tools(request: ProviderRequest) -> ProviderResponse | str:
    n = sum(1 for m in request.messages if m.role == "assistant")
    if request.tool_choice == "none":
        return "Giving up on tools: here is my best answer."
    return calls((f"c{n}", "ping", "{}"))


async def test_max_rounds_then_one_final_request_without_tools() -> None:
    pings: list[int] = []

    @tool
    async def ping() -> str:
        """Ping."""
        pings.append(1)
        return "pong"

    provider = MockProvider(handler=always_calls_tools)
    pipe, store = make_pipeline(provider, [ping], ToolPolicy(max_rounds=2))

    result = await pipe.execute(SESSION, "user", "loop")

    assert len(pings) == 2
    assert [r.tool_choice for r in provider.requests] == [None, None, "none"]
    assert all(r.tools for r in provider.requests)  # definitions stay (the history uses them)
    assert result.response.content == "Giving up on tools: here is my best answer."
    kinds = [e.kind for e in result.trace]
    assert kinds == ["tool_round", "tool_round", "tool_rounds_exhausted"]
    roles = [m.role for m in await store.load(SESSION)]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]


async def test_tool_calls_after_the_last_round_are_dropped_not_run() -> None:
    pings: list[int] = []

    @tool
    async def ping() -> str:
        """Ping."""
        pings.append(1)
        return "pong"

    # A model that ignores tool_choice="none".
    provider = MockProvider(
        [
            calls(("c1", "ping", "{}")),
            ProviderResponse("partial", tool_calls=(ToolCall("c2", "ping"),)),
        ]
    )
    pipe, store = make_pipeline(provider, [ping], ToolPolicy(max_rounds=1))

    result = await pipe.execute(SESSION, "user", "loop")

    assert len(pings) == 1
    assert result.response.tool_calls == ()
    assert result.response.content == "partial"
    dropped = [e for e in result.trace if e.kind == "tool_calls_dropped"]
    assert dropped[0].detail["calls"] == ("ping",)
    stored = await store.load(SESSION)
    # Every stored tool call has its answer: the history replays on any provider.
    assert stored[-1] == Message("assistant", "partial")
    answered = {m.tool_call_id for m in stored if m.role == "tool"}
    assert {c.id for m in stored for c in m.tool_calls} == answered


async def test_calls_despite_tool_choice_none_are_not_run() -> None:
    weather = Weather()
    provider = MockProvider(
        [ProviderResponse("From memory: sunny.", tool_calls=(ToolCall("c1", "get_weather"),))]
    )
    pipe, store = make_pipeline(provider, [weather.tool], ToolPolicy(tool_choice="none"))

    result = await pipe.execute(SESSION, "user", "Paris?")

    assert provider.requests[0].tool_choice == "none"
    assert weather.calls == []
    assert len(provider.requests) == 1
    assert [e.kind for e in result.trace] == ["tool_calls_dropped"]
    assert await store.load(SESSION) == [
        Message("user", "Paris?"),
        Message("assistant", "From memory: sunny."),
    ]


async def test_forced_tool_choice_applies_to_the_first_request_only() -> None:
    weather = Weather()
    provider = MockProvider([calls(("c1", "get_weather", '{"city": "Bern"}')), "Snow."])
    pipe, _ = make_pipeline(provider, [weather.tool], ToolPolicy(tool_choice="get_weather"))

    await pipe.execute(SESSION, "user", "Bern?")

    assert [r.tool_choice for r in provider.requests] == ["get_weather", "auto"]


async def test_tool_choice_must_name_an_offered_tool() -> None:
    weather = Weather()
    with pytest.raises(ToolError, match="not registered"):
        ProviderMiddleware(MockProvider(), [weather.tool], ToolPolicy(tool_choice="nope"))
    with pytest.raises(ToolError, match="blocklist"):
        ProviderMiddleware(
            MockProvider(),
            [weather.tool],
            ToolPolicy(tool_choice="get_weather", blocklist={"get_weather"}),
        )


# --- failures become tool results --------------------------------------------------------


async def test_tool_exception_goes_back_to_the_model() -> None:
    @tool
    async def lookup(city: str) -> str:
        """Look a city up."""
        raise ValueError(f"no such city: {city}")

    provider = MockProvider([calls(("c1", "lookup", '{"city": "Atlantis"}')), "Sorry."])
    pipe, store = make_pipeline(provider, [lookup])

    result = await pipe.execute(SESSION, "user", "Atlantis?")

    (message,) = tool_messages(provider.requests[1])
    assert message.tool_call_id == "c1"
    assert "ValueError: no such city: Atlantis" in message.content
    assert message.content.startswith("Error:")
    assert result.trace[0].detail["calls"][0]["status"] == "error"
    assert len(await store.load(SESSION)) == 4


async def test_tool_raising_its_own_timeout_error_is_an_error_not_a_timeout() -> None:
    @tool
    async def flaky() -> str:
        """Times out on its own."""
        raise TimeoutError("upstream took too long")

    provider = MockProvider([calls(("c1", "flaky", "{}")), "ok"])
    pipe, _ = make_pipeline(provider, [flaky], ToolPolicy(timeout=10))

    result = await pipe.execute(SESSION, "user", "go")

    assert result.trace[0].detail["calls"][0]["status"] == "error"
    assert "upstream took too long" in tool_messages(provider.requests[1])[0].content


async def test_hanging_async_tool_times_out_and_is_cancelled() -> None:
    cancelled = asyncio.Event()

    @tool
    async def hang() -> str:
        """Never returns."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "unreachable"

    provider = MockProvider([calls(("c1", "hang", "{}")), "It timed out."])
    pipe, _ = make_pipeline(provider, [hang], ToolPolicy(timeout=0.05))

    result = await pipe.execute(SESSION, "user", "go")

    assert cancelled.is_set()
    (message,) = tool_messages(provider.requests[1])
    assert message.content == (
        "Error: the tool 'hang' did not finish within 0.05 seconds and was cancelled."
    )
    assert result.trace[0].detail["calls"][0]["status"] == "timeout"
    assert result.response.content == "It timed out."


async def test_hanging_sync_tool_times_out_without_blocking_the_loop() -> None:
    release = threading.Event()

    def block() -> str:
        """A sync tool stuck in I/O."""
        release.wait()
        return "late"

    # The tool's own timeout overrides the policy's "no limit".
    provider = MockProvider([calls(("c1", "block", "{}")), "ok"])
    pipe, _ = make_pipeline(provider, [Tool(block, timeout=0.05)], ToolPolicy(timeout=None))
    try:
        result = await pipe.execute(SESSION, "user", "go")
    finally:
        release.set()  # let the worker thread finish

    assert result.trace[0].detail["calls"][0]["status"] == "timeout"
    assert "did not finish within 0.05 seconds" in tool_messages(provider.requests[1])[0].content


async def test_sync_tools_run_in_a_worker_thread() -> None:
    threads: list[int] = []

    def where() -> str:
        """Report the thread."""
        threads.append(threading.get_ident())
        return "here"

    provider = MockProvider([calls(("c1", "where", "{}")), "ok"])
    pipe, _ = make_pipeline(provider, [where])

    await pipe.execute(SESSION, "user", "go")

    assert threads
    assert threads[0] != threading.get_ident()


async def test_unknown_tool_name_gets_a_tool_result_saying_so() -> None:
    weather = Weather()
    provider = MockProvider([calls(("c1", "get_wether", '{"city": "Paris"}')), "Oops."])
    pipe, _ = make_pipeline(provider, [weather.tool])

    result = await pipe.execute(SESSION, "user", "Paris?")

    (message,) = tool_messages(provider.requests[1])
    assert message.content == (
        "Error: there is no tool named 'get_wether'. Available tools: get_weather."
    )
    assert weather.calls == []
    assert result.trace[0].detail["calls"][0]["status"] == "unknown"


async def test_blocklisted_tool_is_not_offered_and_not_run() -> None:
    weather = Weather()
    deleted: list[str] = []

    @tool
    async def delete_account(user: str) -> str:
        """Delete a user."""
        deleted.append(user)
        return "deleted"

    provider = MockProvider([calls(("c1", "delete_account", '{"user": "bob"}')), "Cannot."])
    pipe, _ = make_pipeline(
        provider, [weather.tool, delete_account], ToolPolicy(blocklist=["delete_account"])
    )

    result = await pipe.execute(SESSION, "user", "delete bob")

    assert [d.name for d in provider.requests[0].tools] == ["get_weather"]
    assert deleted == []
    (message,) = tool_messages(provider.requests[1])
    assert (
        message.content == "Error: the tool 'delete_account' is not allowed. Do not call it again."
    )
    assert result.trace[0].detail["calls"][0]["status"] == "blocked"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"city": ', "are not valid JSON"),
        ('["Paris"]', "must be a JSON object, not list"),
        ('{"city": 7}', "city: expected string, got integer"),
        ('{"city": "Paris", "unit": "K"}', "unit: expected one of ['C', 'F'], got 'K'"),
        ("{}", "missing required 'city'"),
        ('{"town": "Paris"}', "unexpected property 'town'"),
    ],
)
async def test_bad_arguments_get_a_tool_result_saying_so(arguments: str, expected: str) -> None:
    weather = Weather()
    provider = MockProvider([calls(("c1", "get_weather", arguments)), "Let me retry."])
    pipe, store = make_pipeline(provider, [weather.tool])

    result = await pipe.execute(SESSION, "user", "Paris?")

    assert weather.calls == []
    (message,) = tool_messages(provider.requests[1])
    assert expected in message.content
    assert message.content.startswith("Error:")
    assert result.trace[0].detail["calls"][0]["status"] == "bad_arguments"
    # The malformed call is stored exactly as the model wrote it.
    assert (await store.load(SESSION))[1].tool_calls[0].arguments == arguments


async def test_empty_arguments_text_means_no_arguments() -> None:
    @tool
    async def now() -> str:
        """The time."""
        return "noon"

    provider = MockProvider([calls(("c1", "now", "")), "It is noon."])
    pipe, _ = make_pipeline(provider, [now])

    await pipe.execute(SESSION, "user", "time?")

    assert tool_messages(provider.requests[1])[0].content == "noon"


async def test_calls_without_an_id_get_one_shared_by_call_and_result() -> None:
    weather = Weather()
    provider = MockProvider([calls(("", "get_weather", '{"city": "Kyiv"}')), "ok"])
    pipe, store = make_pipeline(provider, [weather.tool])

    await pipe.execute(SESSION, "user", "Kyiv?")

    stored = await store.load(SESSION)
    call_id = stored[1].tool_calls[0].id
    assert call_id
    assert stored[2].tool_call_id == call_id


# --- history: whole or nothing, and replay -----------------------------------------------


async def test_stored_turn_is_whole_and_the_next_turn_replays_it() -> None:
    weather = Weather()
    provider = MockProvider(
        [
            calls(
                ("c1", "get_weather", '{"city": "Paris"}'),
                ("c2", "get_weather", '{"city": "Rome"}'),
            ),
            "Paris and Rome are sunny.",
            "You asked about Paris and Rome.",
        ]
    )
    pipe, store = make_pipeline(provider, [weather.tool])

    first = await pipe.execute(SESSION, "user", "Paris and Rome?")
    stored = await store.load(SESSION)

    assert stored == [
        Message("user", "Paris and Rome?"),
        Message(
            "assistant",
            "",
            (
                ToolCall("c1", "get_weather", '{"city": "Paris"}'),
                ToolCall("c2", "get_weather", '{"city": "Rome"}'),
            ),
        ),
        Message("tool", "sunny, 21 C in Paris", tool_call_id="c1", name="get_weather"),
        Message("tool", "sunny, 21 C in Rome", tool_call_id="c2", name="get_weather"),
        Message("assistant", "Paris and Rome are sunny."),
    ]
    assert list(first.messages) == stored

    second = await pipe.execute(SESSION, "user", "What did I ask?")

    assert provider.requests[2].messages == (*stored, Message("user", "What did I ask?"))
    assert second.messages == (
        Message("user", "What did I ask?"),
        Message("assistant", "You asked about Paris and Rome."),
    )
    assert len(await store.load(SESSION)) == 7


async def test_provider_error_in_a_later_round_stores_nothing() -> None:
    weather = Weather()
    provider = MockProvider(
        [calls(("c1", "get_weather", '{"city": "Paris"}')), RuntimeError("provider down")]
    )
    pipe, store = make_pipeline(provider, [weather.tool])

    with pytest.raises(RuntimeError, match="provider down"):
        await pipe.execute(SESSION, "user", "Paris?")

    assert weather.calls == [("Paris", "C")]  # the tool ran...
    assert await store.load(SESSION) == []  # ...but nothing of the turn was stored


class Gate:
    """Tools that block until cancelled, and report that they were."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.running = 0
        self.cancelled = 0

    async def wait(self) -> str:
        self.running += 1
        if self.running == 2:
            self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return "unreachable"


async def test_cancelling_the_turn_during_tool_runs_cancels_them_and_stores_nothing() -> None:
    gate = Gate()
    one = Tool(gate.wait, name="one")
    two = Tool(gate.wait, name="two")
    provider = MockProvider([calls(("c1", "one", "{}"), ("c2", "two", "{}")), "never"])
    pipe, store = make_pipeline(provider, [one, two], ToolPolicy(timeout=None))

    turn = asyncio.create_task(pipe.execute(SESSION, "user", "go"))
    await gate.started.wait()
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn

    assert gate.cancelled == 2  # both tools were cancelled and finished before the turn ended
    assert len(provider.requests) == 1
    assert await store.load(SESSION) == []
    assert pipe.in_flight == 0


async def test_closing_a_stream_during_a_tool_run_stores_nothing() -> None:
    # The turn runs inside the reading task, so "during a tool run" means the reader is
    # waiting in __anext__ while the tools run; the web server cancels it (client gone).
    gate = Gate()
    provider = MockProvider(
        [ProviderResponse("Checking...", tool_calls=(ToolCall("c1", "one"), ToolCall("c2", "two")))]
    )
    pipe, store = make_pipeline(
        provider, [Tool(gate.wait, name="one"), Tool(gate.wait, name="two")], ToolPolicy()
    )
    deltas = []

    async def read() -> None:
        async with pipe.stream(SESSION, "user", "go") as chunks:
            async for chunk in chunks:
                deltas.append(chunk)

    reader = asyncio.create_task(read())
    await gate.started.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader

    assert any(chunk.tool_call_deltas for chunk in deltas)
    assert gate.cancelled == 2
    assert await store.load(SESSION) == []
    # The session is usable again at once.
    provider2 = MockProvider(["hello"])
    pipe2, _ = make_pipeline(provider2, None, store=store)
    await pipe2.execute(SESSION, "user", "hi")
    assert [m.role for m in await store.load(SESSION)] == ["user", "assistant"]


# --- construction forms and context ------------------------------------------------------


async def test_positional_and_keyword_forms_and_a_live_registry() -> None:
    weather = Weather()
    registry = ToolRegistry([weather.tool])
    policy = ToolPolicy(max_rounds=3)
    config = ProviderMiddlewareConfig(GenerationConfig(max_tokens=77))
    provider = MockProvider(["a", "b"])
    positional = ProviderMiddleware(provider, registry, policy, config)
    keyword = ProviderMiddleware(provider, tools=registry, tool_policy=policy, config=config)
    assert positional.tools is registry
    assert keyword.tool_policy is policy
    assert keyword.config is config
    store = InMemoryStateStore()
    pipe = Pipeline(StateMiddleware(store), keyword)

    await pipe.execute(SESSION, "user", "one")

    @registry.register
    async def added_later(x: int) -> int:
        """Added after the middleware was built."""
        return x

    await pipe.execute(SESSION, "user", "two")

    assert [d.name for d in provider.requests[0].tools] == ["get_weather"]
    assert [d.name for d in provider.requests[1].tools] == ["get_weather", "added_later"]
    assert provider.requests[0].generation.max_tokens == 77


async def test_without_tools_nothing_tool_related_is_sent() -> None:
    provider = MockProvider(["hi"])
    pipe, _ = make_pipeline(provider, None)

    await pipe.execute(SESSION, "user", "hello")

    assert provider.requests[0].tools == ()
    assert provider.requests[0].tool_choice is None


async def test_empty_registry_sends_no_tool_choice() -> None:
    provider = MockProvider(["hi"])
    pipe, _ = make_pipeline(provider, ToolRegistry(), ToolPolicy(tool_choice="required"))

    await pipe.execute(SESSION, "user", "hello")

    assert provider.requests[0].tools == ()
    assert provider.requests[0].tool_choice is None


async def test_tools_argument_must_be_a_registry_or_sequence() -> None:
    weather = Weather()
    with pytest.raises(ToolError, match="wrap a single tool in a list"):
        ProviderMiddleware(MockProvider(), weather.tool)
    with pytest.raises(ToolError, match="must be a ToolPolicy"):
        ProviderMiddleware(MockProvider(), [weather.tool], {"max_rounds": 2})  # type: ignore[arg-type]


async def test_tool_receives_the_turn_context() -> None:
    seen: list[tuple[str, object]] = []

    @tool
    async def whoami(ctx: ExecutionContext, greeting: str = "hi") -> str:
        """Who is asking."""
        seen.append((ctx.session_id, ctx.metadata.get("tenant")))
        return f"{greeting} {ctx.session_id}"

    assert "ctx" not in whoami.parameters["properties"]
    provider = MockProvider([calls(("c1", "whoami", "{}")), "ok"])
    pipe, _ = make_pipeline(provider, [whoami])

    await pipe.execute(SESSION, "user", "me?", metadata={"tenant": "acme"})

    assert seen == [(SESSION, "acme")]
    assert tool_messages(provider.requests[1])[0].content == f"hi {SESSION}"


async def test_non_string_results_are_sent_as_json() -> None:
    @tool
    def stats(n: int) -> dict[str, Sequence[int]]:
        """Numbers."""
        return {"squares": [i * i for i in range(n)]}

    provider = MockProvider([calls(("c1", "stats", '{"n": 3}')), "ok"])
    pipe, _ = make_pipeline(provider, [stats])

    await pipe.execute(SESSION, "user", "go")

    assert tool_messages(provider.requests[1])[0].content == '{"squares": [0, 1, 4]}'


class DeltasOnlyProvider(BaseProvider):
    """Streams tool calls only as fragments; its final response lists none."""

    def __init__(self) -> None:
        super().__init__("deltas", "mock-model")
        self.requests: list[ProviderRequest] = []

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamChunk]:
        self.requests.append(request)
        if len(self.requests) == 1:
            yield StreamChunk(tool_call_deltas=(ToolCallDelta(0, "c1", "get_weather"),))
            yield StreamChunk(tool_call_deltas=(ToolCallDelta(0, arguments='{"city": '),))
            yield StreamChunk(tool_call_deltas=(ToolCallDelta(0, arguments='"Nice"}'),))
            yield StreamChunk(response=ProviderResponse(finish_reason="tool_calls"))
        else:
            yield StreamChunk(delta="Sunny in Nice.")
            yield StreamChunk(response=ProviderResponse("Sunny in Nice.", finish_reason="stop"))


async def test_streamed_fragments_are_assembled_when_the_response_omits_the_calls() -> None:
    weather = Weather()
    provider = DeltasOnlyProvider()
    store = InMemoryStateStore()
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(provider, [weather.tool]))

    result = await pipe.execute(SESSION, "user", "Nice?")

    assert weather.calls == [("Nice", "C")]
    assert result.response.content == "Sunny in Nice."
    assert (await store.load(SESSION))[1].tool_calls == (
        ToolCall("c1", "get_weather", '{"city": "Nice"}'),
    )


async def test_a_tool_turn_survives_the_persistent_record_format() -> None:
    weather = Weather()
    provider = MockProvider([calls(("c1", "get_weather", '{"city": "Paris"}')), "Sunny."])
    pipe, store = make_pipeline(provider, [weather.tool])

    await pipe.execute(SESSION, "user", "Paris?")

    stored = await store.load(SESSION)
    assert [decode_message(encode_message(m)) for m in stored] == stored
