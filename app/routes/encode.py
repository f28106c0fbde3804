"""POST /encode: an uploaded picture of a digit -> its digit and its latent posterior."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from app.dependencies import runtime_of
from app.schemas import EncodeResponse, Problem, ValidationProblem

router = APIRouter(tags=["encode"])


@router.post(
    "/encode",
    summary="Encode a picture of a digit",
    description="Upload any picture Pillow reads (PNG, JPEG, BMP, GIF, WebP, ...; any size and mode, either "
    "polarity). It is turned into an MNIST-style 28x28 digit and encoded. Without `digit`, the digit is inferred "
    "(the label under which the model explains the image best) and `probabilities` are given for all ten. "
    "Send `mean` back to /generate as `latent` with the same digit to reconstruct the upload.",
    response_model=EncodeResponse,
    responses={
        400: {"model": Problem, "description": "The image is truncated or corrupt"},
        413: {"model": Problem, "description": "The upload exceeds CVAE_MAX_UPLOAD_BYTES bytes or "
              "CVAE_MAX_IMAGE_PIXELS pixels (refused before decoding)"},
        415: {"model": Problem, "description": "The file is not an image format Pillow reads"},
        422: {"model": ValidationProblem, "description": "No `file`, a bad `digit`, or an image without ink"},
        503: {"model": Problem, "description": "Starting or shutting down: retry"},
    },
)  # fmt: skip
async def encode(
    file: Annotated[UploadFile, File(description="the picture (multipart form field `file`)")],
    request: Request,
    digit: Annotated[int | None, Form(ge=0, le=9, description="the digit it shows; inferred when absent")] = None,
) -> EncodeResponse:
    runtime = runtime_of(request)
    data = await file.read()
    result = await runtime.encode(data, digit)
    return EncodeResponse(
        model_id=runtime.service.model_id,
        digit=result.digit,
        inferred=result.inferred,
        probabilities=result.probabilities,
        mean=result.mean,
        log_var=result.log_var,
    )
