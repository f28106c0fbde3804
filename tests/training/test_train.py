"""Real (short) training runs on the committed 1,000-digit fixture: CLI, export, resume, interruption, evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.artifacts import load_model_dir
from model.network import CVAE, CVAEConfig
from training.config import TrainConfig, parse_config
from training.cvae import epochs as epochs_module
from training.cvae import train as train_module
from training.cvae.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from training.data import Digits, load_data_dir
from training.steps import main

FIXTURE = Path(__file__).parents[1] / "fixtures" / "mnist-1000"
ROOT = Path(__file__).parents[2]


def small_config(tmp_path: Path, **overrides: object) -> TrainConfig:
    base = dict(
        out=tmp_path / "model",
        run_dir=tmp_path / "run",
        data_dir=FIXTURE,
        epochs=2,
        batch_size=100,
        val_size=200,
        latent_dim=4,
        hidden=(64,),
        channels=(8, 16),
        eval_k=4,
        prior_components=16,
        progress=False,
        evaluate=False,
        device="cpu",
        reader_epochs=1,
        reader_plain_epochs=1,
        reader_distil_epochs=1,
    )
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_parse_config_rejects_bad_values() -> None:
    with pytest.raises(SystemExit):
        parse_config(["--epochs", "0"])
    with pytest.raises(SystemExit):
        parse_config(["--encoder", "transformer"])
    for bad in ("-0.5", "5.5"):
        with pytest.raises(SystemExit):
            parse_config(["--sample-temperature", bad])
    cfg = parse_config(["--hidden", "64", "32", "--no-progress", "--latent-dim", "8"])
    assert cfg.hidden == (64, 32) and cfg.progress is False and cfg.model_config().latent_dim == 8


@pytest.mark.slow
def test_cli_trains_and_exports_a_model_directory_with_run_records(tmp_path: Path) -> None:
    out, run = tmp_path / "model", tmp_path / "run"
    args = [sys.executable, "-m", "training", "--data-dir", str(FIXTURE), "--out", str(out), "--run-dir", str(run)]
    args += ["--epochs", "2", "--val-size", "200", "--latent-dim", "4", "--hidden", "64", "--channels", "8", "16"]
    args += ["--eval-k", "4", "--prior-components", "16", "--no-evaluate", "--no-progress", "--device", "cpu"]
    args += ["--reader-epochs", "1", "--reader-plain-epochs", "1", "--reader-distil-epochs", "1"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "deprecated" not in proc.stderr
    m = load_model_dir(out)
    assert m.latent_dim == 4
    assert m.manifest["prior"] == {
        "kind": "aggregate_posterior", "file": "prior.pt", "components_per_class": 16, "temperature": 0.8
    }  # fmt: skip
    assert m.temperature == 0.8  # the default --sample-temperature: what the service samples at
    assert set(m.manifest["artifacts"]) == {"decoder.pt", "encoder.pt", "prior.pt", "decoder.pt2", "decoder.logits.pt2",
                                            "encoder.pt2", "encoder.all_labels.pt2", "reader.pt",
                                            "reader.pt2"}  # fmt: skip
    assert m.manifest["data"]["count"] == 1000 and m.manifest["data"]["val_source"] == "split"
    assert m.manifest["reproduce"].endswith("--reader-distil-epochs 1")
    assert m.manifest["metrics"]["heldout_nelbo"] > 0 and m.manifest["metrics"]["epochs"] == 2
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["epochs"] == 2 and "git_commit" in record and "command" in record
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "samples" / "epoch-002.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_bad_data_with_the_file_name(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03garbage")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01")
    args = [sys.executable, "-m", "training", "--data-dir", str(tmp_path), "--out", str(tmp_path / "m")]
    proc = subprocess.run([*args, "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_training_learns(tmp_path: Path) -> None:
    main(small_config(tmp_path, epochs=3), argv=[])
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["val_nelbo"] < history[0]["val_nelbo"] < 543.0  # 543.4 nats: every pixel at p = 1/2


@pytest.mark.slow
def test_ctrl_c_leaves_a_checkpoint_that_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = epochs_module.train_one_epoch

    def interrupted(*args: object, **kwargs: object) -> dict[str, float]:
        if args[3] == 1:  # Ctrl-C as the second epoch starts
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(epochs_module, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(small_config(tmp_path / "split"), argv=[])
    assert not (tmp_path / "split" / "model").exists()
    _, payload = load_checkpoint(tmp_path / "split" / "run" / CHECKPOINT)
    assert payload["meta"]["epochs_done"] == 1 and payload["optimizer"] is not None

    monkeypatch.setattr(epochs_module, "train_one_epoch", real)
    main(small_config(tmp_path / "split", resume=True), argv=[])
    assert load_model_dir(tmp_path / "split" / "model").manifest["metrics"]["epochs"] == 2
    main(small_config(tmp_path / "straight"), argv=[])
    a, _ = load_checkpoint(tmp_path / "straight" / "run" / CHECKPOINT)
    b, _ = load_checkpoint(tmp_path / "split" / "run" / CHECKPOINT)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(small_config(tmp_path, resume=True), argv=[])


@pytest.mark.slow
def test_evaluate_prints_one_json_object_with_every_figure(tmp_path: Path) -> None:
    main(small_config(tmp_path, epochs=2), argv=[])
    args = [sys.executable, "-m", "training.evaluation", "--model", str(tmp_path / "model"), "--data-dir", str(FIXTURE)]
    args += ["--k", "4", "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["heldout_count"] == 200 and figures["iw_k"] == 4
    assert figures["heldout_iw_nll"] <= figures["heldout_nelbo"] + 5
    for key in ("judge_heldout_accuracy", "sample_accuracy", "frechet_generated_vs_real", "frechet_real_vs_real"):
        assert key in figures
    assert figures["sample_temperature"] == TrainConfig.sample_temperature  # the model's, as the service samples
    assert figures["sample_spread_ratio"] > 0
    assert figures["sample_train_distance"] > 0 and figures["heldout_reconstruction_train_distance"] > 0
    for key in ("encode_accuracy_real", "encode_accuracy_redrawn", "reconstruction_accuracy"):
        assert 0.0 <= figures[key] <= 1.0
    assert figures["judge_heldout_accuracy"] > 0.8
    assert len(list((tmp_path / "cache").glob("judge-*.pt"))) == 1


def test_variety_and_copying_figures_measure_what_they_say() -> None:
    from training.evaluation.figures import nearest_distance, within_class_spread

    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(300, 8, generator=g), torch.arange(3).repeat(100)
    assert within_class_spread(feats * 0.5, labels) == pytest.approx(0.25 * within_class_spread(feats, labels))
    assert within_class_spread(torch.zeros(300, 8), labels) == 0  # collapsed variety
    train = torch.rand(50, 784, generator=g)
    assert nearest_distance(train[:20], train) == 0  # copies of training digits
    assert nearest_distance(train[:20] + 0.1, train) > 0


def test_evaluate_refuses_a_temperature_out_of_range(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "training.evaluation", "--model", str(tmp_path), "--data-dir", str(FIXTURE)]
    proc = subprocess.run([*args, "--temperature", "9"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--temperature must be in [0, 5], got 9.0" in proc.stderr


def test_evaluate_reports_a_missing_model_dir(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "training.evaluation", "--model", str(tmp_path / "none"), "--data-dir", str(FIXTURE)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_training_runs_without_tqdm_with_a_word_instead_of_bars(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as after a plain `pip install -e .`: import tqdm fails
    assert train_module._progress(10, "epoch 1/1", enabled=True) is None
    main(small_config(tmp_path, epochs=1, progress=True), argv=[])
    assert (tmp_path / "model" / "manifest.json").is_file()


def test_the_shipped_judge_serves_only_data_whose_held_out_digits_it_never_saw() -> None:
    from training.data import MNIST_SHA256, DataSplits
    from training.evaluation.judge import SHIPPED, shipped_judge_applies

    trained_on = torch.load(SHIPPED, weights_only=True)["data"]
    assert trained_on["files"]["train-images-idx3-ubyte.gz"].startswith("b425bfa7")  # mnist-8500
    empty = torch.zeros(1, 28, 28, dtype=torch.uint8)
    digits = Digits(empty, torch.zeros(1, dtype=torch.int64))

    def splits(**info: object) -> DataSplits:
        return DataSplits(train=digits, val=digits, info={**trained_on, **info})

    assert shipped_judge_applies(splits(name="renamed-folder"))  # the same files and split
    assert not shipped_judge_applies(splits(seed=1))  # another split: it may have seen these held-out digits
    assert not shipped_judge_applies(splits(val_size=500))
    official_test = {f"{k}.gz": MNIST_SHA256[f"{k}.gz"] for k in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    full_mnist = {"files": {**official_test, "train-images-idx3-ubyte.gz": "x"}, "val_source": "t10k", "seed": 5}
    assert shipped_judge_applies(splits(**full_mnist))  # held out: the official test set, which it never saw
    assert not shipped_judge_applies(splits(**{**full_mnist, "files": {"t10k-images-idx3-ubyte.gz": "other"}}))


def test_training_says_before_it_starts_when_evaluation_must_train_a_judge(tmp_path: Path, caplog) -> None:
    from training.evaluation.judge import announce_judge

    data = load_data_dir(FIXTURE, val_size=200, seed=0)
    with caplog.at_level("INFO"):
        announce_judge(data, tmp_path / "cache")
    assert "first train its judge classifier on the 800 training images" in caplog.text
    assert "--no-evaluate" in caplog.text


def test_checkpoint_round_trips_with_weights_only(tmp_path: Path) -> None:
    cfg = CVAEConfig(latent_dim=3, hidden=(16,), channels=(4, 8))
    model = CVAE(cfg)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.rand(2, 1, 28, 28), torch.tensor([1, 2])).logits.sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", model, {"epochs_done": 3, "history": [{"a": 1.0}]}, opt.state_dict())
    loaded, payload = load_checkpoint(tmp_path / "c.pt")
    assert loaded.cfg == cfg and payload["meta"]["epochs_done"] == 3
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
