"""Training on 1 process against W processes (torchrun, DistributedDataParallel over gloo on the CPU), in one run.

    python -m tests.bench.train_ddp --data-dir ../shared/data/mnist-8500 [--processes 2] [--epochs 5] [--rounds 1]

Each contender is the real CLI (`torchrun --standalone --nproc_per_node N -m training ... --no-evaluate
--no-reader`: the CVAE's training and its export, not the reader's), one torch thread per process, the default model
and global batch; the order alternates every round, so a noisy machine slows both alike. Prints, per contender, the
training images per second (median over epochs after the first), each epoch's validation -ELBO, and the time until
the validation -ELBO first reached the worse of the two final values (the same model quality, reached by both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(processes: int, data_dir: Path, epochs: int, work: Path) -> list[dict[str, float]]:
    out = work / f"n{processes}"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    args += ["-m", "training", "--data-dir", str(data_dir), "--out", str(out / "model"), "--run-dir", str(out / "run")]
    args += ["--epochs", str(epochs), "--threads", "1", "--no-evaluate", "--no-reader", "--no-progress"]
    args += ["--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.train_ddp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of MNIST IDX files")
    parser.add_argument("--processes", type=int, default=2, help="the processes to compare with one (default 2)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each contender (default 1)")
    args = parser.parse_args(argv)
    if args.processes < 2 or args.epochs < 2 or args.rounds < 1:
        parser.error("--processes and --epochs must be at least 2, --rounds at least 1")
    histories: dict[int, list[list[dict[str, float]]]] = {1: [], args.processes: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = [1, args.processes] if r % 2 == 0 else [args.processes, 1]
            for n in order:
                histories[n].append(run(n, args.data_dir, args.epochs, Path(tmp) / f"round{r}"))
                print(f"round {r + 1}: {n} process(es) done", flush=True)
    target = max(h[-1]["val_nelbo"] for runs in histories.values() for h in runs)
    print(f"\ntarget: validation -ELBO {target:.2f} (the worse final value)")
    for n, runs in histories.items():
        rates = [e["samples_per_s"] for h in runs for e in h[1:]]
        times = []
        for h in runs:
            elapsed = 0.0
            for e in h:
                elapsed += e["seconds"]
                if e["val_nelbo"] <= target:
                    times.append(elapsed)
                    break
        curve = " ".join(f"{e['val_nelbo']:.1f}" for e in runs[0])
        print(f"{n} process(es): {statistics.median(rates):7.0f} images/s   val -ELBO by epoch {curve}   "
              f"time to target {statistics.median(times):.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
