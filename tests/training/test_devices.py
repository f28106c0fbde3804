"""Device mixing, caught on a CPU-only machine (issue 32): the prior's sampling and scoring with the prior on another
device than the CPU noise is drawn on; then every step of the one command, whole, on "the other device"
(tests/training/other_device.py); device and precision selection.

PyTorch's `meta` device stands in for CUDA: an op mixing a meta tensor with a CPU tensor that is not a 0-dim scalar
raises the same "expected all tensors on the same device" a CUDA/CPU mix raises, on any machine. Meta tensors carry
no values, so only steps that never read values can run on it; these do. (What crashed every CUDA run at its end: the
final sample grid multiplied the prior's CUDA tensors by CPU noise.)"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from model.network import CVAE, ReaderConfig
from model.prior import AggregatePosteriorPrior, GaussianPrior, Prior, sample_latents, sample_latents_many
from tests.training.other_device import OTHER, OtherDevice
from tests.training.test_one_command import OPTIONS as ONE_COMMAND
from tests.training.test_train import FIXTURE, small_config
from training import steps
from training.config import TrainConfig, parse_config
from training.cvae import distributed
from training.cvae import train as train_module
from training.cvae.checkpoint import CHECKPOINT, resume, save_state
from training.cvae.distributed import SINGLE_PROCESS
from training.cvae.prior import fit_prior, sample_grid_png
from training.cvae.train import Batches, new_state, train_one_epoch, validate
from training.data import DataSplits, load_data_dir
from training.device import select_amp, select_device
from training.reader.train import distil, train_reader

META = torch.device("meta")
CPU = torch.device("cpu")


def priors() -> list[Prior]:
    g = torch.Generator().manual_seed(0)
    means, log_vars = torch.randn(60, 4, generator=g), torch.randn(60, 4, generator=g) * 0.1 - 1
    labels = torch.arange(60) % 3
    return [
        GaussianPrior.standard(3, 4),
        GaussianPrior.fit_aggregate_posterior(means, log_vars, labels, 3),
        AggregatePosteriorPrior.fit(means, log_vars, labels, 3, 5, bandwidth=0.4, seed=0),
    ]


@pytest.mark.parametrize("prior", priors(), ids=lambda p: type(p).__name__ + "-" + getattr(p, "kind", ""))
def test_sampling_a_prior_on_another_device_draws_its_noise_on_the_cpu_and_moves_it(prior: Prior) -> None:
    on_meta = prior.to(META)
    z, y = sample_latents(on_meta, [0, 1, 2], 4, seed=0, temperature=0.8)  # the grid: one row per digit
    assert z.device == META and y.device == META and z.shape == (12, 4)
    (z1, _), (z2, _) = sample_latents_many(on_meta, [([1], 3, 0, 1.0), ([0, 2], 2, 1, 0.5)])
    assert z1.device == META and z2.device == META


@pytest.mark.parametrize("prior", priors(), ids=lambda p: type(p).__name__ + "-" + getattr(p, "kind", ""))
def test_scoring_every_label_on_another_device_builds_its_labels_there(prior: Prior) -> None:
    mean, log_var = torch.zeros(2, 3, 4, device=META), torch.zeros(2, 3, 4, device=META)
    assert prior.to(META).kl_each_label(mean, log_var).shape == (2, 3)


# ---- Whole steps on "the other device" (tests/training/other_device.py): real numbers on the CPU, a mix caught ----


def test_the_other_device_fails_where_a_cuda_cpu_mix_fails() -> None:
    with OtherDevice():
        there, here = torch.ones(3, device=OTHER), torch.ones(3)
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            there + here
        with pytest.raises(RuntimeError, match="device type for generator"):
            torch.randn(3, generator=torch.Generator(), device=OTHER)
        with pytest.raises(TypeError, match="numpy"):
            there.numpy()
        assert (there * torch.tensor(2.0)).device == OTHER  # a 0-dim CPU tensor is a scalar, as on CUDA
        assert there.cpu().device.type == "cpu" and (there.cpu() + here).sum().item() == 6
        with pytest.raises(RuntimeError, match="same device"):
            torch.nn.Linear(3, 1).to(OTHER)(here)


def _data(cfg: TrainConfig) -> DataSplits:
    return load_data_dir(cfg.resolved_data_dir, val_size=cfg.val_size, seed=cfg.seed)


def test_training_and_resuming_on_another_device_mix_nothing_and_give_the_cpu_numbers(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, batch_size=100, label_batch=20, epochs=2)
    cfg.resolved_run_dir.mkdir(parents=True)
    data = _data(cfg)
    cpu_state = new_state(cfg, CPU)
    cpu = [train_one_epoch(cpu_state, Batches.from_digits(data.train, CPU), cfg, e, CPU) for e in range(2)]
    with OtherDevice() as other:
        train = Batches.from_digits(data.train, OTHER)
        state = new_state(cfg, OTHER)
        first = train_one_epoch(state, train, cfg, 0, OTHER)
        save_state(tmp_path / CHECKPOINT, state, cfg, SINGLE_PROCESS, 1, [first])
        resumed = new_state(cfg, OTHER)
        assert resume(resumed, tmp_path / CHECKPOINT, SINGLE_PROCESS, OTHER) == (1, [first])
        second = train_one_epoch(resumed, train, cfg, 1, OTHER)
        validate(resumed.final, Batches.from_digits(data.val, OTHER))
        assert all(other.on(p) for p in [*resumed.model.parameters(), *resumed.ema.parameters()])  # type: ignore[union-attr]
    assert other.ops > 1000
    assert [first, second] == cpu  # the same numbers: noise and order drawn on the CPU generator


def test_the_prior_and_the_final_grid_of_a_model_on_another_device_mix_nothing(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    data = _data(cfg)
    torch.manual_seed(0)
    model = CVAE(cfg.model_config()).eval()
    for kind in ("aggregate_posterior", "class_gaussian", "standard"):
        kind_cfg = dataclasses.replace(cfg, prior=kind)
        expected = sample_grid_png(model, fit_prior(model, Batches.from_digits(data.train, CPU), kind_cfg))
        with OtherDevice():
            on_other = copy.deepcopy(model).to(OTHER)
            prior = fit_prior(on_other, Batches.from_digits(data.train, OTHER), kind_cfg)
            assert sample_grid_png(on_other, prior.to(OTHER), temperature=0.8) != b""
            assert sample_grid_png(on_other, prior.to(OTHER)) == expected


def test_the_reader_trains_on_the_device_it_is_given_and_comes_back_on_the_cpu() -> None:
    data = load_data_dir(FIXTURE, val_size=200, seed=0)
    images, labels = data.train.images[:200], data.train.labels[:200]
    cfg = ReaderConfig(num_classes=10, members=2)
    with OtherDevice() as other:
        teacher = train_reader(images, labels, cfg, ("varied", "plain"), epochs=1, plain_epochs=1, seed=0, device=OTHER)
        seen = other.ops
        student = distil(teacher, images, labels, cfg, epochs=1, seed=2, device=OTHER)
        assert not any(other.on(p) for p in [*teacher.parameters(), *student.parameters()])
    assert seen > 100 and other.ops > seen  # both trained there


@pytest.mark.slow
def test_the_one_command_on_another_device_mixes_nothing_from_the_first_step_to_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step: the CVAE's epochs, export (prior, final grid, evaluation with the judge), the reader's teacher and
    student, /encode's figures, the programs, publishing."""
    monkeypatch.setattr(steps, "select_device", lambda name: OTHER)
    options = [o if o != "cpu" else "auto" for o in ONE_COMMAND]
    cfg = parse_config([*options, "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")])
    with OtherDevice() as other:
        manifest = steps.main(cfg, [])
    assert manifest is not None and other.ops > 1000
    assert json.loads((tmp_path / "run" / "run.json").read_text())["device"] == "meta"
    assert "sample_accuracy" in manifest["metrics"]  # the full evaluation ran


# ---- Device and precision selection ----


def test_device_auto_takes_the_cpu_without_cuda_and_cuda_without_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == CPU
    with pytest.raises(SystemExit, match="no CUDA device"):
        select_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")


def test_more_processes_than_gpus_are_refused_naming_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    launch = distributed.detect(
        {"RANK": "2", "LOCAL_RANK": "2", "WORLD_SIZE": "3", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "cuda"
    )
    assert launch.backend == "nccl"
    with pytest.raises(distributed.LaunchError, match="--nproc_per_node must be at most 2"):
        distributed.device_of(launch, torch.device("cuda"))
    assert distributed.device_of(dataclasses.replace(launch, local_rank=1), torch.device("cuda")) == torch.device(
        "cuda", 1
    )


@pytest.mark.parametrize(
    ("native", "asked", "chosen"),
    [(True, "auto", "bf16"), (False, "auto", "fp16"), (True, "fp16", "fp16"), (False, "off", "off")],
)
def test_amp_takes_bf16_only_where_the_gpu_has_it_natively(
    monkeypatch: pytest.MonkeyPatch, native: bool, asked: str, chosen: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    assert select_amp(asked, torch.device("cuda")) == chosen


def test_amp_bf16_without_native_support_and_any_amp_on_the_cpu_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(SystemExit, match="Tesla V100 has no native bf16"):
        select_amp("bf16", torch.device("cuda"))
    assert select_amp("auto", CPU) == "off"
    for asked in ("bf16", "fp16"):
        with pytest.raises(SystemExit, match="on the CPU use --amp off"):
            select_amp(asked, CPU)


def test_an_fp16_step_scales_its_loss_and_trains(tmp_path: Path) -> None:
    """The fp16 path (autocast and the GradScaler) as CUDA runs it, here on the CPU's fp16 autocast."""
    cfg = small_config(tmp_path, batch_size=100, label_batch=20)
    train = Batches.from_digits(_data(cfg).train, CPU)
    state = dataclasses.replace(new_state(cfg, CPU), amp="fp16", scaler=torch.amp.GradScaler("cpu"))
    before = [p.detach().clone() for p in state.model.parameters()]
    stats = train_one_epoch(state, train, cfg, 0, CPU)
    assert math.isfinite(stats["train_nelbo"]) and state.scaler is not None and state.scaler.get_scale() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))


def test_distributed_data_parallel_is_wrapped_once_per_run_not_per_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = small_config(tmp_path, batch_size=100, label_batch=20)
    train = Batches.from_digits(_data(cfg).train, CPU)
    state = new_state(cfg, CPU)
    objective = state.objective

    def wrapped_again(*args: object) -> None:
        raise AssertionError("an epoch wrapped a module again")

    monkeypatch.setattr(train_module, "_ddp", wrapped_again)
    train_one_epoch(state, train, cfg, 0, CPU)
    assert state.objective is objective
