"""Training configuration: one frozen dataclass, parsed once from the command line in training/__main__.py."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from model.manifest import MAX_TEMPERATURE, is_temperature
from model.network import CVAEConfig
from training.data import FASHION_MNIST_DIR, FASHION_MNIST_PACKAGE, KINDS, Kind

READER_EPOCHS = {"varied": 30, "plain": 16, "distilled": 45}  # the reader's passes by default (docs/quality.md)


def doc(text: str) -> dict[str, str]:
    """A field's metadata: its --help text."""
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """Options of `python -m training`; each field's metadata holds its --help text."""

    out: Path = field(default=Path("runs/model"), metadata=doc("model directory to export into (replaced atomically)"))
    data_dir: Path | None = field(
        default=None,
        metadata=doc(
            "folder of IDX files in MNIST's layout (train-*, optionally t10k-* as the held-out set); default "
            f"data/mnist, or {FASHION_MNIST_DIR} (Debian's {FASHION_MNIST_PACKAGE}) for --dataset fashion-mnist"
        ),
    )
    dataset: Literal["folder", "mnist", "fashion-mnist"] = field(
        default="folder",
        metadata=doc(
            "'folder': digits, read from --data-dir as they are; 'mnist': first download the official MNIST files "
            "into it; 'fashion-mnist': Fashion-MNIST's ten classes of clothing, read from --data-dir"
        ),
    )
    run_dir: Path | None = field(
        default=None,
        metadata=doc("where checkpoints, sample grids and the run record go (default: runs/<name of --out>)"),
    )
    epochs: int = field(default=130, metadata=doc("passes over the training set"))
    batch_size: int = field(
        default=128,
        metadata=doc(
            "images per optimiser step: the global batch, split evenly over the processes of a torchrun launch"
        ),
    )
    lr: float = field(default=2e-3, metadata=doc("peak AdamW learning rate (for the global batch)"))
    schedule: Literal["cosine", "constant"] = field(
        default="cosine", metadata=doc("learning-rate schedule: short warm-up then cosine decay to lr/20, or constant")
    )
    weight_decay: float = field(default=1e-4, metadata=doc("AdamW weight decay"))
    ema: float = field(
        default=0.999,
        metadata=doc("decay of the moving average of the weights that validation and export use (0: no averaging)"),
    )
    kl_warmup_epochs: float = field(
        default=5.0, metadata=doc("raise the KL weight linearly from 0 to 1 over this many epochs (0: no warm-up)")
    )
    label_weight: float = field(
        default=1.0,
        metadata=doc(
            "weight of the label-discrimination term: the cross-entropy of the true label under /encode's rule "
            "(softmax over labels of -ELBO); it also makes the decoder lean on the label for the digit (0 disables)"
        ),
    )
    label_batch: int = field(
        default=32,
        metadata=doc("images of each global batch that the label-discrimination term scores under every label"),
    )
    adversary_weight: float = field(
        default=1.0,
        metadata=doc(
            "weight of the label-invariance term: the encoder is trained so that an adversary cannot tell the digit "
            "from z, so that one latent writes every digit in one hand (a grid column, a re-drawn upload; 0 disables)"
        ),
    )
    val_size: int = field(
        default=1000, metadata=doc("held-out digits cut from the training files when the folder has no t10k files")
    )
    seed: int = field(
        default=0, metadata=doc("seed of initialisation, batching, the reparameterisation noise and the held-out split")
    )
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=doc("'auto' takes CUDA when present"))
    amp: Literal["auto", "bf16", "fp16", "off"] = field(
        default="auto",
        metadata=doc(
            "the CVAE's forward pass in mixed precision on CUDA: 'auto' takes bf16 where the GPU has it natively "
            "(compute capability 8.0+), else fp16 with a gradient scaler; on the CPU, off (float32)"
        ),
    )
    threads: int = field(default=0, metadata=doc("torch CPU threads per process (0: torch's default)"))
    resume: bool = field(default=False, metadata=doc("continue from the epoch checkpoint in --run-dir"))
    prior: Literal["aggregate_posterior", "class_gaussian", "standard"] = field(
        default="aggregate_posterior",
        metadata=doc(
            "the prior the exported model samples from: each class's aggregate posterior (a mixture of the "
            "posteriors of --prior-components training images), a Gaussian moment-matched to it, or N(0, I)"
        ),
    )
    prior_components: int = field(
        default=600,
        metadata=doc("training images per class in the aggregate-posterior prior (at most the smallest class's count)"),
    )
    prior_bandwidth: float = field(
        default=0.4,
        metadata=doc(
            "standard deviation of the kernel each of those posteriors is widened by: narrower gives more samples "
            "of the right digit, wider a better held-out likelihood (docs/quality.md)"
        ),
    )
    sample_temperature: float = field(
        default=0.8,
        metadata=doc(
            "the temperature the service samples at by default (recorded in the manifest; evaluation samples at it): "
            "it scales each sample's distance from the mean style (docs/quality.md)"
        ),
    )
    tone_curves: bool = field(
        default=False,
        metadata=doc(
            "match the grey levels the model draws, class by class, to the training images' (a monotone curve per "
            "class, fitted on training images and the model's own samples at --sample-temperature): sharper "
            "drawings, nearer real ones in the judge's features (docs/quality.md)"
        ),
    )
    eval_k: int = field(default=100, metadata=doc("importance samples for the NLL bound computed at export"))
    latent_dim: int = field(default=16, metadata=doc("size of the latent z"))
    encoder: Literal["mlp", "conv"] = field(default="conv", metadata=doc("encoder architecture"))
    hidden: tuple[int, ...] = field(
        default=(512, 512),
        metadata=doc(
            "hidden MLP widths of the decoder (mirrored), and of the encoder unless --encoder-hidden is given"
        ),
    )
    encoder_hidden: tuple[int, ...] | None = field(
        default=(256,), metadata=doc("the encoder's hidden MLP widths (none: --hidden)")
    )
    channels: tuple[int, int] = field(default=(16, 32), metadata=doc("the conv encoder's channels at 14x14 and 7x7"))
    progress: bool = field(default=True, metadata=doc("show a progress bar (needs tqdm, the [train] extra)"))
    evaluate: bool = field(
        default=True,
        metadata=doc(
            "run the full evaluation at export (judge classifier, sample accuracy, Frechet distance, one hand across "
            "digits, /encode accuracy, with the reader and on digits that are not MNIST's); without it, "
            "likelihoods only"
        ),
    )

    reader: bool = field(
        default=True,
        metadata=doc(
            "train the reader /encode reads with (--no-reader: the model reads by its generative rule, as the "
            "classic baseline does)"
        ),
    )
    reader_epochs: int | None = field(
        default=None,
        metadata=doc(f"passes over fresh varied digits of each varied CNN of the reader's teacher "
                     f"(none: {READER_EPOCHS['varied']}, at most --epochs)"),
    )  # fmt: skip
    reader_plain_epochs: int | None = field(
        default=None,
        metadata=doc(f"passes of the teacher's plain CNN (none: {READER_EPOCHS['plain']}, at most --epochs)"),
    )
    reader_distil_epochs: int | None = field(
        default=None,
        metadata=doc(
            f"passes distilling the teacher into the reader's one CNN (none: {READER_EPOCHS['distilled']}, "
            "at most --epochs)"
        ),
    )
    reader_threads: int = field(default=0, metadata=doc("torch CPU threads for the reader's steps (0: --threads)"))
    outside_count: int = field(
        default=300,
        metadata=doc("uploads of each kind of digit that is not MNIST's that /encode is measured on (0: none)"),
    )

    def reader_epochs_of(self) -> dict[str, int]:
        """The reader's passes: each its own option, else its default capped at --epochs (a smoke run's one epoch
        makes the whole model, reader included, in one epoch of each)."""
        chosen = {
            "varied": self.reader_epochs,
            "plain": self.reader_plain_epochs,
            "distilled": self.reader_distil_epochs,
        }
        return {k: v if v is not None else min(READER_EPOCHS[k], self.epochs) for k, v in chosen.items()}

    def model_config(self) -> CVAEConfig:
        return CVAEConfig(
            latent_dim=self.latent_dim,
            encoder=self.encoder,
            hidden=self.hidden,
            encoder_hidden=self.encoder_hidden,
            channels=self.channels,
        )

    @property
    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        return FASHION_MNIST_DIR if self.dataset == "fashion-mnist" else Path("data/mnist")

    @property
    def kind(self) -> Kind:
        """What the dataset's images are (its classes, the preprocessing its uploads get)."""
        return KINDS[self.dataset]

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.out.name

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def build_parser(cls: type = TrainConfig, prog: str = "python -m training") -> argparse.ArgumentParser:
    """One flag per field of `cls`: --field-name, typed by the annotation, its help from the field's metadata."""
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        if get_origin(tp) in (typing.Union, types.UnionType):  # X | None: parse X, default None
            tp = next(a for a in get_args(tp) if a is not type(None))
        default = f.default if f.default is not None else "none"
        # argparse %-formats help texts: a literal % must be doubled.
        help_ = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif get_origin(tp) is Literal:
            parser.add_argument(flag, choices=get_args(tp), default=f.default, help=help_)
        elif get_origin(tp) is tuple:
            parser.add_argument(flag, type=int, nargs="+", default=f.default, help=help_)
        else:
            parser.add_argument(flag, type=tp, default=f.default, help=help_)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    try:
        cfg = TrainConfig(**args)
        cfg.model_config()
    except ValueError as e:
        parser.error(str(e))
    for name in (
        "epochs",
        "batch_size",
        "val_size",
        "eval_k",
        "prior_components",
        *(f"reader_{k}epochs" for k in ("", "plain_", "distil_")),
    ):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.outside_count < 0:
        parser.error(f"--outside-count must be >= 0, got {cfg.outside_count}")
    if cfg.lr <= 0:
        parser.error(f"--lr must be positive, got {cfg.lr}")
    if not is_temperature(cfg.sample_temperature):
        parser.error(f"--sample-temperature must be in [0, {MAX_TEMPERATURE:g}], got {cfg.sample_temperature}")
    return cfg
