"""Helpers for tests and benchmarks: tiny random checkpoints and generated videos."""
