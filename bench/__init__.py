"""Benchmarks: scripts that measure, side by side in one process, what the README and the notes quote."""
