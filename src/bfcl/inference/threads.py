"""How many torch threads a prediction process uses: one rule, shared by ``bfcl serve``,
``bfcl predict`` and the ``bfcl features`` workers.

Why: torch's default (one thread per core) collapses when other processes compete for
the cores -- on a loaded 2-core machine batch-1 prediction fell from ~70 to 1.4 posts/s,
because the threads of an intra-op parallel region wait on each other while the OS runs
someone else. A single thread cannot be stalled that way, so when the machine is busy we
take one; when it is quiet we take at most two, which is where the gain of more threads
for these small models flattens out.
"""

from __future__ import annotations

import os

__all__ = ["THREADS_HELP", "apply_threads", "available_cores", "default_threads"]

QUIET_MAX_THREADS = 2

THREADS_HELP = (
    "torch threads for this process. Default: 1 when the machine is busy (1-minute load average "
    "above the usable cores minus one), else min(2, cores); a shared machine then never collapses."
)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average (Windows): assume quiet
        return 0.0


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """The rule: 1 thread when ``load`` (1-minute load average) > ``cores`` - 1, else min(2, ``cores``)."""
    cores = available_cores() if cores is None else max(1, int(cores))
    load = _load_average() if load is None else float(load)
    if load > cores - 1:
        return 1
    return min(QUIET_MAX_THREADS, cores)


def apply_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_threads`); returns the number set."""
    import torch

    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n
