"""Evaluation of a model directory: `python -m training.evaluate --model DIR --data-dir DIR`.

Prints one JSON object: held-out -ELBO (nats per image; Bernoulli on grey values; KL to the model's own
sampling prior, and to the N(0, I) it was trained against), the importance-weighted NLL bound, and,
judged by a separately trained CNN classifier: the accuracy of generated samples, the Frechet distance of
their features to held-out digits (beside the distance between two disjoint real sets), how well one hand carries
across digits (grids of ten digits per latent, held-out digits re-drawn as every digit, and whether their slant
carries over), /encode's digit inference on held-out digits as they are and re-drawn as a user would upload them,
and the accuracy of reconstructions. Sampling and pre-processing are the service's own functions from model/.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from model.artifacts import load_model_dir
from model.imaging import decode_image, encode_png, to_mnist
from model.inference import (
    DecoderLike,
    EncoderLike,
    ReaderLike,
    elbo_terms,
    importance_weighted_nll,
    label_log_probs,
)
from model.manifest import MAX_TEMPERATURE, ModelDirError, is_temperature
from model.prior import GaussianPrior, Prior, sample_latents
from model.uploads import ImageError
from training.data import DataError, DataSplits, Digits, load_data_dir
from training.judge import Judge, cached_judge, default_cache_dir, predict
from training.testsets import KINDS, make_set

log = logging.getLogger(__name__)

SAMPLES_PER_DIGIT = 100  # 1,000 generated digits in all
OUTSIDE_COUNT = 300  # uploads of each kind of digit that is not MNIST's (training.testsets)
CALIBRATION_BINS = 15
MAX_PIXELS = 10_000_000


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) (Heusel et al. 2017, eq. 6 / FID)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(s_a)
    root_a = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross)


def within_class_spread(features: Tensor, labels: Tensor) -> float:
    """Sum over classes of the trace of the features' covariance within the class."""
    return sum(float(torch.cov(features[labels == c].double().T).trace()) for c in labels.unique().tolist())


def nearest_distance(x: Tensor, reference: Tensor) -> float:
    """The median over x's rows of the Euclidean distance to the nearest row of reference. (N, P), (M, P)"""
    return float(
        torch.cat([torch.cdist(x[i : i + 250], reference).min(dim=1).values for i in range(0, len(x), 250)]).median()
    )


def slant(images: Tensor) -> Tensor:
    """The slant of each image: how far its ink leans right per unit of height, from its second moments
    (-mu11 / mu02 about the centre of mass; 0 is upright). (N, 1, H, W) -> (N,)"""
    x = images.flatten(0, 1).double()  # (N, H, W)
    h, w = x.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    mass = x.sum(dim=(1, 2)).clamp(min=1e-9)
    cy = (x * rows).sum(dim=(1, 2)) / mass
    cx = (x * cols).sum(dim=(1, 2)) / mass
    dy, dx = rows - cy[:, None, None], cols - cx[:, None, None]
    return -(x * dx * dy).sum(dim=(1, 2)) / (x * dy * dy).sum(dim=(1, 2)).clamp(min=1e-9)


def correlation(a: Tensor, b: Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


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


def preprocess_uploads(uploads: list[bytes]) -> Tensor:
    """The /encode path: decode -> MNIST-style pre-processing. -> (N, 1, 28, 28)"""
    return torch.stack([to_mnist(decode_image(b, MAX_PIXELS)) for b in uploads])


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


def calibration_error(probs: Tensor, labels: Tensor, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error of the top probability (Guo et al. 2017, eq. 3): over equal-width confidence
    bins, the gap between accuracy and mean confidence, weighted by the bin's share of the images. 0 is perfect."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    which = (confidence.double() * bins).long().clamp(max=bins - 1)
    total = 0.0
    for b in which.unique().tolist():
        rows = which == b
        total += float(rows.double().mean() * (correct[rows].mean() - confidence[rows].double().mean()).abs())
    return total


@torch.no_grad()
def outside_figures(
    encoder: EncoderLike,
    decoder: DecoderLike,
    prior: Prior,
    judge: Judge,
    *,
    reader: ReaderLike | None = None,
    reference: Judge | None = None,
    count: int = OUTSIDE_COUNT,
    seed: int = 0,
) -> dict[str, Any]:
    """/encode on digits that are not MNIST (training.testsets), per kind: the share read right (an upload refused
    as blank counts as misread), the same images read by `reference` (default: the judge, a plain CNN trained on
    the same MNIST digits), the share of the encoded hand re-drawn as all ten digits that the judge reads as the
    digit asked for, and the calibration error of the probabilities."""
    out: dict[str, Any] = {}
    c = prior.num_classes
    for kind in KINDS:
        try:
            samples = make_set(kind, count, seed=seed)
        except FileNotFoundError as e:
            out[kind] = {"skipped": str(e)}
            continue
        images, labels, refused = [], [], 0
        for data, digit in samples:
            try:
                images.append(to_mnist(decode_image(data, MAX_PIXELS)))
                labels.append(digit)
            except ImageError:
                refused += 1
        x, y = torch.stack(images), torch.tensor(labels)
        probs, mean = read_digits(encoder, decoder, prior, x, reader)
        reference_read, _ = predict(reference or judge, x)
        asked = torch.arange(c).repeat(len(x))
        redrawn, _ = predict(judge, decoder(mean.repeat_interleave(c, dim=0), asked))
        out[kind] = {
            "count": count,
            "refused": refused,
            "encode_accuracy": float((probs.argmax(1) == y).sum()) / count,
            "reference_accuracy": float((reference_read == y).sum()) / count,
            "redrawn_accuracy": (redrawn == asked).float().mean().item(),
            "calibration_error": calibration_error(probs, y),
        }
    return out


@torch.no_grad()
def likelihood_metrics(
    encoder: EncoderLike, decoder: DecoderLike, prior: Prior, held_out: Digits, *, k: int, seed: int
) -> dict[str, float]:
    x = held_out.images.unsqueeze(1).float() / 255
    y = held_out.labels
    standard = GaussianPrior.standard(prior.num_classes, prior.latent_dim)
    g = torch.Generator().manual_seed(seed)
    sums = torch.zeros(4, dtype=torch.float64)
    for i in range(0, len(x), 100):
        xb, yb = x[i : i + 100], y[i : i + 100]
        eps = torch.randn(len(xb), prior.latent_dim, generator=g)
        recon, kl, mean, log_var = elbo_terms(encoder, decoder, prior, xb, yb, eps=eps)
        kl_std = standard.kl(mean, log_var, yb)
        iw = importance_weighted_nll(encoder, decoder, prior, xb, yb, k=k, generator=g)
        sums += torch.stack([recon.sum(), kl.sum(), kl_std.sum(), iw.sum()]).double()
    recon, kl, kl_std, iw = (sums / len(x)).tolist()
    return {
        "heldout_nelbo": recon + kl,
        "heldout_recon": recon,
        "heldout_kl": kl,
        "heldout_nelbo_standard_prior": recon + kl_std,
        "heldout_iw_nll": iw,
        "iw_k": k,
        "heldout_count": len(x),
    }


@torch.no_grad()
def evaluate_model(
    encoder: EncoderLike,
    decoder: DecoderLike,
    prior: Prior,
    data: DataSplits,
    *,
    k: int = 100,
    seed: int = 0,
    full: bool = True,
    cache_dir: Path | None = None,
    temperature: float = 1.0,
    reader: ReaderLike | None = None,
    outside_count: int = 0,
) -> dict[str, Any]:
    """All figures on data.val (the held-out digits); samples drawn at `temperature` (the service's default is the
    model's, LoadedModel.temperature); /encode read with `reader` (a model directory's, when it has one), and
    `outside_count` digits of each kind that is not MNIST's (training.testsets) when > 0. full=False: likelihoods
    only (no judge)."""
    held = data.val
    out: dict[str, Any] = {"heldout_source": data.info.get("val_source")}
    out.update(likelihood_metrics(encoder, decoder, prior, held, k=k, seed=seed))
    if not full:
        return out

    judge, _ = cached_judge(data, cache_dir or default_cache_dir(), seed=seed)
    out.update(
        judged_figures(
            encoder,
            decoder,
            prior,
            held,
            judge,
            seed=seed,
            temperature=temperature,
            train_images=data.train.images,
            reader=reader,
        )
    )
    if outside_count > 0:
        out["outside"] = outside_figures(encoder, decoder, prior, judge, reader=reader, count=outside_count, seed=seed)
    return out


@torch.no_grad()
def judged_figures(
    encoder: EncoderLike,
    decoder: DecoderLike,
    prior: Prior,
    held: Digits,
    judge: Judge,
    *,
    seed: int,
    temperature: float,
    train_images: Tensor | None = None,
    reader: ReaderLike | None = None,
) -> dict[str, Any]:
    """Everything the judge measures on the held-out digits `held`; the copying figures too when the training
    digits are given."""
    out: dict[str, Any] = {}
    real = held.images.unsqueeze(1).float() / 255
    c = prior.num_classes
    real_pred, real_feats = predict(judge, real)
    out["judge_heldout_accuracy"] = (real_pred == held.labels).float().mean().item()
    # Generated samples, exactly as the service draws them for one digit at a time (seeded, the model's temperature).
    drawn = [sample_latents(prior, [d], SAMPLES_PER_DIGIT, seed=seed, temperature=temperature) for d in range(c)]
    z, y = torch.cat([d[0] for d in drawn]), torch.cat([d[1] for d in drawn])
    generated = decoder(z, y)
    pred, gen_feats = predict(judge, generated)
    out["sample_temperature"] = temperature
    out["sample_accuracy"] = (pred == y).float().mean().item()
    out["sample_accuracy_by_digit"] = [(pred[y == d] == d).float().mean().item() for d in range(c)]

    # One hand across digits. A grid as the service draws it (all ten digits, one latent per column): each tile
    # recognised as its row's digit. Then each held-out digit encoded with its own label and its mean re-drawn
    # as every digit (what /encode then /generate with that mean as latent do): recognised as the digit asked
    # for, and its slant carried (the correlation of each digit's slant with the mean slant of its re-drawings).
    z, y = sample_latents(prior, list(range(c)), SAMPLES_PER_DIGIT, seed=seed, temperature=temperature)
    grid_pred, _ = predict(judge, decoder(z, y))
    out["grid_accuracy"] = (grid_pred == y).float().mean().item()
    mean, _ = encoder(real, held.labels)
    labels = torch.arange(c).repeat(len(real))
    redrawings = decoder(mean.repeat_interleave(c, dim=0), labels)
    transfer_pred, _ = predict(judge, redrawings)
    out["transfer_accuracy"] = (transfer_pred == labels).float().mean().item()
    out["transfer_accuracy_by_digit"] = [(transfer_pred[labels == d] == d).float().mean().item() for d in range(c)]
    out["transfer_slant_correlation"] = correlation(slant(real), slant(redrawings).view(len(real), c).mean(dim=1))

    # Variety, beside the Frechet distance: the spread of the judge's features within each digit, generated over
    # real (1: as varied as real digits; a temperature turned down until variety collapses drives it to 0) ...
    out["sample_spread_ratio"] = within_class_spread(gen_feats, y) / within_class_spread(real_feats, held.labels)
    # ... and copying: the median pixel distance to the nearest training digit, of samples and of the held-out
    # digits' reconstructions (as blurry as samples, but of digits the model never saw). Samples much nearer the
    # training set than those reconstructions would be replaying training digits.
    if train_images is not None:
        train_pixels = train_images.flatten(1).float() / 255
        out["sample_train_distance"] = nearest_distance(generated.flatten(1), train_pixels)
        reconstructions = decoder(mean, held.labels)
        out["heldout_reconstruction_train_distance"] = nearest_distance(reconstructions.flatten(1), train_pixels)
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    half = len(real) // 2
    ref, other = real_feats[perm[:half]], real_feats[perm[half : 2 * half]]
    gen_perm = torch.randperm(len(gen_feats), generator=torch.Generator().manual_seed(seed))[:half]
    out["frechet_generated_vs_real"] = frechet_distance(gen_feats[gen_perm], ref)
    out["frechet_real_vs_real"] = frechet_distance(other, ref)
    out["frechet_ratio"] = out["frechet_generated_vs_real"] / out["frechet_real_vs_real"]
    out["frechet_set_size"] = half
    out["frechet_generated_1000_vs_all_heldout"] = frechet_distance(gen_feats, real_feats)

    out.update(encode_figures(encoder, decoder, prior, held, judge, seed=seed, reader=reader))
    return out


@torch.no_grad()
def encode_figures(
    encoder: EncoderLike,
    decoder: DecoderLike,
    prior: Prior,
    held: Digits,
    judge: Judge,
    *,
    seed: int,
    reader: ReaderLike | None = None,
) -> dict[str, Any]:
    """/encode on the held-out digits: the digit read from uploads as they are and re-drawn as users upload them
    (with the calibration error of its probabilities), and reconstruction from the encoded mean."""
    out: dict[str, Any] = {}
    uploads = preprocess_uploads([encode_png(img) for img in held.images])  # as users upload MNIST digits
    probs, _ = read_digits(encoder, decoder, prior, uploads, reader)
    out["encode_accuracy_real"] = (probs.argmax(1) == held.labels).float().mean().item()
    out["encode_calibration_error_real"] = calibration_error(probs, held.labels)
    rng = random.Random(seed)
    redrawn = preprocess_uploads([redrawn_jpeg(img, rng) for img in held.images])
    out["encode_accuracy_redrawn"] = (
        (inferred_labels(encoder, decoder, prior, redrawn, reader) == held.labels).float().mean().item()
    )
    mean, _ = encoder(uploads, held.labels)
    recon_pred, _ = predict(judge, decoder(mean, held.labels))
    out["reconstruction_accuracy"] = (recon_pred == held.labels).float().mean().item()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model directory (as exported by training)")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of MNIST IDX files")
    parser.add_argument("--k", type=int, default=100, help="importance samples for the NLL bound (default 100)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the model's training seed)")
    parser.add_argument("--val-size", type=int, default=None, help="held-out split size (default: the model's)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the judge is cached")
    parser.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: the model's, as the service)"
    )
    parser.add_argument(
        "--outside-count", type=int, default=OUTSIDE_COUNT,
        help=f"uploads of each kind not from MNIST (training.testsets); 0: none (default {OUTSIDE_COUNT})",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.outside_count < 0:
        parser.error("--outside-count must be >= 0")
    if args.k < 1:
        parser.error("--k must be at least 1")
    if args.temperature is not None and not is_temperature(args.temperature):
        parser.error(f"--temperature must be in [0, {MAX_TEMPERATURE:g}], got {args.temperature}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        model = load_model_dir(args.model)
        training_cfg = model.manifest.get("config", {}).get("training", {})
        seed = args.seed if args.seed is not None else int(training_cfg.get("seed", 0))
        val_size = args.val_size if args.val_size is not None else int(training_cfg.get("val_size", 1000))
        data = load_data_dir(args.data_dir, val_size=val_size, seed=seed)
    except (ModelDirError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(seed)
    metrics = evaluate_model(
        model.encoder,
        model.decoder,
        model.prior,
        data,
        k=args.k,
        seed=seed,
        cache_dir=args.cache_dir,
        temperature=model.temperature if args.temperature is None else args.temperature,
        reader=model.reader,
        outside_count=args.outside_count,
    )
    metrics["model_id"] = model.id
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
