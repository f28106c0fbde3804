"""The two model formats side by side: load time, and the time of one /generate, /encode and /interpolate batch in the
inference process's own code (app.inference.worker), each format loaded from the same model directory.

    python -m tests.bench.formats [--model-dir DIR] [--rounds N] [--seconds S]

The model directory needs its torch.export programs (`python -m training.export DIR` adds them). Load time is
measured in a fresh interpreter per load (what a start-up or a reload pays: torch imported first, not counted);
batches with torch at one thread, as the service runs them, the formats alternating every round so that a noisy
machine slows both alike. Prints medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.engine.interface import InferenceOptions
from app.inference.worker import Inference
from app.operations import interpolate
from app.operations.base import Serving
from app.operations.encode import Upload
from app.operations.generate import GenerateRequest, make_spec
from app.settings import Settings, default_model_dir
from model.artifacts import load_model_dir
from model.manifest import ModelFormat
from tests.conftest import drawing, encoded

FORMATS: tuple[ModelFormat, ...] = ("torchscript", "export")
LOAD = """
import json, sys, time
import torch
from model.artifacts import load_model_dir
started = time.perf_counter()
model = load_model_dir(sys.argv[1], model_format=sys.argv[2])
print(json.dumps({"format": model.format, "s": time.perf_counter() - started}))
"""


def load_seconds(model_dir: Path, model_format: ModelFormat) -> float:
    out = subprocess.run([sys.executable, "-c", LOAD, str(model_dir), model_format], capture_output=True, text=True)
    result = json.loads(out.stdout)
    assert result["format"] == model_format, f"{model_dir} has no torch.export programs: python -m training.export"
    return float(result["s"])


def per_call(fn: Callable[[], object], seconds: float) -> float:
    fn()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=default_model_dir())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="of each timed batch kind per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = Settings(model_dir=args.model_dir)
    options = {
        f: InferenceOptions(
            decode_chunk=s.decode_chunk,
            max_pass_rows=s.max_pass_rows,
            max_encode_batch=s.max_encode_batch,
            png_compress_level=s.png_compress_level,
            max_image_pixels=s.max_image_pixels,
            model_format=f,
        )
        for f in FORMATS
    }
    engines = {f: Inference(load_model_dir(args.model_dir, model_format=f), options[f]) for f in FORMATS}
    for engine in engines.values():
        engine.prepare()
    card = engines["torchscript"].card
    spec = make_spec(card, GenerateRequest(digit=3, n=8, seed=1), with_latents=False)
    big = make_spec(card, GenerateRequest(digit=list(range(10)), n=25, seed=1), with_latents=False)
    ends = {"from": [0.5] * card.latent_dim, "to": [-0.5] * card.latent_dim}
    walk = interpolate.OPERATION.prepare(
        Serving(card=card, max_image_pixels=s.max_image_pixels),
        interpolate.InterpolateRequest.model_validate({"digit": 3, **ends, "steps": 8}),
        as_json=False,
    )
    uploads = [Upload(encoded(drawing()), None)]
    results: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for f in FORMATS:
            e = engines[f]
            results.setdefault(f"{f} load s", []).append(load_seconds(args.model_dir, f))
            batches: dict[str, Callable[[], object]] = {
                "/generate n=8": lambda: e.run("generate", [spec]),  # noqa: B023 (called before e changes)
                "/generate 250 tiles": lambda: e.run("generate", [big]),  # noqa: B023
                "/encode inferred": lambda: e.run("encode", uploads),  # noqa: B023
                "/interpolate 8 steps": lambda: e.run("interpolate", [walk]),  # noqa: B023
            }
            for name, batch in batches.items():
                results.setdefault(f"{f} {name} ms", []).append(1e3 * per_call(batch, args.seconds))
    for name, values in results.items():
        print(f"{name:32s} median {statistics.median(values):8.3f}   all {' '.join(f'{v:.3f}' for v in values)}")


if __name__ == "__main__":
    main()
