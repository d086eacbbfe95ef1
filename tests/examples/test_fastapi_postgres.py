"""examples/fastapi_app.py with ``DATABASE_URL`` set: its store is PostgreSQL."""

from __future__ import annotations

import uuid

import httpx
import pytest

from examples.fastapi_app import create_app
from promptkit_async import DemoProvider
from promptkit_async.statestore import PostgresStateStore
from tests._postgres_server import PostgresServer

pytestmark = pytest.mark.postgres


async def test_database_url_selects_postgres_and_the_app_closes_it(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgres_server.dsn)
    monkeypatch.delenv("REDIS_URL", raising=False)
    app = create_app(provider=DemoProvider(model="gpt-4o-mini"))
    session = f"alice-{uuid.uuid4().hex[:8]}"
    async with app.router.lifespan_context(app):
        store = app.state.store
        assert isinstance(store, PostgresStateStore)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post(f"/sessions/{session}/messages", json={"content": "Hi"})
            assert r.status_code == 200
            r = await client.get(f"/sessions/{session}/messages")
            assert [m["role"] for m in r.json()] == ["user", "assistant"]
    assert store.pool._closed  # created in the lifespan, closed with it
    # A second app (a restart) sees the same history.
    async with await PostgresStateStore.connect(postgres_server.dsn) as again:
        assert await again.count(session) == 2
