"""Export: the model-directory contract, the scripted-vs-eager guard, atomic writes and load-time checks."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from model.artifacts import load_model_dir, quiet_torchscript
from model.manifest import ModelDirError, sha256_file
from model.network import CVAE
from tests.conftest import TINY, make_model_dir
from training import export


def test_model_dir_honours_the_contract(tiny_model_dir: Path) -> None:
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == [
        "decoder.logits.pt2", "decoder.pt", "decoder.pt2", "encoder.all_labels.pt2", "encoder.pt", "encoder.pt2",
        "manifest.json",
    ]  # fmt: skip
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    for key in ("format_version", "id", "latent_dim", "image_shape", "labels", "prior", "data", "config", "metrics"):
        assert key in manifest
    for key in ("artifacts", "torch_version", "created", "reproduce"):
        assert key in manifest
    assert manifest["image_shape"] == [1, 28, 28] and manifest["labels"] == [str(i) for i in range(10)]
    for name, digest in manifest["artifacts"].items():
        assert sha256_file(tiny_model_dir / name) == digest
    m = load_model_dir(tiny_model_dir)
    d = m.latent_dim
    z, y = torch.randn(5, d), torch.tensor([0, 1, 2, 3, 9])
    with torch.no_grad():
        images = m.decoder(z, y)
        mean, log_var = m.encoder(images, y)
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert mean.shape == log_var.shape == (5, d) and mean.dtype == torch.float32


def test_loaded_scripted_modules_equal_the_eager_model(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = CVAE(TINY).eval()
    out = make_model_dir(tmp_path / "m", seed=3)
    m = load_model_dir(out)
    z, y = torch.randn(8, TINY.latent_dim), torch.randint(0, 10, (8,))
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m.decoder(z, y), model.decoder(z, y), rtol=0, atol=1e-6)
        torch.testing.assert_close(m.decoder.logits(z, y), model.decoder.logits(z, y), rtol=0, atol=1e-5)
        for a, b in zip(m.encoder(x, y), model.encoder(x, y), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_export_refuses_when_scripted_differs_from_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_script = torch.jit.script

    def corrupting_script(module: torch.nn.Module) -> torch.jit.ScriptModule:
        scripted = real_script(copy.deepcopy(module))  # script() shares parameters; corrupt a copy
        with torch.no_grad():
            next(scripted.parameters()).add_(0.1)
        return scripted

    monkeypatch.setattr(torch.jit, "script", corrupting_script)
    with pytest.raises(export.ExportError, match="differs from eager"):
        make_model_dir(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial directory


def test_a_crash_mid_export_leaves_the_previous_directory_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = make_model_dir(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = 0
    real_save = torch.jit.save

    def failing_save(module: torch.jit.ScriptModule, f: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("disk full")
        real_save(module, f)

    monkeypatch.setattr(torch.jit, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        make_model_dir(out, seed=1)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_load_refuses_a_tampered_artifact_naming_the_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = shutil.copytree(tiny_model_dir, tmp_path / "bad")
    with open(bad / "decoder.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelDirError, match=r"decoder\.pt: sha256 .* does not match"):
        load_model_dir(bad)


def test_load_refuses_missing_directory_manifest_or_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model_dir(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelDirError, match=r"manifest\.json: missing"):
        load_model_dir(empty)
    partial = shutil.copytree(tiny_model_dir, tmp_path / "partial")
    (partial / "encoder.pt").unlink()
    with pytest.raises(ModelDirError, match=r"encoder\.pt: missing"):
        load_model_dir(partial)


def test_load_refuses_an_unknown_format_version(tiny_model_dir: Path, tmp_path: Path) -> None:
    future = shutil.copytree(tiny_model_dir, tmp_path / "future")
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = 99
    (future / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="format_version 99"):
        load_model_dir(future)


def test_loading_prints_no_torchscript_deprecation_warnings(tiny_model_dir: Path) -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model_dir(tiny_model_dir)
    assert not [w for w in caught if "deprecated" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_torchscript():
            torch.jit.script(torch.nn.Linear(2, 2))
    assert not caught


def test_an_aggregate_posterior_prior_travels_as_a_checksummed_file(tmp_path: Path) -> None:
    from model.prior import AggregatePosteriorPrior

    torch.manual_seed(0)
    model = CVAE(TINY).eval()
    prior = AggregatePosteriorPrior(torch.randn(10, 3, TINY.latent_dim), torch.randn(10, 3, TINY.latent_dim) - 1)
    out = tmp_path / "m"
    manifest = export.export_model_dir(
        model, prior, out, data={}, config={}, metrics={}, reproduce="tests/training/test_export.py", temperature=0.7
    )
    assert manifest["prior"] == {
        "kind": "aggregate_posterior", "file": "prior.pt", "components_per_class": 3, "temperature": 0.7
    }  # fmt: skip
    loaded = load_model_dir(out)
    assert isinstance(loaded.prior, AggregatePosteriorPrior)
    assert loaded.temperature == 0.7
    assert torch.equal(loaded.prior.means, prior.means) and torch.equal(loaded.prior.log_vars, prior.log_vars)
    with open(out / "prior.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelDirError, match=r"prior\.pt: sha256"):
        load_model_dir(out)


@pytest.mark.parametrize("bad", [-0.1, 5.5, "hot", True, None])
def test_a_manifest_temperature_out_of_range_is_refused_by_name(tiny_model_dir: Path, tmp_path: Path, bad) -> None:
    broken = tmp_path / "m"
    shutil.copytree(tiny_model_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["prior"]["temperature"] = bad
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match=r"prior\.temperature must be a number in \[0, 5\]"):
        load_model_dir(broken)


def test_a_manifest_without_a_temperature_samples_at_1(tiny_model_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "m"
    shutil.copytree(tiny_model_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["prior"].pop("temperature", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert load_model_dir(old).temperature == 1.0
