"""The scenarios of ``python -m benchmarks.run``, each a function ``body(bench, deadline)``
that appends its rows to ``bench.rows`` (see :class:`benchmarks.bench.Bench`)."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.bench import Bench
from benchmarks.common import Deadline
from benchmarks.scenarios.handshake import handshake_scenario
from benchmarks.scenarios.memory import memory_scenario
from benchmarks.scenarios.notify import notify_scenario
from benchmarks.scenarios.p2p import p2p_scenario
from benchmarks.scenarios.requests import select_scenario, tuple_scenario
from benchmarks.scenarios.scaling import scaling_scenario

BODIES: dict[str, Callable[[Bench, Deadline], None]] = {
    "tuple": tuple_scenario, "select": select_scenario, "notify": notify_scenario,
    "handshake": handshake_scenario, "memory": memory_scenario, "scaling": scaling_scenario,
    "p2p": p2p_scenario,
}
