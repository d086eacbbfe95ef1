"""In-process bookkeeping the SQLite and PostgreSQL stores share for session leases.

:class:`Waiters` holds the turns of this process that wait for a session's lease (woken
by this store's own releases at once, and by the store's signalling from other
processes); :class:`Watches` holds the leases this process watches for the
``interrupt`` policy. Both are used from the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

from ..errors import InvalidRequestError

__all__ = ["Waiters", "Watches", "check_lease_ttl", "check_owner", "check_token", "check_turn_id"]

_log = logging.getLogger("promptkit_async.statestore")


def check_lease_ttl(value: object) -> float:
    """A lease TTL: a positive, finite number of seconds."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidRequestError(
            f"lease_ttl must be a finite number of seconds > 0, not {value!r}"
        )
    return float(value)


def check_token(value: object) -> int:
    """A fencing token: the int :meth:`begin_turn` returned."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequestError(
            f"token must be the int fencing token begin_turn returned, not {value!r}"
        )
    return value


def check_turn_id(value: object) -> str | None:
    """``None`` or a non-empty str of at most 200 characters, no control characters."""
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 200
        or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value)
    ):
        raise InvalidRequestError(
            f"turn_id must be a non-empty str of at most 200 characters without control "
            f"characters (e.g. an HTTP Idempotency-Key), not {value!r}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError("turn_id contains a lone surrogate") from None
    return value


def check_owner(value: object) -> str:
    """The lease taker's name, for diagnostics: a str."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"owner must be a str, not {type(value).__name__}")
    return value


class Waiters:
    """Futures of the turns waiting for a session's lease, per session id."""

    __slots__ = ("_by_session",)

    def __init__(self) -> None:
        self._by_session: dict[str, set[asyncio.Future[None]]] = {}

    def register(self, session_id: str) -> asyncio.Future[None]:
        """A future resolved by the next :meth:`wake` of ``session_id``; pass it to
        :meth:`discard` when done with it."""
        future = asyncio.get_running_loop().create_future()
        self._by_session.setdefault(session_id, set()).add(future)
        return future

    def discard(self, session_id: str, future: asyncio.Future[None]) -> None:
        """Stop waiting with ``future``."""
        futures = self._by_session.get(session_id)
        if futures is not None:
            futures.discard(future)
            if not futures:
                del self._by_session[session_id]

    def wake(self, session_id: str) -> None:
        """Wake every waiter of ``session_id`` (they then try to take the lease)."""
        for future in self._by_session.pop(session_id, ()):
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        """Wake everyone (the store is closing, or its signalling was interrupted)."""
        for session_id in list(self._by_session):
            self.wake(session_id)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_session


class Watches:
    """The leases watched for loss: session id → token → ``on_lost`` callbacks."""

    __slots__ = ("_by_session",)

    def __init__(self) -> None:
        self._by_session: dict[str, dict[int, list[Callable[[], None]]]] = {}

    def add(self, session_id: str, token: int, on_lost: Callable[[], None]) -> Callable[[], None]:
        """Watch ``token``; returns the function that stops watching (idempotent)."""
        callbacks = self._by_session.setdefault(session_id, {}).setdefault(token, [])
        callbacks.append(on_lost)

        def stop() -> None:
            tokens = self._by_session.get(session_id)
            if tokens is None or token not in tokens:
                return
            with contextlib.suppress(ValueError):
                tokens[token].remove(on_lost)
            if not tokens[token]:
                del tokens[token]
            if not tokens:
                del self._by_session[session_id]

        return stop

    def sessions(self) -> list[str]:
        """The watched session ids."""
        return list(self._by_session)

    def __bool__(self) -> bool:
        return bool(self._by_session)

    def lost(self, session_id: str, newest: int | None) -> None:
        """The session's newest token is ``newest`` (``None``: its lease row is gone):
        every watched older token lost its lease; tell each watcher once."""
        tokens = self._by_session.get(session_id)
        if not tokens:
            return
        gone = [t for t in tokens if newest is None or t < newest]
        for token in gone:
            for callback in tokens.pop(token):
                try:
                    callback()
                except Exception:  # a watcher's bug must not stop the others being told
                    _log.exception("on_lost callback of session %r failed", session_id)
        if not tokens:
            self._by_session.pop(session_id, None)
