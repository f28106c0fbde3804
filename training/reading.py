"""The digit reader: MNIST digits varied the way people's digits vary, three CNNs trained on them, one CNN distilled
from the three (the reader /encode runs: a third of their cost, reading as well), calibrated, and added to a model
directory.

    python -m training.reading --model artifacts/default --data-dir ../shared/data/mnist-8500

Only the model's own training digits are used (its held-out digits stay held out): the reader trains on all but the
last CALIBRATION_SIZE of them and its temperature is fitted on those, varied the same way. Every variant passes
through the service's own pre-processing (model.imaging.to_mnist), so the reader learns what /encode will show it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import Tensor, nn

from model.artifacts import load_model_dir, quiet_torchscript
from model.imaging import to_mnist
from model.manifest import ENCODER_FILE, MANIFEST_FILE, PROGRAM_FILES, READER_FILE, ModelDirError, sha256_file
from model.network import CVAEConfig, Reader, ReaderConfig
from model.uploads import ImageError
from training.augment import random_affine
from training.data import DataError, DataSplits, load_data_dir
from training.evaluate import OUTSIDE_COUNT, encode_figures, outside_figures
from training.export import check_reader_scripted, export_programs, model_id, rewrite_model_dir
from training.judge import cached_judge, default_cache_dir
from training.testsets import render_strokes

log = logging.getLogger(__name__)

CALIBRATION_SIZE = 500  # training digits kept back to fit the temperature (at most a fifth of them)
CANVAS = 80  # the side the geometry is varied at (the 28 px digit padded to 40, scaled 2x)
PLAIN_SHARE = 0.3  # varied digits whose strokes and grey levels are left as MNIST's
MEMBERS = ("varied", "varied", "plain")  # what the teacher's CNNs train on, in order (docs/quality.md: why)
DISTIL_BATCH = 1024  # digits the teacher reads at once while distilling
FLAG_SHARE = 0.5  # training 1s given a flag, new each epoch (docs/quality.md: why)
FOOT_SHARE = 0.35  # flagged 1s given a foot as well


def letterforms(images: Tensor, labels: Tensor, g: torch.Generator) -> Tensor:
    """uint8 (N, 28, 28) MNIST digits with FLAG_SHARE of the 1s written the European way: a flag, a short stroke
    from the top of the stem down to the left, and for FOOT_SHARE of those a foot, a bar under the stem. MNIST's 1s
    are nearly all bare strokes, so a reader trained on them alone takes a flagged 1 for a 7. The flag leaves the
    stem at 35-75 degrees and points at least 25 degrees below the horizontal: a 1 leaning so far that no such flag
    fits keeps its bare form (a longer, flatter flag on a leaning stem is a 7). Drawn 4x larger and box-filtered
    down, as wide as the stem's ink per row, so the new strokes are anti-aliased like MNIST's."""
    out = images.clone()
    ones = (labels == 1).nonzero().flatten().tolist()
    u = torch.rand(len(ones), 5, generator=g).tolist()  # drawn for every 1, so each 1's form is one draw
    cols = np.arange(28, dtype=np.float64)
    for i, (flag, size, turn, foot, reach) in zip(ones, u, strict=True):
        a = images[i].numpy()
        rows = np.nonzero(a.max(axis=1) > 127)[0]
        if flag >= FLAG_SHARE or len(rows) < 8:
            continue
        top, bottom = int(rows[0]), int(rows[-1])
        height = bottom - top + 1
        pen = max(1.0, float((a > 127).sum()) / height)
        tx = float(np.average(cols, weights=a[top : top + 3].sum(axis=0) + 1e-6))
        bx = float(np.average(cols, weights=a[bottom - 2 : bottom + 1].sum(axis=0) + 1e-6))
        stem = math.atan2(height, bx - tx)  # its direction from the top; pi/2 when upright, y down
        lo, hi = stem + math.radians(35), min(stem + math.radians(75), math.radians(155))
        if lo >= hi:
            continue
        angle, length = lo + (hi - lo) * turn, height * (0.18 + 0.12 * size)
        strokes = [[(tx, top + 0.5), (tx + length * math.cos(angle), top + 0.5 + length * math.sin(angle))]]
        if foot < FOOT_SHARE:
            half = height * (0.15 + 0.1 * reach)
            strokes.append([(bx - half, bottom + 0.5), (bx + half, bottom + 0.5)])
        # white on black in pixel coordinates (a unit box 1 px tall at the origin), 4x supersampled
        pen_ink = render_strokes(
            strokes, size=(28, 28), box=(0.0, 0.0, 1.0), width=pen, ink=255, paper=0, supersample=4
        )
        out[i] = torch.from_numpy(np.maximum(a, np.asarray(pen_ink)))
    return out


def varied(images: Tensor, g: torch.Generator, seed: int, plain_share: float = PLAIN_SHARE) -> Tensor:
    """uint8 (N, 28, 28) MNIST digits -> float32 (N, 1, 28, 28): each digit slanted, turned, stretched, warped,
    then, but for `plain_share` of them, thickened or thinned, maybe coarsened, blurred, faded or grained; all
    pre-processed as /encode does. Deterministic for a generator state and seed."""
    n = images.shape[0]
    x = F.pad(images.unsqueeze(1).float() / 255, (6, 6, 6, 6))
    x = F.interpolate(x, size=(CANVAS, CANVAS), mode="bilinear", align_corners=False)
    x = _warp(x, g)
    plain = torch.rand(n, generator=g) < plain_share
    x = torch.where(plain[:, None, None, None], x, _stroke_width(x, g))
    out = torch.empty(n, 1, 28, 28)
    rng = np.random.default_rng(seed)
    for i in range(n):
        grey = x[i, 0].numpy() if plain[i] else _degrade(x[i, 0].numpy(), rng)
        try:
            out[i] = to_mnist(torch.from_numpy(grey))
        except ImageError:  # faded to nothing: the plain digit instead
            out[i] = to_mnist(images[i].float() / 255)
    return out


def _warp(x: Tensor, g: torch.Generator) -> Tensor:
    """Rotation up to 10 degrees, slant (shear up to 0.3), width 0.7-1.25x, height 0.85-1.15x, and a smooth
    elastic wobble, in one resampling. (Up to 15 degrees and 0.45, the 7's bar tilts into a flag and flagged 1s
    are read as 7s: docs/quality.md.)"""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=g) * 2 - 1
    angle, shear = u[:, 0] * math.radians(10), u[:, 1] * 0.3
    sx, sy = 1 / (0.975 + u[:, 2] * 0.275), 1 / (1 + u[:, 3] * 0.15)  # output -> input coordinates
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros(n)
    theta = torch.stack(
        [torch.stack([cos * sx, (shear - sin) * sx, zero], 1), torch.stack([sin * sy, cos * sy, zero], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, CANVAS, CANVAS], align_corners=False)
    wobble = torch.randn(n, 2, 4, 4, generator=g) * 0.035
    grid = grid + F.interpolate(wobble, size=(CANVAS, CANVAS), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _stroke_width(x: Tensor, g: torch.Generator) -> Tensor:
    """Each digit's strokes: as they are, thickened (a pen: 1-3 px more on each side at this scale), thinned to a
    fine line (a pencil, a thin pen), made crisp (a pen's hard edge), or outlined (a bold stroke drawn as its two
    edges, as outline and inline fonts draw it)."""
    choice = torch.randint(0, 7, (x.shape[0],), generator=g)
    out = x.clone()
    for k, size in ((1, 3), (2, 5), (3, 7)):
        rows = choice == k
        if rows.any():
            out[rows] = F.max_pool2d(x[rows], size, stride=1, padding=size // 2)
    thin = choice == 4
    if thin.any():
        level = 0.35 + 0.4 * torch.rand(int(thin.sum()), 1, 1, 1, generator=g)
        out[thin] = ((x[thin] - level) / (1 - level)).clamp(0, 1)
    crisp = choice == 5
    if crisp.any():
        out[crisp] = (x[crisp] > 0.3 + 0.4 * torch.rand(int(crisp.sum()), 1, 1, 1, generator=g)).float()
    outline = choice == 6
    if outline.any():
        out[outline] = _outline(x[outline], g)
    return out


def _outline(x: Tensor, g: torch.Generator) -> Tensor:
    """Digits (N, 1, CANVAS, CANVAS) made bold (2-3 px more on each side), then hollowed: what is left is a rim
    2-3 px wide on each side of where the bold stroke was."""
    bold = torch.empty_like(x)
    sizes = torch.randint(0, 2, (x.shape[0],), generator=g)
    for k, size in enumerate((5, 7)):
        rows = sizes == k
        if rows.any():
            bold[rows] = F.max_pool2d(x[rows], size, stride=1, padding=size // 2)
    bold = ((bold - 0.3) / 0.4).clamp(0, 1)
    inner = 1 - F.max_pool2d(1 - bold, 5, stride=1, padding=2)  # eroded by 2 px
    return (bold - inner).clamp(0, 1)


def _degrade(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One digit (white on black, CANVAS px) as a scan or a photo could show it: coarsened, blurred, faded, grainy,
    either polarity."""
    if rng.random() < 0.3:  # a coarse scan scaled up
        side = int(rng.integers(14, 34))
        img = Image.fromarray(a).resize((side, side), Image.Resampling.BOX)
        up = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR
        a = np.asarray(img.resize((CANVAS, CANVAS), up), dtype=np.float32)
    if rng.random() < 0.3:
        img = Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))  # Pillow blurs 8-bit images
        a = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5))), dtype=np.float32) / 255
    a = np.clip(a, 0.0, 1.0) ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.4:  # faded ink on a grey ground, with grain
        ink, ground = rng.uniform(0.25, 0.9), rng.uniform(0.0, 0.2)
        a = ground + ink * a + rng.normal(0, rng.uniform(0.0, 0.025), a.shape)
    if rng.random() < 0.5:
        a = 1.0 - a
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def train_reader(
    images: Tensor, labels: Tensor, cfg: ReaderConfig, recipes: Sequence[str], *, epochs: int, plain_epochs: int,
    seed: int,
) -> Reader:  # fmt: skip
    """A reader of len(recipes) == cfg.members CNNs, member i trained from seed + i on images (uint8 (N, 28, 28))
    by recipes[i]: "varied", fresh varied copies every epoch (`epochs` of them), or "plain", the images as /encode
    pre-processes them, lightly moved (the plain recipe of training/judge.py; `plain_epochs`). Either way a share
    of the 1s is flagged afresh every epoch (letterforms)."""
    if len(recipes) != cfg.members or not set(recipes) <= {"varied", "plain"}:
        raise ValueError(f"one recipe, varied or plain, per member: {recipes} for {cfg.members}")
    reader = Reader(cfg)
    for i, recipe in enumerate(recipes):
        if recipe == "varied":
            inputs, passes = partial(_varied_input, images, labels), epochs
        else:
            inputs, passes = partial(_plain_input, images, labels), plain_epochs
        member = train_member(labels, cfg, epochs=passes, seed=seed + i, inputs=inputs)
        reader.members[i].load_state_dict(member.state_dict())
    return reader.eval()


def distil(teacher: Reader, images: Tensor, labels: Tensor, cfg: ReaderConfig, *, epochs: int, seed: int) -> Reader:
    """A reader of one CNN trained to read as `teacher` (calibrated) does (knowledge distillation, Hinton et al.
    2015): every epoch on fresh varied copies of images (uint8 (N, 28, 28)) and on the images as /encode
    pre-processes them, lightly moved (in both, a share of the 1s flagged afresh: letterforms), so that it learns what
    the teacher's varied members and its plain one know; half its loss the cross-entropy to the teacher's
    probabilities, half to the labels."""
    member = train_member(
        labels, cfg, epochs=epochs, seed=seed, inputs=partial(_varied_and_plain, images, labels), teacher=teacher.eval()
    )
    student = Reader(ReaderConfig(**{**cfg.to_dict(), "members": 1}))
    student.members[0].load_state_dict(member.state_dict())
    return student.eval()


def _plain(images: Tensor) -> Tensor:
    return torch.stack([to_mnist(img.float() / 255) for img in images])


def _varied_input(images: Tensor, labels: Tensor, g: torch.Generator, seed: int) -> Tensor:
    return varied(letterforms(images, labels, g), g, seed)


def _plain_input(images: Tensor, labels: Tensor, g: torch.Generator, _: int) -> Tensor:
    return random_affine(_plain(letterforms(images, labels, g)), 1.0, g)


def _varied_and_plain(images: Tensor, labels: Tensor, g: torch.Generator, seed: int) -> Tensor:
    return torch.cat([_varied_input(images, labels, g, seed), _plain_input(images, labels, g, seed)])


@torch.enable_grad()
def train_member(
    labels: Tensor, cfg: ReaderConfig, *, epochs: int, seed: int, inputs: Callable[[torch.Generator, int], Tensor],
    teacher: Reader | None = None,
) -> nn.Module:  # fmt: skip
    """One CNN of a reader, trained on inputs(generator, epoch_seed) (k*N, 1, 28, 28: k copies of the N labelled
    digits, in order), new ones every epoch. With a teacher, half the loss is the cross-entropy to the teacher's
    probabilities, half to the labels."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    member = Reader(ReaderConfig(**{**cfg.to_dict(), "members": 1})).members[0]
    batch = 128
    x = inputs(g, seed * 1000)  # the first epoch's inputs: how many digits an epoch has
    targets = labels.repeat(len(x) // len(labels))
    opt = torch.optim.AdamW(member.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for epoch in range(epochs):
        if epoch:
            x = inputs(g, seed * 1000 + epoch)
        soft: Tensor | None = None
        if teacher is not None:
            with torch.no_grad():
                soft = torch.cat([teacher(x[i : i + DISTIL_BATCH]) for i in range(0, len(x), DISTIL_BATCH)]).exp()
        member.train()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            logits = member(x[idx])
            loss = F.cross_entropy(logits, targets[idx])
            if soft is not None:
                loss = 0.5 * F.cross_entropy(logits, soft[idx]) + 0.5 * loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log.info("reader member (seed %d) epoch %d/%d: loss %.4f", seed, epoch + 1, epochs, total / len(x))
    return member.eval()


@torch.no_grad()
def fit_temperature(reader: Reader, x: Tensor, y: Tensor) -> float:
    """The temperature that minimises the negative log-likelihood of y (Guo et al. 2017, temperature scaling), by a
    golden-section search over [0.25, 8]."""
    logits = reader.logits(x)

    def nll(t: float) -> float:
        return float(F.cross_entropy(logits / t, y))

    lo, hi = math.log(0.25), math.log(8.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(math.exp(a)) < nll(math.exp(b)):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def add_reader(model_dir: Path, reader: Reader, record: dict[str, Any]) -> dict[str, Any]:
    """Write reader.pt into model_dir (scripted, checked against eager), and reader.pt2 (its torch.export program)
    when the directory has the other networks' programs, and list them in the manifest, replacing the directory only
    once everything is written. The model's id changes with its reader. -> the manifest."""
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())

    def add(folder: Path) -> None:
        with quiet_torchscript():
            torch.jit.save(torch.jit.script(reader), str(folder / READER_FILE))
            check_reader_scripted(reader, torch.jit.load(str(folder / READER_FILE)))
        manifest["artifacts"][READER_FILE] = sha256_file(folder / READER_FILE)
        if PROGRAM_FILES[ENCODER_FILE]["forward"] in manifest["artifacts"]:
            cfg = CVAEConfig.from_dict(manifest["config"]["model"])
            for file in export_programs({READER_FILE: reader}, folder, cfg):
                manifest["artifacts"][file] = sha256_file(folder / file)
        manifest["reader"] = {"file": READER_FILE, **record}
        manifest["id"] = model_id(manifest["artifacts"])

    rewrite_model_dir(model_dir, manifest, add)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.reading", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model directory to add the reader to")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of MNIST IDX files (the model's data)")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the varied digits (default 30)")
    parser.add_argument("--plain-epochs", type=int, default=16, help="passes of the plain member (default 16)")
    parser.add_argument("--distil-epochs", type=int, default=45,
                        help="passes over varied and plain digits distilling the reader (default 45)")  # fmt: skip
    parser.add_argument("--generative-weight", type=float, default=0.0,
                        help="weight of the generative label score beside the reader's (default 0)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--outside-count", type=int, default=OUTSIDE_COUNT,
                        help=f"uploads of each kind not from MNIST measured (default {OUTSIDE_COUNT})")  # fmt: skip
    args = parser.parse_args(argv)
    if min(args.epochs, args.plain_epochs, args.distil_epochs) < 1:
        parser.error("--epochs, --plain-epochs and --distil-epochs must be at least 1")
    if args.outside_count < 0:
        parser.error("--outside-count must be >= 0")
    if not args.generative_weight >= 0:
        parser.error("--generative-weight must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = load_model_dir(args.model)
        training_cfg = model.manifest.get("config", {}).get("training", {})
        seed, val_size = int(training_cfg.get("seed", 0)), int(training_cfg.get("val_size", 1000))
        data = load_data_dir(args.data_dir, val_size=val_size, seed=seed)
    except (ModelDirError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if data.info.get("files") != model.manifest.get("data", {}).get("files"):
        print(f"error: {args.data_dir} is not the data {args.model} was trained on", file=sys.stderr)
        return 2
    images, labels = data.train.images, data.train.labels
    kept = min(CALIBRATION_SIZE, len(images) // 5)
    fit, keep = slice(0, len(images) - kept), slice(len(images) - kept, None)
    cfg = ReaderConfig(num_classes=model.num_classes, generative_weight=args.generative_weight, members=len(MEMBERS))
    teacher = train_reader(
        images[fit], labels[fit], cfg, MEMBERS, epochs=args.epochs, plain_epochs=args.plain_epochs, seed=seed
    )
    calibration = varied(images[keep], torch.Generator().manual_seed(seed + 1), seed + 1)
    teacher.temperature = fit_temperature(teacher, calibration, labels[keep])
    teacher_accuracy = _accuracy(teacher, calibration, labels[keep])
    log.info("teacher: temperature %.3f, %.1f%% of calibration digits", teacher.temperature, 100 * teacher_accuracy)
    student_seed = seed + len(MEMBERS)
    reader = distil(teacher, images[fit], labels[fit], cfg, epochs=args.distil_epochs, seed=student_seed)
    temperature = fit_temperature(reader, calibration, labels[keep])
    reader.temperature = temperature
    cfg = ReaderConfig(**{**cfg.to_dict(), "members": 1, "temperature": temperature})
    accuracy = _accuracy(reader, calibration, labels[keep])
    log.info("reader: temperature %.3f, %.1f%% of varied calibration digits right", temperature, 100 * accuracy)
    student = {
        "recipe": "distilled",
        "seed": student_seed,
        "teacher": [{"recipe": recipe, "seed": seed + i} for i, recipe in enumerate(MEMBERS)],
        "teacher_temperature": teacher.temperature,
        "teacher_calibration_accuracy": teacher_accuracy,
    }
    record = {
        "config": cfg.to_dict(),
        "trained_on": f"{len(images) - kept} training digits of {data.info.get('name')}",
        "members": [student],
        "calibrated_on": f"the last {kept} training digits, varied",
        "calibration_accuracy": accuracy,
        "epochs": {"varied": args.epochs, "plain": args.plain_epochs, "distilled": args.distil_epochs},
        "seed": seed,
        "reproduce": " ".join(["python -m training.reading", *(argv if argv is not None else sys.argv[1:])]),
    }
    manifest = add_reader(args.model, reader, record)
    log.info("reader added to %s (model id %s); measuring /encode with it", args.model, manifest["id"])
    record_figures(args.model, data, seed=seed, outside_count=args.outside_count)
    return 0


@torch.no_grad()
def _accuracy(reader: Reader, x: Tensor, y: Tensor) -> float:
    return float((reader(x).argmax(1) == y).float().mean())


def record_figures(model_dir: Path, data: DataSplits, *, seed: int, outside_count: int) -> dict[str, Any]:
    """Measure /encode with the model's reader (held-out MNIST digits as uploaded and re-drawn, reconstruction, and
    the sets that are not MNIST) and record the figures in the manifest's metrics, where they replace those the
    model was exported with (its reading was then the generative score's). -> the figures."""
    model = load_model_dir(model_dir)
    judge, _ = cached_judge(data, default_cache_dir(), seed=seed)
    figures = encode_figures(model.encoder, model.decoder, model.prior, data.val, judge, seed=seed, reader=model.reader)
    if outside_count > 0:
        figures["outside"] = outside_figures(
            model.encoder, model.decoder, model.prior, judge, reader=model.reader, count=outside_count, seed=seed
        )
    path = model_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["metrics"].update(figures)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(path)
    log.info("recorded: %s", json.dumps(figures))
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
