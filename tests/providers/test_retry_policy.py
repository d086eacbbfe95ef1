"""Backoff timing and reading a response's wait hints (pure functions, no I/O)."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from promptkit_async.providers import RetryPolicy
from promptkit_async.providers._retry import parse_retry_after, should_retry_status

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": formatdate(NOW + 42, usegmt=True)}, 42.0),
        ({"retry-after": formatdate(NOW - 42, usegmt=True)}, 0.0),  # a past date: now
        # retry-after-ms is the more precise hint and wins.
        ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),
        # An unusable ms value falls back to Retry-After.
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "tomorrow-ish"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00"}, None),  # no zone: not an HTTP date
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    got = parse_retry_after(headers, now=NOW)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-6)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=5.0, jitter=0.25)
    for retry, full in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (10, 5.0)]:
        for _ in range(50):
            assert full * 0.75 <= policy.backoff(retry) <= full


def test_backoff_without_jitter_is_exact() -> None:
    assert RetryPolicy(initial_delay=0.5, jitter=0).backoff(2) == 2.0


def test_delay_prefers_the_server_hint_but_caps_it() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_retry_after=30.0, jitter=0)
    assert policy.delay(0, 7.0) == 7.0
    assert policy.delay(0, 3600.0) == 30.0
    assert policy.delay(0, 0.0) == 0.0
    assert policy.delay(1, None) == 2.0


@pytest.mark.parametrize("bad", [{"initial_delay": -1}, {"jitter": 1.5}, {"max_retry_after": -2}])
def test_policy_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (503, True),
        (529, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (422, False),
    ],
)
def test_retryable_statuses(status: int, retry: bool) -> None:
    assert should_retry_status(status, {}) is retry


def test_x_should_retry_header_wins() -> None:
    assert should_retry_status(500, {"x-should-retry": "false"}) is False
    assert should_retry_status(400, {"x-should-retry": "true"}) is True
    assert should_retry_status(429, {"x-should-retry": "maybe"}) is True
