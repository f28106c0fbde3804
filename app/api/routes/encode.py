"""POST /encode: an uploaded picture of a digit -> its digit and its latent posterior."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse

from app import paths
from app.api.deps import runtime_of
from app.api.parsing import StrictRoute
from app.api.schemas import EncodeResponse, Problem, ValidationProblem
from app.engine.interface import Upload
from app.serving.runtime import Runtime
from app.telemetry.logs import MODEL_ID

router = APIRouter(tags=["encode"], route_class=StrictRoute)


@router.post(
    paths.ENCODE,
    summary="Encode a picture of a digit",
    description="Upload any picture Pillow reads (PNG, JPEG, BMP, GIF, WebP, ...; any size and mode, either "
    "polarity). It is turned into an MNIST-style 28x28 digit and encoded. Without `digit`, the digit is inferred "
    "(the label under which the model explains the image best) and `probabilities` are given for all ten. "
    "Send `mean` back to /generate as `latent` with the same digit to reconstruct the upload.",
    response_model=EncodeResponse,
    responses={
        400: {"model": Problem, "description": "The image is truncated or corrupt"},
        200: {"headers": {"X-Model-Id": {"description": "the model that encoded it", "schema": {"type": "string"}}}},
        413: {"model": Problem, "description": "The upload exceeds CVAE_MAX_UPLOAD_BYTES bytes or "
              "CVAE_MAX_IMAGE_PIXELS pixels (refused before decoding)"},
        415: {"model": Problem, "description": "The file is not an image format Pillow reads"},
        422: {"model": ValidationProblem, "description": "No `file`, a bad `digit`, or an image without ink"},
        503: {"model": Problem, "description": "Overloaded, starting or shutting down: retry"},
    },
)  # fmt: skip
async def encode(
    file: Annotated[UploadFile, File(description="the picture (multipart form field `file`)")],
    request: Request,
    digit: Annotated[int | None, Form(ge=0, le=9, description="the digit it shows; inferred when absent")] = None,
) -> JSONResponse:
    upload = Upload(data=await file.read(), digit=digit)
    return await respond(runtime_of(request.app), upload)  # the runtime taken once the body is in: the one serving


async def respond(runtime: Runtime, upload: Upload) -> JSONResponse:
    """The answer to a parsed /encode request, as EncodeResponse describes it."""
    result = await runtime.encode(upload)
    MODEL_ID.set(runtime.card.id)
    return JSONResponse({"model_id": runtime.card.id, **result._asdict()}, headers={"X-Model-Id": runtime.card.id})
