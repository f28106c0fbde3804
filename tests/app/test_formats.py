"""The two formats of a model directory's networks: TorchScript (.pt) and torch.export programs (.pt2). Both are
written by export and listed with their checksums; either loads; they answer bit for bit alike, in the model and
through the service; a directory written before the programs still loads, and gains them without retraining."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import Settings
from model.artifacts import ExportedNetwork, LoadedModel, load_model_dir
from model.manifest import PROGRAM_FILES, READER_FILE, ModelDirError, sha256_file
from model.network import CVAE, Reader, ReaderConfig
from tests.conftest import TINY, drawing, encoded, make_model_dir, upload
from training import export
from training.reader import model_dir as reading

PROGRAMS = sorted(f for name in ("encoder.pt", "decoder.pt") for f in PROGRAM_FILES[name].values())
ROWS = (1, 3, 4, 64)  # one row, fewer rows than /encode's padded scoring pass, that pass, a /generate chunk


def outputs(m: LoadedModel, rows: int, seed: int = 0) -> list[torch.Tensor]:
    """Every method of every network, on the same random inputs of `rows` rows."""
    g = torch.Generator().manual_seed(seed)
    z, y = torch.randn(rows, m.latent_dim, generator=g), torch.randint(0, m.num_classes, (rows,), generator=g)
    x = torch.rand(rows, 1, 28, 28, generator=g)
    with torch.inference_mode():
        out = [m.decoder(z, y), m.decoder.logits(z, y), *m.encoder(x, y), *m.encoder.all_labels(x)]
        if m.reader is not None:
            out.append(m.reader(x))
    return out


def assert_bit_identical(a: LoadedModel, b: LoadedModel) -> None:
    for rows in ROWS:
        for i, (p, q) in enumerate(zip(outputs(a, rows), outputs(b, rows), strict=True)):
            assert p.shape == q.shape and torch.equal(p, q), (rows, i, (p - q).abs().max().item())


def test_export_writes_the_programs_beside_torchscript_with_their_checksums(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert sorted(f for f in manifest["artifacts"] if f.endswith(".pt2")) == PROGRAMS
    for f in PROGRAMS:
        assert manifest["artifacts"][f] == sha256_file(tiny_model_dir / f)
    assert manifest["id"] == f"cvae-{manifest['artifacts']['decoder.pt'][:12]}"  # the programs change no id


def test_both_formats_load_and_answer_bit_for_bit_alike(tiny_model_dir: Path) -> None:
    scripted = load_model_dir(tiny_model_dir)
    exported = load_model_dir(tiny_model_dir, model_format="export")
    assert (scripted.format, exported.format) == ("torchscript", "export")
    assert isinstance(exported.encoder, ExportedNetwork) and isinstance(exported.decoder, ExportedNetwork)
    assert_bit_identical(scripted, exported)


def test_neither_format_warns_of_a_deprecation_when_loaded_or_exported(tiny_model_dir: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for model_format in ("torchscript", "export"):
            outputs(load_model_dir(tiny_model_dir, model_format=model_format), 2)
        export.export_programs({"decoder.pt": CVAE(TINY).decoder}, tmp_path, TINY)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning | FutureWarning)], caught


def test_a_directory_without_programs_loads_from_torchscript_in_either_format(tmp_path: Path) -> None:
    old = make_model_dir(tmp_path / "old")  # as written before the programs
    assert not list(old.glob("*.pt2"))
    assert load_model_dir(old, model_format="export").format == "torchscript"


def test_a_tampered_program_is_refused_by_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))
    with open(broken / "decoder.logits.pt2", "ab") as f:
        f.write(b"\0")
    for model_format in ("torchscript", "export"):  # checksums are checked whichever format is served
        with pytest.raises(ModelDirError, match=r"decoder\.logits\.pt2: sha256"):
            load_model_dir(broken, model_format=model_format)


def test_an_unloadable_program_is_refused_by_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))
    (broken / "encoder.pt2").write_bytes(b"not a program")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["artifacts"]["encoder.pt2"] = sha256_file(broken / "encoder.pt2")
    (broken / "manifest.json").write_text(json.dumps(manifest))
    assert load_model_dir(broken).format == "torchscript"
    with pytest.raises(ModelDirError, match=r"encoder\.pt2: not a loadable torch\.export program"):
        load_model_dir(broken, model_format="export")


def test_programs_are_added_to_an_old_directory_without_changing_it_otherwise(tmp_path: Path) -> None:
    old = make_model_dir(tmp_path / "m", seed=5)
    before = json.loads((old / "manifest.json").read_text())
    manifest = export.add_programs(old)
    assert manifest == json.loads((old / "manifest.json").read_text())
    assert {k: v for k, v in manifest["artifacts"].items() if not k.endswith(".pt2")} == before["artifacts"]
    assert sorted(f for f in manifest["artifacts"] if f.endswith(".pt2")) == PROGRAMS
    assert manifest["id"] == before["id"] and {**manifest, "artifacts": {}} == {**before, "artifacts": {}}
    assert_bit_identical(load_model_dir(old), load_model_dir(old, model_format="export"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial directory left behind


def test_a_readers_program_carries_its_generative_weight(tmp_path: Path) -> None:
    old = make_model_dir(tmp_path / "m", seed=6)
    torch.manual_seed(0)
    cfg = ReaderConfig(channels=(4, 8, 8), hidden=16, generative_weight=0.25, temperature=2.0)
    reading.add_reader(old, Reader(cfg).eval(), {"config": cfg.to_dict()})
    assert not (old / "reader.pt2").exists()  # no programs in the directory: none for its reader either
    assert export.main([str(old)]) == 0
    exported = load_model_dir(old, model_format="export")
    assert exported.format == "export" and exported.reader is not None
    assert exported.reader.generative_weight == 0.25
    assert_bit_identical(load_model_dir(old), exported)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["artifacts"]["reader.pt2"] == sha256_file(old / "reader.pt2")


def test_a_reader_added_to_a_directory_with_programs_gets_its_program(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))
    torch.manual_seed(0)
    cfg = ReaderConfig(channels=(4, 8, 8), hidden=16)
    reading.add_reader(out, Reader(cfg).eval(), {"config": cfg.to_dict()})
    exported = load_model_dir(out, model_format="export")
    assert exported.format == "export" and isinstance(exported.reader, ExportedNetwork)
    assert_bit_identical(load_model_dir(out), exported)


def test_a_reader_without_its_program_keeps_the_directory_on_torchscript(tmp_path: Path) -> None:
    out = make_model_dir(tmp_path / "m", seed=7, programs=True)
    torch.manual_seed(0)
    cfg = ReaderConfig(channels=(4, 8, 8), hidden=16)
    reading.add_reader(out, Reader(cfg).eval(), {"config": cfg.to_dict()})
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["artifacts"].pop("reader.pt2")
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert load_model_dir(out, model_format="export").format == "torchscript"  # never half one, half the other
    assert READER_FILE in manifest["artifacts"]


def test_the_service_answers_the_same_bytes_from_either_format(tiny_model_dir: Path) -> None:
    """The same /generate (a seed, several digits, the JSON with latents) and /encode (a digit inferred, one given)
    from a service serving each format: byte-identical answers."""
    answers = []
    for model_format in ("torchscript", "export"):
        settings = Settings(model_dir=tiny_model_dir, model_format=model_format, inference_process=False)
        with TestClient(create_app(settings)) as c:
            body = {"digit": [0, 3, 7], "n": 5, "seed": 12345, "temperature": 0.8}
            png = c.post("/generate", json=body)
            as_json = c.post("/generate", json=body, headers={"Accept": "application/json"})
            inferred = upload(c, encoded(drawing()))
            given = upload(c, encoded(drawing((120, 80))), digit="4")
            assert all(r.status_code == 200 for r in (png, as_json, inferred, given))
            answers.append([png.content, as_json.json(), inferred.json(), given.json()])
    assert answers[0] == answers[1]


def test_the_service_serves_torchscript_unless_told(tiny_model_dir: Path) -> None:
    assert Settings(model_dir=tiny_model_dir).model_format == "torchscript"  # measured faster: docs/performance.md


def test_the_service_told_to_serve_programs_serves_an_old_directory_from_torchscript(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = make_model_dir(tmp_path / "old")
    settings = Settings(model_dir=old, model_format="export", inference_process=False)
    with caplog.at_level("INFO", logger="app.inference.worker"), TestClient(create_app(settings)) as c:
        assert c.post("/generate", json={"digit": 1, "n": 2, "seed": 0}).status_code == 200
    assert "loaded from its TorchScript modules" in caplog.text and "has no torch.export programs" in caplog.text
