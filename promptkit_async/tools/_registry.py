"""Tools, the registry that holds them, the ``tool`` decorator and the loop's policy."""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import inspect
import json
import logging
import math
import re
import typing
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, overload, runtime_checkable

from typing_extensions import ParamSpec

from .._context import ExecutionContext
from ..errors import ToolError
from ..types import ToolCall, ToolDefinition
from ._schema import ArgumentError, Converter, SchemaCompiler, check_keys, json_default
from ._schema import parse_docstring as _parse_docstring

__all__ = ["Tool", "ToolPolicy", "ToolRegistry", "ToolSource", "tool"]

logger = logging.getLogger("promptkit_async.tools")

P = ParamSpec("P")
R = TypeVar("R")

#: Tool names the OpenAI, Anthropic and Gemini APIs all accept.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CHOICES = frozenset(("auto", "none", "required"))


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ToolError(
            f"invalid tool name {name!r}: use 1-64 letters, digits, '_' or '-' "
            "(what every provider accepts); pass name= to choose another"
        )
    return name


def _check_timeout(timeout: float | None, what: str) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ToolError(f"{what} must be a positive number of seconds or None, not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def _target(function: Callable[..., Any]) -> Callable[..., Any]:
    # Where the annotations and the docstring live.
    if isinstance(function, functools.partial):
        return _target(function.func)
    if inspect.isfunction(function) or inspect.ismethod(function):
        return function
    call = getattr(type(function), "__call__", None)  # noqa: B004 (a callable object)
    return call if call is not None else function


class Tool(Generic[P, R]):
    """A Python function the model may call, with the JSON schema of its parameters.

    Build one with the :func:`tool` decorator, :meth:`ToolRegistry.register`, or directly
    as ``Tool(function, ...)``. The tool stays callable like the function it wraps.

    The parameters' schema is derived from the type hints unless ``parameters`` is given:
    ``str``/``int``/``float``/``bool``, ``list``/``dict``/``tuple``/``set``, ``Optional`` and
    unions, ``Literal``, ``Enum``, dataclasses, ``TypedDict``, ``Annotated[X, "text"]``.
    A parameter with a default is not required. The docstring's first part becomes the
    description and its ``Args:`` entries (Google, Sphinx or NumPy style) describe the
    parameters. A parameter annotated :class:`~promptkit_async.pipeline.ExecutionContext`
    receives the turn's context (session id, metadata...) and is hidden from the model.

    The model's arguments are checked against the schema and converted (an ``Enum``
    value becomes the member, an object becomes the dataclass) before the call, so the
    function gets what its hints promise.

    ``async def`` functions run on the event loop; plain functions run in a worker thread
    (``asyncio.to_thread``) so they never block it. A cancelled or timed-out sync tool's
    thread runs on until the function returns (threads cannot be interrupted); only its
    result is discarded.

    Args:
        function: the function (async or sync; a ``functools.partial`` or a callable
            object also works).
        name: the name the model calls it by (default: the function's name).
        description: what it does, for the model (default: from the docstring).
        parameters: an explicit JSON schema (``{"type": "object", ...}``) for the
            arguments; they are then passed as keyword arguments without conversion.
        timeout: seconds this tool may run, overriding :attr:`ToolPolicy.timeout`
            (``math.inf`` for no limit).

    Raises:
        ToolError: for a bad name, an annotation with no JSON-schema form, ``*args`` /
            ``**kwargs`` without an explicit schema, or a schema that is not an object.

    Immutable once built; safe to share between registries, pipelines and tasks.
    """

    __slots__ = (
        "__weakref__",
        "__wrapped__",
        "_context_param",
        "_converters",
        "_definition",
        "_is_async",
        "_positional",
        "_required",
        "_signature",
        "function",
        "timeout",
    )

    def __init__(
        self,
        function: Callable[P, R],
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        if isinstance(function, Tool):
            function = function.function
        if not callable(function):
            raise ToolError(f"a tool must be a callable, not {type(function).__name__}")
        target = _target(function)
        if name is None:
            name = getattr(function, "__name__", None)
            if name is None and isinstance(function, functools.partial):
                name = getattr(target, "__name__", None)
            if name is None:  # a callable object: its class names it
                name = type(function).__name__
        name = _check_name(name)
        #: The wrapped function.
        self.function: Callable[P, R] = function
        #: This tool's own time limit in seconds (``None``: the policy's).
        self.timeout = _check_timeout(timeout, f"the timeout of tool {name!r}")
        self._is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            target
        )
        doc_description, param_docs = _parse_docstring(
            inspect.getdoc(target if isinstance(function, functools.partial) else function)
        )
        try:
            self._signature: inspect.Signature | None = inspect.signature(function)
        except (TypeError, ValueError):
            self._signature = None  # some builtins have none
        self._context_param: str | None = None
        self._positional: tuple[str, ...] = ()
        self._converters: dict[str, Converter] | None = None
        self._required: frozenset[str] = frozenset()
        if parameters is not None:
            schema = self._explicit(name, parameters)
        else:
            schema = self._derive(name, function, target, param_docs)
        self._definition = ToolDefinition(
            name, doc_description if description is None else description, schema
        )
        # Lets inspect.signature(tool) and help() see through to the function.
        self.__wrapped__ = function

    # --- construction ----------------------------------------------------------------

    def _explicit(self, name: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(parameters, Mapping) or parameters.get("type") != "object":
            raise ToolError(
                f"tool {name!r}: parameters must be a JSON schema of an object "
                '({"type": "object", "properties": {...}}), not ' + repr(parameters)
            )
        try:
            schema: dict[str, Any] = json.loads(json.dumps(parameters))  # a private deep copy
        except (TypeError, ValueError) as exc:
            raise ToolError(f"tool {name!r}: parameters is not JSON-serialisable: {exc}") from exc
        if self._signature is not None:
            for pname, param in self._signature.parameters.items():
                if param.annotation is ExecutionContext or param.annotation == "ExecutionContext":
                    self._context_param = pname
        return schema

    def _derive(
        self,
        name: str,
        function: Callable[..., Any],
        target: Callable[..., Any],
        param_docs: Mapping[str, str],
    ) -> dict[str, Any]:
        if self._signature is None:
            raise ToolError(
                f"tool {name!r}: cannot read the signature of {function!r}; pass parameters="
            )
        try:
            hints = typing.get_type_hints(target, include_extras=True)
        except Exception as exc:  # NameError for unresolvable forward references, etc.
            raise ToolError(
                f"tool {name!r}: cannot resolve its type hints ({exc}); import the names "
                "they use at module level, or pass parameters="
            ) from exc
        compiler = SchemaCompiler(f"tool {name!r}")
        properties: dict[str, Any] = {}
        converters: dict[str, Converter] = {}
        required: list[str] = []
        positional: list[str] = []
        for pname, param in self._signature.parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ToolError(
                    f"tool {name!r}: *args/**kwargs cannot be described to the model; "
                    "use named parameters, or pass parameters= with an explicit schema"
                )
            hint = hints.get(pname, Any)
            if hint is ExecutionContext:
                self._context_param = pname
                continue
            schema, convert = compiler.compile(hint, f"parameter {pname!r}")
            text = param_docs.get(pname)
            if text and "description" not in schema:
                schema = {**schema, "description": text}
            if param.default is param.empty:
                required.append(pname)
            else:
                ok, value = json_default(param.default)
                if ok:
                    schema = {**schema, "default": value}
            if param.kind is param.POSITIONAL_ONLY:
                positional.append(pname)
            properties[pname] = schema
            converters[pname] = convert
        self._converters = converters
        self._required = frozenset(required)
        self._positional = tuple(positional)
        out: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            out["required"] = required
        out["additionalProperties"] = False
        return out

    # --- description -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name the model calls this tool by."""
        return self._definition.name

    @property
    def description(self) -> str:
        """What the tool does, as told to the model."""
        return self._definition.description

    @property
    def parameters(self) -> Mapping[str, Any]:
        """The JSON schema of the arguments."""
        return self._definition.parameters

    @property
    def definition(self) -> ToolDefinition:
        """The :class:`~promptkit_async.types.ToolDefinition` sent to the model."""
        return self._definition

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r}, function={self.function!r})"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the wrapped function directly, as if it were not a tool."""
        return self.function(*args, **kwargs)

    # --- calling ---------------------------------------------------------------------

    def _convert(self, arguments: str | Mapping[str, Any]) -> dict[str, Any]:
        # Raises ArgumentError (a private type) with a message written for the model.
        if isinstance(arguments, str):
            if not arguments.strip():
                data: Any = {}  # some models send "" for a call without arguments
            else:
                try:
                    data = json.loads(arguments)
                except ValueError as exc:
                    raise ArgumentError(f"not valid JSON ({exc})", "json") from None
            if data is None:
                data = {}
        else:
            data = arguments
        if not isinstance(data, Mapping):
            raise ArgumentError(
                f"the arguments must be a JSON object, not {type(data).__name__}", "json"
            )
        converters = self._converters
        if converters is None:
            # Explicit schema: check only that the function accepts these names.
            kwargs = dict(data)
            if self._signature is not None:
                probe = dict(kwargs)
                if self._context_param is not None:
                    probe[self._context_param] = None
                try:
                    self._signature.bind(**probe)
                except TypeError as exc:
                    raise ArgumentError(str(exc)) from None
            return kwargs
        check_keys(data, converters, self._required, "arguments")
        try:
            return {k: converters[k](v, k) for k, v in data.items()}
        except (TypeError, ValueError) as exc:  # a dataclass's own checks refused a value
            raise ArgumentError(f"{type(exc).__name__}: {exc}") from None

    def parse_arguments(self, arguments: str | Mapping[str, Any]) -> dict[str, Any]:
        """Check the model's arguments (JSON text or a decoded object) and convert them.

        Returns the keyword arguments the function will receive.

        Raises:
            ToolError: the arguments are not a JSON object or do not match the schema.
        """
        try:
            return self._convert(arguments)
        except ArgumentError as exc:
            raise ToolError(f"invalid arguments for tool {self.name!r}: {exc}") from None

    async def _run(self, kwargs: dict[str, Any], ctx: ExecutionContext | None) -> Any:
        if self._context_param is not None:
            kwargs[self._context_param] = ctx
        args: list[Any] = []
        for pname in self._positional:
            if pname in kwargs:
                args.append(kwargs.pop(pname))
            else:
                break  # later positional-only ones take their defaults too
        function: Callable[..., Any] = self.function
        if self._is_async:
            return await function(*args, **kwargs)
        result = await asyncio.to_thread(function, *args, **kwargs)
        if inspect.isawaitable(result):  # a sync function that returned a coroutine
            result = await result
        return result

    async def invoke(
        self, arguments: str | Mapping[str, Any], ctx: ExecutionContext | None = None
    ) -> Any:
        """Check and convert ``arguments``, then run the tool and return what it returned.

        ``ctx`` is passed to an ``ExecutionContext`` parameter, if the function has one.
        No time limit applies here (the tool loop applies :attr:`timeout`).

        Raises:
            ToolError: invalid arguments. Whatever the function raises propagates.
        """
        return await self._run(self.parse_arguments(arguments), ctx)


AnyTool = Tool[..., Any]
#: What a registry or ``ProviderMiddleware(tools=...)`` accepts for one tool.
ToolLike = typing.Union[Tool[..., Any], Callable[..., Any]]  # noqa: UP007 (runtime alias)


@overload
def tool(function: Callable[P, R], /) -> Tool[P, R]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> Callable[[Callable[P, R]], Tool[P, R]]: ...


def tool(
    function: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = None,
) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
    """Turn a function into a :class:`Tool`; use as ``@tool`` or ``@tool(name=...)``.

    ::

        @tool
        async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
            \"\"\"Current weather for a city.

            Args:
                city: the city name, e.g. "Paris".
            \"\"\"

    The result is still callable like the function. Register it with
    ``ToolRegistry([get_weather])`` or pass it in ``ProviderMiddleware(tools=[...])``.
    Arguments are as for :class:`Tool`.
    """

    def wrap(fn: Callable[P, R]) -> Tool[P, R]:
        return Tool(fn, name=name, description=description, parameters=parameters, timeout=timeout)

    return wrap if function is None else wrap(function)


@runtime_checkable
class ToolSource(Protocol):
    """A set of tools that changes on its own, e.g. an MCP server's
    (:class:`~promptkit_async.tools.mcp.MCPServer`).

    Add one to a :class:`ToolRegistry` (or pass it in ``ProviderMiddleware(tools=[...])``)
    beside local tools; the registry offers whatever :attr:`tools` holds at each model
    request.
    """

    @property
    def tools(self) -> Sequence[Tool[..., Any]]:
        """The tools on offer now (cached; never waits)."""
        ...

    @property
    def version(self) -> int:
        """A counter that grows whenever :attr:`tools` changes."""
        ...

    async def prepare(self) -> None:
        """Make :attr:`tools` current before a turn (connect, list); bounded, never raises
        for a source that cannot be reached (it then offers no tools)."""
        ...


class ToolRegistry:
    """The tools a pipeline offers to the model, by name.

    ::

        registry = ToolRegistry([get_weather, search_docs])

        @registry.register
        async def add(a: int, b: int) -> int:
            \"\"\"Add two numbers.\"\"\"
            return a + b

    Args:
        tools: :class:`Tool` objects, plain functions (wrapped with default settings) or
            :class:`ToolSource` objects such as MCP servers, whose tools are offered beside
            the local ones.

    Raises:
        ToolError: two tools with one name, or a function that cannot be a tool.

    Safe to share between pipelines and tasks. Registering or removing tools while turns
    run is allowed (everything runs on one event loop); a change is seen from the next
    model request on. A source's tool whose name a local tool (or an earlier source)
    already has is left out, with a warning.
    """

    __slots__ = ("_merged", "_merged_key", "_sources", "_tools", "_version")

    def __init__(self, tools: Iterable[ToolLike | ToolSource] = ()) -> None:
        self._tools: dict[str, AnyTool] = {}
        self._sources: list[ToolSource] = []
        self._version = 0
        self._merged: dict[str, AnyTool] = self._tools
        self._merged_key: tuple[int, ...] = ()
        for t in tools:
            if _is_source(t):
                self.add_source(typing.cast(ToolSource, t))
            else:
                self.add(typing.cast(ToolLike, t))

    def __repr__(self) -> str:
        return f"ToolRegistry({list(self._all())!r})"

    def add(self, tool: ToolLike) -> AnyTool:
        """Add a :class:`Tool` (or a function, wrapped with defaults) and return the tool."""
        if _is_source(tool):
            raise ToolError(f"{tool!r} is a tool source; use add_source()")
        t: AnyTool = tool if isinstance(tool, Tool) else Tool(tool)
        if t.name in self._all():
            raise ToolError(
                f"a tool named {t.name!r} is already registered; pass name= to register "
                "this one under another name, or remove() the old one first"
            )
        self._tools[t.name] = t
        self._version += 1
        return t

    def add_source(self, source: ToolSource) -> ToolSource:
        """Offer the tools of ``source`` (an MCP server, say) beside the local ones.

        Raises:
            ToolError: ``source`` is already added, it has the same ``prefix`` as one
                already added, or one of its current tools' names is taken.
        """
        if not _is_source(source):
            raise ToolError(
                f"a tool source needs tools, version and prepare(); got {type(source).__name__}"
            )
        prefix = getattr(source, "prefix", None)
        for other in self._sources:
            if other is source:
                raise ToolError(f"{source!r} is already in this registry")
            if isinstance(prefix, str) and prefix and getattr(other, "prefix", None) == prefix:
                raise ToolError(
                    f"{source!r} and {other!r} share the tool-name prefix {prefix!r}; give "
                    "one of them another prefix= so their tools' names cannot collide"
                )
        taken = self._all()
        clash = [t.name for t in source.tools if t.name in taken]
        if clash:
            raise ToolError(
                f"{source!r} offers tools whose names are taken: {', '.join(clash)}; "
                "give it a prefix= (or rename the local tools)"
            )
        self._sources.append(source)
        self._version += 1
        return source

    @property
    def sources(self) -> tuple[ToolSource, ...]:
        """The tool sources added, in order."""
        return tuple(self._sources)

    async def prepare(self) -> None:
        """Let every source bring its tools up to date (connect on first use).

        ``ProviderMiddleware`` awaits this at the start of each turn with tools; it returns
        at once when there are no sources or they are all connected.
        """
        for source in self._sources:
            await source.prepare()

    @overload
    def register(self, function: Callable[P, R], /) -> Tool[P, R]: ...

    @overload
    def register(
        self,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Callable[[Callable[P, R]], Tool[P, R]]: ...

    def register(
        self,
        function: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Tool[P, R] | Callable[[Callable[P, R]], Tool[P, R]]:
        """Register a function; usable as ``@registry.register`` or ``@registry.register(...)``.

        Returns the :class:`Tool` (still callable like the function). Arguments are as for
        :class:`Tool`.
        """

        def wrap(fn: Callable[P, R]) -> Tool[P, R]:
            t = Tool(fn, name=name, description=description, parameters=parameters, timeout=timeout)
            self.add(t)
            return t

        return wrap if function is None else wrap(function)

    def remove(self, name: str) -> None:
        """Remove the local tool called ``name`` (a source's tools come with the source).

        Raises:
            KeyError: no such tool.
        """
        del self._tools[name]
        self._version += 1

    def _all(self) -> dict[str, AnyTool]:
        # Local tools, then each source's, rebuilt only when a version moved.
        if not self._sources:
            return self._tools
        key = (self._version, *(s.version for s in self._sources))
        if key != self._merged_key:
            merged = dict(self._tools)
            for source in self._sources:
                for t in source.tools:
                    if t.name in merged:
                        logger.warning(
                            "tool %r of %r is left out: a tool of that name is already "
                            "registered; give the source a prefix=",
                            t.name,
                            source,
                        )
                        continue
                    merged[t.name] = t
            self._merged, self._merged_key = merged, key
        return self._merged

    def get(self, name: str) -> AnyTool | None:
        """The tool called ``name``, or ``None``."""
        return self._all().get(name)

    def __getitem__(self, name: str) -> AnyTool:
        return self._all()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._all()

    def __iter__(self) -> Iterator[AnyTool]:
        return iter(tuple(self._all().values()))

    def __len__(self) -> int:
        return len(self._all())

    @property
    def names(self) -> tuple[str, ...]:
        """The tools' names: local ones in registration order, then each source's."""
        return tuple(self._all())

    @property
    def version(self) -> int:
        """A counter that changes whenever a tool is added or removed (for caches)."""
        return self._version + sum(s.version for s in self._sources)

    def definitions(self, *, exclude: Collection[str] = ()) -> tuple[ToolDefinition, ...]:
        """The definitions to send to the model, leaving out the names in ``exclude``."""
        return tuple(t.definition for n, t in self._all().items() if n not in exclude)


def _is_source(obj: object) -> bool:
    return not isinstance(obj, Tool) and isinstance(obj, ToolSource)


def as_registry(
    tools: ToolRegistry | Iterable[ToolLike | ToolSource] | None,
) -> ToolRegistry | None:
    """``tools`` as a registry: a registry as is (shared), a sequence wrapped in a new one."""
    if tools is None or isinstance(tools, ToolRegistry):
        return tools
    if _is_source(tools):
        raise ToolError(
            "tools must be a ToolRegistry or a sequence of tools/functions/servers; "
            "wrap a single server in a list: tools=[server]"
        )
    if isinstance(tools, Tool) or (callable(tools) and not isinstance(tools, Iterable)):
        raise ToolError(
            "tools must be a ToolRegistry or a sequence of tools/functions; "
            "wrap a single tool in a list: tools=[my_tool]"
        )
    if isinstance(tools, (str, bytes, Mapping)):
        raise ToolError(
            f"tools must be a ToolRegistry or a sequence of tools/functions, not "
            f"{type(tools).__name__}"
        )
    return ToolRegistry(tools)


#: ``async (call) -> bool``: asked before a tool that needs approval runs.
ApprovalHook = Callable[[ToolCall], Awaitable[bool]]


def _patterns(value: Collection[str], what: str) -> frozenset[str]:
    if isinstance(value, str):
        raise ToolError(
            f"{what} must be a collection of tool names, not the string {value!r}; "
            f"write {what}={{{value!r}}}"
        )
    out = frozenset(value)
    if not all(isinstance(n, str) for n in out):
        raise ToolError(f"{what} must contain tool names or patterns (str)")
    return out


def matches(name: str, patterns: Collection[str]) -> bool:
    """Whether ``name`` matches one of ``patterns`` (shell wildcards: ``*``, ``?``, ``[ab]``)."""
    return any(p == name or fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_limit(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ToolError(f"{what} must be a positive int or None, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    """Limits of the tool loop run by ``ProviderMiddleware``.

    Attributes:
        max_rounds: how many times per turn the model's tool calls are run (one round =
            one assistant message with tool calls, its calls run concurrently). When the
            model still asks for tools after ``max_rounds`` rounds, it is asked once more
            with ``tool_choice="none"`` for a final answer; if it calls tools even then,
            those calls are not run (they are dropped from the reply, and a
            ``"tool_calls_dropped"`` trace event names them).
        tool_choice: sent with the turn's first request: ``"auto"``, ``"none"``,
            ``"required"``, a tool's name (force that tool), or ``None`` (the provider's
            default, i.e. auto). With ``"none"``, tool calls the model makes anyway are
            dropped, not run. A forced choice (``"required"`` or a name) applies to the
            first request only; after a tool round the model may answer (``"auto"``), so a
            forced tool cannot loop forever.
        blocklist: tool names never offered to the model and never run; a call to one gets
            a tool result saying it is not allowed. Any collection of names.
        timeout: seconds each tool call may run (``None``: no limit). A call that takes
            longer is cancelled and the model gets a tool result saying it timed out. A
            tool's own ``timeout`` overrides this.
        max_calls: how many tool calls the model may make in one turn (``None``: no cap).
            Calls past the cap are not run; each gets a tool result saying the limit is
            reached, so the model answers with what it has.
        max_identical_calls: the loop guard: how many times one turn may call the same
            tool with the same arguments (compared as parsed JSON; ``None``: no guard).
            A repeat past it is not run; its result tells the model to use the earlier
            result instead.
        require_approval: names of tools (shell wildcards allowed: ``"fs_write_*"``,
            ``"*"``) that run only after ``approve`` said yes.
        approve: ``async (call) -> bool``, awaited with the :class:`ToolCall` before a tool
            in ``require_approval`` runs (after its arguments were checked). ``False``, an
            exception or no answer within ``approval_timeout`` refuses the call: the model
            gets a tool result saying the user declined. The calls of one round run
            concurrently, so it may be awaited for several calls at once; cancelling the
            turn cancels it.
        approval_timeout: seconds ``approve`` may take (``None``: no limit).

    Raises:
        ToolError: for an invalid value, or ``require_approval`` without ``approve``.
    """

    max_rounds: int = 10
    tool_choice: str | None = None
    blocklist: Collection[str] = field(default=frozenset())
    timeout: float | None = 30.0
    max_calls: int | None = None
    max_identical_calls: int | None = None
    require_approval: Collection[str] = field(default=frozenset())
    approve: ApprovalHook | None = None
    approval_timeout: float | None = 300.0

    def __post_init__(self) -> None:
        if isinstance(self.max_rounds, bool) or not isinstance(self.max_rounds, int):
            raise ToolError(f"max_rounds must be an int, not {type(self.max_rounds).__name__}")
        if self.max_rounds < 1:
            raise ToolError(
                f"max_rounds must be at least 1, not {self.max_rounds}; "
                "to offer no tools, pass tools=None"
            )
        choice = self.tool_choice
        if choice is not None and choice not in _CHOICES and not _NAME.match(str(choice)):
            raise ToolError(
                f"tool_choice must be 'auto', 'none', 'required', a tool name or None, "
                f"not {choice!r}"
            )
        object.__setattr__(self, "blocklist", _patterns(self.blocklist, "blocklist"))
        object.__setattr__(self, "timeout", _check_timeout(self.timeout, "ToolPolicy.timeout"))
        _check_limit(self.max_calls, "max_calls")
        _check_limit(self.max_identical_calls, "max_identical_calls")
        required = _patterns(self.require_approval, "require_approval")
        object.__setattr__(self, "require_approval", required)
        if self.approve is not None and not callable(self.approve):
            raise ToolError(f"approve must be an async function, not {self.approve!r}")
        if required and self.approve is None:
            raise ToolError(
                "require_approval names tools but approve is None: pass "
                "approve=an async function (call) -> bool that asks a human"
            )
        object.__setattr__(
            self,
            "approval_timeout",
            _check_timeout(self.approval_timeout, "ToolPolicy.approval_timeout"),
        )

    def needs_approval(self, name: str) -> bool:
        """Whether the tool called ``name`` must be approved before it runs."""
        return bool(self.require_approval) and matches(name, self.require_approval)
