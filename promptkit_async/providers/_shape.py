"""Checking the shape of a provider's answer: the cheap checks every wire format uses.

A wire format's reader checks each payload with a few ``type(...) is`` tests (this is the
per-chunk hot path: no schema library) and raises :class:`ShapeError` on a mismatch; the
shared loop (:mod:`promptkit_async.providers._wire`) turns it, and whatever plain Python
raised on a wrong-typed value, into :class:`~promptkit_async.errors.APIResponseError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SHAPE_ERRORS", "ShapeError", "object_at", "optional_str", "token_count"]


class ShapeError(Exception):
    """A payload of the wrong shape (internal: becomes ``APIResponseError``)."""


#: What a wrong-shaped payload can make plain Python raise while it is read; all of them
#: become APIResponseError where payloads are read (ValueError covers the
#: InvalidRequestError of a Usage with nonsense counts).
SHAPE_ERRORS = (ShapeError, TypeError, AttributeError, KeyError, IndexError, ValueError)


def optional_str(value: Any, what: str) -> str | None:
    """``value`` if it is a string or ``None``; else :class:`ShapeError` naming ``what``."""
    if value is None or type(value) is str:
        return value
    raise ShapeError(f"{what} is {type(value).__name__}, not a string")


def token_count(data: Mapping[str, Any], key: str) -> int:
    """The token count ``data[key]`` (absent or null: 0); anything but an int is wrong."""
    value = data.get(key)
    if value is None:
        return 0
    if type(value) is not int:
        raise ShapeError(f"usage {key} is {type(value).__name__} {value!r}, not an int")
    return value


def object_at(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``payload[key]`` if it is an object (absent or empty: ``{}``); else :class:`ShapeError`."""
    value = payload.get(key) or {}
    if type(value) is not dict:
        raise ShapeError(f"{key} is {type(value).__name__}, not an object")
    return value
