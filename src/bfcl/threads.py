"""How many torch threads a process uses: one rule, shared by ``bfcl serve``, ``bfcl predict``
and ``bfcl train``.

Why: torch's intra-op threads wait for each other at every parallel region, so when other
processes compete for the cores a multi-threaded process collapses -- on a loaded 2-core
machine batch-1 prediction fell from ~70 to 1.4 posts/s, because one of its threads was
always waiting for the other while the OS ran someone else. A thread per *free* core cannot
be stalled that way. So "auto" counts the free cores: the usable cores minus the other
processes' demand, which is the larger of the 1-minute load average and the runnable threads
of other processes right now (sampled from ``/proc``; the load average alone lags by a minute).
Prediction takes at most two threads (where the gain of more flattens out for these small
models), training at most torch's own default (the physical cores).

The competition changes while a process runs (a server started on a quiet machine, a job
started beside it later), so :func:`follow_load` re-checks it every few seconds from the
model's forward pass, in the thread that runs the model (torch's thread count belongs to the
calling thread), and the trainer does the same between steps. ``--threads N`` pins N threads.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "THREADS_HELP", "LoadFollower", "apply_threads", "available_cores", "competing_tasks", "default_threads",
    "follow_load", "threads_for", "torch_default_threads",
]

QUIET_MAX_THREADS = 2
"""The most threads prediction takes ("auto")."""
CHECK_SECONDS = 2.0
"""How often a running process re-checks the competition for the cores."""

THREADS_HELP = (
    "torch threads for this process. Default (auto): one per free core, at most 2 -- the usable cores minus "
    "other processes' load (1-minute load average or their runnable threads now, the larger), re-checked every "
    "few seconds while the model runs; a shared machine then never collapses. A number pins it."
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


def _runnable_now() -> int | None:
    """Runnable threads on the machine at this instant (``/proc/loadavg``, 4th field), None without /proc."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _own_runnable() -> int:
    """Threads of this process that are running or runnable (state R), the caller included."""
    n = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        end = stat.rfind(")")  # the name in parentheses may hold spaces
        if end != -1 and stat[end + 2 : end + 3] == "R":
            n += 1
    return max(n, 1)


def competing_tasks(samples: int = 5, spacing: float = 0.01) -> float | None:
    """Runnable threads of *other* processes, averaged over ``samples`` readings ``spacing`` s apart;
    None where the OS does not say (no ``/proc``)."""
    seen = []
    for i in range(samples):
        if i:
            time.sleep(spacing)
        total = _runnable_now()
        if total is None:
            return None
        seen.append(max(0, total - _own_runnable()))
    return sum(seen) / len(seen)


def threads_for(cores: int, load: float, most: int = QUIET_MAX_THREADS) -> int:
    """One thread per free core (``cores - load``, rounded), at least 1 and at most ``most``."""
    return max(1, min(int(most), int(cores), math.floor(cores - max(0.0, load) + 0.5)))


def default_threads(cores: int | None = None, load: float | None = None, most: int = QUIET_MAX_THREADS) -> int:
    """:func:`threads_for` the usable cores and the other processes' ``load`` (default: the larger of
    the 1-minute load average and :func:`competing_tasks` now)."""
    cores = available_cores() if cores is None else max(1, int(cores))
    if load is None:
        now = competing_tasks()
        load = max(_load_average(), now or 0.0)
    return threads_for(cores, float(load), most)


_TORCH_DEFAULT: list[int] = []


def torch_default_threads() -> int:
    """torch's own thread count before bfcl changed it (the physical cores, or OMP_NUM_THREADS):
    read the first time it is asked for, and before bfcl sets any count."""
    if not _TORCH_DEFAULT:
        import torch

        _TORCH_DEFAULT.append(torch.get_num_threads())
    return _TORCH_DEFAULT[0]


def apply_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_threads`); returns the number set."""
    import torch

    torch_default_threads()  # remembered before it changes
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


class LoadFollower:
    """Keeps torch's thread count at :func:`threads_for` the competition, re-checked every ``every`` s.

    Call :meth:`check` often (it costs a clock read until a re-check is due) from the thread that
    runs torch; a re-check samples the other processes' runnable threads once and smooths the
    readings (half the old estimate, half the new), so a shell command does not flip the count,
    while a job that keeps running is followed within a check or two.
    """

    def __init__(
        self, *, most: int = QUIET_MAX_THREADS, every: float = CHECK_SECONDS, cores: int | None = None,
        sample: Callable[[], float | None] | None = None, clock: Callable[[], float] = time.monotonic,
        estimate: float | None = None,
    ) -> None:
        import torch

        self.torch = torch
        self.most = int(most)
        self.every = float(every)
        self.cores = available_cores() if cores is None else max(1, int(cores))
        self.sample = sample or (lambda: competing_tasks(samples=1))
        self.clock = clock
        self.estimate = estimate
        """Smoothed runnable threads of other processes (None: nothing seen yet)."""
        self.threads = torch.get_num_threads()
        self.due = clock() + self.every
        self.handle: Any = None

    @classmethod
    def start(cls, most: int, **kw: Any) -> "LoadFollower":
        """Set the threads by :func:`default_threads` now (at most ``most``) and follow the load from here."""
        import torch

        cores = kw.get("cores")
        torch_default_threads()  # remembered before it changes
        n = default_threads(cores=cores, most=most)
        torch.set_num_threads(n)
        return cls(most=most, **kw)

    def check(self) -> int:
        """Re-estimate when due; set the calling thread's torch threads when they differ. Returns them."""
        now = self.clock()
        if now >= self.due:
            self.due = now + self.every
            seen = self.sample()
            if seen is not None:
                self.estimate = seen if self.estimate is None else 0.5 * (self.estimate + seen)
                self.threads = threads_for(self.cores, self.estimate, self.most)
        if self.torch.get_num_threads() != self.threads:
            self.torch.set_num_threads(self.threads)
        return self.threads

    def __call__(self, module: Any, args: Any) -> None:  # a forward pre-hook
        self.check()


def follow_load(module: Any, **kw: Any) -> LoadFollower:
    """Re-check the thread count (:class:`LoadFollower`) at each forward pass of ``module`` (a torch
    module: the hook runs in the thread that runs the model); for ``bfcl predict`` / ``serve`` in
    "auto". Returns the follower; ``follower.handle.remove()`` stops it."""
    follower = LoadFollower(**kw)
    follower.handle = module.register_forward_pre_hook(follower)
    return follower
