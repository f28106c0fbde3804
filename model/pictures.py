"""The model's images as pictures: grey levels to bytes, tiles laid out in a grid, an 8-bit greyscale PNG written
directly with zlib. The one home of the service's and training's picture output (model/imaging.py reads uploads)."""

from __future__ import annotations

import struct

import numpy as np
import torch
from torch import Tensor
from zlib_ng import zlib_ng  # zlib's API and format, faster (docs/performance.md)


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
