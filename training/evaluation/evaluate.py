"""Evaluation of a model: held-out -ELBO (nats per image; Bernoulli on grey values; KL to the model's own sampling
prior, and to the N(0, I) it was trained against), the importance-weighted NLL bound, and, judged by a separately
trained CNN classifier (training/evaluation/judge.py): the accuracy of generated samples, the Frechet distance of their
features to held-out digits, how well one hand carries across digits, /encode's digit inference on held-out digits as
they are and re-drawn as a user would upload them, and on the sets that are not MNIST (testsets.py). Sampling and
pre-processing are the service's own functions from model/.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.artifacts import load_model_dir
from model.imaging import decode_image, to_mnist
from model.inference import DecoderLike, EncoderLike, ReaderLike, elbo_terms, importance_weighted_nll
from model.manifest import MANIFEST_FILE, Preprocessing
from model.pictures import encode_png
from model.prior import GaussianPrior, Prior, sample_latents
from model.tone import Draw
from model.uploads import ImageError
from training.data import DataSplits, Digits
from training.evaluation.figures import (
    calibration_error,
    correlation,
    frechet_distance,
    nearest_distance,
    slant,
    within_class_spread,
)
from training.evaluation.judge import Judge, cached_judge, default_cache_dir, predict
from training.evaluation.testsets import KINDS, make_set
from training.evaluation.uploads import MAX_PIXELS, inferred_labels, preprocess_uploads, read_digits, redrawn_jpeg

log = logging.getLogger(__name__)

SAMPLES_PER_DIGIT = 100  # 1,000 generated digits in all
OUTSIDE_COUNT = 300  # uploads of each kind of digit that is not MNIST's (training.evaluation.testsets)


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
    draw: Draw | None = None,
) -> dict[str, Any]:
    """/encode on digits that are not MNIST (training.testsets), per kind: the share read right (an upload refused
    as blank counts as misread), the same images read by `reference` (default: the judge, a plain CNN trained on
    the same MNIST digits), the share of the encoded hand re-drawn as all ten digits that the judge reads as the
    digit asked for, and the calibration error of the probabilities. draw: what the service draws (default: the
    decoder; a model's LoadedModel.draw)."""
    draw = draw or decoder
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
        redrawn, _ = predict(judge, draw(mean.repeat_interleave(c, dim=0), asked))
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
    preprocessing: Preprocessing = "mnist",
    draw: Draw | None = None,
) -> dict[str, Any]:
    """All figures on data.val (the held-out digits); samples drawn at `temperature` (the service's default is the
    model's, LoadedModel.temperature); /encode read with `reader` (a model directory's, when it has one), and
    `outside_count` digits of each kind that is not MNIST's (training.testsets) when > 0. full=False: likelihoods
    only (no judge). The likelihoods and the label rule are the decoder's; what is judged as drawn is draw's (default:
    the decoder; a model's LoadedModel.draw)."""
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
            preprocessing=preprocessing,
            draw=draw,
        )
    )
    if outside_count > 0:
        out["outside"] = outside_figures(
            encoder, decoder, prior, judge, reader=reader, count=outside_count, seed=seed, draw=draw
        )
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
    preprocessing: Preprocessing = "mnist",
    draw: Draw | None = None,
    encode: bool = True,
) -> dict[str, Any]:
    """Everything the judge measures on the held-out digits `held` (/encode's figures only with encode); the copying
    figures too when the training digits are given. draw: what the service draws (default: the decoder)."""
    draw = draw or decoder
    # long: one figure after another on the same judged features; split, each piece would take them all as arguments
    out: dict[str, Any] = {}
    real = held.images.unsqueeze(1).float() / 255
    c = prior.num_classes
    real_pred, real_feats = predict(judge, real)
    out["judge_heldout_accuracy"] = (real_pred == held.labels).float().mean().item()
    # Generated samples, exactly as the service draws them for one digit at a time (seeded, the model's temperature).
    drawn = [sample_latents(prior, [d], SAMPLES_PER_DIGIT, seed=seed, temperature=temperature) for d in range(c)]
    z, y = torch.cat([d[0] for d in drawn]), torch.cat([d[1] for d in drawn])
    generated = draw(z, y)
    pred, gen_feats = predict(judge, generated)
    out["sample_temperature"] = temperature
    out["sample_accuracy"] = (pred == y).float().mean().item()
    out["sample_accuracy_by_digit"] = [(pred[y == d] == d).float().mean().item() for d in range(c)]

    # One hand across digits. A grid as the service draws it (all ten digits, one latent per column): each tile
    # recognised as its row's digit. Then each held-out digit encoded with its own label and its mean re-drawn
    # as every digit (what /encode then /generate with that mean as latent do): recognised as the digit asked
    # for, and its slant carried (the correlation of each digit's slant with the mean slant of its re-drawings).
    z, y = sample_latents(prior, list(range(c)), SAMPLES_PER_DIGIT, seed=seed, temperature=temperature)
    grid_pred, _ = predict(judge, draw(z, y))
    out["grid_accuracy"] = (grid_pred == y).float().mean().item()
    mean, _ = encoder(real, held.labels)
    labels = torch.arange(c).repeat(len(real))
    redrawings = draw(mean.repeat_interleave(c, dim=0), labels)
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
        reconstructions = draw(mean, held.labels)
        out["heldout_reconstruction_train_distance"] = nearest_distance(reconstructions.flatten(1), train_pixels)
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    half = len(real) // 2
    # Each set measured against the reference half is the same size (at most the samples drawn): a Frechet distance's
    # bias grows as its sets shrink, so sets of different sizes would not compare.
    size = min(half, len(gen_feats))
    ref, other = real_feats[perm[:half]], real_feats[perm[half : half + size]]
    gen_perm = torch.randperm(len(gen_feats), generator=torch.Generator().manual_seed(seed))[:size]
    out["frechet_generated_vs_real"] = frechet_distance(gen_feats[gen_perm], ref)
    out["frechet_real_vs_real"] = frechet_distance(other, ref)
    out["frechet_ratio"] = out["frechet_generated_vs_real"] / out["frechet_real_vs_real"]
    out["frechet_set_size"] = size
    out["frechet_generated_1000_vs_all_heldout"] = frechet_distance(gen_feats, real_feats)
    # The yardstick beside the real halves: as many training images against the same reference half.
    if train_images is not None:
        train_perm = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))[:size]
        _, train_feats = predict(judge, train_images[train_perm].unsqueeze(1).float() / 255)
        out["frechet_train_vs_heldout"] = frechet_distance(train_feats, ref)
        out["frechet_ratio_to_train"] = out["frechet_generated_vs_real"] / out["frechet_train_vs_heldout"]

    if encode:
        out.update(encode_figures(
            encoder, decoder, prior, held, judge, seed=seed, reader=reader, preprocessing=preprocessing, draw=draw
        ))  # fmt: skip
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
    preprocessing: Preprocessing = "mnist",
    draw: Draw | None = None,
) -> dict[str, Any]:
    """/encode on the held-out images: the class read from uploads as they are (with the calibration error of its
    probabilities) and, for digits, re-drawn as users upload them, and reconstruction from the encoded mean."""
    out: dict[str, Any] = {}
    shape = (held.images.shape[1], held.images.shape[2])
    uploads = preprocess_uploads([encode_png(img) for img in held.images], preprocessing, shape)  # as users upload
    probs, _ = read_digits(encoder, decoder, prior, uploads, reader)
    out["encode_accuracy_real"] = (probs.argmax(1) == held.labels).float().mean().item()
    out["encode_calibration_error_real"] = calibration_error(probs, held.labels)
    if preprocessing == "mnist":  # digits, re-drawn off-centre on a page as people upload them
        rng = random.Random(seed)
        redrawn = preprocess_uploads([redrawn_jpeg(img, rng) for img in held.images])
        out["encode_accuracy_redrawn"] = (
            (inferred_labels(encoder, decoder, prior, redrawn, reader) == held.labels).float().mean().item()
        )
    mean, _ = encoder(uploads, held.labels)
    recon_pred, _ = predict(judge, (draw or decoder)(mean, held.labels))
    out["reconstruction_accuracy"] = (recon_pred == held.labels).float().mean().item()
    return out


def record_figures(model_dir: Path, data: DataSplits, *, seed: int, outside_count: int) -> dict[str, Any]:
    """Measure /encode with the model's reader (held-out MNIST digits as uploaded and re-drawn, reconstruction, and
    the sets that are not MNIST) and record the figures in the manifest's metrics, where they replace those the
    model was exported with (its reading was then the generative score's). -> the figures."""
    model = load_model_dir(model_dir)
    judge, _ = cached_judge(data, default_cache_dir(), seed=seed)
    figures = encode_figures(
        model.encoder, model.decoder, model.prior, data.val, judge, seed=seed, reader=model.reader,
        preprocessing=model.card.preprocessing, draw=model.draw,
    )  # fmt: skip
    if outside_count > 0:
        figures["outside"] = outside_figures(
            model.encoder, model.decoder, model.prior, judge, reader=model.reader, count=outside_count, seed=seed,
            draw=model.draw,
        )  # fmt: skip
    _update_metrics(model_dir, lambda metrics: metrics.update(figures))
    log.info("recorded: %s", json.dumps(figures))
    return figures


def record_toned_figures(model_dir: Path, data: DataSplits, *, seed: int) -> dict[str, Any]:
    """Measure what a model with tone curves draws (its samples, grid and transfer, judged as export judged the
    decoder's) and record the figures in the manifest's metrics, which keep export's under "untoned". -> the
    figures."""
    model = load_model_dir(model_dir)
    judge, _ = cached_judge(data, default_cache_dir(), seed=seed)
    figures = judged_figures(
        model.encoder, model.decoder, model.prior, data.val, judge, seed=seed, temperature=model.temperature,
        train_images=data.train.images, preprocessing=model.card.preprocessing, draw=model.draw, encode=False,
    )  # fmt: skip
    figures.pop("judge_heldout_accuracy")  # the judge's own, unchanged

    def update(metrics: dict[str, Any]) -> None:
        metrics["untoned"] = {k: metrics[k] for k in figures if k in metrics}
        metrics.update(figures)

    _update_metrics(model_dir, update)
    log.info("what the model draws, toned: %s", json.dumps(figures))
    return figures


def _update_metrics(model_dir: Path, update: Callable[[dict[str, Any]], None]) -> None:
    path = model_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    update(manifest["metrics"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(path)
