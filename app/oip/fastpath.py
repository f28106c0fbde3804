"""/v2 infer requests answered by the infer route's own endpoint, called directly: FastAPI's routing and dependency
solving cost about as much as the rest of a small request (docs/performance.md), as app/api/fastpath.py finds for
/generate and /encode. Every other request goes on to FastAPI, which still holds the route and documents it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app import paths
from app.core.errors import ServiceError
from app.http.handlers import problem_response
from app.oip.routes import infer


class InferFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" and scope["method"] == "POST" else ""
        if paths.v2_template(path) != paths.V2_INFER:
            await self.app(scope, receive, send)
            return
        parts = path.split("/")  # "", "v2", "models", model, ["versions", version,] "infer"
        try:
            response = await infer(Request(scope, receive), parts[3], parts[5] if len(parts) == 7 else None)
        except ServiceError as e:  # as the handlers render it
            response = problem_response(e)
        await response(scope, receive, send)
