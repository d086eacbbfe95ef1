"""Checks on caller input, shared by the pipeline and every store (run before any I/O)."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InvalidMessageError, InvalidRoleError, InvalidSessionIdError

#: The longest session id accepted, in characters.
MAX_SESSION_ID_LENGTH = 1024

#: Roles a caller may start a turn with (tool results are produced by the tool loop).
INPUT_ROLES = frozenset(("user", "system", "assistant"))


def check_session_id(session_id: object) -> str:
    """Return ``session_id`` if it is usable, else raise :class:`InvalidSessionIdError`.

    Any Unicode text is allowed (stores escape it) except: non-strings, empty or
    whitespace-only ids, ids over :data:`MAX_SESSION_ID_LENGTH` characters, NUL characters
    and lone surrogates (which cannot be encoded to UTF-8).
    """
    if not isinstance(session_id, str):
        raise InvalidSessionIdError(f"session id must be a str, not {type(session_id).__name__}")
    if not session_id.strip():
        raise InvalidSessionIdError(
            "session id is empty or blank; pass a stable id such as 'user-123'"
        )
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise InvalidSessionIdError(
            f"session id is {len(session_id)} characters long; the limit is "
            f"{MAX_SESSION_ID_LENGTH} (hash long ids, e.g. with hashlib.sha256)"
        )
    if "\x00" in session_id:
        raise InvalidSessionIdError("session id contains a NUL character")
    if not session_id.isascii():
        try:
            session_id.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidSessionIdError(
                "session id contains a lone surrogate and cannot be encoded as UTF-8"
            ) from None
    return session_id


def check_input(role: object, content: object) -> None:
    """Validate the role and content a caller starts a turn with.

    ``content`` is text or a non-empty sequence of content parts (the parts themselves
    are checked when the :class:`~promptkit_async.types.Message` is built, also before
    any I/O).
    """
    if role not in INPUT_ROLES:
        raise InvalidRoleError(
            f"unknown role {role!r} for a new turn; use 'user' (or 'system'/'assistant')"
        )
    if isinstance(content, str):
        if not content.strip():
            raise InvalidMessageError("content is empty; send some text")
        return
    if not isinstance(content, Sequence) or isinstance(content, (bytes, bytearray)):
        raise InvalidMessageError(
            f"content must be str or a list of content parts, not {type(content).__name__}"
        )
    if not content:
        raise InvalidMessageError("content has no parts; send some text or a part")
