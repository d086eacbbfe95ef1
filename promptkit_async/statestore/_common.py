"""Checks and JSON helpers shared by every store, so they all reject the same input."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidMessageError, InvalidRequestError, StoreDataError
from ..types import Cost, Usage
from .base import Ledger

__all__ = [
    "LEDGER_FIELDS",
    "MAX_OWNER_LENGTH",
    "MAX_TURN_ID_LENGTH",
    "check_count",
    "check_last_n",
    "check_lease_ttl",
    "check_limit",
    "check_owner",
    "check_seconds",
    "check_token",
    "check_ttl",
    "check_turn_figures",
    "check_turn_id",
    "check_wait_timeout",
    "copy_json_object",
    "dumps_value",
    "ledger_from_mapping",
    "ledger_increments",
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


# --- the TurnStore's arguments (issue 15): every store rejects the same input ------------

#: The longest turn id accepted, in characters (an HTTP Idempotency-Key fits easily).
MAX_TURN_ID_LENGTH = 200

#: The longest lease owner accepted, in characters.
MAX_OWNER_LENGTH = 200


def _check_label(value: object, what: str, limit: int, hint: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{what} must be a str, not {type(value).__name__}; {hint}")
    if not value or len(value) > limit:
        raise InvalidRequestError(
            f"{what} must be 1 to {limit} characters long, not {len(value)}; {hint}"
        )
    # Control characters (NUL, newlines...) would break keys, logs and headers alike.
    if not value.isprintable() and any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in value):
        raise InvalidRequestError(f"{what} contains a control character; {hint}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(
                f"{what} contains a lone surrogate and has no UTF-8 form; {hint}"
            ) from None
    return value


def check_turn_id(turn_id: object) -> str:
    """A turn id: a non-empty str of at most :data:`MAX_TURN_ID_LENGTH` characters with
    no control characters (and a UTF-8 form). Returned unchanged."""
    return _check_label(
        turn_id,
        "turn_id",
        MAX_TURN_ID_LENGTH,
        "use a short printable key such as a UUID (e.g. the request's Idempotency-Key)",
    )


def check_owner(owner: object) -> str:
    """A lease owner label (e.g. ``host:pid:random``), the same rules as a turn id."""
    return _check_label(owner, "owner", MAX_OWNER_LENGTH, "name the taker, e.g. 'host:pid:abc'")


def check_lease_ttl(lease_ttl: object) -> float:
    """A lease TTL: a finite number of seconds > 0, as a float."""
    return check_seconds(lease_ttl, "lease_ttl")


def check_wait_timeout(timeout: object) -> float:
    """How long :meth:`TurnStore.wait_turn` may wait: finite seconds >= 0, as a float."""
    return check_seconds(timeout, "timeout", zero=True)


def check_token(token: object) -> int:
    """A fencing token: an int (not a bool) >= 0, as issued by ``begin_turn``."""
    if not isinstance(token, int) or isinstance(token, bool) or token < 0:
        raise InvalidRequestError(
            f"token must be the int fencing token begin_turn returned, not {token!r}"
        )
    return token


def check_turn_figures(usage: object, cost: object) -> tuple[Usage, Cost]:
    """``end_turn``'s ``usage``/``cost``: a :class:`Usage`/:class:`Cost` or ``None``
    (zero). Returned with the zeros filled in."""
    if usage is None:
        usage = _NO_USAGE
    elif not isinstance(usage, Usage):
        raise InvalidRequestError(f"usage must be a Usage or None, not {type(usage).__name__}")
    if cost is None:
        cost = _NO_COST
    elif not isinstance(cost, Cost):
        raise InvalidRequestError(f"cost must be a Cost or None, not {type(cost).__name__}")
    return usage, cost


_NO_USAGE = Usage()
_NO_COST = Cost()

#: The ledger's fields, in :class:`Ledger` order: a store may keep one column or hash
#: field per name (``cost_usd`` is a float, the others ints).
LEDGER_FIELDS = (
    "turns",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "cost_usd",
)


def ledger_increments(usage: Usage, cost: Cost) -> dict[str, int | float]:
    """What one turn adds to each ledger field (for an atomic increment in the store)."""
    return {
        "turns": 1,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "total_tokens": usage.total_tokens,
        "cost_usd": cost.total_cost,
    }


def ledger_from_mapping(fields: Mapping[str, object]) -> Ledger:
    """A :class:`Ledger` from stored fields (str keys; str, bytes or number values;
    missing ones are 0).

    Raises :class:`~promptkit_async.errors.StoreDataError` on a field that is not a number.
    """
    values: dict[str, Any] = {}
    for name in LEDGER_FIELDS:
        raw = fields.get(name)
        if raw is None:
            continue
        if isinstance(raw, (bytes, bytearray)):
            raw = raw.decode("ascii", "replace")
        try:
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                raise TypeError(raw)
            number = float(raw) if name == "cost_usd" else int(raw)
            if number < 0 or not math.isfinite(number):
                raise ValueError(raw)
        except (TypeError, ValueError):
            raise StoreDataError(
                f"the session's ledger field {name!r} holds {raw!r}, not a number; "
                "it was changed outside the library: delete the session's ledger"
            ) from None
        values[name] = number
    return Ledger(**values)
