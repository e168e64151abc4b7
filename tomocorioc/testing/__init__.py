"""Helpers only tests and benchmarks use: a trivial runner and an in-process fake dispatcher."""
