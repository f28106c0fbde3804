"""The bodies every route shares: problems, probes. Each operation's request and answer live in its module
(app/operations/)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (media type application/problem+json)."""

    type: str = Field(examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no route for GET /nope"])


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(Problem):
    """A request whose fields are wrong: `errors` says which and why (the first 10; `error_count` then says how many
    were found)."""

    errors: list[FieldError]
    error_count: int | None = Field(None, description="how many errors were found, when there were more than listed")


class Liveness(BaseModel):
    status: str = Field(examples=["alive"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    model_id: str
