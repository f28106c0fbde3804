"""What the server process reads of the model without torch: the model card (model/manifest.py, checked by
model/manifest.py) agrees with the loaded model and refuses a model directory as the loader does, and an upload is
sized from its header (model/uploads.py) as model/imaging.py decodes it. The server process itself imports neither
torch nor numpy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from app.core.errors import ServiceError
from app.operations.encode import header_pixels, image_refusal
from model.artifacts import load_model_dir
from model.imaging import decode_image
from model.manifest import ModelDirError, read_card
from model.uploads import ImageError
from tests.conftest import drawing, encoded, set_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_the_card_reads_what_the_loaded_model_says(tiny_model_dir: Path):
    card, model = read_card(tiny_model_dir), load_model_dir(tiny_model_dir)
    assert (card.id, card.latent_dim, card.num_classes, card.temperature) == (
        model.id, model.latent_dim, model.num_classes, model.temperature,
    )  # fmt: skip
    assert card.prior_kind == model.prior.kind and card.manifest == model.manifest


def broken_copies(tiny_model_dir: Path, tmp_path: Path) -> list[Path]:
    """Model directories each wrong in one way the loader names."""
    dirs = [tmp_path / "nowhere"]
    for name, change in [
        ("checksum", lambda d: (d / "decoder.pt").open("ab").write(b"!")),
        ("no-encoder", lambda d: (d / "encoder.pt").unlink()),
        ("no-manifest", lambda d: (d / "manifest.json").unlink()),
        ("not-json", lambda d: (d / "manifest.json").write_text("{")),
        ("hot", lambda d: edit_manifest(d, lambda m: m["prior"].__setitem__("temperature", 9))),
        ("version", lambda d: edit_manifest(d, lambda m: m.__setitem__("format_version", 2))),
        ("keys", lambda d: edit_manifest(d, lambda m: m.pop("labels"))),
    ]:
        copy = Path(shutil.copytree(tiny_model_dir, tmp_path / name))
        change(copy)
        dirs.append(copy)
    return dirs


def edit_manifest(model_dir: Path, change) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    change(manifest)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def test_the_card_refuses_a_model_directory_as_the_loader_does(tiny_model_dir: Path, tmp_path: Path):
    for model_dir in broken_copies(tiny_model_dir, tmp_path):
        with pytest.raises(ModelDirError) as loading:
            load_model_dir(model_dir)
        with pytest.raises(ModelDirError) as reading:
            read_card(model_dir)
        assert str(reading.value) == str(loading.value), model_dir.name


def uploads_to_size() -> list[bytes]:
    photo = drawing((2500, 3100)).convert("RGB")
    return [
        encoded(drawing()),
        encoded(drawing((300, 200)), "JPEG"),
        encoded(photo, "JPEG"),  # decoded at a reduced scale
        encoded(photo, "PNG", compress_level=1),  # too many pixels for the limit below
        encoded(Image.new("L", (9000, 9000)), "PNG"),  # a decompression bomb by Pillow's count
        b"not an image",
        encoded(drawing())[:30],
        b"GIF89a" + b"\x00" * 20,
    ]


@pytest.mark.parametrize("index", range(len(uploads_to_size())))
def test_an_upload_is_sized_from_its_header_as_the_model_decodes_it(index: int):
    """What the server counts (header_pixels) is what the inference process decodes, or the same refusal."""
    data, limit = uploads_to_size()[index], 5_000_000
    try:
        got: int | dict = header_pixels(data, limit)
    except ServiceError as e:
        got = e.body()
    try:
        expected: int | dict = decode_image(data, limit).numel()
    except ImageError as e:  # the refusal the inference process answers with
        expected = image_refusal(e).body()
    assert got == expected


def test_the_server_process_imports_neither_torch_nor_numpy(tiny_model_dir: Path):
    """The whole service (the inference process doing the model work) answers both endpoints while the server's own
    interpreter never imports torch or numpy."""
    script = f"""
import sys
from fastapi.testclient import TestClient
from app.__main__ import main  # the entry point's imports too
from app.factory import create_app
from app.settings import Settings
with TestClient(create_app(Settings(model_dir={str(tiny_model_dir)!r}))) as c:
    assert c.post("/generate", json={{"digit": 3, "n": 2}}, headers={{"Accept": "application/json"}}).status_code == 200
    assert c.post("/encode", files={{"file": ("f", {encoded(drawing())!r})}}).status_code == 200
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy", "model")))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['model', 'model.manifest', 'model.uploads']"  # tests/test_rooms.py: TORCH_FREE


# --- classes, image shape and preprocessing: the manifest drives them -------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"preprocessing": "fashion"}, "preprocessing 'fashion' is not one this code knows: mnist, frame"),
        ({"image_shape": [1, 32, 32]}, 'preprocessing "mnist" makes [1, 28, 28] images'),
        ({"image_shape": [3, 28, 28]}, "image_shape must be [1, height, width]"),
        ({"labels": ["coat", "Coat"]}, "labels must name each class once"),
        ({"labels": []}, "labels must be a non-empty list of class names"),
        ({"labels": [0, 1]}, "labels must be a non-empty list of class names"),
    ],
)
def test_the_card_refuses_classes_shapes_and_preprocessing_it_cannot_serve(
    tiny_model_dir: Path, tmp_path: Path, fields: dict, words: str
):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    set_manifest(model_dir, **fields)
    with pytest.raises(ModelDirError, match=r"manifest\.json") as e:
        read_card(model_dir)
    assert words in str(e.value)


def test_a_manifest_without_preprocessing_is_read_as_digits(tiny_model_dir: Path, tmp_path: Path):
    old = Path(shutil.copytree(tiny_model_dir, tmp_path / "old"))  # as directories were written before the field
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["preprocessing"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    card = read_card(old)
    assert "preprocessing" not in card.manifest and card.preprocessing == "mnist"
    assert card.is_digits and card.labels == [str(i) for i in range(10)]


def test_the_card_finds_a_class_by_number_or_name_in_any_case(fashion_model_dir: Path):
    card = read_card(fashion_model_dir)
    assert (card.preprocessing, card.is_digits, card.num_classes) == ("frame", False, 10)
    assert [card.class_of(v) for v in (4, "coat", "COAT", "Ankle Boot", "4", "04")] == [4, 4, 4, 9, 4, 4]
    assert [card.class_of(v) for v in (10, -1, "boot", "", "4.0", "٣")] == [None] * 6
    assert card.classes[0] == {"label": 0, "name": "t-shirt/top"}
