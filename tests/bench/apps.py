"""The service's reference points for tests/bench/serve.py, each a FastAPI app run like the service.

* floor: the cheapest FastAPI endpoint doing the service's HTTP part: it validates the same JSON body
  (app/operations/generate.py's GenerateRequest) or multipart upload, then answers a constant PNG (or constant
  JSON). No model.
* floor-asgi: the floor with POST /generate and POST /encode taken by the service's own fast path (app/api/fastpath.py,
  a pure ASGI middleware reading plain JSON bodies and plain multipart uploads as FastAPI would), answering the
  constant PNG or JSON without FastAPI's per-request machinery. The floor of the service's own design, for an honest
  second ratio.
* straightforward: the design the service is measured against: per request, in a plain `def` endpoint (FastAPI's
  thread pool, torch's default threads), sample z from the prior, run the TorchScript decoder on the request's
  rows alone and write the grid with Pillow; /encode decodes the upload and scores the ten labels, also alone.

    python -m tests.bench.apps {floor,floor-asgi,straightforward} --port P [--model-dir DIR]

All run under uvicorn with the service's own configuration (app.__main__.uvicorn_config), access log off.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import Body, FastAPI, File, Form, UploadFile
from fastapi.responses import Response
from PIL import Image
from starlette.types import Scope

from app.api.fastpath import FastPath
from app.operations.encode import EncodeForm
from app.operations.generate import GenerateRequest
from model.artifacts import load_model_dir
from model.imaging import decode_image, to_mnist
from model.inference import label_log_probs
from model.prior import sample_latents

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mnist-1000"


def mnist_digits(count: int) -> torch.Tensor:
    """The first `count` digits of the test fixture, uint8 (count, 28, 28)."""
    from training.data import load_pair  # tests may import training; the apps only need it here

    return load_pair(FIXTURE / "train-images-idx3-ubyte.gz", FIXTURE / "train-labels-idx1-ubyte.gz").images[:count]


def pillow_grid_png(tiles: np.ndarray, columns: int, padding: int, scale: int) -> bytes:
    """uint8 (N, H, W) tiles -> a PNG grid, the straightforward way: paste each tile, save with Pillow."""
    n, h, w = tiles.shape
    rows = -(-n // columns)
    grid = Image.new("L", (columns * (w + padding) + padding, rows * (h + padding) + padding), 0)
    for i in range(n):
        r, c = divmod(i, columns)
        grid.paste(Image.fromarray(tiles[i]), (padding + c * (w + padding), padding + r * (h + padding)))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


ENCODE_ANSWER = json.dumps(
    {"model_id": "floor", "digit": 7, "inferred": True, "probabilities": [0.1] * 10, "mean": [0.0] * 16,
     "log_var": [0.0] * 16}
).encode()  # fmt: skip


@lru_cache(maxsize=1)
def floor_png() -> bytes:
    """A realistic PNG (8 MNIST digits in a row, as {"digit": 3, "n": 8} gives), made once."""
    return pillow_grid_png(mnist_digits(8).numpy(), columns=8, padding=2, scale=1)


def create_floor_app() -> FastAPI:
    png = floor_png()
    app = FastAPI(title="floor")

    @app.post("/generate")
    async def generate(body: Annotated[GenerateRequest, Body()]) -> Response:
        return Response(png, media_type="image/png")

    @app.post("/encode")
    async def encode(
        file: Annotated[UploadFile, File()], digit: Annotated[int | None, Form(ge=0, le=9)] = None
    ) -> Response:
        await file.read()
        return Response(ENCODE_ANSWER, media_type="application/json")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


async def floor_generate(scope: Scope, request: GenerateRequest, accept: str | None) -> Response:
    return Response(floor_png(), media_type="image/png")


async def floor_encode(scope: Scope, form: EncodeForm) -> Response:
    return Response(ENCODE_ANSWER, media_type="application/json")


def create_asgi_floor_app() -> FastAPI:
    app = create_floor_app()
    app.add_middleware(FastPath, generate=floor_generate, encode=floor_encode)  # the service's, with constant answers
    return app


def create_straightforward_app(model_dir: Path) -> FastAPI:
    model = load_model_dir(model_dir)
    app = FastAPI(title="straightforward")

    @app.post("/generate")
    def generate(body: Annotated[GenerateRequest, Body()]) -> Response:
        seed = body.seed if body.seed is not None else secrets.randbits(53)
        with torch.inference_mode():
            temperature = model.temperature if body.temperature is None else body.temperature
            labels = [model.card.class_of(v) for v in body.labels]
            z, y = sample_latents(model.prior, labels, body.n, seed, temperature)
            images = model.decoder(z, y)  # (N, 1, H, W) in [0, 1]
        tiles = (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        png = pillow_grid_png(tiles, body.columns or body.n, body.padding, body.scale)
        return Response(png, media_type="image/png", headers={"X-Seed": str(seed)})

    @app.post("/encode")
    def encode(file: Annotated[UploadFile, File()], digit: Annotated[int | None, Form(ge=0, le=9)] = None) -> dict:
        x = to_mnist(decode_image(file.file.read(), 25_000_000))[None]
        with torch.inference_mode():
            log_probs, means, log_vars = label_log_probs(model.encoder, model.decoder, model.prior, x)
        best = int(log_probs[0].argmax()) if digit is None else digit
        return {
            "model_id": model.id, "digit": best, "inferred": digit is None,
            "probabilities": log_probs[0].exp().tolist(), "mean": means[0, best].tolist(),
            "log_var": log_vars[0, best].tolist(),
        }  # fmt: skip

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main() -> None:
    import uvicorn

    from app.__main__ import uvicorn_config
    from app.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=["floor", "floor-asgi", "straightforward"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", type=Path, help="the model the straightforward app serves")
    parser.add_argument("--torch-threads", type=int, default=0, help="straightforward: torch threads (0: default)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.which == "floor":
        app = create_floor_app()
    elif args.which == "floor-asgi":
        app = create_asgi_floor_app()
    else:
        if args.model_dir is None:
            parser.error("straightforward needs --model-dir")
        app = create_straightforward_app(args.model_dir)
    settings = Settings(model_dir=args.model_dir or Path("."), port=args.port, access_log=False, log_level="warning")
    uvicorn.Server(uvicorn_config(app, settings)).run()


if __name__ == "__main__":
    main()
