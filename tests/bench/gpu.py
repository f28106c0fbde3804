"""One go on a GPU machine: the CUDA epoch beside the CPU's, NCCL across the GPUs, and whether serving would pay there.

    python -m tests.bench.gpu [--data-dir data/mnist] [--cpu-threads 0] [--out gpu-check.json]

Prints, and writes as JSON to --out:
1. the CUDA build, the GPUs, whether they compute bf16 natively and the precision --amp auto takes;
2. one epoch of the default configuration over 60,000 images (full MNIST from --data-dir, else the fixture's
   1,000 digits repeated: the speed of a step does not depend on which digits it sees), after a warm-up epoch over
   2,000, on CUDA and then on the CPU: seconds and images/s;
3. `torchrun --nproc_per_node gpu` running the one command on the fixture (NCCL, one process per GPU): its world
   size and backend as run.json records them;
4. serving: the shipped model's /generate work (prior sample + decoder) and /encode's (encoder under every label +
   reader) at batches of 1, 16 and 256, median latency on the GPU (transfers included) against the CPU with the
   service's one thread, and a decision from those figures.
Needs a CUDA device; refuses in one line without one. Lives in tests/bench (beside train_speed and train_ddp) because
it measures; the gpu-marked tests (tests/training/test_gpu.py) check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "mnist-1000"
SHIPPED = ROOT / "artifacts" / "default"
IMAGES = 60_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch(data_dir: Path | None, device: torch.device) -> dict[str, Any]:
    """One timed epoch of the default configuration over 60,000 images on `device`, after a warm-up epoch."""
    from training.config import TrainConfig
    from training.cvae.train import Batches, new_state, train_one_epoch
    from training.data import Digits, load_data_dir

    digits = load_data_dir(data_dir or FIXTURE, val_size=1000 if data_dir else 100, seed=0).train
    repeat = -(-IMAGES // len(digits.images))
    images, labels = digits.images.repeat(repeat, 1, 1)[:IMAGES], digits.labels.repeat(repeat)[:IMAGES]
    cfg = TrainConfig(out=Path(tempfile.gettempdir()) / "gpu-check", progress=False, epochs=2)
    state = new_state(cfg, device)
    warm = Batches.from_digits(Digits(images[:2000], labels[:2000]), device)
    train_one_epoch(state, warm, cfg, 0, device)
    data = Batches.from_digits(Digits(images, labels), device)
    _sync(device)
    t0 = time.perf_counter()
    train_one_epoch(state, data, cfg, 1, device)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"device": str(device), "amp": state.amp, "seconds": seconds, "images_per_s": IMAGES / seconds}


def nccl_world() -> dict[str, Any]:
    """The one command under torchrun on every GPU (tiny model, the fixture): its world as run.json records it."""
    n = torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "gpu"]
        args += ["-m", "training", "--data-dir", str(FIXTURE), "--out", f"{tmp}/model", "--run-dir", f"{tmp}/run"]
        args += ["--epochs", "1", "--batch-size", str(16 * n), "--label-batch", str(4 * n), "--val-size", "200"]
        args += ["--latent-dim", "4", "--hidden", "64", "--channels", "8", "16", "--prior-components", "16"]
        args += ["--eval-k", "4", "--no-evaluate", "--no-progress", "--device", "cuda"]
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            return {"returncode": proc.returncode, "output_tail": (proc.stdout + proc.stderr)[-3000:]}
        record = json.loads((Path(tmp) / "run" / "run.json").read_text())
    return {"returncode": 0, "gpus": n, **record["distributed"], "amp": record.get("amp")}


def _median_ms(work: Callable[[], Any], device: torch.device, reps: int = 30) -> float:
    work()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        work()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


@torch.no_grad()
def serving(cpu_threads: int, gpu: torch.device) -> dict[str, Any]:
    """The shipped model's /generate and /encode tensor work, per batch size: CPU (the service's threads) vs GPU,
    with the GPU's host-to-device and device-to-host copies included (the service gets and returns host data)."""
    from model.artifacts import load_model_dir
    from model.prior import sample_latents

    torch.set_num_threads(cpu_threads)
    out: dict[str, Any] = {"cpu_threads": cpu_threads, "batches": {}}
    devices = {"cpu": torch.device("cpu"), "cuda": gpu}
    models = {name: load_model_dir(SHIPPED, device=d) for name, d in devices.items()}
    labels = len(models["cpu"].manifest["labels"])
    for n in (1, 16, 256):
        row: dict[str, float] = {}
        for name, m in models.items():
            device = devices[name]
            x = torch.rand(n, 1, 28, 28)
            digits = [i % labels for i in range(n)]

            def generate(m: Any = m, device: torch.device = device, digits: list[int] = digits) -> Any:
                z, y = sample_latents(m.prior, digits, 1, 0, m.temperature)
                return m.decoder(z, y).cpu()

            def encode(m: Any = m, device: torch.device = device, x: torch.Tensor = x) -> Any:
                x_dev = x.to(device)
                y = torch.arange(labels, device=device).repeat_interleave(x.shape[0])
                means = m.encoder(x_dev.repeat(labels, 1, 1, 1), y)
                read = m.reader(x_dev) if m.reader is not None else None
                return means[0].cpu(), read.cpu() if read is not None else None

            row[f"generate_{name}_ms"] = _median_ms(generate, device)
            row[f"encode_{name}_ms"] = _median_ms(encode, device)
        out["batches"][n] = row
    # Pays: a single request at least 1.5x faster there (latency), or batches of 256 at least 4x (throughput under
    # load, where the service batches requests). A margin, so that noise between two close figures decides nothing.
    gain = {
        n: min(out["batches"][n][f"{op}_cpu_ms"] / out["batches"][n][f"{op}_cuda_ms"] for op in ("generate", "encode"))
        for n in (1, 256)
    }
    pays = gain[1] >= 1.5 or gain[256] >= 4
    out["gain"] = gain
    out["decision"] = (
        f"the GPU does /generate's and /encode's work {gain[1]:.1f}x as fast for one request and {gain[256]:.1f}x "
        f"for batches of 256 (the smaller of the two): serving from the GPU "
        + ("pays" if pays else "does not pay (needs 1.5x for one request or 4x for 256); keep the CPU service")
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="full MNIST (default: the fixture, repeated)")
    parser.add_argument("--cpu-threads", type=int, default=0, help="torch threads of the CPU epoch (0: default)")
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, CUDA build {torch.version.cuda}"
        raise SystemExit(f"tests.bench.gpu: no CUDA device ({build})")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's processes: the GPUs do the work
    from training.device import native_bf16, select_amp

    cuda = torch.device("cuda")
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "native_bf16": native_bf16(cuda),
        "amp_auto": select_amp("auto", cuda),
    }
    print(json.dumps(report), flush=True)
    report["epoch_cuda"] = epoch(args.data_dir, cuda)
    print("epoch on CUDA:", json.dumps(report["epoch_cuda"]), flush=True)
    if args.cpu_threads > 0:
        torch.set_num_threads(args.cpu_threads)
    report["epoch_cpu"] = epoch(args.data_dir, torch.device("cpu"))
    print("epoch on CPU: ", json.dumps(report["epoch_cpu"]), flush=True)
    report["cuda_speedup"] = report["epoch_cuda"]["images_per_s"] / report["epoch_cpu"]["images_per_s"]
    report["nccl"] = nccl_world()
    print("torchrun:", json.dumps(report["nccl"]), flush=True)
    report["serving"] = serving(cpu_threads=1, gpu=cuda)
    print("serving:", json.dumps(report["serving"]), flush=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"CUDA epoch {report['epoch_cuda']['seconds']:.1f} s ({report['epoch_cuda']['images_per_s']:.0f} img/s), "
          f"CPU {report['epoch_cpu']['seconds']:.1f} s ({report['epoch_cpu']['images_per_s']:.0f} img/s), "
          f"{report['cuda_speedup']:.1f}x; NCCL world size {report['nccl'].get('world_size')}; "
          f"{report['serving']['decision']}; all in {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
