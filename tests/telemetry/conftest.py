"""Fixtures for the telemetry tests (defined in tests/_otel.py)."""

from tests._otel import openai, otel, router

__all__ = ["openai", "otel", "router"]
