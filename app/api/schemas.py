"""The bodies every route shares: problems, probes, the served models. Each operation's request and answer live in
its module (app/operations/)."""

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
    model_id: str = Field(description="the default model's id")
    models: dict[str, str] = Field(description="each served model's id, by its name", examples=[{"digits": "cvae-..."}])


class ServedClass(BaseModel):
    label: int = Field(description="the class number")
    name: str = Field(description="the class name")


class ServedModel(BaseModel):
    name: str = Field(description="the served model's name: what ?model= takes", examples=["digits"])
    id: str = Field(description="its model id (X-Model-Id)", examples=["cvae-ae80abbd7489"])
    classes: list[ServedClass]
    default: bool = Field(description="whether it answers requests without ?model=")


class ServedModels(BaseModel):
    models: list[ServedModel] = Field(description="every served model, the default first")
