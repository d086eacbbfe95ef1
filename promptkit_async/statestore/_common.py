"""Checks and JSON helpers shared by every store, so they all reject the same input."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidMessageError, InvalidRequestError

__all__ = [
    "check_count",
    "check_last_n",
    "check_limit",
    "check_seconds",
    "check_ttl",
    "copy_json_object",
    "dumps_value",
    "split_patch",
]

#: Compact, ASCII-only JSON with no NaN/Infinity: the same rules as the record codec.
dumps_value = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


def check_last_n(last_n: object) -> None:
    """``last_n`` must be ``None`` or an int >= 0."""
    if last_n is None:
        return
    if not isinstance(last_n, int) or isinstance(last_n, bool) or last_n < 0:
        raise InvalidRequestError(
            f"last_n must be None or an int >= 0, not {last_n!r}; pass None for everything"
        )


def check_limit(limit: object) -> None:
    """A page size must be an int >= 1."""
    check_count(limit, "limit")


def check_seconds(value: object, what: str, *, zero: bool = False) -> float:
    """A finite number of seconds, > 0 (or >= 0 with ``zero``), as a float."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not (value >= 0 if zero else value > 0)
    ):
        least = ">= 0" if zero else "> 0"
        raise InvalidRequestError(
            f"{what} must be a finite number of seconds {least}, not {value!r}"
        )
    return float(value)


def check_count(value: object, what: str) -> int:
    """An int >= 1 (a size or a count in a store's settings)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidRequestError(f"{what} must be an int >= 1, not {value!r}")
    return value


def check_ttl(ttl: object) -> float | None:
    """A TTL is ``None`` (never expire) or a positive number of seconds."""
    return None if ttl is None else check_seconds(ttl, "ttl (or None for no expiry)")


def copy_json_object(value: object, what: str = "metadata") -> dict[str, Any]:
    """A deep copy of a JSON object, or :class:`InvalidMessageError` if it is not one."""
    if not isinstance(value, Mapping):
        raise InvalidMessageError(f"{what} must be a mapping, not {type(value).__name__}")
    try:
        copied: dict[str, Any] = json.loads(dumps_value(value))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMessageError(
            f"{what} is not JSON-serialisable ({exc}); store only JSON values"
        ) from exc
    return copied


def split_patch(patch: object) -> tuple[dict[str, Any], list[str]]:
    """Validate a metadata patch: (keys to set with their values, keys to delete).

    Keys must have a UTF-8 form (no lone surrogates): Redis stores them as hash fields,
    and every store refuses the same input.
    """
    copied = copy_json_object(patch, "metadata patch")
    for key in copied:
        if not key.isascii():
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidMessageError(
                    f"metadata key {key!r} contains a lone surrogate and has no UTF-8 form; "
                    "use valid Unicode text for keys"
                ) from None
    updates = {k: v for k, v in copied.items() if v is not None}
    removals = [k for k, v in copied.items() if v is None]
    return updates, removals
