"""Training configuration: one frozen dataclass, parsed once from the command line in training/__main__.py."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from model.network import CVAEConfig
from model.prior import MAX_TEMPERATURE, is_temperature


@dataclass(frozen=True)
class TrainConfig:
    """Options of `python -m training`; each field's docstring is its --help text."""

    out: Path = Path("runs/model")
    """model directory to export into (replaced atomically at the end)"""
    data_dir: Path = Path("data/mnist")
    """folder of MNIST IDX files (train-*, optionally t10k-* as the held-out set)"""
    dataset: Literal["folder", "mnist"] = "folder"
    """'folder': read --data-dir as it is; 'mnist': first download the official MNIST files into --data-dir"""
    run_dir: Path | None = None
    """where checkpoints, sample grids and the run record go (default: runs/<name of --out>)"""
    epochs: int = 60
    """passes over the training set"""
    batch_size: int = 128
    """images per optimiser step"""
    lr: float = 2e-3
    """peak AdamW learning rate"""
    schedule: Literal["cosine", "constant"] = "cosine"
    """learning-rate schedule: short warm-up then cosine decay to lr/20, or constant"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    ema: float = 0.999
    """decay of the exponential moving average of the weights that validation and export use (0: no averaging)"""
    kl_warmup_epochs: float = 5.0
    """linearly raise the KL weight from 0 to 1 over this many epochs (0: no warm-up)"""
    free_bits: float = 0.0
    """minimum KL per latent dimension in nats during training (Kingma et al. 2016); 0 disables"""
    label_weight: float = 1.0
    """weight of the label-discrimination term: cross-entropy of the true label under softmax over labels of -ELBO
    (the rule /encode infers digits by); it also makes the decoder lean on the label for the digit (0 disables)"""
    label_batch: int = 32
    """images per step that the label-discrimination term scores under every label"""
    augment: float = 0.0
    """strength of random affine augmentation (1: up to +-2 px shift, +-10 degrees, +-10% scale; 0: none; measured
    here: it worsens held-out -ELBO and the realism of samples)"""
    val_size: int = 1000
    """held-out digits cut from the training files when the folder has no t10k files"""
    seed: int = 0
    """seed for initialisation, batching, augmentation and the validation split"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' takes CUDA when present"""
    threads: int = 0
    """torch CPU threads (0: torch's default)"""
    resume: bool = False
    """continue from the checkpoint in --run-dir"""
    prior: Literal["aggregate_posterior", "class_gaussian", "standard"] = "aggregate_posterior"
    """the prior the exported model samples from: each class's aggregate posterior (a mixture of the posteriors of
    --prior-components training images), a Gaussian moment-matched to it, or N(0, I)"""
    prior_components: int = 600
    """training images per class whose posteriors make up the aggregate-posterior prior (at most the smallest
    class's count)"""
    prior_bandwidth: float = 0.4
    """standard deviation of the kernel each of those posteriors is widened by; a trade-off measured on the default
    model at temperature 1: 0.2 gives 99.1% of samples right but held-out -ELBO 106.4, 0.4 gives 98.4% and 99.4 nats"""
    sample_temperature: float = 0.8
    """the temperature the service samples at by default (recorded in the manifest; evaluation measures samples at
    it): each sample's distance from its class's mean style is scaled by it. On the default model 0.8 gives 99.4% of
    samples right where 1 gives 98.4%, at the same Frechet distance to real digits (likelihoods do not depend on it)"""
    eval_k: int = 100
    """importance samples for the NLL bound computed at export"""
    latent_dim: int = 16
    """size of the latent z"""
    encoder: Literal["mlp", "conv"] = "conv"
    """encoder architecture"""
    decoder: Literal["mlp", "conv"] = "mlp"
    """decoder architecture"""
    hidden: tuple[int, ...] = (512, 512)
    """hidden MLP widths (the decoder's, and the encoder's unless --encoder-hidden is given)"""
    encoder_hidden: tuple[int, ...] | None = (256,)
    """the encoder's hidden MLP widths (default: --hidden)"""
    channels: tuple[int, int] = (16, 32)
    """conv channels at 14x14 and 7x7"""
    dropout: float = 0.0
    """dropout after each hidden MLP layer while training"""
    progress: bool = True
    """show a progress bar"""
    evaluate: bool = True
    """run the full evaluation (judge classifier, sample accuracy, Frechet distance, /encode accuracy) at export"""

    def model_config(self) -> CVAEConfig:
        return CVAEConfig(
            latent_dim=self.latent_dim,
            encoder=self.encoder,
            decoder=self.decoder,
            hidden=self.hidden,
            encoder_hidden=self.encoder_hidden,
            channels=self.channels,
            dropout=self.dropout,
        )

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.out.name

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def _field_docs(cls: type) -> dict[str, str]:
    """The string literal after each field in the class body (the attribute docstring)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)  # type: ignore[union-attr]
    return docs


def build_parser(cls: type = TrainConfig, prog: str = "python -m training") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=cls.__doc__)
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        if get_origin(tp) in (typing.Union, types.UnionType):  # X | None: parse X, default None
            tp = next(a for a in get_args(tp) if a is not type(None))
        help_ = f"{docs.get(f.name, '')} (default: {f.default})"
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
    for name in ("epochs", "batch_size", "val_size", "eval_k", "prior_components"):
        if getattr(cfg, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        parser.error(f"--lr must be positive, got {cfg.lr}")
    if not is_temperature(cfg.sample_temperature):
        parser.error(f"--sample-temperature must be in [0, {MAX_TEMPERATURE:g}], got {cfg.sample_temperature}")
    return cfg
