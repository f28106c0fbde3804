"""Training on several processes (torchrun, DistributedDataParallel with gloo on CPU): the launch is detected,
bad launches are refused with a line naming the fix, and two processes train exactly the model one would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from model.artifacts import load_model_dir
from tests.training.test_train import FIXTURE, ROOT, small_config
from training.cvae import distributed
from training.cvae.checkpoint import CHECKPOINT, load_checkpoint
from training.cvae.distributed import Launch, LaunchError
from training.cvae.train import Batches, new_state, train_one_epoch
from training.data import load_data_dir

TORCHRUN_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
# Two processes take the rows of a global batch in turns and average their gradients: the same sums as one
# process, in another order. float32 rounding then drifts a little from step to step.
LOSS_TOLERANCE = 1e-3  # relative, per epoch's mean training -ELBO, after 2 epochs


def test_without_torchrun_training_is_one_process() -> None:
    launch = distributed.detect({"PATH": "/usr/bin"}, "cpu")
    assert launch == Launch() and not launch.distributed and launch.is_main


def test_a_torchrun_launch_uses_gloo_on_cpu_and_nccl_on_cuda() -> None:
    assert distributed.detect(TORCHRUN_ENV, "cpu") == Launch(0, 0, 2, "gloo")
    assert distributed.detect({**TORCHRUN_ENV, "RANK": "1", "LOCAL_RANK": "1"}, "cuda") == Launch(1, 1, 2, "nccl")


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT", "RANK"])
def test_half_a_launch_without_a_rendezvous_is_refused_naming_torchrun(missing: str) -> None:
    env = {k: v for k, v in TORCHRUN_ENV.items() if k != missing}
    with pytest.raises(LaunchError, match=f"not {missing}.*torchrun") as e:
        distributed.detect(env, "cpu")
    assert e.value.code == 2 and "\n" not in str(e.value)


def test_a_world_size_the_batches_cannot_be_split_over_is_refused() -> None:
    three = Launch(0, 0, 3, "gloo")
    with pytest.raises(LaunchError, match=r"--batch-size 128 .* multiple of 3"):
        distributed.check_batches(three, batch_size=128, label_batch=33, train_size=1000)
    with pytest.raises(LaunchError, match=r"--label-batch 32 .* multiple of 3"):
        distributed.check_batches(three, batch_size=129, label_batch=32, train_size=1000)
    with pytest.raises(LaunchError, match="last batch of each epoch has 1 images"):
        distributed.check_batches(three, batch_size=129, label_batch=33, train_size=1 + 129 * 7)
    distributed.check_batches(three, batch_size=129, label_batch=33, train_size=1000)
    distributed.check_batches(Launch(), batch_size=7, label_batch=3, train_size=1000)


def test_the_shares_of_a_batch_are_disjoint_and_make_the_whole_batch() -> None:
    rows = torch.arange(10)
    shares = [Launch(r, r, 3, "gloo").share(rows) for r in range(3)]
    assert sorted(torch.cat(shares).tolist()) == list(range(10))
    # the first k rows of the batch (the label term's) are each process's first share_count(k) rows
    firsts = [s[: Launch(r, r, 3, "gloo").share_count(4)] for r, s in enumerate(shares)]
    assert sorted(torch.cat(firsts).tolist()) == [0, 1, 2, 3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_rank(rank: int, world: int, port: int, tmp: str) -> None:
    """One process of a two-process run of the real training step: two epochs, then its parameters to a file."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    launch = Launch(rank, rank, world, "gloo")
    distributed.init(launch, torch.device("cpu"))
    try:
        losses, params = _two_epochs(Path(tmp), launch)
        torch.save({"losses": losses, "params": params}, Path(tmp) / f"rank{rank}.pt")
    finally:
        distributed.shutdown(launch)


def _two_epochs(tmp: Path, launch: Launch) -> tuple[list[float], dict[str, torch.Tensor]]:
    """-> each epoch's training -ELBO, and every trained parameter (the adversary's too)."""
    cfg = small_config(tmp, batch_size=100, label_batch=20)
    device = torch.device("cpu")
    train = Batches.from_digits(load_data_dir(FIXTURE, val_size=cfg.val_size, seed=cfg.seed).train, device)
    state = new_state(cfg, device, launch)  # wrapped in DistributedDataParallel once, for both epochs
    losses = [train_one_epoch(state, train, cfg, epoch, device, launch)["train_nelbo"] for epoch in range(2)]
    params = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    assert state.adversary is not None
    params.update({f"adversary.{k}": v.detach().clone() for k, v in state.adversary.net.state_dict().items()})
    return losses, params


@pytest.mark.slow
def test_two_processes_keep_every_parameter_identical_and_train_what_one_process_trains(tmp_path: Path) -> None:
    mp.spawn(_train_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name  # bit for bit on every process
    assert ranks[0]["losses"] == ranks[1]["losses"]  # each epoch's loss is over both processes' images

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran; put back after, so no later test inherits it
    try:
        single_losses, single_params = _two_epochs(tmp_path, Launch())
    finally:
        torch.set_num_threads(threads)
    for two, one in zip(ranks[0]["losses"], single_losses, strict=True):
        assert abs(two - one) <= LOSS_TOLERANCE * abs(one), (ranks[0]["losses"], single_losses)
    for name, value in single_params.items():
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=1e-2, atol=1e-3, msg=name)


def _torchrun(tmp: Path, out: str, *extra: str, epochs: int = 3) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args += [
        "-m",
        "training",
        "--data-dir",
        str(FIXTURE),
        "--out",
        str(tmp / out),
        "--run-dir",
        str(tmp / f"{out}-run"),
    ]
    args += ["--epochs", str(epochs), "--batch-size", "100", "--label-batch", "20", "--val-size", "200"]
    args += ["--latent-dim", "4", "--hidden", "64", "--channels", "8", "16", "--eval-k", "4"]
    args += ["--prior-components", "16", "--no-evaluate", "--no-progress", "--device", "cpu", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_torchrun_trains_once_exports_once_and_records_the_world(tmp_path: Path) -> None:
    proc = _torchrun(tmp_path, "model", epochs=2)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    manifest = load_model_dir(tmp_path / "model").manifest
    assert manifest["config"]["distributed"] == {
        "world_size": 2, "backend": "gloo", "global_batch": 100, "per_process_batch": 50, "lr": 0.002
    }  # fmt: skip
    assert output.count("published cvae-") == 1  # rank 0 alone exports (and publishes)
    assert len((tmp_path / "model-run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model-run"]  # nothing half-written


@pytest.mark.slow
def test_a_killed_rank_leaves_a_checkpoint_that_resumes_to_the_uninterrupted_model(tmp_path: Path) -> None:
    straight = _torchrun(tmp_path, "straight")
    output, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, output

    killed = _torchrun(tmp_path, "killed")
    checkpoint = tmp_path / "killed-run" / CHECKPOINT
    deadline = time.monotonic() + 300
    while not checkpoint.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_file(), "no checkpoint after the first epoch"
    # torchrun's workers, its children (from /proc: no pgrep needed)
    workers = Path(f"/proc/{killed.pid}/task/{killed.pid}/children").read_text().split()
    os.kill(int(workers[-1]), signal.SIGKILL)
    output, _ = killed.communicate(timeout=120)  # torchrun stops the other process too: nothing hangs
    assert killed.returncode != 0
    assert not (tmp_path / "killed").exists()
    _, payload = load_checkpoint(checkpoint)
    assert payload["meta"]["world_size"] == 2 and payload["meta"]["epochs_done"] >= 1

    resumed = _torchrun(tmp_path, "killed", "--resume")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    a, _ = load_checkpoint(tmp_path / "straight-run" / CHECKPOINT)
    b, _ = load_checkpoint(checkpoint)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


@pytest.mark.slow
def test_resuming_with_another_world_size_is_refused_in_one_line(tmp_path: Path) -> None:
    proc = _torchrun(tmp_path, "model", epochs=1)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    args = [sys.executable, "-m", "training", "--data-dir", str(FIXTURE), "--out", str(tmp_path / "model")]
    args += ["--run-dir", str(tmp_path / "model-run"), "--epochs", "2", "--batch-size", "100", "--label-batch", "20"]
    args += ["--val-size", "200", "--latent-dim", "4", "--hidden", "64", "--channels", "8", "16", "--resume"]
    one = subprocess.run([*args, "--no-progress", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert one.returncode == 1
    assert "written by 2 process(es), this run has 1" in one.stderr and "Traceback" not in one.stderr
    assert json.loads((tmp_path / "model-run" / "run.json").read_text())["distributed"]["world_size"] == 2
