"""Reloading the model while serving (SIGHUP, POST /admin/reload): the model directory read again, its new runtime
(card, engine, scheduler) prepared beside the serving one, then switched to; a model that cannot be served is
refused and the old one keeps serving. Why it works this way: docs/architecture.md, "Reloading"."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import NamedTuple

from app.engine.interface import freeze_heap
from app.engine.process import ProcessEngine
from app.serving.runtime import Runtime
from app.serving.state import ServiceState
from app.telemetry.metrics import Metrics
from model.manifest import ModelCard, ModelDirError

log = logging.getLogger(__name__)

# What a model must share with the serving one to replace it: clients' requests (latent sizes, digits), the body
# limit set at start-up and the tile size all depend on them.
COMPATIBLE = ("latent_dim", "labels", "image_shape")


class ReloadOutcome(NamedTuple):
    outcome: str  # "reloaded" or "refused"
    model_id: str  # the model serving after it
    previous_id: str  # the model serving before it
    reason: str  # why it was refused; empty when reloaded


class Reloader:
    """Replaces state.runtime with a runtime built by `build` for the card `read` returns (the card checked first,
    then its engine started; the old runtime keeps serving meanwhile), one reload at a time. A request holds the
    runtime it was admitted by until it is answered: the old runtime finishes its queued requests before its engine
    is closed."""

    def __init__(
        self,
        *,
        state: ServiceState,
        read: Callable[[], ModelCard],
        build: Callable[[ModelCard], Runtime],
        metrics: Metrics,
        timeout_s: float,
    ) -> None:
        self.state = state  # its runtime is the one serving
        self.read = read
        self.build = build
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[ReloadOutcome]] = set()

    def request(self, source: str) -> None:
        """Start a reload without waiting for it (a signal handler's way, from the event loop's thread)."""
        task = self.loop.create_task(self.reload(source), name="reload")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """At shutdown: cancel reloads under way (a model being prepared is closed)."""
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload(self, source: str) -> ReloadOutcome:
        async with self._lock:
            old = self.state.runtime
            if old is None:  # the lifespan makes the reloader once a runtime serves
                raise RuntimeError("no runtime to reload")
            log.info("reload (%s): reading the model directory again; model %s keeps serving", source, old.card.id)
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
                self.metrics.reloads.labels("refused").inc()
                log.error("reload refused, model %s keeps serving: %s", old.card.id, reason)
                return ReloadOutcome("refused", old.card.id, old.card.id, reason)
            except BaseException:
                if new is not None:
                    await new.stop()
                raise
            self.state.runtime = new
            self.metrics.set_model(new.card)
            self.metrics.inference_process.watch(new.engine if isinstance(new.engine, ProcessEngine) else None)
            self.metrics.reloads.labels("reloaded").inc()
            log.info("reloaded: model %s serving (was %s)", new.card.id, old.card.id)
            await old.stop()  # its queued requests are answered by it; then its engine closes
            freeze_heap()
            return ReloadOutcome("reloaded", new.card.id, old.card.id, "")

    @staticmethod
    def _incompatible(old: ModelCard, new: ModelCard) -> str:
        for key in COMPATIBLE:
            if old.manifest[key] != new.manifest[key]:
                return (
                    f"{new.path}: {key} {new.manifest[key]!r} differs from the serving model's {old.manifest[key]!r} "
                    "(restart the service to serve it)"
                )
        return ""
