"""Benchmarks for promptkit_async (not part of the installed package).

Entry points: ``python -m bench.run`` (end-to-end, every client against the mock
upstream), ``python -m bench.micro`` (pipeline overhead, idle memory, truncation hook),
``python -m bench.upstream`` (the mock server alone). See docs/benchmarks.md.
"""
