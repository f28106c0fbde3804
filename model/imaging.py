"""Image pre- and post-processing: the one copy that training, evaluation and serving all use.

Pre-processing turns any picture of a digit into what MNIST is made of (LeCun et al. 1998): white ink on
black, the digit fitted into a 20x20 box keeping its aspect ratio (anti-aliased), then placed in a 28x28
field with its centre of mass at the centre, whatever the ink's polarity and the ground's unevenness.
Decoding uses Pillow; pre-processing numpy, but for torch's resampling. The pictures the model draws are written by
model/pictures.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image
from torch import Tensor

from model.ink import (
    border_background,
    departures,
    grey_levels,
    light_on_dark,
    stretched,
)
from model.uploads import DECODE_SIDE, ImageError, open_image, undecodable

MNIST_SIZE = 28  # the field the digit is centred in
MNIST_BOX = 20  # the box the digit is fitted into
INK_THRESHOLD = 0.1  # normalised grey level above which a pixel counts as ink when cropping
NOISE_FLOOR = 0.05  # normalised grey levels below this (paper texture, JPEG ringing) become background
# Photos: images at least FLAT_FIELD_MIN_SIDE on their long side whose ground's light varies by more than
# UNEVEN_LIGHT grey levels have the light divided out first, estimated at about LIGHT_SIDE px on the long side.
FLAT_FIELD_MIN_SIDE = 256
UNEVEN_LIGHT = 0.06
LIGHT_SIDE = 256
LIGHT_MEDIAN = 7  # the median filter's window, at half LIGHT_SIDE: wider than twice a pencil line there
PHOTO_INK = 0.3  # reduced-scale ink above this fraction of the way from the grain to the darkest is a stroke
# Uneven grounds (bands of the other polarity, ruled lines, a fog): where the border's 10th-90th percentiles span
# more than UNEVEN_GROUND of the image's range, the ground is estimated pixel by pixel (a median over GROUND_MEDIAN
# px at about GROUND_SIDE px on the long side: half MNIST's field, where a stroke is under 2 px wide) and the ink is
# what departs from it. A scan's grain and JPEG noise span at most a fifth of the range (docs/quality.md).
UNEVEN_GROUND = 0.25
GROUND_SIDE = 14
GROUND_MEDIAN = 5
CROPPED_STRAY = 0.05  # ...unless the ink departs one way (but for this share) and reaches all four sides: a crop
REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr", "PA", "LAB", "HSV"})
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def decode_image(data: bytes, max_pixels: int) -> Tensor:
    """Bytes of any format Pillow reads -> float32 (H, W) grey levels in [0, 1] (first frame if animated).

    Pixel dimensions are checked from the header, before anything is decoded (decompression bombs; open_image).
    An image larger than twice DECODE_SIDE on its long side is reduced by an integer factor (a box average, long
    side still at least DECODE_SIDE) as soon as it is decoded, before any float copy of it exists: its digit is
    fitted into 20x20 pixels anyway. EXIF orientation is applied (a phone photo is read upright). Transparent pixels
    are composited onto white, as a drawing on paper. Non-finite pixel values (a float TIFF's NaN or infinity) are
    refused (ImageError "non_finite").
    """
    img = open_image(data, max_pixels)
    try:
        img.load()
        img.seek(0)
        img = _upright(_reduced(img))
        return _to_grey(img)
    except ImageError:
        raise
    except Exception as e:  # see UNDECODABLE
        raise undecodable(e) from e


def _reduced(img: Image.Image) -> Image.Image:
    factor = max(img.size) // DECODE_SIDE
    if factor < 2:
        return img
    if img.mode not in REDUCIBLE_MODES:  # "1", "P", "I;16*": into a mode Image.reduce takes, keeping transparency
        transparent = img.mode == "P" and "transparency" in img.info
        img = img.convert("I" if img.mode.startswith("I;16") else "RGBA" if transparent else "RGB" if img.mode == "P"
                          else "L")  # fmt: skip
    return img.reduce(factor)


def _upright(img: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation (2-8) applied. An unreadable EXIF block is ignored
    (the image is read as stored), as viewers do."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # Pillow's EXIF parser raises many kinds on a malformed block; none makes the pixels bad
        return img
    method = EXIF_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return img if method is None else img.transpose(method)


def _to_grey(img: Image.Image) -> Tensor:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ImageError("non_finite", "the image has pixel values that are not finite numbers (NaN or infinity)")
        peak = float(a.max()) if a.size else 0.0
        scale = 1.0 if img.mode == "F" and peak <= 1.0 else (255.0 if peak <= 255 else 65535.0)
        return torch.from_numpy(np.clip(a / scale, 0.0, 1.0))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    grey = np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(grey)


def to_mnist(grey: Tensor) -> Tensor:
    """(H, W) grey levels in [0, 1], either polarity, any size -> float32 (1, 28, 28) MNIST-style digit.

    The ink is what departs from the background by the contrast rule (MIN_CONTRAST), light or dark: the polarity is
    the side it departs to, whatever the background's level (chalk on a grey board). A photo's light, an uneven
    ground (bands of the other polarity, ruled lines, a fog) and salt and pepper noise are taken away first.
    Raises ImageError("blank") when no ink can be told from the background.
    """
    a = grey_levels(grey)
    darkest, lightest = a.min(), a.max()
    border, background = border_background(a)  # MNIST is light ink on a dark ground
    light = _uneven_light(a) if max(a.shape) >= FLAT_FIELD_MIN_SIDE else None
    if light is not None:  # a photo: the paper's light divided out first, so that shadows are not taken for ink
        a = _photo_crop(a, *light)
        background, peak = np.median(a), a.max()  # the grain's level: mostly paper, even inside the digit's box
    elif (ground := _uneven_ground(a, border, background, lightest - darkest)) is not None:
        a = _ink_off(a - ground)
        background, peak = np.float32(0.0), a.max()
    else:
        a, background, peak = light_on_dark(a, background)
    a = stretched(a, background, peak, "no digit found: the image has no ink that stands out from its background")
    a = np.where(a < NOISE_FLOOR, np.float32(0.0), a)
    # Crop to the ink.
    ink = a > INK_THRESHOLD
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Fit into MNIST_BOX x MNIST_BOX keeping the aspect ratio.
    h, w = crop.shape
    if max(h, w) != MNIST_BOX:
        s = MNIST_BOX / max(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = torch.from_numpy(np.ascontiguousarray(crop))[None, None]
        x = F.interpolate(x, size=size, mode="bilinear", antialias=s < 1, align_corners=False)[0, 0]
        # Reduced, a line much thinner than MNIST's strokes (a pencil, a fine pen) averages out to a faint grey:
        # its darkest point is made full ink again, as MNIST's strokes are.
        x = x.clamp(0.0, 1.0) / x.max().clamp(min=1e-6) if s < 1 else x.clamp(0.0, 1.0)
        crop = x.numpy()
    # Centre of mass to pixel (14, 14) of the field, by an integer shift, where MNIST's digits have it (summed in
    # float64: on an image this small numpy's per-operation cost is a fraction of torch's).
    h, w = crop.shape
    row_mass, col_mass = crop.sum(axis=1, dtype=np.float64), crop.sum(axis=0, dtype=np.float64)
    total = row_mass.sum()
    cy, cx = float(row_mass @ np.arange(h)) / total, float(col_mass @ np.arange(w)) / total
    top = min(max(round(MNIST_SIZE / 2 - cy), 0), MNIST_SIZE - h)
    left = min(max(round(MNIST_SIZE / 2 - cx), 0), MNIST_SIZE - w)
    out = np.zeros((1, MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    out[0, top : top + h, left : left + w] = crop
    return torch.from_numpy(out)


def _uneven_ground(a: np.ndarray, border: np.ndarray, background: np.floating, span: np.floating) -> np.ndarray | None:
    """The ground under a's ink, pixel by pixel, where the border's 10th to 90th percentiles span more than
    UNEVEN_GROUND of the image's range `span` and the ground so estimated explains a better than the border's median
    does (_stray); else None (an even ground: most uploads, and a digit cropped to its ink, whose border is partly
    ink). Two estimates are tried: each column's median in the outer tenth (where a digit in MNIST's field does not
    reach), then each row's, taken away (bands and lines across the whole image: a scan's margins, a gutter, ruled
    paper), then, as alone, a median over GROUND_MEDIAN px at about GROUND_SIDE px (wider than twice a stroke there:
    a fog, a slope)."""
    limit = UNEVEN_GROUND * span
    if border.max() - border.min() <= limit:  # most uploads: a border of one level
        return None
    k = border.size
    ranked = np.partition(border, [k // 10, k - 1 - k // 10])
    if ranked[k - 1 - k // 10] - ranked[k // 10] <= limit:
        return None
    even = a - background
    above, below = departures(even)
    ink = -even if below > above else even
    one_sided = min(above, below) <= CROPPED_STRAY * max(above, below)
    if one_sided and min(ink[:2].max(), ink[-2:].max(), ink[:, :2].max(), ink[:, -2:].max()) > NOISE_FLOOR:
        return None  # ink one way only, reaching all four sides (within 2 px): a digit cropped to its ink
    e = max(1, min(a.shape) // 10)
    columns = np.median(np.concatenate([a[:e], a[-e:]]), axis=0, keepdims=True).astype(np.float32)
    rest = a - columns
    rows = np.median(np.concatenate([rest[:, :e], rest[:, -e:]], axis=1), axis=1, keepdims=True).astype(np.float32)
    rest -= rows
    best, least = None, _stray(even)
    for ground in (columns + rows + _local_ground(rest), _local_ground(a)):
        stray = _stray(a - ground)
        if stray < least:
            best, least = ground, stray
    return best


def _stray(d: np.ndarray) -> float:
    """How badly a ground leaves departures d: all of them beyond the contrast rule, those on the side with less ink
    three times over (a digit's ink departs one way; a ground that misses a band or a fog leaves ink both ways)."""
    above, below = departures(d)
    return above + below + 2 * min(above, below)


def _ink_off(d: np.ndarray) -> np.ndarray:
    """Ink, light on 0, of departures d from the ground: the side with more ink beyond the contrast rule."""
    above, below = departures(d)
    return np.clip(-d if below > above else d, 0.0, 1.0).astype(np.float32)


def _local_ground(a: np.ndarray) -> np.ndarray:
    """A median of a over GROUND_MEDIAN px at about GROUND_SIDE px on the long side, scaled back up to a's shape."""
    f = max(1, max(a.shape) // GROUND_SIDE)
    small = _shrunk(a, f) if f > 1 else a
    r = GROUND_MEDIAN // 2
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(small, r, mode="edge"), (GROUND_MEDIAN, GROUND_MEDIAN))
    middle = GROUND_MEDIAN * GROUND_MEDIAN // 2
    ground = np.partition(windows.reshape(*small.shape, -1), middle, axis=-1)[..., middle]
    if f == 1:
        return ground
    return np.asarray(Image.fromarray(ground).resize(a.shape[::-1], Image.Resampling.BILINEAR), dtype=np.float32)


def _shrunk(a: np.ndarray, factor: int) -> np.ndarray:
    """Box-average by an integer factor (the edges that do not fill a block dropped). (H, W) -> (H/f, W/f)"""
    h, w = (a.shape[0] // factor) * factor, (a.shape[1] // factor) * factor
    return a[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float32)


def _uneven_light(a: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(the image, the light on its paper), both reduced to about LIGHT_SIDE px on the long side, for a photographed
    digit; None when the ground is even.

    The image is box-averaged to about LIGHT_SIDE px (the grain averages away), then to half that, where a median
    filter removes the ink (a pencil line covers far less than half of its window) but keeps the light's slopes and
    the edges of shadows, whatever their profile (a median keeps a monotone edge where it is); that is scaled back
    up. The ground is uneven when the reduced image's border spans more than UNEVEN_LIGHT grey levels (a drawing
    on a white canvas, a scan or a document has an even ground: None).
    """
    small = _shrunk(a, _light_factor(a))
    if min(small.shape) < 2 * LIGHT_MEDIAN:  # a strip, not a photo of a sheet
        return None
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    lo, hi = np.percentile(border, [5, 95])
    if hi - lo <= UNEVEN_LIGHT:
        return None
    coarse = _shrunk(small, 2)
    r = LIGHT_MEDIAN // 2
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(coarse, r, mode="edge"), (LIGHT_MEDIAN, LIGHT_MEDIAN))
    light = np.median(windows.reshape(*coarse.shape, -1), axis=-1).astype(np.float32)
    h, w = small.shape
    return small, np.asarray(Image.fromarray(light).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def _light_factor(a: np.ndarray) -> int:
    return max(1, max(a.shape) // LIGHT_SIDE)


def _ink_of(a: np.ndarray, light: np.ndarray, dark_ink: bool) -> np.ndarray:
    """Ink, light on dark (0 = paper), of a under `light` of the same shape: for dark ink what the paper lost of
    its light (1 - a / light), for light ink what it gained."""
    if dark_ink:
        return np.clip(1.0 - a / np.maximum(light, np.float32(1e-3)), 0.0, 1.0).astype(np.float32)
    return np.clip(a - light, 0.0, 1.0).astype(np.float32)


def _photo_crop(a: np.ndarray, reduced: np.ndarray, light: np.ndarray) -> np.ndarray:
    """The flat-fielded ink of a photo, cropped to the digit: the largest stroke (by ink) found at the reduced
    scale, with every stroke near it (a 4's or a 7's second stroke), found where the reduced ink stands out from
    the grain; then the crop's ink at full resolution under the light scaled up to it."""
    f = _light_factor(a)
    # The ink's polarity: what departs further from the paper's light, darker or lighter (the border's level says
    # little here: a dim photo of white paper is darker than half grey).
    dark_ink = float((light - reduced).max()) >= float((reduced - light).max())
    small = _ink_of(reduced, light, dark_ink)
    grain = float(np.median(small))
    if float(small.max()) - grain < 0.1:  # as to_mnist's own test, on ink whose grain is averaged away
        raise ImageError("blank", "no digit found: the photo has no ink that stands out from the paper")
    mask = small > grain + PHOTO_INK * (float(small.max()) - grain)
    near = _dilated(mask, LIGHT_SIDE // 64)
    labels = _components(near)
    weights = np.bincount(labels.ravel(), weights=(small * mask).ravel())
    weights[0] = 0.0
    rows, cols = np.nonzero(labels == int(weights.argmax()))
    top, bottom, left, right = rows.min() * f, (rows.max() + 1) * f, cols.min() * f, (cols.max() + 1) * f
    region = a[top:bottom, left:right]
    lit = Image.fromarray(light).resize(
        (right - left, bottom - top), Image.Resampling.BILINEAR, box=(left / f, top / f, right / f, bottom / f)
    )  # the light over the crop alone, scaled up to full resolution
    return _ink_of(region, np.asarray(lit, dtype=np.float32), dark_ink)


def _dilated(mask: np.ndarray, r: int) -> np.ndarray:
    """mask grown by r pixels (a (2r+1)-square), so that strokes r apart join one component."""
    p = np.pad(mask, r)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a small boolean mask -> int labels (0 = background), by union of runs."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    parent = [0]

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r in range(mask.shape[0]):
        row = mask[r]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.view(np.int8), [0]])))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            parent.append(len(parent))
            label = len(parent) - 1
            labels[r, start:stop] = label
            if r:
                for above in np.unique(labels[r - 1, start:stop]):
                    if above:
                        parent[find(int(above))] = find(label)
    roots = np.array([find(i) for i in range(len(parent))])
    return roots[labels]
