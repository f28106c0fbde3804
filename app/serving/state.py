"""ServiceState: what changes while the app serves (each model's runtime, which its reload replaces, readiness,
draining), one object made by create_app and handed to what reads it: the routes, the fast path, the body limit, the
reloaders and `python -m app`'s signal handlers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.serving.reload import Reloaders
    from app.serving.runtime import Runtime


class Served:
    """One model the service serves: its name and directory, from configuration, and the runtime serving it."""

    __slots__ = ("directory", "name", "runtime")

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.runtime: Runtime | None = None  # until the model is loaded and prepared; replaced by each of its reloads


class ServiceState:
    __slots__ = ("default", "draining", "models", "ready", "reloaders")

    def __init__(self, models: Sequence[tuple[str, Path]]) -> None:
        """models: (name, directory) of each model, the default first; the names are the configuration's, never a
        request's, and there is at least one."""
        self.models = {name: Served(name, directory) for name, directory in models}  # in the configuration's order
        self.default = next(iter(self.models))
        self.reloaders: Reloaders | None = None  # once every model is loaded and prepared
        self.ready = False  # from start-up's end to shutdown's start
        self.draining = False  # set by python -m app when shutdown is asked for

    @property
    def runtime(self) -> Runtime | None:
        """The default model's runtime."""
        return self.models[self.default].runtime

    def runtimes(self) -> list[Runtime | None]:
        return [served.runtime for served in self.models.values()]
