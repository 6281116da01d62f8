"""A process's own peak resident memory, for the benchmarks' worker figures.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is wrong for a worker started
with subprocess: Linux keeps the signal struct's maxrss across fork and exec,
so a child reports the *parent's* peak at the moment it was spawned. The bench
parent had just created and enrolled N leads, which is why the nurture
workers seemed to peak at 364 MB at 100,000 (the parent's size) while they
steadily used 92 MB. ``VmHWM`` in /proc/self/status is the high-water mark of
this process's own address space only.
"""
from __future__ import annotations

import resource


def own_peak_rss_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:  # not Linux: the rusage figure, with its caveat
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
