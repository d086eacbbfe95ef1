"""Type hints to JSON schema, plus the converter that checks a model's arguments against them.

Each supported annotation compiles once, at registration, into a pair: the JSON schema the
model sees and a converter that validates a decoded JSON value and turns it into what the
function expects (an ``Enum`` member, a dataclass instance, a tuple...). Calls then only run
the prebuilt converters, never introspect types again.

Supported: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``, ``list``/``Sequence``/
``set``/``frozenset``/``tuple`` (homogeneous or fixed), ``dict``/``Mapping`` with ``str``
keys, ``Optional``/``Union``/``X | Y``, ``Literal``, ``Enum`` subclasses, dataclasses,
``TypedDict``, ``NewType`` and ``Annotated[X, "description"]``.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

import typing_extensions
from typing_extensions import is_typeddict

from ..errors import ToolError

__all__ = [
    "ArgumentError",
    "Converter",
    "SchemaCompiler",
    "check_keys",
    "compile_type",
    "json_default",
    "parse_docstring",
]

#: Checks one decoded JSON value (``where`` names it in errors) and returns it converted.
Converter = Callable[[Any, str], Any]

_NoneType = type(None)
_UnionType: Any = getattr(types, "UnionType", Union)  # ``X | Y`` on 3.10+


class ArgumentError(Exception):
    """A model's arguments do not match the tool's schema (reported back to the model).

    Private: it never leaves the library (the public API raises ``ToolError``). ``kind``
    is ``"json"`` when the text was not a JSON object, ``"schema"`` otherwise.
    """

    def __init__(self, message: str, kind: str = "schema") -> None:
        super().__init__(message)
        self.kind = kind


def _identity(value: Any, where: str) -> Any:
    return value


def _json_type(value: Any) -> str:
    # The JSON word for a decoded value, for error messages the model understands.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _expected(what: str, value: Any, where: str) -> ArgumentError:
    return ArgumentError(f"{where}: expected {what}, got {_json_type(value)}")


def _conv_str(value: Any, where: str) -> Any:
    if type(value) is not str:
        raise _expected("string", value, where)
    return value


def _conv_bool(value: Any, where: str) -> Any:
    if type(value) is not bool:
        raise _expected("boolean", value, where)
    return value


def _conv_int(value: Any, where: str) -> Any:
    if type(value) is int:
        return value
    # Models sometimes write 3.0 for 3; accept whole floats, refuse the rest.
    if type(value) is float and value.is_integer():
        return int(value)
    raise _expected("integer", value, where)


def _conv_float(value: Any, where: str) -> Any:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise _expected("number", value, where)


def _conv_none(value: Any, where: str) -> Any:
    if value is not None:
        raise _expected("null", value, where)
    return None


_SCALARS: dict[Any, tuple[dict[str, Any], Converter]] = {
    str: ({"type": "string"}, _conv_str),
    bool: ({"type": "boolean"}, _conv_bool),
    int: ({"type": "integer"}, _conv_int),
    float: ({"type": "number"}, _conv_float),
    _NoneType: ({"type": "null"}, _conv_none),
    None: ({"type": "null"}, _conv_none),
}

_ARRAYS: dict[Any, Callable[[list[Any]], Any]] = {
    list: list,
    cabc.Sequence: list,
    cabc.MutableSequence: list,
    cabc.Iterable: list,
    cabc.Collection: list,
    set: set,
    cabc.Set: set,
    cabc.MutableSet: set,
    frozenset: frozenset,
}
_OBJECTS = frozenset((dict, cabc.Mapping, cabc.MutableMapping))

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Attributes|Returns|Return|Yields|Raises|Examples?|"
    r"Notes?|Warnings?|See Also|Keyword Args|Keyword Arguments|Other Parameters)\s*:?\s*$",
    re.IGNORECASE,
)
_PARAM_SECTIONS = frozenset(("args", "arguments", "parameters", "params", "attributes"))
_GOOGLE_ITEM = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^\s*\*{0,2}(\w+)\s*(?::.*)?$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and per-parameter descriptions.

    Understands Google style (``Args:`` / ``Attributes:`` sections), Sphinx
    (``:param name: text``) and NumPy (``Parameters`` underlined with dashes). The
    description is the text before the first section.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None  # lower-cased section name, or "sphinx"
    numpy = False
    current: str | None = None
    indent = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        width = len(line) - len(line.lstrip())
        underlined = (
            stripped and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"} and not width
        )
        if underlined or (not width and _SECTION.match(stripped)):
            section, numpy, current = stripped.rstrip(":").strip().lower(), bool(underlined), None
            i += 2 if underlined else 1
            continue
        sphinx = _SPHINX_PARAM.match(stripped)
        if sphinx:
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
        elif stripped.startswith(":"):
            section, current = "sphinx", None  # :returns: and friends
        elif section is None:
            description.append(line)
        elif section in _PARAM_SECTIONS or section == "sphinx":
            item = None
            if section != "sphinx" and (current is None or width <= indent):
                item = (_NUMPY_ITEM if numpy else _GOOGLE_ITEM).match(line)
            if item:
                current, indent = item.group(1), width
                params[current] = "" if numpy else item.group(2).strip()
            elif current is not None and stripped:
                params[current] = f"{params[current]} {stripped}".strip()
        i += 1
    return "\n".join(description).strip(), params


def _describe(schema: dict[str, Any], description: str | None) -> dict[str, Any]:
    if description:
        schema = dict(schema)
        schema["description"] = description
    return schema


def _dataclass_doc(cls: type) -> str | None:
    doc = cls.__doc__
    # dataclasses invent ``Name(field: type, ...)`` as the docstring; that is no description.
    if doc and doc.startswith(f"{cls.__name__}("):
        return None
    return doc


def json_default(value: Any) -> tuple[bool, Any]:
    """Whether ``value`` (a parameter default) can appear in a schema, and its JSON form."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (str, bool, int, float)):
        return True, value
    if isinstance(value, (tuple, list)) and all(
        v is None or isinstance(v, (str, bool, int, float)) for v in value
    ):
        return True, list(value)
    return False, None


class SchemaCompiler:
    """Compiles annotations; remembers the classes in progress to refuse recursive types."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._active: set[type] = set()

    def fail(self, tp: Any, where: str, why: str = "is not supported") -> ToolError:
        return ToolError(
            f"{self.owner}: the type {tp!r} of {where} {why}; use str/int/float/bool, "
            "list/dict, Optional, Literal, an Enum, a dataclass or a TypedDict, "
            "or pass parameters= with an explicit JSON schema"
        )

    def compile(self, tp: Any, where: str) -> tuple[dict[str, Any], Converter]:
        if tp is Any or tp is object or tp is inspect.Parameter.empty:
            return {}, _identity
        scalar = _SCALARS.get(tp)
        if scalar is not None:
            return scalar
        supertype = getattr(tp, "__supertype__", None)
        if supertype is not None:  # typing.NewType
            return self.compile(supertype, where)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            schema, convert = self.compile(args[0], where)
            text = " ".join(a for a in args[1:] if isinstance(a, str))
            return _describe(schema, text), convert
        if origin is Union or origin is _UnionType:
            return self._union(args, where)
        if origin is Literal:
            return self._literal(tp, args, where)
        if tp in _ARRAYS or origin in _ARRAYS:
            return self._array(_ARRAYS[origin or tp], args, where)
        if tp is tuple or origin is tuple:
            return self._tuple(args, where)
        if tp in _OBJECTS or origin in _OBJECTS:
            return self._mapping(tp, args, where)
        if isinstance(tp, type):
            if issubclass(tp, enum.Enum):
                return self._enum(tp, where)
            if dataclasses.is_dataclass(tp):
                return self._dataclass(tp, where)
            if is_typeddict(tp):
                return self._typeddict(tp, where)
        raise self.fail(tp, where)

    def _union(self, args: tuple[Any, ...], where: str) -> tuple[dict[str, Any], Converter]:
        compiled = [self.compile(a, where) for a in args]
        schemas = [s for s, _ in compiled]
        converters = [c for _, c in compiled]
        names = " or ".join(s.get("type", "any") for s in schemas if isinstance(s, dict))

        kinds = [s.get("type") for s in schemas]

        def convert(value: Any, at: str) -> Any:
            closest: ArgumentError | None = None
            kind = _json_type(value)
            for conv, k in zip(converters, kinds, strict=True):
                try:
                    return conv(value, at)
                except ArgumentError as exc:
                    # Report the branch of the value's own JSON type: its error is precise.
                    if closest is None and k == kind:
                        closest = exc
            raise closest or _expected(names, value, at)

        return {"anyOf": schemas}, convert

    def _literal(
        self, tp: Any, args: tuple[Any, ...], where: str
    ) -> tuple[dict[str, Any], Converter]:
        values = [a.value if isinstance(a, enum.Enum) else a for a in args]
        if not all(v is None or isinstance(v, (str, int, float, bool)) for v in values):
            raise self.fail(tp, where, "has non-JSON values")
        allowed = list(zip(values, args, strict=True))
        schema: dict[str, Any] = {"enum": values}
        kinds = {_json_type(v) for v in values}
        if len(kinds) == 1:
            schema = {"type": kinds.pop(), "enum": values}

        def convert(value: Any, at: str) -> Any:
            for v, member in allowed:
                # ``type`` too: 1 == True in Python, but not in JSON.
                if value == v and type(value) is type(v):
                    return member
            raise ArgumentError(f"{at}: expected one of {values!r}, got {value!r}")

        return schema, convert

    def _enum(self, cls: type[enum.Enum], where: str) -> tuple[dict[str, Any], Converter]:
        members = list(cls)
        values = [m.value for m in members]
        if not all(isinstance(v, (str, int, float, bool)) for v in values):
            raise self.fail(cls, where, "has non-JSON values")
        schema: dict[str, Any] = {"enum": values}
        kinds = {_json_type(v) for v in values}
        if len(kinds) == 1:
            schema = {"type": kinds.pop(), "enum": values}
        # Python 3.10 gives every enum the docstring "An enumeration.": no description.
        doc = cls.__doc__ if cls.__doc__ != "An enumeration." else None
        description, _ = parse_docstring(doc)
        schema = _describe(schema, description)
        by_value = {(type(m.value), m.value): m for m in members}

        def convert(value: Any, at: str) -> Any:
            member = by_value.get((type(value), value))
            if member is None:
                raise ArgumentError(f"{at}: expected one of {values!r}, got {value!r}")
            return member

        return schema, convert

    def _array(
        self, build: Callable[[list[Any]], Any], args: tuple[Any, ...], where: str
    ) -> tuple[dict[str, Any], Converter]:
        item_schema, item = self.compile(args[0] if args else Any, f"{where}[]")
        schema: dict[str, Any] = {"type": "array", "items": item_schema}
        if build is not list:
            schema["uniqueItems"] = True

        def convert(value: Any, at: str) -> Any:
            if type(value) is not list:
                raise _expected("array", value, at)
            try:
                return build([item(v, f"{at}[{i}]") for i, v in enumerate(value)])
            except TypeError as exc:  # unhashable items for a set
                raise ArgumentError(f"{at}: {exc}") from None

        return schema, convert

    def _tuple(self, args: tuple[Any, ...], where: str) -> tuple[dict[str, Any], Converter]:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            schema, convert = self._array(list, args[:1], where)
            return schema, lambda value, at: tuple(convert(value, at))
        if args == ((),):  # tuple[()]
            args = ()
        compiled = [self.compile(a, f"{where}[{i}]") for i, a in enumerate(args)]
        n = len(compiled)
        schema = {
            "type": "array",
            "prefixItems": [s for s, _ in compiled],
            "minItems": n,
            "maxItems": n,
        }
        converters = [c for _, c in compiled]

        def convert_fixed(value: Any, at: str) -> Any:
            if type(value) is not list:
                raise _expected("array", value, at)
            if len(value) != n:
                raise ArgumentError(f"{at}: expected {n} items, got {len(value)}")
            return tuple(
                c(v, f"{at}[{i}]") for i, (c, v) in enumerate(zip(converters, value, strict=True))
            )

        return schema, convert_fixed

    def _mapping(
        self, tp: Any, args: tuple[Any, ...], where: str
    ) -> tuple[dict[str, Any], Converter]:
        if args and args[0] not in (str, Any):
            raise self.fail(tp, where, "has non-str keys (JSON object keys are strings)")
        if not args or args[1] is Any:
            schema: dict[str, Any] = {"type": "object"}
            return schema, _check_object
        value_schema, item = self.compile(args[1], f"{where}{{}}")

        def convert(value: Any, at: str) -> Any:
            _check_object(value, at)
            return {k: item(v, f"{at}.{k}") for k, v in value.items()}

        return {"type": "object", "additionalProperties": value_schema}, convert

    def _enter(self, cls: type, where: str) -> None:
        if cls in self._active:
            raise self.fail(cls, where, "is recursive, which is not supported")
        self._active.add(cls)

    def _dataclass(self, cls: type, where: str) -> tuple[dict[str, Any], Converter]:
        self._enter(cls, where)
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
            description, field_docs = parse_docstring(_dataclass_doc(cls))
            fields = [f for f in dataclasses.fields(cls) if f.init]
            props: dict[str, tuple[dict[str, Any], Converter]] = {}
            required: list[str] = []
            defaults: dict[str, Any] = {}
            for f in fields:
                schema, conv = self.compile(hints.get(f.name, Any), f"{where}.{f.name}")
                schema = _describe(schema, field_docs.get(f.name))
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    required.append(f.name)
                elif f.default is not dataclasses.MISSING:
                    ok, value = json_default(f.default)
                    if ok:
                        defaults[f.name] = value
                if f.name in defaults:
                    schema = {**schema, "default": defaults[f.name]}
                props[f.name] = (schema, conv)
        finally:
            self._active.discard(cls)
        return _object(props, required, description, lambda kwargs: cls(**kwargs))

    def _typeddict(self, cls: type, where: str) -> tuple[dict[str, Any], Converter]:
        self._enter(cls, where)
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
            description, field_docs = parse_docstring(cls.__doc__)
            required_keys = set(getattr(cls, "__required_keys__", hints))
            props: dict[str, tuple[dict[str, Any], Converter]] = {}
            for name, hint in hints.items():
                # With string annotations the class may not have seen Required[...] /
                # NotRequired[...]; the resolved hints show them, so trust those.
                origin = typing.get_origin(hint)
                if origin in _REQUIREDNESS:
                    if origin in _NOT_REQUIRED:
                        required_keys.discard(name)
                    else:
                        required_keys.add(name)
                    hint = typing.get_args(hint)[0]
                schema, conv = self.compile(hint, f"{where}.{name}")
                props[name] = (_describe(schema, field_docs.get(name)), conv)
        finally:
            self._active.discard(cls)
        required = [n for n in hints if n in required_keys]
        return _object(props, required, description, dict)


def _markers(name: str) -> frozenset[Any]:
    # typing_extensions' marker, and typing's own on Pythons that have one (3.11+).
    return frozenset(
        m for m in (getattr(typing_extensions, name), getattr(typing, name, None)) if m
    )


_NOT_REQUIRED = _markers("NotRequired")
_REQUIREDNESS = _NOT_REQUIRED | _markers("Required")


def _check_object(value: Any, where: str) -> Any:
    if type(value) is not dict:
        raise _expected("object", value, where)
    return value


def _object(
    props: Mapping[str, tuple[dict[str, Any], Converter]],
    required: list[str],
    description: str,
    build: Callable[[dict[str, Any]], Any],
) -> tuple[dict[str, Any], Converter]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: s for name, (s, _) in props.items()},
    }
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    schema = _describe(schema, description)
    converters = {name: c for name, (_, c) in props.items()}
    required_set = frozenset(required)

    def convert(value: Any, at: str) -> Any:
        _check_object(value, at)
        check_keys(value, converters, required_set, at)
        return build({k: converters[k](v, f"{at}.{k}") for k, v in value.items()})

    return schema, convert


def check_keys(
    value: Mapping[str, Any], known: Mapping[str, Any], required: frozenset[str], where: str
) -> None:
    """Raise :class:`ArgumentError` for unknown or missing keys of an object argument."""
    unknown = [k for k in value if k not in known]
    if unknown:
        allowed = ", ".join(known) or "none"
        raise ArgumentError(
            f"{where}: unexpected {'property' if len(unknown) == 1 else 'properties'} "
            f"{', '.join(map(repr, unknown))} (allowed: {allowed})"
        )
    missing = [k for k in required if k not in value]
    if missing:
        raise ArgumentError(f"{where}: missing required {', '.join(map(repr, sorted(missing)))}")


def compile_type(tp: Any, where: str, owner: str) -> tuple[dict[str, Any], Converter]:
    """The JSON schema of annotation ``tp`` and a converter for values of it.

    Raises:
        ToolError: for an annotation with no JSON-schema equivalent (names ``owner`` and
            ``where`` so the caller knows which tool and parameter to fix).
    """
    return SchemaCompiler(owner).compile(tp, where)
