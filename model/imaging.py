"""Image pre- and post-processing: the one copy that training, evaluation and serving all use.

Pre-processing turns any picture of a digit into what MNIST is made of (LeCun et al. 1998): white ink on
black, the digit fitted into a 20x20 box keeping its aspect ratio (anti-aliased), then placed in a 28x28
field with its centre of mass at the centre. Post-processing lays tiles out in a grid and writes PNG.
Decoding uses Pillow; everything after it is torch.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from zlib_ng import zlib_ng  # zlib's API and format; level 1 ~4x faster than the stdlib's on a /generate grid

MNIST_SIZE = 28  # the field the digit is centred in
MNIST_BOX = 20  # the box the digit is fitted into
INK_THRESHOLD = 0.1  # normalised grey level above which a pixel counts as ink when cropping
NOISE_FLOOR = 0.05  # normalised grey levels below this (paper texture, JPEG ringing) become background


class ImageError(ValueError):
    """The upload is not a usable picture of a digit. `reason` is one of: undecodable, too_large, blank."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int) -> Tensor:
    """Bytes of any format Pillow reads -> float32 (H, W) grey levels in [0, 1] (first frame if animated).

    Pixel dimensions are checked from the header, before anything is decoded (decompression bombs).
    Transparent pixels are composited onto white, as a drawing on paper.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError("too_large", f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
            img.load()
            img.seek(0)
            return _to_grey(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_large", f"image refused as a decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError(
            "undecodable", "not an image in a format Pillow can read (PNG, JPEG, BMP, GIF, WebP, ...)"
        ) from e
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
        raise ImageError("undecodable", f"image could not be decoded (truncated or corrupt?): {e}") from e


def _to_grey(img: Image.Image) -> Tensor:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float32)
        peak = float(a.max()) if a.size else 0.0
        scale = 1.0 if img.mode == "F" and peak <= 1.0 else (255.0 if peak <= 255 else 65535.0)
        return torch.from_numpy(np.clip(a / scale, 0.0, 1.0))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(grey)


def to_mnist(grey: Tensor) -> Tensor:
    """(H, W) grey levels in [0, 1], either polarity, any size -> float32 (1, 28, 28) MNIST-style digit.

    Raises ImageError("blank") when no ink can be told from the background.
    """
    x = grey.float()
    if x.ndim != 2 or x.numel() == 0:
        raise ImageError("undecodable", f"expected one 2-D grey image, got shape {tuple(x.shape)}")
    # Polarity and background from the border: MNIST is light ink on a dark ground.
    border = torch.cat([x[0], x[-1], x[:, 0], x[:, -1]])
    background = border.median()
    if background > 0.5:
        x, background = 1.0 - x, 1.0 - background
    peak = x.max()
    if peak - background < 0.1:
        raise ImageError("blank", "no digit found: the image has no ink that stands out from its background")
    x = ((x - background) / (peak - background)).clamp(0.0, 1.0)
    x = torch.where(x < NOISE_FLOOR, torch.zeros_like(x), x)
    # Crop to the ink.
    rows = torch.nonzero((x > INK_THRESHOLD).any(dim=1)).flatten()
    cols = torch.nonzero((x > INK_THRESHOLD).any(dim=0)).flatten()
    x = x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Fit into MNIST_BOX x MNIST_BOX keeping the aspect ratio.
    h, w = x.shape
    if max(h, w) != MNIST_BOX:
        s = MNIST_BOX / max(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = F.interpolate(x[None, None], size=size, mode="bilinear", antialias=s < 1, align_corners=False)[0, 0]
        x = x.clamp(0.0, 1.0)
    # Centre of mass to pixel (14, 14) of the field, by an integer shift, where MNIST's digits have it.
    h, w = x.shape
    total = x.sum()
    cy = float((x.sum(dim=1) * torch.arange(h)).sum() / total)
    cx = float((x.sum(dim=0) * torch.arange(w)).sum() / total)
    top = min(max(round(MNIST_SIZE / 2 - cy), 0), MNIST_SIZE - h)
    left = min(max(round(MNIST_SIZE / 2 - cx), 0), MNIST_SIZE - w)
    out = torch.zeros(1, MNIST_SIZE, MNIST_SIZE)
    out[0, top : top + h, left : left + w] = x
    return out


def to_uint8(images: Tensor) -> Tensor:
    """Grey levels in [0, 1] -> uint8 in 0..255, rounded."""
    return (images.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)


def tile_grid(tiles: Tensor, columns: int, padding: int = 2, scale: int = 1) -> Tensor:
    """Lay (N, 1, H, W) tiles out row-major in `columns` columns -> uint8 (rows*(H+p)+p, cols*(W+p)+p) * scale.

    Tiles are grey levels in [0, 1] (converted by to_uint8), or already uint8 (used as they are: convert a whole
    batch once, then lay out its requests). Padding is black, between tiles and around the edge; `scale`
    enlarges every pixel to a scale x scale block. A few numpy operations whatever the number of tiles.
    """
    n, _, h, w = tiles.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    pixels = (tiles if tiles.dtype == torch.uint8 else to_uint8(tiles)).reshape(n, h, w).numpy()
    ph, pw = h + padding, w + padding
    grid = np.zeros((rows * ph + padding, columns * pw + padding), dtype=np.uint8)
    # cells[r, y, c, x] is pixel (y, x) of the cell in grid row r, column c: a tile plus the padding after it.
    cells = np.reshape(grid[padding:, padding:], (rows, ph, columns, pw), copy=False)
    full = n // columns  # complete grid rows
    if full:
        cells[:full, :h, :, :w] = pixels[: full * columns].reshape(full, columns, h, w).transpose(0, 2, 1, 3)
    if full < rows:  # the last row, partly filled
        cells[full, :h, : n - full * columns, :w] = pixels[full * columns :].transpose(1, 0, 2)
    if scale > 1:
        gh, gw = grid.shape
        grid = np.broadcast_to(grid[:, None, :, None], (gh, scale, gw, scale)).reshape(gh * scale, gw * scale)
    return torch.from_numpy(grid)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib_ng.crc32(body, zlib_ng.crc32(tag)))


_PNG_END = _png_chunk(b"IEND", b"")


def encode_png(grey: Tensor, compress_level: int = 1) -> bytes:
    """uint8 (H, W) -> the bytes of an 8-bit greyscale PNG (PNG spec, ISO/IEC 15948), written directly with zlib."""
    h, w = grey.shape
    raw = np.empty((h, w + 1), dtype=np.uint8)
    raw[:, 0] = 0  # each scanline starts with filter type 0 (None)
    raw[:, 1:] = grey.numpy()
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, colour type 0 (grey), no interlace
    idat = zlib_ng.compress(raw, compress_level)
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _PNG_END
