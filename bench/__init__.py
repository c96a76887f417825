"""Reproducible benchmarks of rh_agents (``make bench``; ``python -m bench --help``).

Every figure is a ratio measured side by side in one process run: each round runs all
contenders of a benchmark back to back in a shuffled order, and the reported value is the
median over the rounds. See ``docs/performance.md``.
"""
