"""ResponseFormat: the accepted spellings, the strict rewrite, checking answers with and
without the optional packages (pydantic, jsonschema)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import BaseModel, Field

from promptkit_async import (
    GenerationConfig,
    InvalidRequestError,
    ProviderError,
    ResponseFormat,
    StructuredOutputError,
)

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


class Address(BaseModel):
    city: str


class Person(BaseModel):
    name: str
    age: int = Field(ge=0)
    nickname: str | None = None
    home: Address = Field(description="where they live")


# --- the spellings ------------------------------------------------------------------------


def test_a_dict_is_a_schema_and_the_default_name_is_response() -> None:
    fmt = ResponseFormat.coerce(PERSON)
    assert fmt.schema == PERSON
    assert fmt.schema is not PERSON  # a private copy: later edits of the caller's dict are not seen
    assert fmt.name == "response"
    assert fmt.strict is True
    assert fmt.model is None


def test_openai_spellings_are_accepted() -> None:
    wrapped = ResponseFormat.coerce({"name": "person", "schema": PERSON, "strict": False})
    assert (wrapped.name, wrapped.strict, wrapped.schema) == ("person", False, PERSON)
    full = ResponseFormat.coerce(
        {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    )
    assert (full.name, full.schema) == ("p", PERSON)
    assert ResponseFormat.coerce({"type": "json_object"}) == ResponseFormat.json()
    assert ResponseFormat.coerce("json").schema is None


def test_a_pydantic_model_becomes_its_schema_and_parses_into_instances() -> None:
    fmt = ResponseFormat.coerce(Person)
    assert fmt.model is Person
    assert fmt.name == "Person"
    assert fmt.schema == Person.model_json_schema()
    assert ResponseFormat(Person) == fmt  # the model may also be given positionally
    value = fmt.parse('{"name": "Ann", "age": 3, "home": {"city": "Oslo"}}')
    assert value == Person(name="Ann", age=3, home=Address(city="Oslo"))


def test_a_format_passes_through_coerce_unchanged() -> None:
    fmt = ResponseFormat(PERSON, name="p")
    assert ResponseFormat.coerce(fmt) is fmt


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("xml", "not a format"),
        (42, "not int"),
        (dict, "not type"),  # a class that is not a pydantic model
        ({"type": "object", "properties": {"a": {"type": 7}}}, "not valid JSON Schema"),
        ({"type": "object", "default": object()}, "plain JSON"),
        ({"name": "has space", "schema": PERSON}, "name"),
    ],
)
def test_unusable_formats_are_refused_early(value: Any, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        ResponseFormat.coerce(value)


def test_generation_config_normalises_the_format_and_merges_it_like_other_settings() -> None:
    config = GenerationConfig(response_format=PERSON)
    assert isinstance(config.response_format, ResponseFormat)
    assert config.format == ResponseFormat(PERSON)
    merged = GenerationConfig(max_tokens=5).with_defaults(config)
    assert merged.format == ResponseFormat(PERSON)
    over = GenerationConfig(response_format="json").with_defaults(config)
    assert over.format == ResponseFormat.json()
    with pytest.raises(InvalidRequestError):
        GenerationConfig(response_format="yaml")


# --- the strict rewrite (what OpenAI and Anthropic get) -------------------------------------


def test_strict_closes_objects_and_requires_every_property() -> None:
    wire = ResponseFormat(PERSON | {"required": ["name"]}).wire_schema
    assert wire is not None
    assert wire["additionalProperties"] is False
    assert wire["required"] == ["name", "age"]
    # answers are still checked against the schema as given: age stays optional there
    assert ResponseFormat(PERSON | {"required": ["name"]}).parse('{"name": "x"}') == {"name": "x"}


def test_strict_rewrite_of_a_pydantic_schema() -> None:
    wire = ResponseFormat(Person).wire_schema
    assert wire is not None
    assert wire["required"] == ["name", "age", "nickname", "home"]
    assert wire["additionalProperties"] is False
    # $ref with a sibling (pydantic's description) is inlined; the nested object closed
    home = wire["properties"]["home"]
    assert "$ref" not in home
    assert home["description"] == "where they live"
    assert home["additionalProperties"] is False
    assert home["required"] == ["city"]
    assert wire["$defs"]["Address"]["additionalProperties"] is False
    assert "default" not in wire["properties"]["nickname"]  # default None dropped
    assert Person.model_json_schema()["properties"]["nickname"]["default"] is None  # untouched


def test_an_open_object_cannot_be_strict() -> None:
    open_schema = {"type": "object", "additionalProperties": True}
    with pytest.raises(InvalidRequestError, match="strict=False"):
        ResponseFormat(open_schema)
    assert ResponseFormat(open_schema, strict=False).wire_schema == open_schema


# --- checking answers -----------------------------------------------------------------------


def test_not_json_carries_the_raw_text() -> None:
    with pytest.raises(StructuredOutputError) as caught:
        ResponseFormat(PERSON).parse("Sure! Here it is: {")
    error = caught.value
    assert isinstance(error, ProviderError)
    assert error.raw_text == "Sure! Here it is: {"
    assert "is not JSON" in str(error)
    assert error.errors


def test_a_model_mismatch_lists_each_problem() -> None:
    with pytest.raises(StructuredOutputError) as caught:
        ResponseFormat(Person).parse('{"name": 5, "age": -1, "home": {}}')
    errors = caught.value.errors
    assert any(e.startswith("name:") for e in errors)
    assert any(e.startswith("age:") for e in errors)
    assert any(e.startswith("home/city:") for e in errors)
    assert "does not match the model" in str(caught.value)


def test_a_cut_off_answer_says_to_raise_max_tokens() -> None:
    from promptkit_async._structured import parse_output

    with pytest.raises(StructuredOutputError, match="max_tokens") as caught:
        parse_output(ResponseFormat(PERSON), '{"name": "Al', finish_reason="length")
    assert caught.value.finish_reason == "length"


def test_json_mode_accepts_any_json() -> None:
    assert ResponseFormat.json().parse("[1, 2]") == [1, 2]


BUILT_IN_CASES = [
    (PERSON, {"name": "a", "age": 1}, []),
    (PERSON, {"name": "a"}, ["'age' is a required property"]),
    (PERSON, {"name": "a", "age": "1"}, ["/age", "not of type 'integer'"]),
    (PERSON, {"name": "a", "age": True}, ["/age"]),  # a JSON boolean is no integer
    (PERSON, [1], ["not of type 'object'"]),
    ({"type": "integer"}, 2.0, []),
    ({"enum": ["a", "b"]}, "c", ["not one of"]),
    ({"const": 3}, 4, ["is not 3"]),
    (
        {"type": "object", "properties": {}, "additionalProperties": False},
        {"x": 1},
        ["additional property 'x'"],
    ),
    ({"type": "array", "items": {"type": "string"}}, ["a", 1], ["/1"]),
    ({"prefixItems": [{"type": "string"}]}, [1], ["/0"]),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, None, []),
    ({"anyOf": [{"type": "string"}, {"type": "null"}]}, 1, ["none of the anyOf"]),
    ({"allOf": [{"type": "number"}, {"enum": [1]}]}, 2, ["not one of"]),
    (
        {
            "$defs": {"A": {"type": "string"}},
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/A"}},
        },
        {"a": 1},
        ["/a", "not of type 'string'"],
    ),
    ({"type": ["string", "null"]}, None, []),
]


@pytest.mark.parametrize(("schema", "value", "expected"), BUILT_IN_CASES)
def test_without_jsonschema_the_core_keywords_are_checked(
    monkeypatch: pytest.MonkeyPatch, schema: dict[str, Any], value: Any, expected: list[str]
) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema.validators", None)  # import now fails
    fmt = ResponseFormat(schema, strict=False)
    text = json.dumps(value)
    if not expected:
        assert fmt.parse(text) == value
        return
    with pytest.raises(StructuredOutputError) as caught:
        fmt.parse(text)
    joined = " ".join(caught.value.errors)
    for piece in expected:
        assert piece in joined, joined
    assert fmt._validator is False  # the built-in check was the one used


@pytest.mark.parametrize(("schema", "value", "expected"), BUILT_IN_CASES)
def test_with_jsonschema_installed_the_same_answers_pass_and_fail(
    schema: dict[str, Any], value: Any, expected: list[str]
) -> None:
    fmt = ResponseFormat(schema, strict=False)
    if not expected:
        assert fmt.parse(json.dumps(value)) == value
    else:
        with pytest.raises(StructuredOutputError):
            fmt.parse(json.dumps(value))
    assert fmt._validator not in (None, False)


def test_jsonschema_checks_what_the_built_in_check_does_not() -> None:
    fmt = ResponseFormat({"type": "string", "maxLength": 2}, strict=False)
    with pytest.raises(StructuredOutputError, match="too long"):
        fmt.parse('"abc"')


def test_a_deeply_nested_answer_is_an_error_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema.validators", None)
    fmt = ResponseFormat({"items": {"$ref": "#"}}, strict=False)
    # Deeper than any interpreter's JSON decoder goes (3.12+ take 5,000 levels).
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(StructuredOutputError, match="nested too deeply"):
        fmt.parse(deep)


# --- without pydantic ------------------------------------------------------------------------


def test_a_plain_schema_works_without_pydantic_installed() -> None:
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "pydantic" or name.startswith("pydantic."):
            raise ImportError(name)
sys.meta_path.insert(0, Block())
import asyncio
from promptkit_async import (
    InMemoryStateStore, MockProvider, Pipeline, ProviderMiddleware, StateMiddleware,
    StructuredOutputError,
)
schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

async def main():
    store = InMemoryStateStore()
    mock = MockProvider(['{"n": 1}', '{"n": "x"}'])
    pipe = Pipeline(StateMiddleware(store), ProviderMiddleware(mock))
    async with pipe:
        result = await pipe.execute("s", "user", "count", response_format=schema)
        assert result.parsed == {"n": 1}, result.parsed
        try:
            await pipe.execute("s", "user", "again", response_format=schema)
        except StructuredOutputError as e:
            assert e.raw_text == '{"n": "x"}'
        else:
            raise SystemExit("no error")
    assert len(await store.load("s")) == 2

asyncio.run(main())
assert not [m for m in sys.modules if m.startswith("pydantic")], "pydantic imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_self_referencing_schema_with_siblings_cannot_be_strict() -> None:
    node = {"$ref": "#/$defs/N", "description": "again"}
    schema = {
        "$defs": {"N": {"type": "object", "properties": {"next": node}}},
        "type": "object",
        "properties": {"root": node},
    }
    with pytest.raises(InvalidRequestError, match="strict=False"):
        ResponseFormat(schema)
    assert ResponseFormat(schema, strict=False).wire_schema == schema


def test_error_lines_stay_short_however_long_the_answer() -> None:
    fmt = ResponseFormat({"type": "object", "properties": {"a": {"type": "integer"}}})
    long_value = "x" * 5000
    with pytest.raises(StructuredOutputError) as caught:
        fmt.parse(json.dumps({"a": long_value}))
    assert caught.value.raw_text == json.dumps({"a": long_value})  # whole, here
    assert all(len(line) <= 200 for line in caught.value.errors)
    assert len(str(caught.value)) < 500


def test_per_call_formats_are_converted_once() -> None:
    calls = 0

    class Counted(BaseModel):
        x: int

        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            return super().model_json_schema(*args, **kwargs)

    first = ResponseFormat.coerce(Counted)
    assert ResponseFormat.coerce(Counted) is first
    assert calls == 1
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    same = ResponseFormat.coerce(dict(schema))
    assert ResponseFormat.coerce(dict(schema)) is same
    schema["properties"]["a"]["type"] = "integer"  # a different schema: a different format
    assert ResponseFormat.coerce(schema).schema == schema
