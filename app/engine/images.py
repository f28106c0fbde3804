"""Uploads as the server sees them before queueing: how many pixels one will decode to, read from its header with
Pillow alone (torch-free), and the one mapping from an image's problem to the answer it gets.

header_pixels() sizes an upload exactly as model/imaging.py's open_image() does (tests check they agree): its
JPEG draft for large photos, its decompression-bomb refusal, its messages.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from app.http.problems import ServiceError

DECODE_SIDE = 1024  # model.imaging.DECODE_SIDE: JPEGs twice this on their long side decode at a reduced scale


def header_pixels(data: bytes, max_pixels: int) -> int:
    """How many pixels an upload will decode to, from its header: 413 when more than max_pixels, 415 when it is not
    an image Pillow reads, 400 when its header is corrupt."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if img.format == "JPEG" and max(w, h) >= 2 * DECODE_SIDE:
                side = max(w, h)
                img.draft(img.mode, (max(1, w * DECODE_SIDE // side), max(1, h * DECODE_SIDE // side)))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise image_refusal("too_large", f"image refused as a decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        raise image_refusal(
            "undecodable",
            "not an image in a format Pillow can read (PNG, JPEG, BMP, GIF, WebP, ...)",
            unidentified=True,
        ) from e
    except Exception as e:  # Pillow's plugins raise many kinds on malformed bytes (model/imaging.py, _undecodable)
        message = f"image could not be decoded (truncated or corrupt?): {type(e).__name__}: {e}"
        raise image_refusal("undecodable", message) from e
    dw, dh = img.size
    if dw * dh > max_pixels:
        decoded = f" (it would decode at {dw}x{dh})" if (dw, dh) != (w, h) else ""
        message = f"image is {w}x{h} = {w * h} pixels{decoded}; the limit is {max_pixels} decoded pixels"
        raise image_refusal("too_large", message)
    return dw * dh


def image_refusal(reason: str, message: str, *, unidentified: bool = False) -> ServiceError:
    """The answer to an upload model/imaging.py refuses (its ImageError's reason and message); unidentified: Pillow
    did not recognise the format at all."""
    if reason == "too_large":
        return ServiceError(413, message, kind="image-too-large", title="Image too large")
    if reason == "blank":
        return ServiceError(422, message, kind="blank-image", title="No digit in the image")
    if reason == "non_finite":
        return ServiceError(422, message, kind="non-finite-image", title="Image has non-finite pixels")
    if unidentified:
        return ServiceError(415, message, kind="unsupported-image", title="Not an image")
    return ServiceError(400, message, kind="corrupt-image", title="Image could not be decoded")
