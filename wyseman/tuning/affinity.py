"""``[server] cpu_affinity``: the reactor thread on CPUs of its own.

A gateway process is one busy thread. Every reply it sends wakes a client's process,
every statement a PostgreSQL backend, and Linux tends to run a woken process on the
core of the thread that woke it: on a host that also runs PostgreSQL (or the clients),
those processes keep preempting the reactor thread, which then waits for its core
while another one may be idle. Pinned to a core, with PostgreSQL and the rest kept to
the others (``taskset``, systemd's ``CPUAffinity=``), it runs undisturbed: see
docs/performance.md for what that measured.

Only the reactor thread is pinned (Linux's affinity is per thread). Threads start with
the affinity of the thread that starts them, so the helper threads (notification
fan-out, signature checks) call :func:`release_helper_thread` first and go back to the
CPUs the process had, where they can still use the other cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

#: the CPUs the process could use before the reactor thread was pinned (None: not pinned)
_process_cpus: frozenset[int] | None = None


class AffinityError(Exception):
    """The CPUs asked for cannot be used here (a configuration error)."""


def available_cpus() -> frozenset[int]:
    """The CPUs this process may use (its affinity before any pinning: under ``taskset``
    or a container's cpuset, not all the host's); empty where the system cannot tell."""
    if _process_cpus is not None:
        return _process_cpus
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset()


def pin_reactor_thread(cpus: Iterable[int]) -> frozenset[int]:
    """Run the calling thread (the reactor's) on ``cpus`` from now on → those CPUs.

    :raises AffinityError: no ``sched_setaffinity`` here (not Linux), or a CPU this
        process may not use.
    """
    global _process_cpus
    wanted = check(cpus)
    if _process_cpus is None:
        _process_cpus = available_cpus()
    os.sched_setaffinity(0, wanted)
    return wanted


def check(cpus: Iterable[int]) -> frozenset[int]:
    """``cpus`` as a set, if this process may be pinned to them.

    :raises AffinityError: no ``sched_setaffinity`` here (not Linux), or a CPU this
        process may not use (the message says which, and which it may).
    """
    wanted = frozenset(cpus)
    if not hasattr(os, "sched_setaffinity"):
        raise AffinityError("[server] cpu_affinity needs Linux (sched_setaffinity)")
    allowed = available_cpus()
    missing = sorted(wanted - allowed)
    if not wanted or missing:
        raise AffinityError(
            f"[server] cpu_affinity: CPU {', '.join(map(str, missing)) or '(none)'} not "
            f"available to this process (it may use {describe(allowed)})")
    return wanted


def release_helper_thread() -> None:
    """In a helper thread started by a pinned reactor thread: back to the process's
    CPUs (nothing to do when nothing was pinned)."""
    if _process_cpus is not None:
        try:
            os.sched_setaffinity(0, _process_cpus)
        except OSError:   # a CPU went offline meanwhile: stay where we are
            pass


def restore() -> None:
    """The calling thread back on the process's CPUs, and nothing pinned any more (a
    stopped gateway in an application that goes on running; tests)."""
    global _process_cpus
    if _process_cpus is not None:
        cpus, _process_cpus = _process_cpus, None
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass


def pinned() -> bool:
    return _process_cpus is not None


def place_process(pid: int, cpus: Iterable[int]) -> bool:
    """Every thread of process ``pid`` on ``cpus`` (the threads and processes it starts
    later inherit that) → False if the process is gone. Linux."""
    wanted = frozenset(cpus)
    try:
        tids = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return False
    for tid in tids:
        try:
            os.sched_setaffinity(tid, wanted)
        except OSError:   # a thread that ended meanwhile
            pass
    return True


def place_process_tree(pid: int, cpus: Iterable[int]) -> int:
    """:func:`place_process` for ``pid`` and its children (a postmaster's processes; its
    future backends inherit it) → the processes placed."""
    return sum(place_process(process, cpus) for process in [pid, *children(pid)])


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from ``/proc``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
            if text[text.rindex(")") + 2:].split()[1] == str(pid):
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def describe(cpus: Iterable[int]) -> str:
    """``0-3, 6`` for {0, 1, 2, 3, 6}."""
    ranges: list[str] = []
    for cpu in sorted(cpus):
        if ranges and ranges[-1].split("-")[-1] == str(cpu - 1):
            ranges[-1] = ranges[-1].split("-")[0] + f"-{cpu}"
        else:
            ranges.append(str(cpu))
    return ", ".join(ranges) or "(none)"


def auto_threads(workers: int, cpus: int | None = None) -> int:
    """Helper threads for ``0`` (automatic) in ``[server] fanout_threads`` and ``[auth]
    verify_threads``: the cores left to each worker process, at most 4 (past that the
    GIL, held between the calls, limits the gain). The cores are those this process may
    run on (its affinity mask, e.g. under ``taskset`` or a container's cpuset, as it was
    before ``[server] cpu_affinity`` pinned the reactor thread), not all the host's."""
    import os
    cpus = cpus or len(available_cpus()) or os.cpu_count() or 1
    return max(1, min(4, cpus // max(1, workers)))
