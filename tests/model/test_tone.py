"""Tone curves (model/tone.py): the per-class maps from the grey levels the model draws to the training images',
their fit (histogram matching), and how a model directory carries them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from model.artifacts import load_model_dir
from model.manifest import TONE_FILE, ModelDirError, sha256_file
from model.tone import ToneCurves, ToneError, fit_tone, toned
from tests.conftest import make_model_dir
from training.cvae.tone import add_tone


def curves(drawn: list[list[float]], real: list[list[float]]) -> ToneCurves:
    return ToneCurves(torch.tensor(drawn), torch.tensor(real))


TWO = curves([[0.0, 0.5, 1.0], [0.2, 0.4, 0.6]], [[0.0, 0.8, 1.0], [0.0, 0.5, 1.0]])


def test_a_curve_interpolates_between_its_knots_and_holds_its_ends_outside_them() -> None:
    levels = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]).reshape(1, 1, 1, 5)
    torch.testing.assert_close(TWO.apply(levels, torch.tensor([0])).flatten(), torch.tensor([0.0, 0.4, 0.8, 0.9, 1.0]))
    levels = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 1.0]).reshape(1, 1, 2, 3)
    torch.testing.assert_close(
        TWO.apply(levels, torch.tensor([1])).flatten(), torch.tensor([0.0, 0.0, 0.25, 0.75, 1.0, 1.0])
    )


def test_each_row_goes_through_its_own_labels_curve_whatever_shares_its_batch() -> None:
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(6, 1, 4, 4, generator=g), torch.tensor([0, 1, 1, 0, 1, 0])
    batch = TWO.apply(images, labels)
    for i in range(6):
        torch.testing.assert_close(batch[i : i + 1], TWO.apply(images[i : i + 1], labels[i : i + 1]))
    assert not torch.equal(TWO.apply(images, torch.zeros(6, dtype=torch.long)), batch)


def test_a_curve_keeps_the_order_of_levels() -> None:
    levels = torch.linspace(0, 1, 1001).reshape(1, 1, 1, -1)
    for c in (0, 1):
        out = TWO.apply(levels, torch.tensor([c])).flatten()
        assert bool((out[1:] >= out[:-1]).all()) and out.min() >= 0 and out.max() <= 1


def test_a_flat_stretch_of_knots_does_not_divide_by_zero() -> None:
    flat = curves([[0.0, 0.0, 0.0, 1.0]], [[0.0, 0.3, 0.6, 1.0]])
    out = flat.apply(torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3), torch.tensor([0]))
    assert bool(torch.isfinite(out).all()) and out.flatten()[2] == 1.0


@pytest.mark.parametrize(
    ("drawn", "real", "message"),
    [
        (torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3), "float32"),
        (torch.zeros(2, 3), torch.zeros(3, 3), "float32"),
        (torch.zeros(2, 1), torch.zeros(2, 1), "two finite knots"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([[0.0, 1.0]]), "two finite knots"),
        (torch.tensor([[0.0, 0.6, 0.5]]), torch.tensor([[0.0, 0.5, 1.0]]), "nondecreasing"),
        (torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[0.0, 0.5, 1.5]]), "in \\[0, 1\\]"),
    ],
)
def test_curves_that_are_not_nondecreasing_levels_are_refused(drawn, real, message) -> None:
    with pytest.raises(ToneError, match=message):
        ToneCurves(drawn, real)


def test_the_fit_sends_the_levels_drawn_onto_the_training_images_levels() -> None:
    """Histogram matching: what the model draws, through its class's curve, has the training images' quantiles."""
    g = torch.Generator().manual_seed(1)
    # Class 0's training images are mostly black with bright strokes, class 1's mid-grey: two different histograms.
    dark = (torch.rand(200, 8, 8, generator=g) ** 4 * 255).to(torch.uint8)
    grey = (torch.rand(200, 8, 8, generator=g) * 100 + 80).to(torch.uint8)
    images, labels = torch.cat([dark, grey]), torch.cat([torch.zeros(200), torch.ones(200)]).long()

    def samples(c: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(300, 2, generator=torch.Generator().manual_seed(c)), torch.full((300,), c)

    def draw(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # smooth mid-greys, as a decoder's means are
        return torch.sigmoid(z.sum(1)[:, None, None, None] + torch.randn(len(z), 1, 8, 8, generator=g) * 0.3)

    fitted = fit_tone(images, labels, samples, draw, num_classes=2, seed=0, knots=65)
    q = torch.linspace(0.05, 0.95, 19)
    for c, real in ((0, dark), (1, grey)):
        z, y = samples(c)
        drawn = fitted.apply(draw(z, y), y).flatten()
        torch.testing.assert_close(drawn.quantile(q), (real.float() / 255).flatten().quantile(q), atol=0.04, rtol=0)


def test_the_fit_refuses_a_class_without_training_images() -> None:
    def samples(c: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(2, 1), torch.full((2,), c)

    with pytest.raises(ToneError, match="class 1"):
        fit_tone(
            torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), samples,
            lambda z, y: torch.zeros(len(z), 1, 4, 4), num_classes=2, seed=0,
        )  # fmt: skip


def test_toned_is_the_draw_itself_without_curves() -> None:
    def draw(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return z

    assert toned(draw, None) is draw


# --- in a model directory -------------------------------------------------------------------------------------


def ten_curves(seed: int = 0) -> ToneCurves:
    g = torch.Generator().manual_seed(seed)
    drawn = torch.rand(10, 9, generator=g).sort(1).values
    real = torch.rand(10, 9, generator=g).sort(1).values
    return ToneCurves(drawn, real)


@pytest.fixture
def toned_dir(tmp_path: Path) -> Path:
    out = make_model_dir(tmp_path / "toned")
    add_tone(out, ten_curves(), {"knots": 9, "fitted_on": "random curves (a test)", "seed": 0})
    return out


def test_a_model_directory_carries_its_curves_and_draws_through_them(toned_dir: Path, tmp_path: Path) -> None:
    plain = make_model_dir(tmp_path / "plain")
    model, untoned = load_model_dir(toned_dir), load_model_dir(plain)
    assert untoned.tone is None and model.tone is not None
    assert model.manifest["tone"]["file"] == TONE_FILE and TONE_FILE in model.manifest["artifacts"]
    assert model.id != untoned.id  # the same networks and prior: the curves alone change what it draws
    z, y = torch.randn(5, 4), torch.tensor([0, 3, 3, 7, 9])
    with torch.no_grad():
        torch.testing.assert_close(model.draw(z, y), ten_curves().apply(untoned.decoder(z, y), y))
        torch.testing.assert_close(model.decoder(z, y), untoned.decoder(z, y))  # likelihoods stay the decoder's


def _rewrite_tone(model_dir: Path, state: object) -> None:
    torch.save(state, model_dir / TONE_FILE)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["artifacts"][TONE_FILE] = sha256_file(model_dir / TONE_FILE)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"drawn": torch.zeros(3, 9), "real": torch.zeros(3, 9)}, "curves for 3 classes, the model 10"),
        ({"drawn": torch.zeros(10, 9)}, "exactly the tensors 'drawn' and 'real'"),
        ({"drawn": torch.ones(10, 9), "real": -torch.ones(10, 9)}, "nondecreasing grey levels"),
        ([1, 2, 3], "exactly the tensors"),
    ],
)
def test_a_tone_file_that_is_not_curves_for_the_models_classes_is_refused_by_name(toned_dir, state, message) -> None:
    _rewrite_tone(toned_dir, state)
    with pytest.raises(ModelDirError, match=f"tone.pt: .*{message}"):
        load_model_dir(toned_dir)


def test_a_tone_file_torch_cannot_read_is_refused_by_name(toned_dir: Path) -> None:
    (toned_dir / TONE_FILE).write_bytes(b"not a torch file")
    manifest = json.loads((toned_dir / "manifest.json").read_text())
    manifest["artifacts"][TONE_FILE] = sha256_file(toned_dir / TONE_FILE)
    (toned_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match=r"tone\.pt: tone\.pt is not a tone curves file"):
        load_model_dir(toned_dir)


@pytest.mark.parametrize("tone", [{"file": "prior.pt"}, {"file": "other.pt"}, "tone.pt", {}])
def test_a_manifest_whose_tone_is_not_the_listed_tone_file_is_refused(toned_dir: Path, tone: object) -> None:
    manifest = json.loads((toned_dir / "manifest.json").read_text())
    manifest["tone"] = tone
    (toned_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match=re.escape("'tone' must name 'tone.pt', listed in 'artifacts'")):
        load_model_dir(toned_dir)
