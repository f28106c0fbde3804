"""POST /encode: an uploaded picture -> its class (given, or read from the image) and its latent posterior.
An upload is sized from its header before it is queued (Pillow alone, torch-free) and decoded in the inference
process; image_refusal() is the one mapping from model/uploads.py's ImageError to the answer it gets."""

from __future__ import annotations

import logging
from time import time_ns
from typing import Any, NamedTuple

from PIL import UnidentifiedImageError
from pydantic import BaseModel, Field

from app.core.errors import ServiceError, field_error, invalid
from app.core.stages import Stage
from app.operations.base import MAX_NAME_CHARS, Answer, Operation, Serving, Worker, class_numbers
from model.manifest import ModelCard
from model.uploads import ImageError, decoded_pixels

log = logging.getLogger(__name__)

# An upload costs the model (encoder, label scoring) about as much as decoding 100,000 pixels; the seconds per unit
# are learnt by the scheduler, this ratio is not.
SECONDS_PER_PIXEL = 40e-9
UPLOAD_PIXELS = 100_000


class EncodeForm(BaseModel):
    """The form: a file part (bytes: an upload) and the class it shows, under `label` or its alias `digit`."""

    file: bytes = Field(description="the picture (multipart form field `file`)")
    label: str | None = Field(
        None, min_length=1, max_length=MAX_NAME_CHARS,
        description="the class it shows: its number or its name, in any case (GET /model lists `classes`); read from "
        "the image when absent",
    )  # fmt: skip
    digit: str | None = Field(
        None, min_length=1, max_length=MAX_NAME_CHARS, description="an alias of `label` (give one or the other)"
    )


class Upload(NamedTuple):
    """One request: the uploaded file's bytes and the class number it shows (None: infer it)."""

    data: bytes
    label: int | None
    pixels: int = 0  # what it decodes to, read from its header by prepare(): its cost estimate


class EncodeResult(NamedTuple):
    """The posterior of z for the given or inferred class; probabilities only when inferred."""

    label: int
    inferred: bool
    probabilities: list[float] | None
    mean: list[float]
    log_var: list[float]


class EncodeResponse(BaseModel):
    model_id: str
    digit: int | None = Field(
        None, description="the label again, for a model whose classes are the digits 0-9 (absent for any other)"
    )
    label: int = Field(description="the class number given, or the one inferred when none was given")
    name: str = Field(description="that class's name (GET /model's `classes`)")
    inferred: bool = Field(description="true when the class was inferred from the image")
    probabilities: list[float] | None = Field(
        description="p(label | image) for each of the model's classes, by class number, when the class was inferred; "
        "null when given"
    )
    mean: list[float] = Field(description="posterior mean of z for the class reported; use it as /generate's latent")
    log_var: list[float] = Field(description="posterior log-variance of z for the class reported")
    reading: str = Field(
        description="the rule that reads an image's class: `reader` (the model directory's reader network) or "
        "`generative` (the label under which the generative model explains the image best; less accurate on "
        "images unlike the training data)"
    )


def header_pixels(data: bytes, max_pixels: int) -> int:
    """How many pixels an upload will decode to, from its header: 413 when more than max_pixels, 415 when it is not
    an image Pillow reads, 400 when its header is corrupt."""
    try:
        return decoded_pixels(data, max_pixels)
    except ImageError as e:
        raise image_refusal(e) from e


def image_refusal(e: ImageError, digits: bool = True) -> ServiceError:
    """The answer to an upload model/ refuses, by the ImageError's reason (415 when Pillow did not recognise the
    format at all); digits: whether the model's classes are digits (what a blank image lacks)."""
    message = str(e)
    if e.reason == "too_large":
        return ServiceError(413, message, kind="image-too-large", title="Image too large")
    if e.reason == "blank":
        title = "No digit in the image" if digits else "Nothing in the image"
        return ServiceError(422, message, kind="blank-image", title=title)
    if e.reason == "non_finite":
        return ServiceError(422, message, kind="non-finite-image", title="Image has non-finite pixels")
    if isinstance(e.__cause__, UnidentifiedImageError):
        return ServiceError(415, message, kind="unsupported-image", title="Not an image")
    return ServiceError(400, message, kind="corrupt-image", title="Image could not be decoded")


class Encode(Operation[EncodeForm, Upload, EncodeResult]):
    name = "encode"
    Request = EncodeForm
    Payload = Upload
    Result = EncodeResult
    form = True
    response_model = EncodeResponse
    seconds_per_unit = SECONDS_PER_PIXEL
    summary = "Encode a picture"
    description = (
        "Upload any picture Pillow reads (PNG, JPEG, BMP, GIF, WebP, ...; any size and mode, either polarity). It is "
        "turned into an image like the model's training images (the model directory's `preprocessing`) and encoded. "
        "Without `label` (or its alias `digit`: a class number or name), the class is inferred by the served model's "
        "rule, which every answer names as `reading`: `reader` (the model directory's reader network) or, for a model "
        "directory without one, `generative` (the generative model's own score); `probabilities` are given for every "
        "class. The answer names the class by number (`label`) and `name` (and, for a digit model, `digit`). Send "
        "`mean` back to /generate as `latent` with the same label to reconstruct the upload."
    )

    def max_cost(self, settings: Any) -> int:
        return int(settings.max_encode_batch)

    def prepare(self, serving: Serving, body: EncodeForm, as_json: bool) -> Upload:
        """422 for a class the model does not have (or both `label` and `digit`); 413, 415 or 400 from the upload's
        header, before it is queued."""
        if body.label is not None and body.digit is not None:
            raise invalid(
                "give `label` or its alias `digit`, not both",
                [field_error(["body", "digit"], "give `label` or its alias `digit`, not both", "label_twice")],
            )
        given, field = (body.label, "label") if body.digit is None else (body.digit, "digit")
        label = None if given is None else class_numbers(serving.card, [given], ["body", field])[0]
        return Upload(body.file, label, header_pixels(body.file, serving.max_image_pixels))

    def work(self, payload: Upload) -> float:
        return payload.pixels + UPLOAD_PIXELS

    def size(self, payload: Upload) -> int:
        return len(payload.data)

    def answer(self, card: ModelCard, payload: Upload, result: EncodeResult, as_json: bool) -> Answer:
        body: dict[str, Any] = {"model_id": card.id}
        if card.is_digits:
            body["digit"] = result.label
        body |= {"label": result.label, "name": card.labels[result.label], **result._asdict(), "reading": card.reading}
        return Answer(body, "application/json", {"X-Model-Id": card.id})

    def run(
        self, worker: Worker, payloads: list[Upload], stages: list[Stage] | None
    ) -> list[EncodeResult | ServiceError]:
        """Uploads with a given label are encoded alone; the others scored together in passes of up to
        worker.score_uploads (docs/architecture.md, "Reproducibility")."""
        import torch

        outcomes: dict[int, EncodeResult | ServiceError] = {}
        to_score: list[tuple[int, Any]] = []
        for i, upload in enumerate(payloads):
            started = time_ns() if stages is not None else 0
            try:
                x = preprocess(worker, upload.data)
            except ServiceError as e:
                outcomes[i] = e
                continue
            except Exception:  # a surprise in one upload fails that request only
                log.exception("preprocessing an upload failed")
                outcomes[i] = ServiceError(500, "an unexpected error occurred; it has been logged", kind="internal")
                continue
            finally:
                if stages is not None:
                    stages.append(Stage("image", i, started, time_ns()))
            if upload.label is None:
                to_score.append((i, x))
                continue
            started = time_ns() if stages is not None else 0
            mean, log_var = worker.model.encoder(x, torch.tensor([upload.label]))
            outcomes[i] = EncodeResult(upload.label, False, None, mean[0].tolist(), log_var[0].tolist())
            if stages is not None:
                stages.append(Stage("inference", i, started, time_ns()))
        step = worker.score_uploads
        for start in range(0, len(to_score), step):
            started = time_ns() if stages is not None else 0
            part = to_score[start : start + step]
            log_probs, means, log_vars = worker.score(torch.cat([x for _, x in part]))
            for row, (i, _) in enumerate(part):
                best = int(log_probs[row].argmax())
                outcomes[i] = EncodeResult(
                    label=best,
                    inferred=True,
                    probabilities=log_probs[row].exp().tolist(),
                    mean=means[row, best].tolist(),
                    log_var=log_vars[row, best].tolist(),
                )
            if stages is not None:
                stages.append(Stage("inference", None, started, time_ns()))
        return [outcomes[i] for i in range(len(payloads))]

    def warm_up(self, worker: Worker) -> None:
        """A drawn stroke (an image of a one), encoded with its label inferred and given."""
        import torch

        from model.pictures import encode_png, to_uint8

        h, w = worker.card.tile_shape
        x = torch.zeros(1, h, w)
        x[0, h // 4 : -h // 4, w // 2 - 1 : w // 2 + 1] = 1.0
        stroke = encode_png(to_uint8(x)[0])
        for outcome in self.run(worker, [Upload(stroke, None), Upload(stroke, 0)], None):
            if isinstance(outcome, ServiceError):
                raise RuntimeError(f"warm-up: encoding a drawn stroke failed: {outcome.detail}")


def preprocess(worker: Worker, data: bytes) -> Any:
    """Upload bytes (any format Pillow reads) -> the image as the model reads it (1, 1, H, W), made by the model
    directory's preprocessing."""
    from model.imaging import decode_image
    from model.preprocessing import preprocess as prepared

    card = worker.card
    try:
        return prepared(decode_image(data, worker.max_image_pixels), card.preprocessing, card.tile_shape)[None]
    except ImageError as e:
        raise image_refusal(e, card.is_digits) from e


OPERATION = Encode()
