"""Shared fixtures and test doubles for the whole suite."""

from __future__ import annotations

import pytest

from promptkit_async import (
    InMemoryStateStore,
    MockProvider,
    Pipeline,
    ProviderMiddleware,
    ProviderRequest,
    StateMiddleware,
)

# Real server fixtures for every test dir: redis_server, redis_cluster, redis_factory,
# postgres_server, postgres_factory.
pytest_plugins = ["tests._redis_server", "tests._postgres_server"]


def echo_handler(request: ProviderRequest) -> str:
    """Reply so that each reply names the message it answers."""
    return f"reply to {request.messages[-1].content}"


@pytest.fixture
def store() -> InMemoryStateStore:
    return InMemoryStateStore()


@pytest.fixture
def echo_provider() -> MockProvider:
    return MockProvider(handler=echo_handler, model="gpt-4o-mini")


@pytest.fixture
def pipeline(store: InMemoryStateStore, echo_provider: MockProvider) -> Pipeline:
    return Pipeline(StateMiddleware(store), ProviderMiddleware(echo_provider))
