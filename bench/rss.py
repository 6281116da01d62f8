"""Process figures shared by the benchmarks: a process's own peak resident
memory (the worker figures) and the CPU time of this connection's PostgreSQL
backend.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is wrong for a worker started
with subprocess: Linux keeps the signal struct's maxrss across fork and exec,
so a child reports the *parent's* peak at the moment it was spawned. The bench
parent had just created and enrolled N leads, which is why the nurture
workers seemed to peak at 364 MB at 100,000 (the parent's size) while they
steadily used 92 MB. ``VmHWM`` in /proc/self/status is the high-water mark of
this process's own address space only.
"""
from __future__ import annotations

import os
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


def backend_pid() -> int | None:
    """This connection's PostgreSQL backend process id (None elsewhere)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def backend_cpu_of(pid: int | None) -> float:
    """CPU seconds (user + system, from /proc: the server runs on this
    machine) of the backend ``pid``; 0 without one. Reads no SQL, so it can
    bracket a single call."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu() -> float:
    """CPU seconds of this connection's PostgreSQL backend; 0 elsewhere.
    Set-based work (a bulk recompute, a COPY, an index build) spends its time
    there, not in the benchmark's own process."""
    return backend_cpu_of(backend_pid())
