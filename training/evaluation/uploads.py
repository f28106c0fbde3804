"""Held-out digits as users upload them, and /encode's reading of uploads, by the service's own functions (model/)."""

from __future__ import annotations

import io
import random

import torch
from PIL import Image
from torch import Tensor

from model.imaging import decode_image
from model.inference import DecoderLike, EncoderLike, ReaderLike, label_log_probs
from model.manifest import Preprocessing
from model.preprocessing import preprocess
from model.prior import Prior

MAX_PIXELS = 10_000_000


def redrawn_jpeg(image: Tensor, rng: random.Random) -> bytes:
    """A held-out digit re-drawn as a user would upload it: black ink on white, a 300x300 RGB JPEG, the
    digit 150-220 px tall and off-centre."""
    pil = Image.fromarray(image.numpy())
    bbox = pil.getbbox() or (0, 0, 28, 28)
    digit = pil.crop(bbox)
    height = rng.randint(150, 220)
    width = max(1, min(280, round(digit.width * height / digit.height)))
    digit = digit.resize((width, height), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (300, 300), 0)
    left = rng.randint(0, 300 - width)
    top = rng.randint(0, 300 - height)
    canvas.paste(digit, (left, top))
    rgb = Image.eval(canvas, lambda p: 255 - p).convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=rng.randint(70, 95))
    return buf.getvalue()


def preprocess_uploads(
    uploads: list[bytes], preprocessing: Preprocessing = "mnist", shape: tuple[int, int] = (28, 28)
) -> Tensor:
    """The /encode path: decode -> the model's pre-processing (model/preprocessing.py). -> (N, 1, H, W)"""
    return torch.stack([preprocess(decode_image(b, MAX_PIXELS), preprocessing, shape) for b in uploads])


@torch.no_grad()
def read_digits(
    encoder: EncoderLike, decoder: DecoderLike, prior: Prior, x: Tensor, reader: ReaderLike | None = None
) -> tuple[Tensor, Tensor]:
    """/encode's reading of each image: (probabilities (N, C), the posterior mean under the digit read (N, D))."""
    probs, means = [], []
    for i in range(0, len(x), 200):
        log_probs, mean, _ = label_log_probs(encoder, decoder, prior, x[i : i + 200], reader)
        best = log_probs.argmax(1)
        probs.append(log_probs.exp())
        means.append(mean[torch.arange(len(best)), best])
    return torch.cat(probs), torch.cat(means)


def inferred_labels(
    encoder: EncoderLike, decoder: DecoderLike, prior: Prior, x: Tensor, reader: ReaderLike | None = None
) -> Tensor:
    return read_digits(encoder, decoder, prior, x, reader)[0].argmax(1)
