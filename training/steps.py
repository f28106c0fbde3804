"""`python -m training`: every step that makes a model directory, in order, each named and each resumable.

    cvae      train the CVAE (epoch checkpoints in --run-dir; --resume continues from the last whole epoch)
    export    fit its sampling prior, draw the final grid, evaluate, write the model directory (TorchScript)
    teacher   train the reader's teacher, three CNNs, and fit its temperature (--no-reader: skipped)
    reader    distil the teacher into the reader's one CNN, calibrate it, add it to the model directory (--no-reader:
              skipped; /encode then reads by the generative rule)
    tone      fit each class's tone curve, add them to the model directory, measure what the model draws again
              (--tone-curves; else skipped)
    figures   measure /encode with the reader and record the figures in the manifest
    programs  add the torch.export programs of every network (the second export format)
    publish   copy the finished model directory to --out (replaced atomically)

The model directory is built in --run-dir/model; --out only ever receives a whole one. Each step that finishes is
listed in --run-dir/steps.json; `--resume` skips those and goes on from the first that did not.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.artifacts import load_model_dir
from model.manifest import MANIFEST_FILE
from model.network import Reader, ReaderConfig
from training.config import TrainConfig
from training.cvae import distributed
from training.cvae.checkpoint import CHECKPOINT, load_checkpoint, resume
from training.cvae.distributed import SINGLE_PROCESS, Launch
from training.cvae.epochs import train_epochs
from training.cvae.prior import fit_prior, sample_grid_png
from training.cvae.tone import fit_tone_curves as fit_tone
from training.cvae.train import Batches, new_state
from training.data import FASHION_MNIST_DIR, FASHION_MNIST_PACKAGE, DataError, DataSplits, download_mnist, load_data_dir
from training.device import select_device
from training.evaluation.evaluate import evaluate_model, record_figures, record_toned_figures
from training.evaluation.judge import announce_judge, default_cache_dir
from training.export import add_programs, export_model_dir, replace_dir
from training.reader.model_dir import add_reader
from training.reader.train import MEMBERS, PLAIN_MEMBERS, accuracy, distil, fit_temperature, plain, train_reader
from training.reader.variants import varied
from training.record import run_record

log = logging.getLogger(__name__)

STEPS_FILE = "steps.json"
TEACHER = "teacher.pt"
CALIBRATION_SIZE = 500  # training digits kept back to fit the reader's temperature (at most a fifth of them)


@dataclass(frozen=True)
class Run:
    """What every step reads: the options, the command line, the processes, the device and the data."""

    cfg: TrainConfig
    command: str
    launch: Launch
    device: torch.device
    data: DataSplits

    @property
    def dir(self) -> Path:
        return self.cfg.resolved_run_dir

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"


def main(cfg: TrainConfig, argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run every step not yet done. -> the published manifest (None on the processes other than rank 0 of a
    torchrun launch, which only train)."""
    requested = select_device(cfg.device)
    launch = distributed.detect(os.environ, requested.type)
    device = distributed.device_of(launch, requested)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    distributed.init(launch, device)
    try:
        command = reproduce_command(argv if argv is not None else sys.argv[1:])
        data = load_data(cfg, launch)
        distributed.check_batches(
            launch, batch_size=cfg.batch_size, label_batch=cfg.label_batch, train_size=len(data.train)
        )
        return run_steps(Run(cfg, command, launch, device, data))
    finally:
        distributed.shutdown(launch)


def load_data(cfg: TrainConfig, launch: Launch = SINGLE_PROCESS) -> DataSplits:
    """The images; with --dataset mnist, downloaded first (by one process per machine under torchrun)."""
    data_dir = cfg.resolved_data_dir
    if cfg.dataset == "mnist":
        if launch.local_rank == 0:
            download_mnist(data_dir)
        distributed.barrier(launch)
    if cfg.dataset == "fashion-mnist" and not data_dir.is_dir():
        raise DataError(
            f"Fashion-MNIST is not at {data_dir}: apt-get install {FASHION_MNIST_PACKAGE} (Debian puts it at "
            f"{FASHION_MNIST_DIR}), or give --data-dir"
        )
    return load_data_dir(data_dir, val_size=cfg.val_size, seed=cfg.seed)


def reproduce_command(argv: list[str]) -> str:
    """The command line that makes this run's model in one go: argv without --resume (a resumed run makes, step for
    step, what the run it continues would have made)."""
    return shlex.join(["python", "-m", "training", *(a for a in argv if a not in ("--resume", "--no-resume"))])


def run_steps(run: Run) -> dict[str, Any] | None:
    steps_file = run.dir / STEPS_FILE
    done: list[str] = json.loads(steps_file.read_text())["done"] if run.cfg.resume and steps_file.is_file() else []
    if "cvae" in done and _epochs_done(run.dir / CHECKPOINT) < run.cfg.epochs:
        done = []  # more epochs asked of a finished run: the cvae step resumes from its checkpoint, the rest follow
    if "cvae" not in done:
        train_cvae(run)
        distributed.barrier(run.launch)
    if not run.launch.is_main:
        return None  # rank 0 alone fits the prior, trains the reader, evaluates and exports
    if "cvae" not in done:
        done = _mark_done(steps_file, [], "cvae")
    for name, step in STEPS.items():
        if name in done:
            log.info("step %s: done before, skipped", name)
            continue
        if name in READER_STEPS and not run.cfg.reader:
            log.info("step %s: skipped (--no-reader)", name)
            continue
        if name == "tone" and not run.cfg.tone_curves:
            log.info("step tone: skipped (no --tone-curves)")
            continue
        log.info("step %s", name)
        step(run)
        done = _mark_done(steps_file, done, name)
    return json.loads((run.cfg.out / MANIFEST_FILE).read_text())


def _epochs_done(checkpoint: Path) -> int:
    """The epochs the run's checkpoint holds (0 without one)."""
    if not checkpoint.is_file():
        return 0
    _, payload = load_checkpoint(checkpoint)
    return int(payload["meta"]["epochs_done"])


def _mark_done(path: Path, done: list[str], name: str) -> list[str]:
    done = [*done, name]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"done": done}) + "\n")
    tmp.replace(path)
    return done


def train_cvae(run: Run) -> None:
    """Step cvae: the epochs, each ending in a checkpoint (rank 0); run.json written before the first."""
    cfg, launch, device = run.cfg, run.launch, run.device
    train, val = Batches.from_digits(run.data.train, device), Batches.from_digits(run.data.val, device)
    if launch.is_main:
        log.info("data: %d train, %d held-out (%s) on %s", len(train), len(val), run.data.info["val_source"], device)
        if launch.distributed:
            log.info(
                "%d processes (%s): global batch %d = %d per process; learning rate %g",
                launch.world_size, launch.backend, cfg.batch_size, cfg.batch_size // launch.world_size, cfg.lr,
            )  # fmt: skip
    state = new_state(cfg, device, launch)
    start_epoch, history = 0, list[dict[str, Any]]()
    if cfg.resume:
        start_epoch, history = resume(state, run.dir / CHECKPOINT, launch, device)
    if launch.is_main and cfg.evaluate:
        announce_judge(run.data, default_cache_dir(), cfg.seed)
    if launch.is_main:
        parameters = sum(p.numel() for p in state.model.parameters())
        record = run_record(cfg, run.command, launch, device, run.data, parameters) | {"amp": state.amp}
        (run.dir / "samples").mkdir(parents=True, exist_ok=True)
        (run.dir / STEPS_FILE).unlink(missing_ok=True)
        (run.dir / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    train_epochs(state, train, val, cfg, launch, device, start_epoch, history)


def export_cvae(run: Run) -> None:
    """Step export: the trained model (its moving average) from the last checkpoint, its sampling prior fitted on
    the training device, the final grid, the evaluation, and the model directory written (TorchScript files)."""
    cfg = run.cfg
    model, payload = load_checkpoint(run.dir / CHECKPOINT, map_location="cpu")
    if payload["ema_state_dict"] is not None:
        model.load_state_dict(payload["ema_state_dict"])
    model = model.to(run.device).eval()
    history = payload["meta"]["history"]
    prior = fit_prior(model, Batches.from_digits(run.data.train, run.device), cfg)
    (run.dir / "samples" / "final.png").write_bytes(
        sample_grid_png(model, prior.to(run.device), temperature=cfg.sample_temperature)
    )
    model = model.to("cpu")
    metrics: dict[str, Any] = {"epochs": len(history), "train_history_last": history[-1] if history else None}
    metrics.update(
        evaluate_model(
            model.encoder, model.decoder, prior, run.data, k=cfg.eval_k, seed=cfg.seed, full=cfg.evaluate,
            temperature=cfg.sample_temperature, preprocessing=cfg.kind.preprocessing,
        )
    )  # fmt: skip
    record = json.loads((run.dir / "run.json").read_text())
    config = {"model": model.cfg.to_dict(), "training": cfg.to_dict()}
    config |= {"distributed": record["distributed"], "git_commit": record["git_commit"]}
    export_model_dir(
        model, prior, run.model_dir, data=run.data.info, config=config, metrics=metrics, reproduce=run.command,
        temperature=cfg.sample_temperature, programs=False, labels=cfg.kind.classes,
        preprocessing=cfg.kind.preprocessing,
    )  # fmt: skip
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")


def _reader_data(run: Run) -> tuple[slice, slice, torch.Tensor]:
    """The training images the reader trains on, those it is calibrated on, and the latter varied (digits) or as
    /encode pre-processes them (other images)."""
    images = run.data.train.images
    kept = min(CALIBRATION_SIZE, len(images) // 5)
    fit, keep = slice(0, len(images) - kept), slice(len(images) - kept, None)
    seed = run.cfg.seed
    if not run.cfg.kind.digits:
        return fit, keep, plain(images[keep], run.cfg.kind.preprocessing)
    calibration = varied(images[keep], torch.Generator().manual_seed(seed + 1), seed + 1)
    return fit, keep, calibration


def _items(run: Run) -> str:
    return "digits" if run.cfg.kind.digits else "images"


def _members(run: Run) -> tuple[str, ...]:
    return MEMBERS if run.cfg.kind.digits else PLAIN_MEMBERS


def _reader_threads(run: Run) -> None:
    threads = run.cfg.reader_threads or run.cfg.threads
    if threads > 0:
        torch.set_num_threads(threads)


def train_teacher(run: Run) -> None:
    """Step teacher: the reader's three CNNs on the model's own training digits, calibrated; kept in --run-dir."""
    _reader_threads(run)
    cfg, epochs = run.cfg, run.cfg.reader_epochs_of()
    images, labels = run.data.train.images, run.data.train.labels
    fit, keep, calibration = _reader_data(run)
    num_classes = len(json.loads((run.model_dir / MANIFEST_FILE).read_text())["labels"])
    reader_cfg = ReaderConfig(num_classes=num_classes, members=len(_members(run)))
    teacher = train_reader(
        images[fit], labels[fit], reader_cfg, _members(run), epochs=epochs["varied"], plain_epochs=epochs["plain"],
        seed=cfg.seed, device=run.device, digits=cfg.kind.digits, preprocessing=cfg.kind.preprocessing,
    )  # fmt: skip
    teacher.temperature = fit_temperature(teacher, calibration, labels[keep])
    teacher_accuracy = accuracy(teacher, calibration, labels[keep])
    log.info("teacher: temperature %.3f, %.1f%% of calibration images", teacher.temperature, 100 * teacher_accuracy)
    payload = {"config": reader_cfg.to_dict(), "state_dict": teacher.state_dict(), "accuracy": teacher_accuracy}
    torch.save(payload | {"temperature": teacher.temperature}, run.dir / TEACHER)


def train_student(run: Run) -> None:
    """Step reader: the teacher distilled into one CNN, calibrated, added to the model directory."""
    _reader_threads(run)
    cfg, epochs = run.cfg, run.cfg.reader_epochs_of()
    images, labels = run.data.train.images, run.data.train.labels
    fit, keep, calibration = _reader_data(run)
    saved = torch.load(run.dir / TEACHER, weights_only=True)
    reader_cfg = ReaderConfig(**saved["config"])
    teacher = Reader(reader_cfg)
    teacher.load_state_dict(saved["state_dict"])
    teacher.temperature = saved["temperature"]
    student_seed = cfg.seed + len(_members(run))
    reader = distil(
        teacher, images[fit], labels[fit], reader_cfg, epochs=epochs["distilled"], seed=student_seed,
        device=run.device, digits=cfg.kind.digits, preprocessing=cfg.kind.preprocessing,
    )  # fmt: skip
    reader.temperature = fit_temperature(reader, calibration, labels[keep])
    final_cfg = ReaderConfig(**{**reader_cfg.to_dict(), "members": 1, "temperature": reader.temperature})
    calibration_accuracy = accuracy(reader, calibration, labels[keep])
    log.info("reader: temperature %.3f, %.1f%% of calibration images right", reader.temperature,
             100 * calibration_accuracy)  # fmt: skip
    student = {
        "recipe": "distilled",
        "seed": student_seed,
        "teacher": [{"recipe": recipe, "seed": cfg.seed + i} for i, recipe in enumerate(_members(run))],
        "teacher_temperature": saved["temperature"],
        "teacher_calibration_accuracy": saved["accuracy"],
    }
    kept = keep.stop - keep.start if keep.stop is not None else len(images) - (keep.start or 0)
    record = {
        "config": final_cfg.to_dict(),
        "trained_on": f"{len(images) - kept} training {_items(run)} of {run.data.info.get('name')}",
        "members": [student],
        "calibrated_on": f"the last {kept} training {_items(run)}, "
        + ("varied" if run.cfg.kind.digits else "as /encode pre-processes them"),
        "calibration_accuracy": calibration_accuracy,
        "epochs": epochs,
        "seed": cfg.seed,
        "reproduce": run.command,
    }
    add_reader(run.model_dir, reader, record)


def fit_tone_curves(run: Run) -> None:
    """Step tone (--tone-curves, else skipped): each class's tone curve fitted and added to the model directory, and
    the figures of what the model draws measured again (--no-evaluate: not measured)."""
    fit_tone(run.model_dir, run.data, seed=run.cfg.seed)
    if run.cfg.evaluate:
        record_toned_figures(run.model_dir, run.data, seed=run.cfg.seed)


def measure_reader(run: Run) -> None:
    """Step figures: /encode with the reader, recorded in the manifest's metrics (--no-evaluate: skipped)."""
    if not run.cfg.evaluate:
        return
    # The sets of drawn, typed, scanned and photographed uploads are of digits: only a digits model reads them.
    outside = run.cfg.outside_count if run.cfg.kind.digits else 0
    record_figures(run.model_dir, run.data, seed=run.cfg.seed, outside_count=outside)


def add_export_programs(run: Run) -> None:
    """Step programs: the torch.export programs of the encoder, the decoder and the reader."""
    add_programs(run.model_dir)


def publish(run: Run) -> None:
    """Step publish: --run-dir/model copied to --out, which it replaces only once the copy is whole."""
    out = run.cfg.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for f in run.model_dir.iterdir():
            shutil.copy2(f, tmp / f.name)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("published %s to %s", load_model_dir(out).id, out)


READER_STEPS = ("teacher", "reader")
# The steps after cvae (which every process of a torchrun launch runs), in order.
STEPS: dict[str, Callable[[Run], None]] = {
    "export": export_cvae,
    "teacher": train_teacher,
    "reader": train_student,
    "tone": fit_tone_curves,
    "figures": measure_reader,
    "programs": add_export_programs,
    "publish": publish,
}
