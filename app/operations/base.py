"""What every operation is: the stages a request goes through, each with one home (after LitServe's LitAPI), and
what the server and the inference process give an operation to work with. Torch-free; the batch functions import
torch inside them, where only the inference process calls them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel

from app.core.errors import ServiceError, field_error, invalid
from app.core.stages import Stage
from model.manifest import ModelCard

if TYPE_CHECKING:
    from app.settings import Settings

MAX_SHOWN = 5  # unknown labels an error message quotes
B = TypeVar("B", bound=BaseModel)  # the request body, as the schema validated it
P = TypeVar("P", bound=tuple[Any, ...])  # the payload: the checked request, as it crosses to the inference process
R = TypeVar("R", bound=tuple[Any, ...])  # the result, as it crosses back


@dataclass(frozen=True)
class Serving:
    """What an operation's server side reads: the model card and the limits the settings set."""

    card: ModelCard
    max_image_pixels: int


class Answer(NamedTuple):
    """What the HTTP side sends: a JSON object (rendered as FastAPI renders one) or bytes of media_type."""

    content: dict[str, Any] | bytes
    media_type: str
    headers: dict[str, str]


class Worker(Protocol):
    """What the inference process gives a batch function (app/inference/worker.py): the loaded model and the passes
    that keep answers independent of batching. Typed loosely here: the server side never holds one."""

    model: Any  # model.artifacts.LoadedModel
    card: ModelCard
    png_compress_level: int
    max_image_pixels: int
    score_uploads: int  # the most inferred-digit uploads scored in one pass

    def decode(self, z: Any, labels: Any) -> Any: ...

    def score(self, x: Any) -> tuple[Any, Any, Any]: ...


class Operation(Generic[B, P, R]):
    """One endpoint, end to end. `name` is its URL (/name), its scheduler lane, its metrics label and its name on the
    wire. The server validates a body with `Request`, turns it into a payload with prepare() (422s against the model),
    queues it by cost() and work(), and answers with answer(); the inference process runs run() on a batch of payloads.
    """

    name: ClassVar[str]
    Request: type[B]
    Payload: type[P]
    Result: type[R]
    form: ClassVar[bool] = False  # the body is a multipart form (an upload); else JSON
    negotiates: ClassVar[bool] = False  # answers image/png or, asked for, application/json; else JSON only
    draws: ClassVar[bool] = False  # its cost is tiles drawn (the batch_size_samples histogram)
    response_model: ClassVar[type[BaseModel] | None] = None  # its JSON answer, for the OpenAPI document
    seconds_per_unit: ClassVar[float]  # the scheduler's first guess of the engine's seconds per unit of work
    summary: ClassVar[str]
    description: ClassVar[str]
    examples: ClassVar[dict[str, dict[str, Any]]] = {}

    @property
    def path(self) -> str:
        return "/" + self.name

    # --- the server's side ---------------------------------------------------------------------------------------

    def max_cost(self, settings: Settings) -> int:
        """The most cost one batch may hold (tiles, uploads)."""
        return settings.max_batch

    def body_limit(self, card: ModelCard) -> int | None:
        """The largest body this operation reads for this model; None: CVAE_MAX_UPLOAD_BYTES alone."""
        return None

    def prepare(self, serving: Serving, body: B, as_json: bool) -> P:
        """The payload of a validated body, checked against the model (ServiceError 4xx for what it cannot do)."""
        raise NotImplementedError

    def cost(self, payload: P) -> int:
        """What the payload counts against a batch's max_cost; a job is never split."""
        return 1

    def work(self, payload: P) -> float:
        """The engine's work for it, in this lane's units (turned into seconds by the scheduler)."""
        return 1.0

    def size(self, payload: P) -> int:
        """Bytes it holds while queued."""
        return 0

    def images(self, payload: P) -> Sequence[int]:
        """The label of every image it draws (the images_generated counter); none by default."""
        return ()

    def answer(self, card: ModelCard, payload: P, result: R, as_json: bool) -> Answer:
        raise NotImplementedError

    # --- the inference process's side ----------------------------------------------------------------------------

    def run(self, worker: Worker, payloads: list[P], stages: list[Stage] | None) -> list[R | ServiceError]:
        """A batch: each payload's result, or the error that payload alone gets, in order. With stages, the work is
        timed into it."""
        raise NotImplementedError

    def warm_up(self, worker: Worker) -> None:
        """Run every code path once before serving; RuntimeError if something is wrong (not reproducible)."""


MAX_NAME_CHARS = 64  # longest class name a request may give


def class_numbers(card: ModelCard, given: Sequence[int | str], loc: list[str | int]) -> list[int]:
    """The class number of each label a request gives (a class number, or a class name in any case): 422 naming the
    valid ones for any the model does not have."""
    found = [card.class_of(value) for value in given]
    unknown = [value for value, number in zip(given, found, strict=True) if number is None]
    if unknown:
        shown = list(dict.fromkeys(unknown))[:MAX_SHOWN]
        raise invalid(
            f"this model has no class {', '.join(repr(u) for u in shown)}; its classes are "
            f"{card.describe_classes()} (give the number or the name, in any case)",
            [field_error(loc, f"unknown class; the classes are {card.describe_classes()}", "label")],
        )
    return [number for number in found if number is not None]


def label_of(label: Any, digit: Any) -> Any:
    """What a body gives under `label` or its alias `digit`: ValueError (a 422) for both, or neither."""
    if label is not None and digit is not None:
        raise ValueError("give `label` or its alias `digit`, not both")
    if label is None and digit is None:
        raise ValueError("`label` is required: a class number or a class name (GET /model's `classes`)")
    return digit if label is None else label


def label_field(label: Any) -> str:
    """The body's field its label came in: `label`, else its alias `digit` (what a 422 names)."""
    return "digit" if label is None else "label"


def check_latent(card: ModelCard, row: Sequence[float], loc: list[str | int]) -> None:
    """422 for a latent vector whose length is not the model's latent size."""
    d = card.latent_dim
    if len(row) != d:
        raise invalid(
            f"{loc[-1] if isinstance(loc[-1], str) else loc[-2]} must have {d} numbers (the model's latent size "
            f"D = {d}); got {len(row)}",
            [field_error(loc, f"expected {d} numbers, got {len(row)}", "latent_dim")],
        )
