"""Adding a reader to a model directory: reader.pt (scripted, checked against eager), its torch.export program when
the directory has the other networks' programs, and its record in the manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from model.artifacts import quiet_torchscript
from model.manifest import ENCODER_FILE, MANIFEST_FILE, PROGRAM_FILES, READER_FILE, sha256_file
from model.network import CVAEConfig, Reader
from training.export import check_reader_scripted, export_programs, model_id, rewrite_model_dir


def add_reader(model_dir: Path, reader: Reader, record: dict[str, Any]) -> dict[str, Any]:
    """Write reader.pt into model_dir (scripted, checked against eager), and reader.pt2 (its torch.export program)
    when the directory has the other networks' programs, and list them in the manifest, replacing the directory only
    once everything is written. The model's id changes with its reader. -> the manifest."""
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())

    def add(folder: Path) -> None:
        with quiet_torchscript():
            torch.jit.save(torch.jit.script(reader), str(folder / READER_FILE))
            check_reader_scripted(reader, torch.jit.load(str(folder / READER_FILE)))
        manifest["artifacts"][READER_FILE] = sha256_file(folder / READER_FILE)
        if PROGRAM_FILES[ENCODER_FILE]["forward"] in manifest["artifacts"]:
            cfg = CVAEConfig.from_dict(manifest["config"]["model"])
            for file in export_programs({READER_FILE: reader}, folder, cfg):
                manifest["artifacts"][file] = sha256_file(folder / file)
        manifest["reader"] = {"file": READER_FILE, **record}
        manifest["id"] = model_id(manifest["artifacts"])

    rewrite_model_dir(model_dir, manifest, add)
    return manifest
