"""Structured output: the :class:`ResponseFormat` a reply must follow, and checking a reply.

A bottom module: providers map a format onto their wire format (OpenAI
``response_format``, Gemini ``responseJsonSchema``, Anthropic ``output_config``) and read
the answer back through :func:`parse_output`; the pipeline carries a per-call format.

What is checked, in order:

1. the answer is JSON (``json.loads``);
2. for a pydantic model: ``Model.model_validate_json`` (the model's own validation,
   so the parsed value is a model instance);
3. for a schema: the ``jsonschema`` package validates it fully when it is installed;
   without it, the core keywords are checked: ``type``, ``enum``, ``const``,
   ``properties``, ``required``, ``additionalProperties``, ``items``, ``prefixItems``,
   ``anyOf`` / ``oneOf`` / ``allOf`` (``oneOf`` as "at least one") and local ``$ref``.
   String formats, lengths and numeric bounds are then not checked.

pydantic is never imported here: a class is recognised as a pydantic model only when
pydantic was already imported (it must have been, to define the class).
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Union

from .errors import InvalidRequestError, StructuredOutputError

if TYPE_CHECKING:
    from .types import ProviderResponse

__all__ = ["ResponseFormat", "ResponseFormatLike", "parse_output", "with_parsed"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WRAPPER_KEYS = frozenset(("name", "schema", "strict", "description"))
_MAX_ERRORS = 10
_MAX_LINE = 200  # characters of one error line
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def _pydantic_model(value: object) -> bool:
    """``value`` is a pydantic ``BaseModel`` subclass (without importing pydantic)."""
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None) if pydantic is not None else None
    return isinstance(value, type) and base is not None and issubclass(value, base)


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The shape the model's final answer must have: a JSON schema, a pydantic model, or
    any JSON (``ResponseFormat.json()``).

    Usually given as sugar wherever a format is accepted (``GenerationConfig(
    response_format=...)``, ``pipe.execute(..., response_format=...)``):

    * a JSON-schema ``dict``: ``{"type": "object", "properties": {...}}``;
    * a pydantic ``BaseModel`` subclass: its ``model_json_schema()``, and the answer is
      parsed into an instance of it;
    * ``"json"``: any JSON value (the providers' JSON mode);
    * OpenAI's spellings, ``{"name": ..., "schema": ..., "strict": ...}`` or
      ``{"type": "json_schema", "json_schema": {...}}`` / ``{"type": "json_object"}``.

    Attributes:
        schema: the JSON schema, or a pydantic model class (converted on construction),
            or ``None`` for JSON mode.
        name: the format's name (OpenAI requires one: letters, digits, ``_`` and ``-``,
            at most 64); by default the model's class name, else ``"response"``.
        strict: ask for strict schema adherence. OpenAI's strict mode accepts only closed
            objects whose properties are all required, so the schema sent to OpenAI and
            Anthropic is rewritten that way (``additionalProperties: false`` added,
            every property listed in ``required``); a schema that allows extra
            properties cannot be strict (pass ``strict=False``). Answers are always
            checked against the schema as given.
        description: what the format is for, sent to OpenAI.
        model: the pydantic model answers are parsed into (``None`` for a plain schema).

    Raises:
        InvalidRequestError: a schema that is not a JSON object (or not valid JSON
            Schema, when ``jsonschema`` is installed), a bad name, or a schema that
            cannot be strict.

    Frozen and safe to share between tasks. Building one generates a pydantic model's
    schema and checks and rewrites the schema: build it once, or pass the model class or
    dict per call (those are converted once and cached, up to 256 of them).
    """

    schema: Mapping[str, Any] | type[Any] | None = None
    name: str | None = None
    strict: bool = True
    description: str | None = None
    model: Any = None
    _wire: Mapping[str, Any] | None = field(default=None, init=False, repr=False, compare=False)
    _validator: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        schema: Any = self.schema
        model = self.model
        if _pydantic_model(schema):
            model, schema = schema, None
        if model is not None:
            if not _pydantic_model(model):
                raise InvalidRequestError(
                    f"model must be a pydantic BaseModel subclass, not {model!r}"
                )
            if schema is None:
                schema = model.model_json_schema()
            setattr_(self, "model", model)
        name = self.name
        if name is None:
            name = model.__name__ if model is not None else "response"
        if type(name) is not str or not _NAME.match(name):
            raise InvalidRequestError(
                f"a response format's name must be 1-64 letters, digits, '_' or '-' "
                f"(OpenAI's rule), got {name!r}"
            )
        setattr_(self, "name", name)
        if type(self.strict) is not bool:
            raise InvalidRequestError(f"strict must be True or False, got {self.strict!r}")
        if self.description is not None and type(self.description) is not str:
            raise InvalidRequestError("a response format's description must be a string")
        if schema is None:
            return
        if not isinstance(schema, Mapping) or not all(isinstance(k, str) for k in schema):
            raise InvalidRequestError(
                "a response format's schema must be a JSON-schema object (a dict such as "
                f'{{"type": "object", "properties": {{...}}}}), not {type(schema).__name__}'
            )
        try:
            schema = json.loads(json.dumps(schema))  # a private, plain-JSON copy
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidRequestError(
                f"a response format's schema must be plain JSON (dicts, lists, strings, "
                f"numbers): {exc}"
            ) from None
        setattr_(self, "schema", schema)
        _check_schema(schema)
        if self.strict:
            try:
                setattr_(self, "_wire", _strict(copy.deepcopy(schema), schema))
            except _NotStrict as exc:
                raise InvalidRequestError(
                    f"the schema cannot be used in strict mode: {exc}; close the object "
                    "(additionalProperties: false) or pass strict=False"
                ) from None
            except RecursionError:  # a $ref (with siblings) to itself cannot be inlined
                raise InvalidRequestError(
                    "the schema is too deeply nested or recursive to rewrite for strict "
                    "mode; pass strict=False"
                ) from None
        else:
            setattr_(self, "_wire", schema)

    @classmethod
    def json(cls) -> ResponseFormat:
        """Any JSON value: the providers' JSON mode, no schema (what ``"json"`` means)."""
        return cls()

    @classmethod
    def coerce(cls, value: ResponseFormatLike) -> ResponseFormat:
        """``value`` as a :class:`ResponseFormat` (see the class docstring for the forms).

        Raises:
            InvalidRequestError: ``value`` is none of the accepted forms.
        """
        if type(value) is cls:
            return value
        if isinstance(value, ResponseFormat):
            return value
        if isinstance(value, str):
            if value == "json":
                return cls()
            raise InvalidRequestError(
                f"response_format {value!r} is not a format: pass a JSON-schema dict, a "
                'pydantic model class, a ResponseFormat, or "json"'
            )
        # A format given per call is converted once: a pydantic schema, the schema check
        # and the strict rewrite are not redone on every turn.
        key = _cache_key(value)
        if key is not None:
            cached = _CACHE.get(key)
            if cached is not None:
                return cached
        fmt = cls._convert(value)
        if key is not None:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)), None)  # the oldest
            _CACHE[key] = fmt
        return fmt

    @classmethod
    def _convert(cls, value: ResponseFormatLike) -> ResponseFormat:
        if _pydantic_model(value):
            return cls(model=value)
        if isinstance(value, Mapping):
            spec: Mapping[str, Any] = value
            kind = spec.get("type")
            if kind == "json_object" and len(spec) == 1:
                return cls()
            if kind == "json_schema" and isinstance(spec.get("json_schema"), Mapping):
                spec = spec["json_schema"]
            if isinstance(spec.get("schema"), Mapping) and set(spec) <= _WRAPPER_KEYS:
                return cls(
                    spec["schema"],
                    name=spec.get("name"),
                    strict=spec.get("strict", True),
                    description=spec.get("description"),
                )
            return cls(spec)
        raise InvalidRequestError(
            f"response_format must be a JSON-schema dict, a pydantic model class, a "
            f'ResponseFormat or "json", not {type(value).__name__}'
        )

    @property
    def wire_schema(self) -> Mapping[str, Any] | None:
        """The schema as sent to providers with strict adherence (OpenAI, Anthropic):
        the strict rewrite when ``strict``, else the schema as given."""
        return self._wire

    def parse(self, text: str) -> Any:
        """``text`` checked and parsed: a model instance for a pydantic model, else the
        JSON value.

        Raises:
            StructuredOutputError: ``text`` is not JSON, or does not match (``raw_text``
                is ``text``; ``errors`` says what is wrong).
        """
        return parse_output(self, text)


ResponseFormatLike = Union[ResponseFormat, Mapping[str, Any], type, str]  # noqa: UP007
"""What is accepted wherever a response format is: see :class:`ResponseFormat`."""

_CACHE: dict[Any, ResponseFormat] = {}
_CACHE_SIZE = 256


def _cache_key(value: object) -> Any:
    """What identifies a per-call format, or ``None`` when it cannot be cached."""
    if isinstance(value, type):
        return value  # a pydantic model class (its schema does not change)
    if isinstance(value, Mapping):
        try:
            return json.dumps(value, sort_keys=True)
        except (TypeError, ValueError, RecursionError):
            return None  # not plain JSON: construction will say so
    return None


def _jsonschema() -> Any:
    """The optional ``jsonschema`` package's ``validators`` module, or ``None``."""
    try:
        return importlib.import_module("jsonschema.validators")
    except ImportError:
        return None


def _check_schema(schema: Mapping[str, Any]) -> None:
    validators = _jsonschema()
    if validators is None:  # optional: without it, the answers' core keywords are checked
        return
    try:
        validators.validator_for(schema).check_schema(schema)
    except importlib.import_module("jsonschema.exceptions").SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the root"
        raise InvalidRequestError(
            f"the response format's schema is not valid JSON Schema at {where}: {exc.message}"
        ) from None


class _NotStrict(Exception):
    pass


def _strict(node: Any, root: Mapping[str, Any]) -> Any:
    """``node`` (a private copy) rewritten for strict mode: closed objects, all required."""
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        # OpenAI refuses $ref with siblings (pydantic adds a description): inline it.
        target = _resolve(root, ref)
        if target is None:
            raise _NotStrict(f"cannot resolve $ref {ref!r}")
        del node["$ref"]
        node = {**copy.deepcopy(target), **node}
    for key in ("$defs", "definitions", "properties"):
        children = node.get(key)
        if isinstance(children, dict):
            node[key] = {k: _strict(v, root) for k, v in children.items()}
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        children = node.get(key)
        if isinstance(children, list):
            node[key] = [_strict(v, root) for v in children]
    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"], root)
    is_object = node.get("type") == "object" or isinstance(node.get("properties"), dict)
    if is_object:
        extra = node.get("additionalProperties", False)
        if extra is not False:
            raise _NotStrict("an object allows additional properties")
        node["additionalProperties"] = False
        node["required"] = list(node.get("properties", {}))
    if "default" in node and node["default"] is None:
        del node["default"]  # a nullable field needs no default once it is required
    return node


def _resolve(root: Mapping[str, Any], ref: str) -> Any:
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


# --- checking an answer ---------------------------------------------------------------------


def parse_output(
    fmt: ResponseFormat,
    text: str,
    *,
    finish_reason: str | None = None,
    provider: str | None = None,
    request_id: str | None = None,
    response: ProviderResponse | None = None,
) -> Any:
    """The model's answer ``text`` checked against ``fmt`` and parsed.

    Raises:
        StructuredOutputError: not JSON, or not matching; carries ``text`` as
            ``raw_text`` and the problems as ``errors``.
    """
    model = fmt.model
    if model is not None:
        try:
            return model.model_validate_json(text)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            errors = _pydantic_errors(exc)
            problem = "is not JSON" if _is_json_error(exc) else "does not match the model"
            raise _error(
                fmt, text, problem, errors, finish_reason, provider, request_id, response
            ) from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _error(
            fmt, text, "is not JSON", (str(exc),), finish_reason, provider, request_id, response
        ) from None
    except RecursionError:
        raise _error(
            fmt, text, "is nested too deeply", (), finish_reason, provider, request_id, response
        ) from None
    schema = fmt.schema
    if isinstance(schema, Mapping):
        errors = _validate(fmt, schema, value)
        if errors:
            raise _error(
                fmt,
                text,
                "does not match the schema",
                errors,
                finish_reason,
                provider,
                request_id,
                response,
            )
    return value


def with_parsed(
    fmt: ResponseFormat, response: ProviderResponse, provider: str | None = None
) -> ProviderResponse:
    """``response`` with ``parsed`` set from its text (a final answer: no tool calls).

    A response that calls tools is returned as it is: the format applies to the answer
    that ends the turn.

    Raises:
        StructuredOutputError: see :func:`parse_output`.
    """
    if response.tool_calls:
        return response
    parsed = parse_output(
        fmt,
        response.content,
        finish_reason=response.finish_reason,
        provider=provider,
        request_id=response.request_id,
        response=response,
    )
    return replace(response, parsed=parsed)


def _error(
    fmt: ResponseFormat,
    text: str,
    problem: str,
    errors: tuple[str, ...],
    finish_reason: str | None,
    provider: str | None,
    request_id: str | None,
    response: ProviderResponse | None,
) -> StructuredOutputError:
    if finish_reason == "length":
        hint = "the answer was cut off at max_tokens: raise max_tokens"
    elif finish_reason == "content_filter":
        hint = "the provider filtered or the model refused the answer"
    elif not text:
        hint = "the answer is empty"
    else:
        hint = "the model did not follow the format; retry, or simplify the schema"
    detail = f": {errors[0]}" if errors else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return StructuredOutputError(
        f"the model's answer {problem} for response format {fmt.name!r}{detail}{more}; "
        f"{hint}. The answer is in .raw_text",
        raw_text=text,
        errors=errors,
        finish_reason=finish_reason,
        provider=provider,
        request_id=request_id,
        response=response,
    )


def _line(text: str) -> str:
    # jsonschema quotes the failing value, which may be the whole (long) answer.
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."


def _is_json_error(exc: Exception) -> bool:
    errors = getattr(exc, "errors", None)
    try:
        return bool(errors) and errors()[0].get("type") == "json_invalid"  # type: ignore[misc]
    except Exception:  # pragma: no cover - not a pydantic error after all
        return False


def _pydantic_errors(exc: Exception) -> tuple[str, ...]:
    errors = getattr(exc, "errors", None)
    if errors is None:
        return (str(exc),)
    out = []
    for error in errors()[:_MAX_ERRORS]:  # loc and msg only (never the input)
        where = "/".join(str(p) for p in error.get("loc", ())) or "(root)"
        out.append(_line(f"{where}: {error.get('msg', 'invalid')}"))
    return tuple(out)


def _validate(fmt: ResponseFormat, schema: Mapping[str, Any], value: Any) -> tuple[str, ...]:
    validator = fmt._validator
    if validator is None:
        validators = _jsonschema()
        # Without jsonschema: the built-in core-keyword check below.
        validator = False if validators is None else validators.validator_for(schema)(schema)
        object.__setattr__(fmt, "_validator", validator)
    if validator is not False:
        found = []
        for error in validator.iter_errors(value):
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            found.append(_line(f"{where}: {error.message}"))
            if len(found) >= _MAX_ERRORS:
                break
        return tuple(found)
    errors: list[str] = []
    try:
        _check(schema, value, "", schema, errors, 0)
    except RecursionError:
        errors.append("(root): nested too deeply to check")
    return tuple(errors[:_MAX_ERRORS])


def _is_type(value: Any, kind: Any) -> bool:
    if isinstance(kind, list):
        return any(_is_type(value, k) for k in kind)
    types = _JSON_TYPES.get(kind)
    if types is None:
        return True  # an unknown type name: not ours to judge
    if isinstance(value, bool) and kind not in ("boolean",):
        return False  # JSON true is not a number
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, types)


def _check(
    schema: Any, value: Any, path: str, root: Mapping[str, Any], errors: list[str], depth: int
) -> None:
    """The core keywords of ``schema`` against ``value``; problems appended to ``errors``."""
    if len(errors) >= _MAX_ERRORS or not isinstance(schema, Mapping):
        return
    if schema.get("$ref") is not None and depth < 64:
        target = _resolve(root, str(schema["$ref"]))
        if target is not None:
            _check(target, value, path, root, errors, depth + 1)
    where = path or "(root)"
    kind = schema.get("type")
    if kind is not None and not _is_type(value, kind):
        errors.append(f"{where}: {json.dumps(value)[:40]} is not of type {kind!r}")
        return
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        errors.append(f"{where}: {json.dumps(value)[:40]} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {json.dumps(value)[:40]} is not {schema['const']!r}")
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if (
            isinstance(options, list)
            and options
            and not any(_matches(o, value, path, root, depth) for o in options)
        ):
            errors.append(f"{where}: matches none of the {key} options")
    for option in schema.get("allOf") or ():
        _check(option, value, path, root, errors, depth + 1)
    if isinstance(value, dict):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        for name in schema.get("required") or ():
            if name not in value:
                errors.append(f"{where}: {name!r} is a required property")
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in properties:
                _check(properties[name], item, f"{path}/{name}", root, errors, depth + 1)
            elif extra is False:
                errors.append(f"{where}: additional property {name!r} is not allowed")
            elif isinstance(extra, Mapping):
                _check(extra, item, f"{path}/{name}", root, errors, depth + 1)
    elif isinstance(value, list):
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items")
        for i, item in enumerate(value):
            if i < len(prefix):
                _check(prefix[i], item, f"{path}/{i}", root, errors, depth + 1)
            elif isinstance(items, Mapping):
                _check(items, item, f"{path}/{i}", root, errors, depth + 1)


def _matches(schema: Any, value: Any, path: str, root: Mapping[str, Any], depth: int) -> bool:
    found: list[str] = []
    _check(schema, value, path, root, found, depth + 1)
    return not found
