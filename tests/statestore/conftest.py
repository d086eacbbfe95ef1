"""Store tests use the real redis-server fixtures registered in tests/conftest.py."""
