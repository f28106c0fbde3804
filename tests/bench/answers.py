"""A digest of the service's answers to a fixed set of requests, to compare two versions of the code byte for byte.

Runs the app in-process (TestClient) on a model directory, in both engines (inference process and thread), sends
/generate requests (PNG and JSON, sampled and given latents, one and several digits, every layout option) and
/encode uploads (inferred and given digits, several sizes and formats, a large JPEG, and refused ones), one at a time
and then all at once (so that they share batches), and prints one line per answer: status, media type, X-Seed,
X-Model-Id and the body's sha256. Only the app's public entry points are used (create_app, Settings), so the same
file runs against an older checkout. `--ignore-field NAME` (repeatable) digests a JSON answer without that top-level
field, in a canonical form (sorted keys, compact), to show that two checkouts differ by that field alone:

    python -m tests.bench.answers [--model-dir DIR] > ours.txt
    git archive main | tar -x -C /tmp/main && cp tests/bench/answers.py /tmp/main/tests/bench/ \
        && (cd /tmp/main && python -m tests.bench.answers) > main.txt && diff main.txt ours.txt
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from app.factory import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def generate_bodies(latent_dim: int) -> list[tuple[dict[str, Any], bool]]:
    """(body, as JSON) pairs covering /generate's options; seeded, so each run sends the same."""
    rng = random.Random(19)
    bodies: list[tuple[dict[str, Any], bool]] = []
    for i in range(24):
        digits = rng.randrange(10) if i % 3 else [rng.randrange(10) for _ in range(rng.randint(1, 6))]
        body: dict[str, Any] = {"digit": digits, "n": rng.randint(1, 12), "seed": rng.randrange(2**53)}
        if i % 4 == 1:
            body["temperature"] = round(rng.uniform(0, 2), 3)
        if i % 5 == 2:
            body |= {"columns": rng.randint(1, 9), "padding": rng.randint(0, 5), "scale": rng.randint(1, 3)}
        bodies.append((body, i % 2 == 0))
    one = [round(rng.gauss(0, 1), 6) for _ in range(latent_dim)]
    several = [[rng.gauss(0, 1.5) for _ in range(latent_dim)] for _ in range(3)]
    bodies += [
        ({"digit": 4, "latent": one, "n": 3}, True),
        ({"digit": [1, 7], "latent": several}, True),
        ({"digit": [0, 8], "latent": several, "columns": 2}, False),
        ({"digit": 9, "n": 2, "latent": one}, False),
        ({"digit": 3, "n": 40, "seed": 0}, True),
    ]
    return bodies


def drawing(size: tuple[int, int], angle: float) -> Image.Image:
    img = Image.new("L", size, 255)
    w, h = size
    img.paste(20, (w // 2 - max(1, w // 20), h // 6, w // 2 + max(1, w // 20), h - h // 6))
    img.paste(20, (w // 3, h // 6, 2 * w // 3, h // 6 + max(1, h // 30)))
    return img.rotate(angle, fillcolor=255)


def saved(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def uploads() -> list[tuple[bytes, str | None]]:
    """(file, digit field) pairs: drawings in several formats and sizes, a photo-sized JPEG, and refused uploads."""
    files = [
        saved(drawing((60 + 13 * i, 90 + 7 * i), 9.0 * i), "PNG" if i % 3 == 0 else "JPEG" if i % 3 == 1 else "BMP")
        for i in range(10)
    ]
    files.append(saved(drawing((2400, 3000), 4.0).convert("RGB"), "JPEG", quality=90))  # decoded at a reduced scale
    out: list[tuple[bytes, str | None]] = [(f, None if i % 2 else str(i % 10)) for i, f in enumerate(files)]
    out += [
        (b"not an image", None),  # 415
        (files[0][:40], None),  # a truncated PNG: 400
        (saved(Image.new("L", (50, 50), 255), "PNG"), None),  # blank: 422
        (saved(Image.new("L", (5000, 4000), 0), "PNG", compress_level=1), None),  # too many pixels: 413
    ]
    return out


def line(r: Any, ignored: frozenset[str] = frozenset()) -> str:
    h = r.headers
    content = r.content
    if ignored and h.get("content-type") == "application/json":
        body = {k: v for k, v in json.loads(content).items() if k not in ignored}
        content = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(content).hexdigest()[:24]
    return f"{r.status_code} {h.get('content-type')} seed={h.get('x-seed')} model={h.get('x-model-id')} {digest}"


def answers(model_dir: Path, inference_process: bool, ignored: frozenset[str] = frozenset()) -> list[str]:
    settings = Settings(model_dir=model_dir, inference_process=inference_process, max_upload_bytes=64 * 1024 * 1024)
    with TestClient(create_app(settings)) as c:
        latent_dim = c.get("/model").json()["latent_dim"]
        bodies = generate_bodies(latent_dim)
        files = uploads()

        def generate(item: tuple[dict[str, Any], bool]) -> str:
            body, as_json = item
            headers = {"Accept": "application/json"} if as_json else {}
            return line(c.post("/generate", json=body, headers=headers), ignored)

        def encode(item: tuple[bytes, str | None]) -> str:
            data, digit = item
            form = {} if digit is None else {"digit": digit}
            answer = c.post("/encode", files={"file": ("f", data, "application/octet-stream")}, data=form)
            return line(answer, ignored)

        alone = [generate(b) for b in bodies] + [encode(u) for u in files]
        with ThreadPoolExecutor(8) as pool:  # at once: they share batches, and must not show it
            together = list(pool.map(generate, bodies)) + list(pool.map(encode, files))
    assert together == alone, "answers changed with what shared their batch"
    return alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts" / "default")
    parser.add_argument("--ignore-field", action="append", default=[], help="a JSON answer's field left out")
    args = parser.parse_args()
    ignored = frozenset(args.ignore_field)
    in_process = answers(args.model_dir, inference_process=True, ignored=ignored)
    in_thread = answers(args.model_dir, inference_process=False, ignored=ignored)
    assert in_process == in_thread, "the two engines answered differently"
    print("\n".join(in_process))


if __name__ == "__main__":
    main()
