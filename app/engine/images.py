"""Uploads as the server answers them: the one mapping from model/uploads.py's ImageError to the answer it gets, and
an upload sized from its header before it is queued (Pillow alone, torch-free)."""

from __future__ import annotations

from PIL import UnidentifiedImageError

from app.http.problems import ServiceError
from model.uploads import ImageError, decoded_pixels


def header_pixels(data: bytes, max_pixels: int) -> int:
    """How many pixels an upload will decode to, from its header: 413 when more than max_pixels, 415 when it is not
    an image Pillow reads, 400 when its header is corrupt."""
    try:
        return decoded_pixels(data, max_pixels)
    except ImageError as e:
        raise image_refusal(e) from e


def image_refusal(e: ImageError) -> ServiceError:
    """The answer to an upload model/ refuses, by the ImageError's reason (415 when Pillow did not recognise the
    format at all)."""
    message = str(e)
    if e.reason == "too_large":
        return ServiceError(413, message, kind="image-too-large", title="Image too large")
    if e.reason == "blank":
        return ServiceError(422, message, kind="blank-image", title="No digit in the image")
    if e.reason == "non_finite":
        return ServiceError(422, message, kind="non-finite-image", title="Image has non-finite pixels")
    if isinstance(e.__cause__, UnidentifiedImageError):
        return ServiceError(415, message, kind="unsupported-image", title="Not an image")
    return ServiceError(400, message, kind="corrupt-image", title="Image could not be decoded")
