"""What the routes call for one served model: its card, and its engine behind one scheduler with a lane per operation
(app/operations/registry.py). Async and torch-free; no HTTP."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from app.core.errors import ServiceError
from app.engine.interface import Engine
from app.operations.base import Operation, Serving
from app.operations.registry import OPERATIONS
from app.serving.scheduler import Lane, Scheduler
from app.settings import Settings
from app.telemetry.metrics import Metrics
from model.manifest import ModelCard

if TYPE_CHECKING:
    from app.telemetry.otel import Tracing


class Runtime:
    def __init__(
        self,
        *,
        name: str,
        card: ModelCard,
        engine: Engine,
        settings: Settings,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        self.name = name  # the served model's, from configuration: its metrics' model label
        self.card = card
        self.engine = engine
        self.metrics = metrics
        self.tracing = tracing  # None: untraced, and the lanes' jobs are the payloads themselves
        self.serving = Serving(card=card, max_image_pixels=settings.max_image_pixels)
        # The largest body each operation's path reads for this model (others: CVAE_MAX_UPLOAD_BYTES alone).
        self.body_limits = {
            op.path: min(settings.max_upload_bytes, limit)
            for op in OPERATIONS
            if (limit := op.body_limit(card)) is not None
        }
        self.scheduler = Scheduler(
            max_wait_s=settings.max_wait_ms / 1000.0,
            max_queue_s=settings.max_queue_wait_s,
            max_queued_bytes=settings.max_queued_bytes,
        )
        self.lanes: dict[str, Lane[Any, Any]] = {}
        for op in OPERATIONS:
            run = partial(engine.run, op.name)
            self.lanes[op.name] = self.scheduler.lane(
                run if tracing is None else tracing.batches(op.name, run, model=name),
                max_cost=op.max_cost(settings),
                seconds_per_unit=op.seconds_per_unit,
                on_batch=partial(metrics.on_batch, name, op.name),
                on_queue=partial(metrics.on_queue, name, op.name),
            )

    @property
    def available(self) -> bool:
        return self.engine.available

    async def start(self) -> None:
        """Prepare the engine (RuntimeError if it cannot), then take requests."""
        await self.engine.prepare()
        self.scheduler.start()

    async def stop(self) -> None:
        """Finish the queued requests, then close the engine."""
        await self.scheduler.stop()
        await self.engine.close()

    async def run(self, op: Operation[Any, Any, Any], payload: Any) -> Any:
        """-> the payload's result (a payload from op.prepare); its ServiceError (4xx for a bad upload) is raised."""
        job = payload if self.tracing is None else self.tracing.job(payload)
        lane = self.lanes[op.name]
        outcome = await self.scheduler.submit(lane, job, op.cost(payload), op.work(payload), size=op.size(payload))
        if isinstance(outcome, ServiceError):
            raise outcome
        self.metrics.count_images(self.name, op.images(payload))
        self.metrics.count_answer(self.name, self.card.id, op.name)
        return outcome
