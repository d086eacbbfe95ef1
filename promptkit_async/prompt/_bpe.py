"""Offline loading of the tiktoken encodings this library counts with.

tiktoken fetches its BPE files over HTTP the first time an encoding is used, which is a
blocking network call. We never let it: the two encodings the OpenAI chat models use ship
inside this package (``_encodings/``), and are loaded from there, or from the user's
``TIKTOKEN_CACHE_DIR`` when it holds a copy under tiktoken's own cache name. Either way
the file's SHA-256 must equal the hash tiktoken itself checks.

We read and decode the files ourselves instead of calling
``tiktoken.load.load_tiktoken_bpe(path)``: for a local path that function still copies the
file into a cache folder (``$TIKTOKEN_CACHE_DIR`` or ``/tmp/data-gym-cache``), and raises
when a user-specified cache folder is read-only. The file format and the hash check are
the same.

Each encoding is built once per process, under a lock, so concurrent first uses from
several threads load it once. Building one takes a fraction of a second (parsing
~200,000 ranks), so async callers use :func:`aget_encoding`, which does it in a worker
thread.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from importlib import resources

import anyio.to_thread
import tiktoken

from ..errors import InvalidRequestError, PromptKitError

__all__ = ["SUPPORTED_ENCODINGS", "aget_encoding", "get_encoding", "is_loaded"]

logger = logging.getLogger("promptkit_async.prompt")

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True, slots=True)
class _Spec:
    url: str  # where tiktoken downloads it; sha1(url) is tiktoken's cache file name
    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


# Constructor arguments copied from tiktoken_ext/openai_public.py (tiktoken 0.7 - 0.14);
# tests/prompt compares the result with tiktoken's own Encoding objects.
_SPECS: dict[str, _Spec] = {
    "o200k_base": _Spec(
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": _Spec(
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        {
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}

#: The encodings this library can load offline.
SUPPORTED_ENCODINGS: frozenset[str] = frozenset(_SPECS)

_loaded: dict[str, tiktoken.Encoding] = {}
# A threading lock (not an asyncio one): loading happens in worker threads, and a
# threading.Lock is not bound to any event loop, so creating it at import is safe.
_lock = threading.Lock()


def _spec(name: str) -> _Spec:
    spec = _SPECS.get(name)
    if spec is None:
        raise InvalidRequestError(
            f"encoding {name!r} is not available offline; use one of: " + ", ".join(sorted(_SPECS))
        )
    return spec


def _read_verified(path: str, sha256: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        logger.warning("ignoring %s: its sha256 does not match the encoding's", path)
        return None
    return data


def _read_ranks_file(name: str) -> tuple[bytes, str]:
    """The verified bytes of ``name``'s rank file and where they came from."""
    spec = _spec(name)
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
    if cache_dir:
        # The user's tiktoken cache, under tiktoken's own file name for this encoding.
        path = os.path.join(cache_dir, hashlib.sha1(spec.url.encode()).hexdigest())
        data = _read_verified(path, spec.sha256)
        if data is not None:
            return data, path
    packaged = (
        resources.files("promptkit_async.prompt")
        .joinpath("_encodings")
        .joinpath(f"{name}.tiktoken")
    )
    with resources.as_file(packaged) as path_obj:
        path = str(path_obj)
        data = _read_verified(path, spec.sha256)
    if data is None:
        raise PromptKitError(
            f"the {name} encoding file is missing or corrupt ({path}); reinstall "
            "promptkit-async, or set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's "
            f"cached copy ({hashlib.sha1(spec.url.encode()).hexdigest()})"
        )
    return data, path


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    # The .tiktoken format: one "<base64 token> <rank>" per line.
    ranks: dict[bytes, int] = {}
    b64decode = base64.b64decode
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[b64decode(token)] = int(rank)
    return ranks


def _build(name: str) -> tiktoken.Encoding:
    """Build ``name`` from its file, without caching (see :func:`get_encoding`)."""
    spec = _spec(name)
    data, source = _read_ranks_file(name)
    encoding = tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=_parse_ranks(data),
        special_tokens=dict(spec.special_tokens),
    )
    logger.debug("loaded tiktoken encoding %s from %s", name, source)
    return encoding


def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding ``name``, built on first use (blocking) and then shared.

    Thread-safe: concurrent first calls build it once. Never touches the network.

    Raises:
        InvalidRequestError: for an encoding this library does not ship.
        PromptKitError: if the shipped file is missing or corrupt.
    """
    encoding = _loaded.get(name)
    if encoding is not None:
        return encoding
    with _lock:
        encoding = _loaded.get(name)
        if encoding is None:
            encoding = _loaded[name] = _build(name)
    return encoding


def is_loaded(name: str) -> bool:
    """True once ``name`` was built in this process (so using it will not block)."""
    return name in _loaded


async def aget_encoding(name: str) -> tiktoken.Encoding:
    """Like :func:`get_encoding`, but a first load runs in a worker thread.

    Cancelling the caller during a first load waits for that load to finish (it is
    cheap and its result is kept for everyone), then raises the cancellation.
    """
    encoding = _loaded.get(name)
    if encoding is not None:
        return encoding
    _spec(name)  # bad names fail here, not in the thread
    return await anyio.to_thread.run_sync(get_encoding, name)
