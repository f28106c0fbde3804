"""ServiceState: what changes while the app serves (the runtime a reload replaces, readiness, draining), one object
made by create_app and handed to what reads it: the routes, the fast path, the body limit, the reloader and
`python -m app`'s signal handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.serving.reload import Reloader
    from app.serving.runtime import Runtime


class ServiceState:
    __slots__ = ("draining", "ready", "reloader", "runtime")

    def __init__(self) -> None:
        self.runtime: Runtime | None = None  # until the model is loaded and prepared; replaced by each reload
        self.reloader: Reloader | None = None  # until then too
        self.ready = False  # from start-up's end to shutdown's start
        self.draining = False  # set by python -m app when shutdown is asked for
