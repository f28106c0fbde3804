"""Reloading served models while serving (SIGHUP, POST /admin/reload): a model's directory read again, its new runtime
(card, engine, scheduler) prepared beside the serving one, then switched to; a model that cannot be served is
refused and the old one keeps serving. Each served model has its own Reloader; Reloaders reloads several, one after
another. Why it works this way: docs/architecture.md, "Reloading"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

from app.engine.interface import freeze_heap
from app.engine.process import ProcessEngine
from app.serving.runtime import Runtime
from app.serving.state import Served
from app.telemetry.metrics import Metrics
from model.manifest import ModelCard, ModelDirError

log = logging.getLogger(__name__)

# What a model must share with the serving one to replace it: clients' requests (latent sizes, digits), the body
# limit set at start-up and the tile size all depend on them.
COMPATIBLE = ("latent_dim", "labels", "image_shape")


class ReloadOutcome(NamedTuple):
    model: str  # the served model's name
    outcome: str  # "reloaded" or "refused"
    model_id: str  # the model serving after it
    previous_id: str  # the model serving before it
    reason: str  # why it was refused; empty when reloaded


class Reloader:
    """Replaces served.runtime with a runtime built by `build` for the card `read` returns (the card checked against
    that model's serving card first, then its engine started; the old runtime keeps serving meanwhile), one reload at a
    time. A request holds the runtime it was admitted by until it is answered: the old runtime finishes its queued
    requests before its engine is closed."""

    def __init__(
        self,
        *,
        served: Served,
        read: Callable[[], ModelCard],
        build: Callable[[ModelCard], Runtime],
        metrics: Metrics,
        timeout_s: float,
    ) -> None:
        self.served = served  # its runtime is the one serving
        self.read = read
        self.build = build
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()

    async def reload(self, source: str) -> ReloadOutcome:
        name = self.served.name
        async with self._lock:
            old = self.served.runtime
            if old is None:  # the lifespan makes the reloader once a runtime serves
                raise RuntimeError("no runtime to reload")
            log.info("reload of %s (%s): reading its model directory again; model %s keeps serving", name, source,
                     old.card.id)  # fmt: skip
            new: Runtime | None = None
            try:
                card = await asyncio.to_thread(self.read)  # hashing the artifacts: off the event loop
                incompatible = self._incompatible(old.card, card)
                if incompatible:
                    raise ModelDirError(incompatible)
                new = self.build(card)
                await asyncio.wait_for(new.start(), self.timeout_s)
                loaded = new.engine.model_id if isinstance(new.engine, ProcessEngine) else card.id
                if loaded != card.id:  # the directory's contents were replaced while the card and the child read it
                    raise ModelDirError(f"{card.path} changed while it was read (model {card.id}, then {loaded}): "
                                        "replace a model directory by repointing a symlink")  # fmt: skip
            except (ModelDirError, RuntimeError, TimeoutError, OSError) as e:
                reason = f"not ready within CVAE_RELOAD_TIMEOUT_S ({self.timeout_s:g} s)" if isinstance(
                    e, TimeoutError
                ) else str(e)  # fmt: skip
                if new is not None:
                    await new.stop()
                    freeze_heap()  # the old runtime's heap again: closing an engine unfreezes the process's
                self.metrics.reloads.labels(name, "refused").inc()
                log.error("reload of %s refused, model %s keeps serving: %s", name, old.card.id, reason)
                return ReloadOutcome(name, "refused", old.card.id, old.card.id, reason)
            except BaseException:
                if new is not None:
                    await new.stop()
                raise
            self.served.runtime = new
            self.metrics.set_model(name, new.card)
            self.metrics.inference_process.watch(name, new.engine if isinstance(new.engine, ProcessEngine) else None)
            self.metrics.reloads.labels(name, "reloaded").inc()
            log.info("reloaded %s: model %s serving (was %s)", name, new.card.id, old.card.id)
            await old.stop()  # its queued requests are answered by it; then its engine closes
            freeze_heap()
            return ReloadOutcome(name, "reloaded", new.card.id, old.card.id, "")

    @staticmethod
    def _incompatible(old: ModelCard, new: ModelCard) -> str:
        for key in COMPATIBLE:
            if old.manifest[key] != new.manifest[key]:
                return (
                    f"{new.path}: {key} {new.manifest[key]!r} differs from the serving model's {old.manifest[key]!r} "
                    "(restart the service to serve it)"
                )
        return ""


class Reloaders:
    """Every served model's Reloader, by name (the configuration's order, the default first). Several models are
    reloaded one after another, so that one new inference process at a time starts beside the serving ones: a reload
    of every model needs the memory of one more model, not of all of them again."""

    def __init__(self, by_name: dict[str, Reloader]) -> None:
        self.by_name = by_name
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[list[ReloadOutcome]]] = set()

    async def reload(self, source: str, names: Sequence[str] | None = None) -> list[ReloadOutcome]:
        """Reload the models named (None: every one), in that order; each outcome, in the same order."""
        return [await self.by_name[name].reload(source) for name in (self.by_name if names is None else names)]

    def request(self, source: str) -> None:
        """Start reloading every model without waiting for it (a signal handler's way, from the event loop's
        thread)."""
        task = self.loop.create_task(self.reload(source), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """At shutdown: cancel reloads under way (a model being prepared is closed)."""
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
