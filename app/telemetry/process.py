"""The inference processes in /metrics, one per served model (its `model` label): resident memory, CPU seconds, start
time and restarts, read from /proc/<pid>/stat and /proc/<pid>/status at each scrape (prometheus_client's
ProcessCollector reads only the server's).

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

OF = "a served model's inference process"


class Watched(Protocol):
    """What the collector reads of app.engine.process.ProcessEngine."""

    @property
    def pid(self) -> int | None: ...

    restarts: int  # processes started to replace one that died or hung


class InferenceProcessCollector(Collector):
    """Nothing until watch() is given an engine (none in thread mode); then, for each model watched, the restart
    counter, and the process's figures while its /proc entry is readable (not between a death and its replacement)."""

    def __init__(self, namespace: str, registry: CollectorRegistry, proc: str = "/proc") -> None:
        self.prefix = f"{namespace}_inference_process_"
        self.proc = proc
        self.engines: dict[str, Watched] = {}  # by served model's name
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._boot_time = boot_time(proc)  # None where there is no /proc/stat
        registry.register(self)

    def watch(self, model: str, engine: Watched | None) -> None:
        """The engine now serving `model` (None: none to watch, as in thread mode)."""
        if engine is None:
            self.engines.pop(model, None)
        else:
            self.engines[model] = engine

    def collect(self) -> Iterable[Metric]:
        if not self.engines:
            return []
        p = self.prefix
        restarts = CounterMetricFamily(
            p + "restarts", "Inference processes started to replace one that died or stopped answering",
            labels=["model"],
        )  # fmt: skip
        cpu = CounterMetricFamily(
            p + "cpu_seconds", f"User and system CPU time of {OF}, in seconds (from zero again after a restart)",
            labels=["model"],
        )  # fmt: skip
        rss = GaugeMetricFamily(p + "resident_memory_bytes", f"Resident memory of {OF}, in bytes", labels=["model"])
        vsize = GaugeMetricFamily(p + "virtual_memory_bytes", f"Virtual memory of {OF}, in bytes", labels=["model"])
        started = GaugeMetricFamily(p + "start_time_seconds", f"Start time of {OF}, in Unix seconds", labels=["model"])
        for model, engine in list(self.engines.items()):
            restarts.add_metric([model], engine.restarts)
            pid = engine.pid
            if pid is None:
                continue
            try:
                with open(f"{self.proc}/{pid}/stat", "rb") as f:
                    stat = f.read().rpartition(b")")[2].split()  # after the command name, which may hold spaces
                with open(f"{self.proc}/{pid}/status", "rb") as f:
                    status = {k: v for k, _, v in (line.partition(b":") for line in f.read().splitlines())}
            except OSError:  # it has just died; its replacement is counted once it is ready
                continue
            # stat[i] is proc(5)'s field i + 3 (the fields after the name): 11 utime, 12 stime, 19 starttime (clock
            # ticks since boot), 20 vsize (bytes). status's VmRSS is in kB; a zombie has none.
            cpu.add_metric([model], (int(stat[11]) + int(stat[12])) / self._ticks)
            if b"VmRSS" in status:
                rss.add_metric([model], int(status[b"VmRSS"].split()[0]) * 1024)
            vsize.add_metric([model], int(stat[20]))
            if self._boot_time is not None:
                started.add_metric([model], self._boot_time + int(stat[19]) / self._ticks)
        return [family for family in (restarts, cpu, rss, vsize, started) if family.samples]


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
