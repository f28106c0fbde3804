"""The inference process in /metrics: its resident memory, CPU seconds, start time and restarts, read from
/proc/<pid>/stat and /proc/<pid>/status at each scrape (prometheus_client's ProcessCollector reads only the server's).

The child's pid changes when it is replaced: its CPU counter then starts again from zero (a counter reset, which
rate() and increase() allow for), its start time moves, and the restart counter goes up by one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

OF = "the inference process"


class Watched(Protocol):
    """What the collector reads of app.engine.process.ProcessEngine."""

    @property
    def pid(self) -> int | None: ...

    restarts: int  # processes started to replace one that died or hung


class InferenceProcessCollector(Collector):
    """Nothing until watch() is given an engine (none in thread mode); then the restart counter, and the process's
    figures while its /proc entry is readable (not between a death and its replacement)."""

    def __init__(self, namespace: str, registry: CollectorRegistry, proc: str = "/proc") -> None:
        self.prefix = f"{namespace}_inference_process_"
        self.proc = proc
        self.engine: Watched | None = None
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._boot_time = boot_time(proc)  # None where there is no /proc/stat
        registry.register(self)

    def watch(self, engine: Watched | None) -> None:
        self.engine = engine

    def collect(self) -> Iterable[Metric]:
        engine = self.engine
        if engine is None:
            return []
        p = self.prefix
        restarts = "Inference processes started to replace one that died or stopped answering"
        found: list[Metric] = [CounterMetricFamily(p + "restarts", restarts, value=engine.restarts)]
        pid = engine.pid
        if pid is None:
            return found
        try:
            with open(f"{self.proc}/{pid}/stat", "rb") as f:
                stat = f.read().rpartition(b")")[2].split()  # after the command name, which may hold spaces
            with open(f"{self.proc}/{pid}/status", "rb") as f:
                status = {k: v for k, _, v in (line.partition(b":") for line in f.read().splitlines())}
        except OSError:  # it has just died; its replacement is counted once it is ready
            return found
        # stat[i] is proc(5)'s field i + 3 (the fields after the name): 11 utime, 12 stime, 19 starttime (clock
        # ticks since boot), 20 vsize (bytes). status's VmRSS is in kB; a zombie has none.
        cpu = (int(stat[11]) + int(stat[12])) / self._ticks
        found.append(CounterMetricFamily(p + "cpu_seconds", f"User and system CPU time of {OF}, in seconds (from zero "
                                         "again after a restart)", value=cpu))  # fmt: skip
        if b"VmRSS" in status:
            rss = int(status[b"VmRSS"].split()[0]) * 1024
            found.append(
                GaugeMetricFamily(p + "resident_memory_bytes", f"Resident memory of {OF}, in bytes", value=rss)
            )
        found.append(
            GaugeMetricFamily(p + "virtual_memory_bytes", f"Virtual memory of {OF}, in bytes", value=int(stat[20]))
        )
        if self._boot_time is not None:
            started = self._boot_time + int(stat[19]) / self._ticks
            found.append(
                GaugeMetricFamily(p + "start_time_seconds", f"Start time of {OF}, in Unix seconds", value=started)
            )
        return found


def boot_time(proc: str) -> float | None:
    """The machine's boot time (Unix seconds): /proc/stat's btime, which /proc/<pid>/stat's start time counts from."""
    try:
        with open(f"{proc}/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None
