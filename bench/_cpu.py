"""CPU-bound work for P6, in a module without heavy imports so that process-pool workers
(started with spawn) are ready quickly."""

from __future__ import annotations

import time


def cpu_work(iterations: int) -> int:
    """Pure-Python CPU-bound work (top-level, so a process pool can pickle it)."""
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return total


def calibrate_cpu(seconds: float) -> int:
    """Iterations of :func:`cpu_work` that take about ``seconds`` in this process."""
    iterations = 20_000
    while True:
        start = time.perf_counter()
        cpu_work(iterations)
        took = time.perf_counter() - start
        if took > 0.02:
            break
        iterations *= 2
    best = took
    for _ in range(2):
        start = time.perf_counter()
        cpu_work(iterations)
        best = min(best, time.perf_counter() - start)
    return max(1, int(iterations * seconds / best))
