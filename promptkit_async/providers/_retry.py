"""When and how long to wait before retrying a provider call.

Pure functions and one small policy object, no I/O: the retry loop itself lives in
:mod:`promptkit_async.providers._http`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from ..errors import ConfigurationError

__all__ = ["RETRY_STATUSES", "RetryPolicy", "parse_retry_after", "should_retry_status"]

#: Statuses worth retrying besides 5xx: timeout, conflict (lock contention), rate limit.
RETRY_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a provider waits between attempts (the number of retries is the
    provider's ``max_retries``).

    Without a server hint the n-th retry waits ``min(initial_delay * 2**n, max_delay)``,
    minus up to ``jitter`` of it at random (so clients that failed together do not retry
    together). When the failed response says how long to wait (``retry-after-ms``, or
    ``Retry-After`` in seconds or as an HTTP date), that wait is used instead, capped at
    ``max_retry_after``.

    Attributes:
        initial_delay: seconds before the first retry.
        max_delay: cap on the computed backoff.
        max_retry_after: cap on a server-requested wait.
        jitter: fraction (0 to 1) of the backoff that may be taken off at random.
    """

    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ConfigurationError("retry delays must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("jitter must be between 0 and 1")

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first) without a hint."""
        delay = min(self.initial_delay * 2.0**retry, self.max_delay)
        return delay * (1.0 - self.jitter * random.random())

    def delay(self, retry: int, retry_after: float | None) -> float:
        """The wait before retry ``retry``: the server's ``retry_after`` (capped) if it
        gave one, else :meth:`backoff`."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        return self.backoff(retry)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a response asks us to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be a number of seconds or an HTTP date (compared with ``now``, a
    Unix time defaulting to the current time). Unparsable or negative values are ignored;
    a date in the past means 0.
    """
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            ms = float(value)
        except ValueError:
            pass
        else:
            if ms >= 0 and ms == ms:  # rejects NaN
                return ms / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None  # HTTP dates are always GMT; a zone-less date is not one
        return max(when.timestamp() - (time.time() if now is None else now), 0.0)
    if seconds < 0 or seconds != seconds:
        return None
    return seconds


def should_retry_status(status: int, headers: Mapping[str, str]) -> bool:
    """Whether a failed response is worth retrying.

    An explicit ``x-should-retry: true|false`` header (sent by OpenAI) wins; otherwise
    408, 409, 429 and every 5xx are retried.
    """
    hint = headers.get("x-should-retry")
    if hint == "true":
        return True
    if hint == "false":
        return False
    return status in RETRY_STATUSES or status >= 500
