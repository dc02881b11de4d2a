"""How much slower this host runs Python than the one the unit tests' CPU bounds were set on.

Some unit tests bound the CPU time of one load (a fuzzed manifest, a file at the loader's
limits) to tell a hang or a quadratic blow-up from honest work. Such a bound is set with a
wide margin on one host, and a host several times slower (a busy VM: the CI host measured
3.5x slower one afternoon than the same morning) crosses it with linear work. So the bounds
are multiplied by `cpu_scale()`: a fixed pure-Python workload's CPU time here over its time
on the reference host, never below 1 (a faster host keeps the bounds as set). A blow-up the
bounds are there for is orders of magnitude, which the scale does not hide."""

from __future__ import annotations

import functools
import time

# the workload's CPU time on the host the bounds were set on (0.033-0.035 s)
REFERENCE_S = 0.035


def _workload() -> float:
    """CPU seconds of a dict-and-string loop, the kind of work the loader does."""
    started = time.process_time()
    counts: dict[str, int] = {}
    for i in range(200_000):
        key = f"key{i % 5000}"
        counts[key] = counts.get(key, 0) + len(key)
    return time.process_time() - started


@functools.cache
def cpu_scale() -> float:
    """This host's slowness against the reference (the best of three runs), at least 1."""
    return max(1.0, min(_workload() for _ in range(3)) / REFERENCE_S)
