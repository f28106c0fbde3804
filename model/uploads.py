"""Uploads as they arrive: an image's header read with Pillow alone (torch-free, so the server process sizes an
upload exactly as the inference process will decode it), and ImageError, the one way an upload is refused.

model/imaging.py decodes what open_image() opened; the server costs and refuses uploads with decoded_pixels().
"""

from __future__ import annotations

import io
import warnings
import zlib

from PIL import Image, UnidentifiedImageError

# Uploads larger than twice this on their long side are reduced while decoding, to a long side of at least this: the
# digit ends up in 20x20 pixels, and an image this size keeps even a digit drawn small in one corner of a photo
# many times that. Smaller uploads decode exactly as they are (the README's /encode figures are on 300x300 images).
DECODE_SIDE = 1024
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"  # the signature, then the 13-byte IHDR chunk that must follow


class ImageError(ValueError):
    """The upload is not a usable picture of a digit. `reason` is one of: undecodable, too_large, non_finite,
    blank."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Bytes of any format Pillow reads -> the image, its header read and nothing decoded yet, refused
    (ImageError "too_large") when it would decode to more than `max_pixels` pixels.

    A JPEG larger than twice DECODE_SIDE on its long side is set to decode at a reduced scale (Pillow's draft:
    the DCT scaled by 1/2, 1/4 or 1/8, long side still at least DECODE_SIDE), so a phone photo costs a fraction of
    its full decode; what counts against `max_pixels` is what will be decoded. Other formats decode at full size.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if img.format == "JPEG" and max(w, h) >= 2 * DECODE_SIDE:
                side = max(w, h)
                img.draft(img.mode, (max(1, w * DECODE_SIDE // side), max(1, h * DECODE_SIDE // side)))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_large", f"image refused as a decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError(
            "undecodable", "not an image in a format Pillow can read (PNG, JPEG, BMP, GIF, WebP, ...)"
        ) from e
    except Exception as e:  # see UNDECODABLE
        raise undecodable(e) from e
    dw, dh = img.size
    if dw * dh > max_pixels:
        decoded = f" (it would decode at {dw}x{dh})" if (dw, dh) != (w, h) else ""
        raise ImageError(
            "too_large", f"image is {w}x{h} = {w * h} pixels{decoded}; the limit is {max_pixels} decoded pixels"
        )
    return img


def decoded_pixels(data: bytes, max_pixels: int) -> int:
    """How many pixels decode_image(data, max_pixels) would decode, from the header alone (cheap: what a server
    can check, and cost an upload by, before queueing it). ImageError as open_image raises it.

    A PNG's size is read from its first chunk, IHDR, when that chunk is whole and its checksum right, without
    Pillow's format detection (a third of the server's cost of sizing an upload, docs/performance.md): a PNG
    decodes at its stored size. Whatever else the file holds is for decode_image to find, and it refuses a
    corrupt file with the same ImageError."""
    if (
        data[:16] == PNG_HEAD
        and len(data) >= 33
        and zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big")
    ):  # fmt: skip
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if 0 < w * h <= min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels):
            return w * h
    w, h = open_image(data, max_pixels).size  # and every refusal, worded once
    return w * h


def undecodable(e: Exception) -> ImageError:
    """UNDECODABLE: Pillow's format plugins raise many kinds of exception on malformed bytes, not only OSError and
    ValueError (NotImplementedError, AttributeError, struct.error, ...: found by fuzzing,
    tests/model/test_imaging.py), so any failure while Pillow opens or decodes an upload is the upload's: it could
    not be decoded."""
    return ImageError("undecodable", f"image could not be decoded (truncated or corrupt?): {type(e).__name__}: {e}")
