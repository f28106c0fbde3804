"""The protocol's models: each served model NAME answers as NAME-generate and NAME-encode. Their metadata, an inference
request checked and turned into the operations' payloads (a generate infer: one /generate payload that returns raw
tiles, or one per label when latents are given; an encode infer of k images: k /encode payloads), and the results
turned into output tensors. Torch-free, no HTTP: every mistake is a ProtocolError (400)."""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from array import array
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Any, NamedTuple

from app import paths
from app.core.errors import ServiceError
from app.oip.tensors import Output, ProtocolError, Request, Tensor
from app.operations import encode, generate, grid
from app.operations.base import Operation, Serving
from app.operations.encode import EncodeForm, EncodeResult, Upload
from app.operations.generate import MAX_LATENT_ABS, MAX_SEED, RANDOM_SEED_BITS, GenerateSpec
from app.operations.grid import MAX_TILES, Drawing
from model.manifest import MAX_TEMPERATURE, ModelCard

KINDS = ("generate", "encode")  # NAME-<kind>: which operation a protocol model runs
MAX_IMAGES = 256  # most pictures in one encode infer (each one job in the encode lane)
PLATFORM = "cvae-digits"


class Spec(NamedTuple):
    """A protocol tensor: its name, datatype and shape (-1: any length)."""

    name: str
    datatype: str
    shape: list[int]
    optional: bool = False


def inputs_of(card: ModelCard, kind: str) -> list[Spec]:
    if kind == "generate":
        return [Spec("label", "INT64", [-1]), Spec("latent", "FP32", [-1, card.latent_dim], optional=True)]
    return [Spec("image", "BYTES", [-1]), Spec("label", "INT64", [-1], optional=True)]


def outputs_of(card: ModelCard, kind: str) -> list[Spec]:
    d = card.latent_dim
    if kind == "generate":
        return [Spec("image", "UINT8", [-1, *card.tile_shape]), Spec("latent", "FP32", [-1, d])]
    return [Spec("label", "INT64", [-1]), Spec("probabilities", "FP32", [-1, card.num_classes]),
            Spec("mean", "FP32", [-1, d]), Spec("log_var", "FP32", [-1, d])]  # fmt: skip


def protocol_model(model: str, names: Container[str]) -> tuple[str, str] | None:
    """The served model (one of `names`) and the operation the protocol model `model` runs, or None: not one of
    theirs. NAME-KIND splits at its last hyphen: a served name may hold hyphens, a kind holds none."""
    name, _, kind = model.rpartition("-")
    return (name, kind) if name in names and kind in KINDS else None


def protocol_names(names: Iterable[str]) -> list[str]:
    """Every protocol model of the served models `names`."""
    return [f"{name}-{kind}" for name in names for kind in KINDS]


def metadata(card: ModelCard, model: str, kind: str) -> dict[str, Any]:
    def described(specs: list[Spec]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": s.shape,
                 **({"parameters": {"optional": True}} if s.optional else {})} for s in specs]  # fmt: skip

    return {
        "name": model,
        "versions": [card.id],
        "platform": PLATFORM,
        "inputs": described(inputs_of(card, kind)),
        "outputs": described(outputs_of(card, kind)),
    }


def max_elements(card: ModelCard) -> int:
    """The most elements an input of any protocol model of `card` may have."""
    return max(MAX_TILES * card.latent_dim, MAX_IMAGES)


class Plan(NamedTuple):
    """A checked inference request: the operation, one payload per job in its lane, how the results become the
    output tensors asked for (each with whether it goes as binary tensor data), and the response's parameters."""

    op: Operation[Any, Any, Any]
    payloads: list[Any]
    finish: Callable[[list[Any]], list[tuple[Tensor, bool]]]
    parameters: dict[str, Any]


def plan(card: ModelCard, serving: Serving, kind: str, request: Request) -> Plan:
    """ProtocolError (400) for what the protocol model cannot take; ServiceError from the operation's own checks
    (a picture's header: 413, 415, 400)."""
    specs = {s.name: s for s in inputs_of(card, kind)}
    given = {t.name: t for t in request.inputs}
    for t in request.inputs:
        spec = specs.get(t.name)
        if spec is None:
            raise ProtocolError(f"unknown input {t.name!r:.40}: the inputs are {', '.join(specs)}")
        if t.datatype != spec.datatype:
            raise ProtocolError(f"input {t.name!r} must be {spec.datatype}, not {t.datatype}")
        if len(t.shape) != len(spec.shape) or any(w not in (-1, g) for w, g in zip(spec.shape, t.shape, strict=True)):
            raise ProtocolError(f"input {t.name!r} must have shape {spec.shape}, not {list(t.shape)}")
    for spec in specs.values():
        if not spec.optional and spec.name not in given:
            raise ProtocolError(f"input {spec.name!r} is missing")
    if kind == "generate":
        return _generate(card, request, given)
    return _encode(serving, request, given)


def _selected(request: Request, available: Sequence[str], withheld: dict[str, str] | None = None) -> list[Output]:
    """The outputs asked for (all by default), each with whether it goes as binary tensor data; withheld: outputs
    this request cannot have, and why."""
    if request.outputs is None:
        return [Output(name, request.binary_default) for name in available]
    for o in request.outputs:
        if o.name not in available:
            why = (withheld or {}).get(o.name)
            raise ProtocolError(why or f"unknown output {o.name!r:.40}: the outputs are {', '.join(available)}")
    return request.outputs


def _labels(card: ModelCard, t: Tensor, most: int) -> list[int]:
    if not 1 <= len(t.data) <= most:
        raise ProtocolError(f"input {t.name!r} must hold 1 to {most} labels, not {len(t.data)}")
    labels = [int(v) for v in t.data]
    classes = card.num_classes
    unknown = sorted({v for v in labels if not 0 <= v < classes})
    if unknown:
        raise ProtocolError(f"this model's labels are 0-{classes - 1}, not {unknown[:10]}")
    return labels


def _number(params: dict[str, Any], name: str, low: float, high: float, integer: bool) -> Any:
    value = params.get(name)
    if value is None:
        return None
    kinds = int if integer else int | float
    if not isinstance(value, kinds) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"parameter {name} must be {'an integer' if integer else 'a number'} in [{low}, {high}]")
    return value


def _generate(card: ModelCard, request: Request, given: dict[str, Tensor]) -> Plan:
    op = generate.OPERATION
    labels = _labels(card, given["label"], MAX_TILES)
    k, d = len(labels), card.latent_dim
    seed = _number(request.parameters, "seed", 0, MAX_SEED, integer=True)
    temperature = _number(request.parameters, "temperature", 0, MAX_TEMPERATURE, integer=False)
    outputs = _selected(request, [s.name for s in outputs_of(card, "generate")])
    latent = given.get("latent")
    # (labels, n, latents, seed, temperature, the request's image of each tile): one payload each
    groups: list[tuple[tuple[int, ...], int, tuple[tuple[float, ...], ...] | None, int | None, float, list[int]]]
    if latent is None:
        # One label repeated: /generate {label, n: k} (k samples of that label's prior); else {label: labels, n: 1}
        # (one sample of the prior every label shares, drawn under each label). The same seed, the same images.
        same = len(set(labels)) == 1
        seed = secrets.randbits(RANDOM_SEED_BITS) if seed is None else seed
        t = card.temperature if temperature is None else float(temperature)
        groups = [(tuple(labels[:1]) if same else tuple(labels), k if same else 1, None, seed, t, list(range(k)))]
    else:
        if latent.shape[0] != k:
            raise ProtocolError(f"input 'latent' has {latent.shape[0]} rows for {k} labels: give one per label")
        if seed is not None or temperature is not None:
            raise ProtocolError("seed and temperature apply to sampled latents only; omit them when giving latent")
        values = latent.data
        if not all(math.isfinite(v) and abs(v) <= MAX_LATENT_ABS for v in values):
            raise ProtocolError(f"input 'latent' must hold finite numbers within +-{MAX_LATENT_ABS:g}")
        rows = [tuple(float(v) for v in values[i * d : (i + 1) * d]) for i in range(k)]
        # A payload draws every latent under each of its labels: one payload per label, its images in one batch.
        where: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            where.setdefault(label, []).append(i)
        groups = [((label, ), len(idx), tuple(rows[i] for i in idx), None, card.temperature, idx)
                  for label, idx in where.items()]  # fmt: skip
    payloads, order = [], []
    for labels_, n, rows_, seed_, t, idx in groups:
        g = grid.layout(card, tiles=len(labels_) * n, columns=None, default_columns=n, padding=0, scale=1)
        payloads.append(GenerateSpec(
            labels=labels_, n=n, latent=rows_, seed=seed_, temperature=t, columns=g.columns, padding=g.padding,
            scale=g.scale, width=g.width, height=g.height, with_latents=True, raw=True,
        ))  # fmt: skip
        order.append(idx)
    h, w = card.tile_shape

    def finish(results: list[Drawing]) -> list[tuple[Tensor, bool]]:
        drawn: list[tuple[bytes, bytes]] = []
        for r in results:
            assert r.tiles is not None and r.latents is not None  # asked for: raw, with_latents
            drawn.append((r.tiles, r.latents))
        if len(drawn) == 1:  # one drawing (sampled, or latents of one label): its tiles in the request's order
            pixels, latents = drawn[0]
        else:  # a drawing per label: each tile, and its latent, back where the request had it
            size, row = h * w, 4 * d  # a tile's bytes; a latent's (float32)
            tiles: list[bytes] = [b""] * k
            rows: list[bytes] = [b""] * k
            for idx, (pixels_, latents_) in zip(order, drawn, strict=True):
                for j, i in enumerate(idx):
                    tiles[i] = pixels_[j * size : (j + 1) * size]
                    rows[i] = latents_[j * row : (j + 1) * row]
            pixels, latents = b"".join(tiles), b"".join(rows)
        made = {
            "image": Tensor("image", "UINT8", (k, h, w), pixels),
            "latent": Tensor("latent", "FP32", (k, d), array("f", latents)),
        }
        return [(made[o.name], o.binary) for o in outputs]

    # The seed the latents were sampled with, given or drawn, as /generate's X-Seed: the same request with it draws
    # the same images. None only when the latents were given.
    return Plan(op, payloads, finish, {} if seed is None else {"seed": seed})


def _encode(serving: Serving, request: Request, given: dict[str, Tensor]) -> Plan:
    op = encode.OPERATION
    card = serving.card
    images = given["image"]
    k = len(images.data)
    if not 1 <= k <= MAX_IMAGES:
        raise ProtocolError(f"input 'image' must hold 1 to {MAX_IMAGES} pictures, not {k}")
    labels: list[int | None] = [None] * k
    if "label" in given:
        labels = list(_labels(card, given["label"], MAX_IMAGES))
        if len(labels) != k:
            raise ProtocolError(f"input 'label' has {len(labels)} labels for {k} pictures: give one per picture")
    names = [s.name for s in outputs_of(card, "encode")]
    withheld = {}
    if "label" in given:  # /encode gives no probabilities for a given label
        names.remove("probabilities")
        withheld["probabilities"] = "probabilities come only with labels read from the pictures (no input 'label')"
    outputs = _selected(request, names, withheld)
    pictures = [_picture(v, images.binary, i) for i, v in enumerate(images.data)]
    payloads: list[Upload] = []
    for data, label in zip(pictures, labels, strict=True):
        payloads.append(op.prepare(serving, EncodeForm(file=data, label=None if label is None else str(label)), True))
    c, d = card.num_classes, card.latent_dim

    def finish(results: list[EncodeResult]) -> list[tuple[Tensor, bool]]:
        made = {
            "label": lambda: Tensor("label", "INT64", (k,), [r.label for r in results]),
            "probabilities": lambda: Tensor(
                "probabilities", "FP32", (k, c), [p for r in results for p in (r.probabilities or [])]
            ),
            "mean": lambda: Tensor("mean", "FP32", (k, d), [v for r in results for v in r.mean]),
            "log_var": lambda: Tensor("log_var", "FP32", (k, d), [v for r in results for v in r.log_var]),
        }
        return [(made[o.name](), o.binary) for o in outputs]

    return Plan(op, payloads, finish, {})


def _picture(value: bytes, binary: bool, i: int) -> bytes:
    """An element of 'image': its bytes as sent in binary tensor data, or decoded from its base64 text in JSON."""
    if binary:
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"input 'image'[{i}]: in JSON a picture is its base64 text, and this is not") from None


def refusal(error: ServiceError) -> ServiceError:
    """An operation's refusal as the protocol has it: what the REST endpoints answer 415 or 422 (a request the model
    cannot take) is a 400; the service's own limits (413, 429, 503 with Retry-After) stay as they are."""
    if error.status in (415, 422):
        return ServiceError(400, error.detail, kind=error.kind, headers=error.headers)
    return error


def body_limit(card: ModelCard, kind: str, default: int) -> int:
    """The largest infer body a protocol model reads: a generate infer's JSON of MAX_TILES labels and latents (as
    /generate's limit, for its most latents); an encode infer's as /encode's (CVAE_MAX_UPLOAD_BYTES)."""
    if kind == "generate":
        return min(
            default, generate.GENERATE_BODY_BASE_BYTES + MAX_TILES * card.latent_dim * generate.BYTES_PER_LATENT_NUMBER
        )
    return default


def infer_model(path: str, names: Container[str]) -> tuple[str, str] | None:
    """The served model and the operation of an infer path's protocol model (paths.V2_INFER, with or without a
    version), else None."""
    parts = path.split("/")
    if len(parts) < 5 or parts[-1] != "infer" or paths.v2_template(path) != paths.V2_INFER:
        return None
    return protocol_model(parts[3], names)
