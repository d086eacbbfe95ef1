"""JSON schemas derived from type hints and docstrings, and the argument conversion."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NewType, Optional, TypedDict, Union

import pytest
from typing_extensions import NotRequired

from promptkit_async import Tool, ToolError, tool
from promptkit_async.tools._schema import parse_docstring

UserId = NewType("UserId", int)


class Color(enum.Enum):
    """A primary colour."""

    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Point:
    """A point on the map.

    Attributes:
        x: east-west, in km.
        y: north-south, in km.
    """

    x: float
    y: float = 0.0
    tags: list[str] = field(default_factory=list)


@dataclass
class Route:
    start: Point
    end: Point


class Filters(TypedDict):
    """Search filters."""

    lang: str
    year: NotRequired[int]


def props(t: Tool[..., Any]) -> Mapping[str, Any]:
    return t.parameters["properties"]


def test_scalars_defaults_and_required() -> None:
    @tool
    def f(s: str, i: int, x: float, b: bool, opt: str = "a", n: int | None = None) -> None:
        """Summary."""

    assert f.parameters == {
        "type": "object",
        "properties": {
            "s": {"type": "string"},
            "i": {"type": "integer"},
            "x": {"type": "number"},
            "b": {"type": "boolean"},
            "opt": {"type": "string", "default": "a"},
            "n": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
        },
        "required": ["s", "i", "x", "b"],
        "additionalProperties": False,
    }
    assert f.definition.name == "f"
    assert f.definition.description == "Summary."


def test_containers() -> None:
    @tool
    def f(
        a: list[int],
        b: Sequence[str],
        c: dict[str, float],
        d: set[str],
        e: tuple[int, ...],
        g: tuple[str, int],
        h: dict,  # type: ignore[type-arg]
        i: list,  # type: ignore[type-arg]
        j: Any,
    ) -> None:
        """Containers."""

    p = props(f)
    assert p["a"] == {"type": "array", "items": {"type": "integer"}}
    assert p["b"] == {"type": "array", "items": {"type": "string"}}
    assert p["c"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert p["d"] == {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
    assert p["e"] == {"type": "array", "items": {"type": "integer"}}
    assert p["g"] == {
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "integer"}],
        "minItems": 2,
        "maxItems": 2,
    }
    assert p["h"] == {"type": "object"}
    assert p["i"] == {"type": "array", "items": {}}
    assert p["j"] == {}


def test_literal_enum_newtype_annotated_union() -> None:
    @tool
    def f(
        mode: Literal["fast", "slow"],
        color: Color,
        level: Level,
        user: UserId,
        note: Annotated[str, "free text for the log"],
        either: Union[int, str],  # noqa: UP007
        maybe: Optional[Color] = None,  # noqa: UP045
        mixed: Literal[1, "one"] = 1,
    ) -> None:
        """Kinds."""

    p = props(f)
    assert p["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert p["color"] == {
        "type": "string",
        "enum": ["red", "green"],
        "description": "A primary colour.",
    }
    assert p["level"] == {"type": "integer", "enum": [1, 2]}
    assert p["user"] == {"type": "integer"}
    assert p["note"] == {"type": "string", "description": "free text for the log"}
    assert p["either"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert p["maybe"]["anyOf"][1] == {"type": "null"}
    assert p["maybe"]["default"] is None
    assert p["mixed"] == {"enum": [1, "one"], "default": 1}


def test_dataclass_and_typeddict_become_objects() -> None:
    @tool
    def f(route: Route, where: Point, filters: Filters) -> None:
        """Nested."""

    p = props(f)
    point = {
        "type": "object",
        "properties": {
            "x": {"type": "number", "description": "east-west, in km."},
            "y": {"type": "number", "description": "north-south, in km.", "default": 0.0},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["x"],
        "additionalProperties": False,
        "description": "A point on the map.",
    }
    assert p["where"] == point
    # A dataclass without a docstring gets no invented description.
    assert p["route"] == {
        "type": "object",
        "properties": {"start": point, "end": point},
        "required": ["start", "end"],
        "additionalProperties": False,
    }
    assert p["filters"] == {
        "type": "object",
        "properties": {"lang": {"type": "string"}, "year": {"type": "integer"}},
        "required": ["lang"],
        "additionalProperties": False,
        "description": "Search filters.",
    }


def test_google_docstring_describes_tool_and_parameters() -> None:
    @tool
    async def search(query: str, limit: int = 10) -> list[str]:
        """Search the docs.

        Returns the best matches first.

        Args:
            query: what to look for; plain words
                or a quoted phrase.
            limit (int): at most this many results.

        Returns:
            Titles.
        """
        return []

    assert search.description == "Search the docs.\n\nReturns the best matches first."
    assert props(search)["query"]["description"] == (
        "what to look for; plain words or a quoted phrase."
    )
    assert props(search)["limit"] == {
        "type": "integer",
        "description": "at most this many results.",
        "default": 10,
    }


def test_sphinx_and_numpy_docstrings() -> None:
    assert parse_docstring(
        """Do it.

        :param a: first one
            continued.
        :param int b: second.
        :returns: nothing.
        """
    ) == ("Do it.", {"a": "first one continued.", "b": "second."})
    assert parse_docstring(
        """Do it.

        Parameters
        ----------
        a : int
            first one.
        b
            second.
        """
    ) == ("Do it.", {"a": "first one.", "b": "second."})
    assert parse_docstring(None) == ("", {})


def test_explicit_name_description_and_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
    }

    @tool(name="web-search", description="Search the web.", parameters=schema)
    async def search(**kwargs: Any) -> str:
        return str(kwargs)

    assert search.name == "web-search"
    assert search.description == "Search the web."
    assert search.parameters == schema
    assert search.parameters is not schema  # a private copy
    schema["properties"] = {}
    assert search.parameters["properties"] == {"q": {"type": "string"}}


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (complex, "type <class 'complex'> of parameter 'v' is not supported"),
        (dict[int, str], "non-str keys"),
        (Literal[1.5j], "non-JSON values"),  # type: ignore[valid-type]
    ],
)
def test_unsupported_annotations_name_the_parameter(annotation: Any, message: str) -> None:
    def f(v: Any) -> None:
        pass

    f.__annotations__["v"] = annotation
    with pytest.raises(ToolError, match="pass parameters=") as info:
        Tool(f)
    assert message in str(info.value)
    assert "tool 'f'" in str(info.value)


@dataclass
class Node:
    value: int
    children: list[Node]


def test_recursive_and_variadic_and_unresolvable_hints_are_refused() -> None:
    def tree(root: Node) -> None:
        pass

    with pytest.raises(ToolError, match="recursive"):
        Tool(tree)

    def variadic(*args: int) -> None:
        pass

    with pytest.raises(ToolError, match=r"\*args/\*\*kwargs"):
        Tool(variadic)

    def forward(x: Missing) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(ToolError, match="cannot resolve its type hints"):
        Tool(forward)


# --- conversion ------------------------------------------------------------------------


async def test_arguments_are_converted_to_the_hinted_types() -> None:
    @tool
    async def f(
        color: Color,
        where: Point,
        route: Route,
        filters: Filters,
        pair: tuple[str, int],
        uniq: frozenset[int],
        n: int,
        x: float,
        maybe: Color | None = None,
    ) -> dict[str, Any]:
        """Echo."""
        return dict(locals())

    got = await f.invoke(
        {
            "color": "green",
            "where": {"x": 1, "tags": ["a"]},
            "route": {"start": {"x": 0}, "end": {"x": 2, "y": 3}},
            "filters": {"lang": "en"},
            "pair": ["a", 1],
            "uniq": [1, 1, 2],
            "n": 4.0,  # a whole float is an integer
            "x": 2,  # an integer is a number
        }
    )
    assert got["color"] is Color.GREEN
    assert got["where"] == Point(1.0, 0.0, ["a"])
    assert got["route"] == Route(Point(0), Point(2, 3))
    assert got["filters"] == {"lang": "en"}
    assert got["pair"] == ("a", 1)
    assert got["uniq"] == frozenset({1, 2})
    assert got["n"] == 4
    assert type(got["n"]) is int
    assert got["x"] == 2.0
    assert type(got["x"]) is float
    assert got["maybe"] is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"flag": 1, "n": 1}, "flag: expected boolean, got integer"),
        ({"flag": True, "n": True}, "n: expected integer, got boolean"),
        ({"flag": True, "n": 1.5}, "n: expected integer, got number"),
        ({"flag": True, "n": 1, "mode": True}, "mode: expected one of [1, 'one'], got True"),
        ({"flag": True, "n": 1, "where": {"x": "1"}}, "where.x: expected number, got string"),
        ({"flag": True, "n": 1, "where": {"y": 1}}, "where: missing required 'x'"),
        ({"flag": True, "n": 1, "pair": ["a"]}, "pair: expected 2 items, got 1"),
        ({"flag": True, "n": 1, "tags": ["a", 2]}, "tags[1]: expected string, got integer"),
        ({"flag": True, "n": 1, "scores": {"a": "x"}}, "scores.a: expected number, got string"),
    ],
)
def test_argument_errors_say_where_and_what(arguments: dict[str, Any], message: str) -> None:
    @tool
    def f(
        flag: bool,
        n: int,
        mode: Literal[1, "one"] = 1,
        where: Point | None = None,
        pair: tuple[str, int] | None = None,
        tags: list[str] | None = None,
        scores: dict[str, float] | None = None,
    ) -> None:
        """Strict."""

    with pytest.raises(ToolError) as info:
        f.parse_arguments(arguments)
    assert message in str(info.value)
    assert str(info.value).startswith("invalid arguments for tool 'f': ")


def test_a_dataclass_refusing_a_value_is_an_argument_error() -> None:
    @dataclass
    class Positive:
        n: int

        def __post_init__(self) -> None:
            if self.n <= 0:
                raise ValueError("n must be positive")

    def f(p: Positive) -> None:
        pass

    # Defined in a function: resolve the local name by giving the hint as the class.
    f.__annotations__["p"] = Positive
    t = Tool(f)
    with pytest.raises(ToolError, match="ValueError: n must be positive"):
        t.parse_arguments('{"p": {"n": 0}}')


def test_explicit_schema_checks_only_the_names_the_function_takes() -> None:
    def f(q: str, limit: int = 5) -> str:
        return q

    t = Tool(f, parameters={"type": "object", "properties": {"q": {"type": "string"}}})
    assert t.parse_arguments('{"q": 1}') == {"q": 1}  # no conversion with an explicit schema
    with pytest.raises(ToolError, match="missing a required argument: 'q'"):
        t.parse_arguments("{}")
    with pytest.raises(ToolError, match="unexpected keyword argument 'z'"):
        t.parse_arguments('{"q": "a", "z": 1}')
    with pytest.raises(ToolError, match="must be a JSON schema of an object"):
        Tool(f, parameters={"type": "string"})
