"""Benchmarks: ``python -m dfn.bench ops`` (operators) and ``python -m dfn.bench data`` (data)."""
