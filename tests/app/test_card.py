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
from tests.conftest import drawing, encoded

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
