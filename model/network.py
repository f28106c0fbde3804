"""The conditional VAE: an encoder q(z | x, y), a decoder p(x | z, y), and the two joined.

The digit label y enters both halves as a one-hot vector, so the latent z only has to carry *style*
(slant, stroke width, ...): one z decoded under ten labels writes ten digits in one hand.
Every module here is TorchScript-scriptable; ``training.export`` relies on that.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EncoderArch = Literal["mlp", "conv"]


@dataclass(frozen=True)
class CVAEConfig:
    image_size: int = 28  # images are (1, image_size, image_size), grey values in [0, 1]
    num_classes: int = 10  # number of labels (digits 0-9)
    latent_dim: int = 16  # D, size of z
    encoder: EncoderArch = "conv"  # "conv": two stride-2 convolutions then an MLP head; "mlp": MLP only
    hidden: tuple[int, ...] = (512, 512)  # widths of the decoder's hidden MLP layers (reversed: it mirrors them)
    encoder_hidden: tuple[int, ...] | None = None  # the encoder's own widths, when not `hidden`
    channels: tuple[int, int] = (32, 64)  # the conv encoder's channels at 14x14 and 7x7

    def __post_init__(self) -> None:
        # Accept lists (from JSON) but store tuples, so the config stays hashable and immutable.
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.encoder_hidden is not None:
            object.__setattr__(self, "encoder_hidden", tuple(int(h) for h in self.encoder_hidden))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.encoder not in ("mlp", "conv"):
            raise ValueError(f"encoder must be 'mlp' or 'conv', got {self.encoder!r}")
        if self.latent_dim < 1 or self.num_classes < 2 or not self.hidden or self.encoder_hidden == ():
            raise ValueError(f"invalid CVAE config: {self}")
        if len(self.channels) != 2:
            raise ValueError(f"invalid CVAE config: {self}")
        if self.encoder == "conv" and self.image_size % 4:
            raise ValueError(f"conv layers need image_size divisible by 4, got {self.image_size}")

    @property
    def num_pixels(self) -> int:
        return self.image_size * self.image_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CVAEConfig:
        return cls(**d)


def _mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers with SiLU between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """q(z | x, y) = N(mean, diag(exp(log_var))).

    forward(x: float32[N, 1, H, W] in [0, 1], y: int64[N]) -> (mean: float32[N, D], log_var: float32[N, D])
    all_labels(x) gives the same for every label, image-major: (mean, log_var) float32[N * C, D], row i * C + c
    under label c. The label joins the image's features in the first hidden layer, as a learned vector added to
    it (a linear layer on [features, one-hot label], split in two), so all_labels computes everything before that
    addition once per image, not once per label: what /encode pays for ten labels is mostly the layers after it.
    """

    def __init__(self, cfg: CVAEConfig) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.latent_dim = cfg.latent_dim
        self.use_conv = cfg.encoder == "conv"
        c1, c2 = cfg.channels
        if self.use_conv:
            self.features = nn.Sequential(
                nn.Conv2d(1, c1, 4, stride=2, padding=1),  # (N, c1, H/2, W/2)
                nn.SiLU(),
                nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # (N, c2, H/4, W/4)
                nn.SiLU(),
                nn.Flatten(),
            )
            n_features = c2 * (cfg.image_size // 4) ** 2
        else:
            self.features = nn.Sequential(nn.Flatten())
            n_features = cfg.num_pixels
        hidden = cfg.encoder_hidden or cfg.hidden
        self.image_in = nn.Linear(n_features, hidden[0])
        self.label_in = nn.Embedding(cfg.num_classes, hidden[0])  # = a linear layer on the one-hot label
        bound = 1 / math.sqrt(n_features + cfg.num_classes)  # initialised as that one linear layer would be
        nn.init.uniform_(self.label_in.weight, -bound, bound)
        rest: list[nn.Module] = [_mlp(list(hidden)), nn.SiLU()] if len(hidden) > 1 else []
        self.body = nn.Sequential(nn.SiLU(), *rest)
        self.head = nn.Linear(hidden[-1], 2 * cfg.latent_dim)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._posterior(self.image_in(self.features(x)) + self.label_in(y))

    @torch.jit.export
    def all_labels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        image = self.image_in(self.features(x))  # (N, H), once per image
        joined = image.unsqueeze(1) + self.label_in.weight.unsqueeze(0)  # (N, C, H)
        return self._posterior(joined.flatten(0, 1))

    def _posterior(self, joined: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.head(self.body(joined)).chunk(2, dim=1)  # (N, D) each
        return mean, log_var


class Decoder(nn.Module):
    """p(x | z, y): independent Bernoulli pixels, from an MLP.

    forward(z: float32[N, D], y: int64[N]) -> float32[N, 1, H, W], the Bernoulli means in [0, 1].
    logits(z, y) gives the same before the sigmoid (what the loss needs).
    """

    def __init__(self, cfg: CVAEConfig) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.latent_dim = cfg.latent_dim
        self.image_size = cfg.image_size
        self.body = nn.Sequential(
            _mlp([cfg.latent_dim + cfg.num_classes, *reversed(cfg.hidden), cfg.num_pixels]),
            nn.Unflatten(1, (1, cfg.image_size, cfg.image_size)),
        )

    @torch.jit.export
    def logits(self, z: Tensor, y: Tensor) -> Tensor:
        onehot = F.one_hot(y, self.num_classes).to(z.dtype)  # (N, C)
        return self.body(torch.cat([z, onehot], dim=1))  # (N, 1, H, W)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(z, y))


class LabelAdversary(nn.Module):
    """Predicts the digit from a latent (the posterior mean). Training fits it to find what the latent gives away
    about the label, and the encoder to leave it nothing (a censoring adversary: Edwards & Storkey 2016; Lample
    et al. 2017's Fader networks): then every digit's posteriors fill the same region of latent space, and a z
    from one digit's hand is a z every digit's decoder knows. Not exported: the served model never uses it.

    forward(z: float32[N, D]) -> logits float32[N, C]
    """

    def __init__(self, cfg: CVAEConfig, hidden: int = 256) -> None:
        super().__init__()
        self.net = _mlp([cfg.latent_dim, hidden, hidden, cfg.num_classes])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def reparameterize(mean: Tensor, log_var: Tensor, eps: Tensor | None = None) -> Tensor:
    """z = mean + sigma * eps with eps ~ N(0, I) (Kingma & Welling 2014, section 2.4)."""
    if eps is None:
        eps = torch.randn_like(mean)
    return mean + torch.exp(0.5 * log_var) * eps


@dataclass
class CVAEOutput:
    logits: Tensor  # (N, 1, H, W)
    mean: Tensor  # (N, D)
    log_var: Tensor  # (N, D)
    z: Tensor = field(repr=False)  # (N, D), the reparameterised sample the logits were decoded from


class CVAE(nn.Module):
    def __init__(self, cfg: CVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: Tensor, y: Tensor, eps: Tensor | None = None) -> CVAEOutput:
        """eps: the reparameterisation's noise (N, D); None draws it from the global generator."""
        mean, log_var = self.encoder(x, y)
        z = reparameterize(mean, log_var, eps)
        return CVAEOutput(logits=self.decoder.logits(z, y), mean=mean, log_var=log_var, z=z)


@dataclass(frozen=True)
class ReaderConfig:
    image_size: int = 28  # images are (1, image_size, image_size) as to_mnist makes them
    num_classes: int = 10
    channels: tuple[int, int, int] = (16, 32, 32)  # 3x3 convolutions at full, half and quarter size
    hidden: int = 128  # width of the layer before the logits
    members: int = 1  # CNNs in the ensemble
    temperature: float = 1.0  # logits are divided by it (fitted after training, so that probabilities are calibrated)
    generative_weight: float = 0.0  # how much of the generative label score is added to the reader's log-probs

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if (
            len(self.channels) != 3
            or min(self.channels) < 1
            or self.hidden < 1
            or self.image_size % 4
            or self.members < 1
        ):
            raise ValueError(f"invalid reader config: {self}")
        if not (self.temperature > 0 and self.generative_weight >= 0):
            raise ValueError(f"invalid reader config: {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Reader(nn.Module):
    """q(y | x): a discriminative digit reader beside the CVAE (the label head of Kingma et al. 2014's M2), an
    ensemble of `members` CNNs whose log-probabilities are averaged (a geometric mean). The shipped reader has one,
    distilled from three (training.reader): two trained on MNIST digits warped, thickened, thinned, outlined,
    blurred and coarsened the way drawings, fonts, scans and photos differ from MNIST, one on MNIST's digits lightly
    moved.

    forward(x: float32[N, 1, H, W] in [0, 1]) -> log-probabilities float32[N, C] (calibrated by `temperature`)
    """

    def __init__(self, cfg: ReaderConfig) -> None:
        super().__init__()
        self.members = nn.ModuleList([_reader_cnn(cfg) for _ in range(cfg.members)])
        self.temperature = cfg.temperature
        self.generative_weight = cfg.generative_weight

    @torch.jit.export
    def logits(self, x: Tensor) -> Tensor:
        """The members' mean log-probabilities (N, C), before the temperature."""
        total = torch.zeros(x.shape[0], 1, device=x.device)
        for member in self.members:
            total = total + member(x).log_softmax(dim=1)
        return total / len(self.members)

    def forward(self, x: Tensor) -> Tensor:
        return (self.logits(x) / self.temperature).log_softmax(dim=1)


class MaxPool2x2(nn.Module):
    """nn.MaxPool2d(2) for even sides, as two elementwise maxima of strided halves: the same values (a maximum is
    exact) for a fraction of the time, since torch's CPU max-pooling kernel is slow on small images
    (docs/performance.md). Holds no parameters, so a reader's state dict is the same with either."""

    def forward(self, x: Tensor) -> Tensor:
        rows = torch.maximum(x[:, :, 0::2, :], x[:, :, 1::2, :])
        return torch.maximum(rows[:, :, :, 0::2], rows[:, :, :, 1::2])


def _reader_cnn(cfg: ReaderConfig) -> nn.Sequential:
    c1, c2, c3 = cfg.channels
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1),  # (N, c1, H, W)
        nn.SiLU(),
        MaxPool2x2(),  # (N, c1, H/2, W/2)
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.SiLU(),
        MaxPool2x2(),  # (N, c2, H/4, W/4)
        nn.Conv2d(c2, c3, 3, padding=1),
        nn.SiLU(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(c3 * (cfg.image_size // 4) ** 2, cfg.hidden),
        nn.SiLU(),
        nn.Dropout(0.3),
        nn.Linear(cfg.hidden, cfg.num_classes),  # (N, C) logits
    )
