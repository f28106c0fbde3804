"""The digit reader's training: three CNNs (the teacher) trained on the model's own training digits, varied
(training/reader/variants.py) and with flagged 1s (training/reader/letterforms.py), one CNN distilled from them (the
reader /encode runs: a third of their cost, reading as well) and its temperature calibrated. The CNNs train on the
run's device (each epoch's inputs are made on the CPU and moved there); the readers they make are returned on the CPU.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.manifest import Preprocessing
from model.network import Reader, ReaderConfig
from model.preprocessing import preprocess
from training.augment import random_affine
from training.reader.letterforms import letterforms
from training.reader.variants import varied

log = logging.getLogger(__name__)

MEMBERS = ("varied", "varied", "plain")  # what the teacher's CNNs train on, in order (docs/quality.md: why)
# Images that are not digits have no varied recipe (it varies strokes as people's digits vary): the teacher's CNNs
# are plain ones from three seeds.
PLAIN_MEMBERS = ("plain", "plain", "plain")
DISTIL_BATCH = 1024  # digits the teacher reads at once while distilling
CPU = torch.device("cpu")


def train_reader(
    images: Tensor, labels: Tensor, cfg: ReaderConfig, recipes: Sequence[str], *, epochs: int, plain_epochs: int,
    seed: int, device: torch.device = CPU, digits: bool = True, preprocessing: Preprocessing = "mnist",
) -> Reader:  # fmt: skip
    """A reader of len(recipes) == cfg.members CNNs, member i trained from seed + i on images (uint8 (N, 28, 28))
    by recipes[i]: "varied", fresh varied copies every epoch (`epochs` of them), or "plain", the images as /encode
    pre-processes them, lightly moved (the plain recipe of training/judge.py; `plain_epochs`). Either way, for digits,
    a share of the 1s is flagged afresh every epoch (letterforms)."""
    if len(recipes) != cfg.members or not set(recipes) <= {"varied", "plain"}:
        raise ValueError(f"one recipe, varied or plain, per member: {recipes} for {cfg.members}")
    reader = Reader(cfg)
    for i, recipe in enumerate(recipes):
        if recipe == "varied":
            inputs, passes = partial(_varied_input, images, labels if digits else None), epochs
        else:
            inputs = partial(_plain_input, images, labels if digits else None, preprocessing=preprocessing)
            passes = plain_epochs
        member = train_member(labels, cfg, epochs=passes, seed=seed + i, inputs=inputs, device=device)
        reader.members[i].load_state_dict(member.state_dict())
    return reader.eval()


def distil(
    teacher: Reader, images: Tensor, labels: Tensor, cfg: ReaderConfig, *, epochs: int, seed: int,
    device: torch.device = CPU, digits: bool = True, preprocessing: Preprocessing = "mnist",
) -> Reader:  # fmt: skip
    """A reader of one CNN trained to read as `teacher` (calibrated) does (knowledge distillation, Hinton et al.
    2015): every epoch on fresh varied copies of images (uint8 (N, 28, 28)) and on the images as /encode
    pre-processes them, lightly moved (in both, for digits, a share of the 1s flagged afresh: letterforms), so that it
    learns what
    the teacher's varied members and its plain one know; half its loss the cross-entropy to the teacher's
    probabilities, half to the labels."""
    member = train_member(
        labels, cfg, epochs=epochs, seed=seed,
        inputs=partial(_varied_and_plain, images, labels) if digits else partial(
            _plain_input, images, None, preprocessing=preprocessing
        ),
        teacher=copy.deepcopy(teacher).to(device).eval(), device=device,
    )  # fmt: skip
    student = Reader(ReaderConfig(**{**cfg.to_dict(), "members": 1}))
    student.members[0].load_state_dict(member.state_dict())
    return student.eval()


def plain(images: Tensor, preprocessing: Preprocessing = "mnist") -> Tensor:
    """uint8 (N, H, W) training images as /encode pre-processes an upload of them: float32 (N, 1, H, W)."""
    shape = (images.shape[1], images.shape[2])
    return torch.stack([preprocess(img.float() / 255, preprocessing, shape) for img in images])


def _flagged(images: Tensor, labels: Tensor | None, g: torch.Generator) -> Tensor:
    """Digits with a share of their 1s flagged afresh (labels given), other images as they are (labels None)."""
    return images if labels is None else letterforms(images, labels, g)


def _varied_input(images: Tensor, labels: Tensor | None, g: torch.Generator, seed: int) -> Tensor:
    return varied(_flagged(images, labels, g), g, seed)


def _plain_input(
    images: Tensor, labels: Tensor | None, g: torch.Generator, _: int, preprocessing: Preprocessing = "mnist"
) -> Tensor:
    return random_affine(plain(_flagged(images, labels, g), preprocessing), 1.0, g)


def _varied_and_plain(images: Tensor, labels: Tensor | None, g: torch.Generator, seed: int) -> Tensor:
    return torch.cat([_varied_input(images, labels, g, seed), _plain_input(images, labels, g, seed)])


@torch.enable_grad()
def train_member(
    labels: Tensor, cfg: ReaderConfig, *, epochs: int, seed: int, inputs: Callable[[torch.Generator, int], Tensor],
    teacher: Reader | None = None, device: torch.device = CPU,
) -> nn.Module:  # fmt: skip
    """One CNN of a reader, trained on `device` on inputs(generator, epoch_seed) (k*N, 1, 28, 28: k copies of the N
    labelled digits, in order; made on the CPU), new ones every epoch. With a teacher (on `device`), half the loss is
    the cross-entropy to the teacher's probabilities, half to the labels. -> the CNN, on the CPU."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    member = Reader(ReaderConfig(**{**cfg.to_dict(), "members": 1})).members[0].to(device)
    batch = 128
    x = inputs(g, seed * 1000).to(device)  # the first epoch's inputs: how many digits an epoch has
    targets = labels.repeat(len(x) // len(labels)).to(device)
    opt = torch.optim.AdamW(member.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for epoch in range(epochs):
        if epoch:
            x = inputs(g, seed * 1000 + epoch).to(device)
        soft: Tensor | None = None
        if teacher is not None:
            with torch.no_grad():
                soft = torch.cat([teacher(x[i : i + DISTIL_BATCH]) for i in range(0, len(x), DISTIL_BATCH)]).exp()
        member.train()
        order = torch.randperm(len(x), generator=g).to(device)  # drawn on the CPU generator: the same on any device
        total = torch.zeros((), device=device)  # summed on the device: no host sync per step
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
            total += loss.detach() * len(idx)
        log.info("reader member (seed %d) epoch %d/%d: loss %.4f", seed, epoch + 1, epochs, total.item() / len(x))
    return member.to(CPU).eval()


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


@torch.no_grad()
def accuracy(reader: Reader, x: Tensor, y: Tensor) -> float:
    return float((reader(x).argmax(1) == y).float().mean())
