"""The digit reader (model.network.Reader, training/reader/): trained on varied MNIST digits only, calibrated,
added to a model directory as reader.pt, loaded and used by the label rule that /encode and evaluation share."""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import Settings
from model.artifacts import load_model_dir, quiet_torchscript
from model.imaging import decode_image, to_mnist
from model.inference import label_log_probs
from model.manifest import READER_FILE, ModelDirError
from model.network import CVAE, MaxPool2x2, Reader, ReaderConfig
from model.prior import GaussianPrior
from tests.conftest import TINY, drawing, encoded, upload
from training.data import load_data_dir
from training.evaluation.figures import calibration_error
from training.export import export_model_dir
from training.reader import letterforms, model_dir, variants
from training.reader import train as reading

FIXTURE = Path(__file__).parents[1] / "fixtures" / "mnist-1000"
SMALL = ReaderConfig(channels=(4, 8, 8), hidden=16)


def digits(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_data_dir(FIXTURE, val_size=100, seed=0)
    return data.train.images[:n], data.train.labels[:n]


def test_varied_digits_are_mnist_form_and_the_same_for_the_same_seeds() -> None:
    images, _ = digits(24)
    a = variants.varied(images, torch.Generator().manual_seed(1), 1)
    b = variants.varied(images, torch.Generator().manual_seed(1), 1)
    c = variants.varied(images, torch.Generator().manual_seed(2), 2)
    assert a.shape == (24, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert (a.flatten(1).sum(1) > 5).all()  # every variant still has a digit's ink
    plain = torch.stack([to_mnist(img.float() / 255) for img in images])
    assert not torch.allclose(a, plain)  # varied, not the digits as they are


def _upright_one(lean: float = 0.0) -> torch.Tensor:
    """A 1 as MNIST writes it: a bare stroke 3 px wide, rows 4-23, its top `lean` px right of its foot."""
    img = torch.zeros(28, 28, dtype=torch.uint8)
    for row in range(4, 24):
        x = round(14 - lean / 2 + lean * (23 - row) / 19)
        img[row, x - 1 : x + 2] = 255
    return img


def test_letterforms_flag_a_share_of_the_ones_and_leave_other_digits_alone() -> None:
    images, labels = digits(200)
    images = torch.cat([images, _upright_one().expand(400, 28, 28)])
    labels = torch.cat([labels, torch.ones(400, dtype=torch.long)])
    out = letterforms.letterforms(images, labels, torch.Generator().manual_seed(0))
    again = letterforms.letterforms(images, labels, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and torch.equal(out, again)
    assert torch.equal(out[labels != 1], images[labels != 1])  # only 1s change
    assert (out >= images).all()  # ink added, none taken away
    changed = (out != images).flatten(1).any(1)[-400:]
    assert 0.4 < changed.float().mean() < 0.6  # FLAG_SHARE of them, new strokes anti-aliased
    flagged = out[-400:][changed].float()
    added = flagged - images[-1].float()
    # The flag: ink left of the stem in the top third, none right of it there; a foot, when there is one, is low.
    assert (added[:, 4:12, :12].sum((1, 2)) > 200).all() and (added[:, 4:12, 17:].sum((1, 2)) == 0).all()
    footed = added[:, 21:26, 17:].sum((1, 2)) > 0
    assert 0.2 < footed.float().mean() < 0.5
    assert (added[:, 13:20].sum((1, 2)) == 0).all()  # the middle of the stem untouched


def test_a_one_leaning_too_far_for_a_flag_that_is_not_a_sevens_bar_keeps_its_bare_form() -> None:
    ones = torch.ones(50, dtype=torch.long)
    leaning = _upright_one(lean=9.0).expand(50, 28, 28)  # its stem 22 degrees off upright: a flag fits
    assert not torch.equal(letterforms.letterforms(leaning, ones, torch.Generator().manual_seed(0)), leaning)
    leaning = _upright_one(lean=15.0).expand(50, 28, 28)  # 35 degrees: any flag would be too flat
    assert torch.equal(letterforms.letterforms(leaning, ones, torch.Generator().manual_seed(0)), leaning)


def test_temperature_scaling_recovers_the_temperature_that_made_the_labels() -> None:
    torch.manual_seed(0)
    reader = Reader(SMALL).eval()
    x = torch.rand(3000, 1, 28, 28)
    with torch.no_grad():
        logits = reader.logits(x) * 20  # a confident model
    y = torch.distributions.Categorical(logits=logits / 2.5).sample()  # truly calibrated at temperature 2.5 * 20

    class Scaled(Reader):
        def logits(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().logits(x) * 20

    scaled = Scaled(SMALL)
    scaled.load_state_dict(reader.state_dict())
    assert reading.fit_temperature(scaled.eval(), x, y) == pytest.approx(2.5, rel=0.15)


def test_calibration_error_is_zero_when_confidence_is_accuracy_and_the_gap_otherwise() -> None:
    labels = torch.zeros(10, dtype=torch.long)
    right = torch.tensor([[0.7, 0.3]] * 10)  # 70% sure of 0 ...
    labels[:3] = 1  # ... and right 7 times in 10
    assert calibration_error(right, labels) == pytest.approx(0.0, abs=1e-6)
    sure = torch.tensor([[1.0, 0.0]] * 10)  # 100% sure, right 7 times in 10
    assert calibration_error(sure, labels) == pytest.approx(0.3)


@pytest.fixture
def reader_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model with a small random reader added (weight 0: the reader alone decides)."""
    out = tmp_path / "model"
    shutil.copytree(tiny_model_dir, out)
    torch.manual_seed(0)
    model_dir.add_reader(out, Reader(SMALL).eval(), {"config": SMALL.to_dict()})
    return out


def test_a_reader_is_listed_with_its_checksum_and_changes_the_models_id(tiny_model_dir, reader_dir) -> None:
    before, after = load_model_dir(tiny_model_dir), load_model_dir(reader_dir)
    assert before.reader is None and after.reader is not None
    sha = hashlib.sha256((reader_dir / READER_FILE).read_bytes()).hexdigest()
    assert after.manifest["artifacts"][READER_FILE] == sha and after.manifest["reader"]["file"] == READER_FILE
    assert after.id != before.id and after.id.startswith("cvae-")
    assert after.manifest["artifacts"]["decoder.pt"] == before.manifest["artifacts"]["decoder.pt"]


def test_with_a_reader_the_label_rule_is_the_readers_calibrated_log_probs(reader_dir) -> None:
    model = load_model_dir(reader_dir)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        got, mean, _ = label_log_probs(model.encoder, model.decoder, model.prior, x, model.reader)
        _, mean_alone, _ = label_log_probs(model.encoder, model.decoder, model.prior, x)
        assert model.reader is not None
        assert torch.equal(got, model.reader(x))
    assert torch.equal(mean, mean_alone)  # the latents do not depend on who reads the digit


def test_a_generative_weight_adds_the_generative_score(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "weighted"
    shutil.copytree(tiny_model_dir, out)
    torch.manual_seed(0)
    cfg = ReaderConfig(channels=(4, 8, 8), hidden=16, generative_weight=0.25, temperature=2.0)
    model_dir.add_reader(out, Reader(cfg).eval(), {"config": cfg.to_dict()})
    model = load_model_dir(out)
    assert model.reader is not None
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        got, _, _ = label_log_probs(model.encoder, model.decoder, model.prior, x, model.reader)
        gen, _, _ = label_log_probs(model.encoder, model.decoder, model.prior, x)
        expected = (model.reader(x) + 0.25 * gen).log_softmax(1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_a_tampered_or_misnamed_reader_is_refused(reader_dir) -> None:
    (reader_dir / READER_FILE).write_bytes((reader_dir / READER_FILE).read_bytes() + b"x")
    with pytest.raises(ModelDirError, match=f"{READER_FILE}: sha256"):
        load_model_dir(reader_dir)


def test_a_manifest_whose_reader_names_another_file_is_refused(reader_dir) -> None:
    manifest = json.loads((reader_dir / "manifest.json").read_text())
    manifest["reader"]["file"] = "decoder.pt"
    (reader_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="'reader' must name"):
        load_model_dir(reader_dir)


def test_encode_answers_with_the_readers_probabilities(reader_dir) -> None:
    data = encoded(drawing((300, 400)), "PNG")
    with TestClient(create_app(Settings(model_dir=reader_dir))) as c:
        body = upload(c, data).json()
        assert c.get("/model").json()["id"] == load_model_dir(reader_dir).id
    model = load_model_dir(reader_dir)
    assert model.reader is not None
    with torch.no_grad():
        expected = model.reader(to_mnist(decode_image(data, 10**7))[None])[0].exp()
    assert np.allclose(body["probabilities"], expected.numpy(), atol=1e-6)
    assert body["digit"] == int(expected.argmax())


def _model_on_fixture(out: Path) -> Path:
    """The tiny model, its manifest saying it was trained on the fixture's digits (200 held out, seed 0)."""
    data = load_data_dir(FIXTURE, val_size=200, seed=0)
    torch.manual_seed(0)
    export_model_dir(
        CVAE(TINY).eval(), GaussianPrior.standard(10, TINY.latent_dim), out, data=data.info,
        config={"model": TINY.to_dict(), "training": {"seed": 0, "val_size": 200}}, metrics={}, reproduce="test",
    )  # fmt: skip
    return out


def test_the_reader_is_the_geometric_mean_of_its_members() -> None:
    torch.manual_seed(0)
    reader = Reader(ReaderConfig(channels=(4, 8, 8), hidden=16, members=2, temperature=1.5)).eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        members = [m(x).log_softmax(1) for m in reader.members]
        expected = ((members[0] + members[1]) / 2 / 1.5).log_softmax(1)
        assert torch.allclose(reader(x), expected, atol=1e-6)
        with quiet_torchscript():  # TorchScript's deprecation, where it arises (docs/model-directory.md)
            scripted = torch.jit.script(reader)
        assert torch.equal(scripted(x), reader(x))


def test_the_readers_pooling_is_max_pooling_bit_for_bit_and_its_weights_load_as_before() -> None:
    x = torch.randn(5, 16, 28, 28)
    assert torch.equal(MaxPool2x2()(x), torch.nn.functional.max_pool2d(x, 2))
    assert torch.equal(MaxPool2x2()(x[:, :, :14, :14]), torch.nn.functional.max_pool2d(x[:, :, :14, :14], 2))
    # The readers shipped before it pooled with nn.MaxPool2d at the same places: their state dicts still load.
    reader = Reader(SMALL)
    before = torch.nn.Sequential(
        *[torch.nn.MaxPool2d(2) if isinstance(layer, MaxPool2x2) else layer for layer in reader.members[0]]
    )
    assert list(before.state_dict()) == list(reader.members[0].state_dict())
    with torch.no_grad():
        y = torch.rand(7, 1, 28, 28)
        assert torch.equal(before.eval()(y), reader.members[0].eval()(y))


def test_each_member_trains_by_its_own_recipe_and_seed() -> None:
    images, labels = digits(40)
    cfg = ReaderConfig(channels=(4, 8, 8), hidden=16, members=2)
    reader = reading.train_reader(images, labels, cfg, ("varied", "plain"), epochs=1, plain_epochs=1, seed=3)
    alone = reading.train_member(labels, cfg, epochs=1, seed=4, inputs=partial(reading._plain_input, images, labels))
    trained, expected = reader.members[1].state_dict(), alone.state_dict()
    assert list(trained) == list(expected) and all(torch.equal(trained[k], expected[k]) for k in expected)
    for recipes in (("varied",), ("varied", "noisy")):
        with pytest.raises(ValueError, match="one recipe"):
            reading.train_reader(images, labels, cfg, recipes, epochs=1, plain_epochs=1, seed=3)


def test_distillation_learns_the_teachers_probabilities_as_well_as_the_labels() -> None:
    images, labels = digits(400)
    cfg = ReaderConfig(channels=(8, 16, 16), hidden=32)
    plain = torch.stack([to_mnist(img.float() / 255) for img in images])
    moved = partial(reading._plain_input, images, labels)  # the digits lightly moved: labelled by labels, in order

    class Shifted(torch.nn.Module):  # a teacher sure that every digit is its label + 1; it reads them in order
        def __init__(self) -> None:
            super().__init__()
            self.seen = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = torch.arange(self.seen, self.seen + len(x)) % len(labels)
            self.seen += len(x)
            return torch.nn.functional.one_hot((labels[rows] + 1) % 10, 10).float().mul(30).log_softmax(1)

    def shares(member: torch.nn.Module) -> tuple[float, float]:
        """The mean probability given to the teacher's digit, and to the labelled one."""
        with torch.no_grad():
            probs = member.eval()(plain).softmax(1)
        rows = torch.arange(len(labels))
        return float(probs[rows, (labels + 1) % 10].mean()), float(probs[rows, labels].mean())

    taught = shares(reading.train_member(labels, cfg, epochs=20, seed=0, inputs=moved, teacher=Shifted()))
    alone = shares(reading.train_member(labels, cfg, epochs=20, seed=0, inputs=moved))
    # Half the loss is the teacher's: the student splits what it learns between the teacher's digit and the label.
    assert taught[0] > 0.15 and abs(taught[0] - taught[1]) < 0.1
    assert alone[0] < 0.1 and alone[1] > 0.4


def test_distil_makes_a_one_cnn_reader_from_varied_and_plain_digits() -> None:
    images, labels = digits(40)
    cfg = ReaderConfig(channels=(4, 8, 8), hidden=16, members=2)
    teacher = reading.train_reader(images, labels, cfg, ("varied", "plain"), epochs=1, plain_epochs=1, seed=0)
    student = reading.distil(teacher, images, labels, cfg, epochs=1, seed=2)
    assert len(student.members) == 1 and not student.training
    seen: list[int] = []

    def recorded(g: torch.Generator, seed: int) -> torch.Tensor:
        x = reading._varied_and_plain(images, labels, g, seed)
        seen.append(len(x))
        return x

    alone = reading.train_member(labels, cfg, epochs=1, seed=2, inputs=recorded, teacher=teacher)
    assert seen == [2 * len(images)]  # each epoch: a varied copy of every digit and a moved plain one
    trained, expected = student.members[0].state_dict(), alone.state_dict()
    assert all(torch.equal(trained[k], expected[k]) for k in expected)
