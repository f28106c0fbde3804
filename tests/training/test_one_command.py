"""`python -m training` is the one command that makes the whole model: its steps give, bit for bit, what the three
commands it replaces gave (`python -m training`, `python -m training.reading`, `python -m training.export`, as of
commit 290d0df; the first with --no-evaluate), recorded at tiny scale on the fixture in golden/three-commands.json.
The reader's part of it (its weights, its record, the figures read with it) was re-recorded from the one command when
the reader's recipe changed on purpose (its varied digits gained poor conditions): the CVAE's networks, prior and
likelihoods are still the three commands'.

Bit for bit means: every network's weights and every program's graph identical, the prior's file byte-identical, and
every figure recorded in the manifest equal. The network files themselves are not byte-stable: a TorchScript file
holds a random serialization id and orders its Final attributes by string hashing (two runs of the same command
differ), and a torch.export program records the path of the source file each node was traced from (another checkout,
another file). So their weights and graphs are compared, not their bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from model.artifacts import load_model_dir
from tests.training.test_train import small_config
from training import steps
from training.__main__ import cli

FIXTURE = Path(__file__).parents[1] / "fixtures" / "mnist-1000"
GOLDEN = Path(__file__).with_name("golden") / "three-commands.json"
# The options the golden run gave the three commands, as the one command takes them.
OPTIONS = [
    "--data-dir", str(FIXTURE), "--epochs", "1", "--batch-size", "100", "--val-size", "200", "--latent-dim", "4",
    "--hidden", "64", "--channels", "8", "16", "--eval-k", "4", "--prior-components", "16", "--no-progress",
    "--device", "cpu", "--threads", "1", "--outside-count", "10",
]  # fmt: skip


def _digest(state: dict[str, torch.Tensor], code: str = "") -> str:
    h = hashlib.sha256(code.encode())
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def fingerprint(model_dir: Path) -> dict[str, str]:
    """Per artifact: sha256 of the prior's bytes, of a TorchScript network's weights (in key order), of a program's
    graph code and weights."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    out = {}
    for name in sorted(manifest["artifacts"]):
        path = model_dir / name
        if name.endswith(".pt2"):
            program = torch.export.load(str(path))
            weights = {
                **program.state_dict,
                **{k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)},
            }
            out[name] = "graph+weights:" + _digest(weights, program.graph_module.code)
        elif name.endswith(".pt") and name != "prior.pt":
            out[name] = "weights:" + _digest(torch.jit.load(str(path)).state_dict())
        else:
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _reader_record(manifest: dict[str, Any]) -> dict[str, Any]:
    reader = manifest["reader"]
    picked = {k: reader[k] for k in ("config", "calibration_accuracy", "epochs", "seed")}
    return picked | {"teacher_temperature": reader["members"][0]["teacher_temperature"]}


@pytest.mark.slow
def test_the_one_command_makes_bit_for_bit_what_the_three_commands_made(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    if torch.__version__ != golden["torch_version"]:
        pytest.skip(f"the golden run used torch {golden['torch_version']}, this is {torch.__version__}")
    out = tmp_path / "model"
    assert cli([*OPTIONS, "--out", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert fingerprint(out) == golden["fingerprint"]
    # The old first command ran --no-evaluate (likelihoods only) and the reader's command measured /encode: here the
    # export's evaluation runs too, and the figures the golden run recorded must be equal.
    assert {k: manifest["metrics"][k] for k in golden["metrics"]} == golden["metrics"]
    assert _reader_record(manifest) == golden["reader"]
    assert manifest["reproduce"] == "python -m training " + " ".join(
        [*OPTIONS, "--out", str(out), "--run-dir", str(tmp_path / "run")]
    )
    steps = json.loads((tmp_path / "run" / "steps.json").read_text())["done"]
    assert steps == ["cvae", "export", "teacher", "reader", "figures", "programs", "publish"]


@pytest.mark.slow
def test_a_step_that_fails_resumes_from_itself_and_out_gets_only_a_whole_model(tmp_path, monkeypatch) -> None:
    real = steps.STEPS["reader"]

    def crash(run: steps.Run) -> None:
        raise RuntimeError("killed")

    monkeypatch.setitem(steps.STEPS, "reader", crash)
    with pytest.raises(RuntimeError, match="killed"):
        steps.main(small_config(tmp_path, epochs=1), argv=[])
    assert not (tmp_path / "model").exists()  # --out: nothing until the publish step
    assert json.loads((tmp_path / "run" / "steps.json").read_text())["done"] == ["cvae", "export", "teacher"]

    monkeypatch.setitem(steps.STEPS, "reader", real)
    ran = []
    for name in ("export", "teacher"):
        monkeypatch.setitem(steps.STEPS, name, lambda run, name=name: ran.append(name))
    steps.main(small_config(tmp_path, epochs=1, resume=True), argv=["--epochs", "1", "--resume"])
    assert ran == []  # the steps done before were not run again
    model = load_model_dir(tmp_path / "model")
    record = model.manifest["reader"]
    assert record["reproduce"] == "python -m training --epochs 1"  # what makes the model in one go: no --resume
    assert model.reader is not None and record["config"]["temperature"] > 0
    assert record["trained_on"].startswith("640 training digits")
    assert record["calibrated_on"].endswith("160 training digits, varied")
    # What /encode runs is one CNN, distilled from the teacher's three (each by its recipe and seed).
    assert record["config"]["members"] == 1 and {k.split(".")[1] for k in model.reader.state_dict()} == {"0"}
    (student,) = record["members"]
    assert student["recipe"] == "distilled" and student["seed"] == 3
    assert [(t["recipe"], t["seed"]) for t in student["teacher"]] == [("varied", 0), ("varied", 1), ("plain", 2)]
    assert record["epochs"] == {"varied": 1, "plain": 1, "distilled": 1}
    assert {"reader.pt", "reader.pt2", "encoder.pt2", "decoder.pt2"} <= set(model.manifest["artifacts"])


def test_the_readers_epochs_follow_epochs_unless_set_on_their_own(tmp_path) -> None:
    assert small_config(
        tmp_path, epochs=1, reader_epochs=None, reader_plain_epochs=None, reader_distil_epochs=None
    ).reader_epochs_of() == {"varied": 1, "plain": 1, "distilled": 1}
    assert small_config(
        tmp_path, epochs=130, reader_epochs=None, reader_plain_epochs=None, reader_distil_epochs=None
    ).reader_epochs_of() == {"varied": 30, "plain": 16, "distilled": 45}
    assert small_config(tmp_path, epochs=1, reader_epochs=5).reader_epochs_of()["varied"] == 5


def test_no_reader_skips_the_readers_steps_and_the_model_reads_by_the_generative_rule(tmp_path) -> None:
    steps.main(small_config(tmp_path, epochs=1, reader=False), argv=[])
    model = load_model_dir(tmp_path / "model")
    assert model.reader is None and model.card.reading == "generative" and "reader" not in model.manifest
    assert json.loads((tmp_path / "run" / "steps.json").read_text())["done"] == [
        "cvae", "export", "figures", "programs", "publish"
    ]  # fmt: skip


@pytest.mark.slow
def test_tone_curves_are_a_step_of_their_own_and_the_figures_measure_what_the_model_draws(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the judge trained here, not in the user's cache
    cfg = small_config(tmp_path, epochs=1, reader=False, tone_curves=True, evaluate=True, outside_count=10)
    steps.main(cfg, argv=["--epochs", "1", "--tone-curves"])
    model = load_model_dir(tmp_path / "model")
    assert json.loads((tmp_path / "run" / "steps.json").read_text())["done"] == [
        "cvae", "export", "tone", "figures", "programs", "publish"
    ]  # fmt: skip
    assert model.tone is not None and model.manifest["tone"]["knots"] == 65
    assert "800 training images" in model.manifest["tone"]["fitted_on"]
    metrics = model.manifest["metrics"]
    # export's figures (the decoder's grey levels) are kept apart; those in their place judge the toned samples
    assert {"sample_accuracy", "frechet_ratio_to_train", "transfer_accuracy"} <= metrics["untoned"].keys()
    assert metrics["untoned"]["frechet_generated_vs_real"] != metrics["frechet_generated_vs_real"]
    assert "encode_accuracy_real" not in metrics["untoned"]  # /encode reads uploads: the curves do not touch it
    assert model.manifest["reproduce"].endswith("--epochs 1 --tone-curves")
