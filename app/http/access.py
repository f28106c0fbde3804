"""Access control, all of it opt-in: API keys, per-client rate limits and CORS, in one pure ASGI middleware outside the
fast path, so that every route is behind it. What each check does and why: docs/architecture.md, "Access"."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, field

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import ServiceError, retry_after_value
from app.http.problems import send_problem

MAX_CLIENTS = 10_000  # rate-limit buckets kept (least recently used dropped first)
CORS_HEADERS = ["Authorization", "X-API-Key", "Content-Type", "Accept", "X-Request-ID"]
CORS_EXPOSED = ["X-Seed", "X-Model-Id", "X-Request-ID", "Retry-After"]


@dataclass(frozen=True)
class Keys:
    """A set of API keys, kept as SHA-256 digests."""

    digests: tuple[bytes, ...]

    @classmethod
    def of(cls, keys: tuple[str, ...]) -> Keys:
        return cls(tuple(hashlib.sha256(key.encode()).digest() for key in keys))

    def __bool__(self) -> bool:
        return bool(self.digests)

    def accepts(self, key: bytes) -> bool:
        given = hashlib.sha256(key).digest()
        found = False
        for digest in self.digests:  # every one, whatever matched
            found |= hmac.compare_digest(given, digest)
        return found


def key_of(scope: Scope) -> bytes | None:
    """The key a request sends: Authorization: Bearer KEY, else X-API-Key: KEY."""
    api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"x-api-key" and api_key is None:
            api_key = value.strip()
    return api_key


@dataclass
class RateLimiter:
    """Token buckets: `rate` requests per second per client, `burst` at once."""

    rate: float
    burst: int
    buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)  # client -> (tokens, time)

    def wait(self, client: str, now: float) -> float:
        """Takes a token for the client: 0.0 if there was one, else the seconds until there is (nothing taken)."""
        tokens, then = self.buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self.buckets[client] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self.buckets[client] = (tokens, now)
            wait = (1.0 - tokens) / self.rate
        if len(self.buckets) > MAX_CLIENTS:
            self.buckets.popitem(last=False)
        return wait


@dataclass(frozen=True)
class Access:
    """What the settings ask for (built by the lifespan): empty key sets, no rate and no origins check nothing."""

    api_keys: Keys  # needed on the `keyed` paths
    metrics_keys: Keys  # needed on the `metrics` path
    limiter: RateLimiter | None  # applied on the `limited` paths
    cors_origins: tuple[str, ...]
    admin_keys: Keys = Keys(())  # needed on the `admin` path
    keyed: Container[str] = frozenset()
    metrics: str = ""
    admin: Container[str] = frozenset()
    limited: Container[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.api_keys or self.metrics_keys or self.admin_keys or self.limiter or self.cors_origins)


class AccessMiddleware:
    """Checks `access` (built by create_app from the settings); passes everything through while it asks for
    nothing."""

    def __init__(self, app: ASGIApp, *, access: Access) -> None:
        self.app = app
        self.access = access
        chain: ASGIApp = app
        if access.active:
            chain = _Checks(app, access)
            if access.cors_origins:
                chain = CORSMiddleware(
                    chain, allow_origins=list(access.cors_origins), allow_methods=["GET", "POST"],
                    allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED, max_age=600,
                )  # fmt: skip
        self.chain = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await (self.chain if scope["type"] == "http" else self.app)(scope, receive, send)


class _Checks:
    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        access = self.access
        keys = (
            access.api_keys if path in access.keyed
            else access.metrics_keys if path == access.metrics
            else access.admin_keys if path in access.admin
            else None
        )  # fmt: skip
        given = key_of(scope) if keys else None
        if keys and (given is None or not keys.accepts(given)):
            await send_problem(send, _unauthorized(given is not None), close=False)
            return
        if access.limiter is not None and path in access.limited:
            client = f"key:{hashlib.sha256(given).hexdigest()[:16]}" if given else _address(scope)
            wait = access.limiter.wait(client, time.monotonic())
            if wait > 0:
                await send_problem(
                    send,
                    ServiceError(
                        429, f"too many requests: at most {access.limiter.rate:g} per second ({access.limiter.burst} "
                        "at once) per client; try again after Retry-After seconds", kind="rate-limited",
                        headers={"Retry-After": retry_after_value(wait)},
                    ),
                    close=False,
                )  # fmt: skip
                return
        await self.app(scope, receive, send)


def _unauthorized(wrong: bool) -> ServiceError:
    if wrong:
        challenge = 'Bearer realm="cvae-digits", error="invalid_token"'
        return ServiceError(401, "the API key is not valid", kind="invalid-api-key",
                            headers={"WWW-Authenticate": challenge})  # fmt: skip
    return ServiceError(
        401, "this endpoint needs an API key: send it as Authorization: Bearer KEY or X-API-Key: KEY",
        kind="missing-api-key", headers={"WWW-Authenticate": 'Bearer realm="cvae-digits"'},
    )  # fmt: skip


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return f"address:{client[0]}" if client else "address:unknown"
