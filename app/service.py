"""Tensor and image work for both endpoints. No HTTP, no asyncio: an engine (app/engine.py) runs it.

/generate: latents (model/prior.py) -> decoder -> grid -> PNG. /encode: upload bytes -> Pillow -> MNIST-style digit
(model/imaging.py) -> encoder, and label scoring (model/inference.py) when the digit is not given.

Reproducibility: an answer depends only on the request and the model, never on what shares its batch.
- /generate: each request's latents come from its own seed (sample_latents_many), and the decoder runs on passes of
  a whole number of `decode_chunk` rows (zero-padded). A pass is one chunk unless prepare() finds, on this machine,
  that every pass size up to `max_pass_rows` gives each row bit for bit what a chunk gives it: a matrix kernel may
  sum in another order for another shape, but which kernel a shape gets does not depend on the numbers in it.
- /encode: uploads whose digit is inferred are scored together, in passes of up to `max_encode_batch` uploads,
  only when prepare() finds that every such pass gives each upload bit for bit what it gets alone; otherwise one
  upload per pass. An upload with a given digit is encoded in a pass of its own (a one-row pass may take another
  kernel than any larger one, so larger passes would change its numbers).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import NamedTuple

import torch
from PIL import UnidentifiedImageError
from torch import Tensor

from app.errors import ServiceError, field_error
from model.artifacts import LoadedModel
from model.imaging import ImageError, decode_image, decoded_pixels, encode_png, tile_grid, to_mnist, to_uint8
from model.inference import label_log_probs
from model.prior import sample_latents, sample_latents_many

log = logging.getLogger(__name__)

MAX_OUTPUT_PIXELS = 4096 * 4096  # largest PNG /generate writes (width * height)
# What a request costs the engine, estimated before it is queued (app/batching.py turns it into seconds, starting from
# the guesses below and learning from the batches it runs): a /generate tile costs the decoder about as much as
# writing 12,000 grid pixels (scaling, PNG), and a request ~8 tiles besides; an upload costs the model (encoder,
# label scoring) about as much as decoding 100,000 pixels. The seconds per unit are learnt; these ratios are not.
GENERATE_SECONDS_PER_TILE = 50e-6
PIXELS_PER_TILE = 12_000
REQUEST_TILES = 8
ENCODE_SECONDS_PER_PIXEL = 40e-9
UPLOAD_PIXELS = 100_000
RANDOM_SEED_BITS = 53  # seeds drawn for requests without one stay exact in JSON / JavaScript numbers
WARM_UP_RUNS = 3  # TorchScript's profiling executor settles after its first runs; the last two must agree
PASS_CHECK_ROUNDS = 2  # the pass-size checks run twice: the first run of a shape may take another path
# Fewer uploads than this are scored padded with blank images to this many. A linear layer of a few rows can take
# another CPU kernel than one of more rows (found here: 1-3 rows against 4 or more), with other last bits, which
# made scoring several uploads together differ from scoring each alone, so every upload was scored alone; padded,
# a lone upload is scored by the kernels a batch uses. check_scoring_passes() still decides, on each machine.
SCORE_MIN_ROWS = 4


@dataclass(frozen=True)
class ServiceOptions:
    """How the service runs (from the settings: engine.service_options); crosses to the inference process as JSON."""

    decode_chunk: int  # decoder passes are whole numbers of this many rows, zero-padded
    max_pass_rows: int  # the largest decoder pass prepare() may allow
    max_encode_batch: int  # the most inferred-digit uploads scored in one pass, if prepare() allows it
    png_compress_level: int  # zlib level of the PNGs
    max_image_pixels: int  # largest upload in pixels, checked from its header before decoding


class GenerateSpec(NamedTuple):
    """One /generate request, checked against the model. Tiles are digit-major, then sample."""

    digits: tuple[int, ...]
    n: int
    latent: Tensor | None  # (n, D) float32, used as-is; None: sample from the prior
    seed: int | None  # None exactly when latent is given
    temperature: float
    columns: int
    padding: int
    scale: int
    width: int
    height: int

    @property
    def tiles(self) -> int:
        return len(self.digits) * self.n


def generate_work(spec: GenerateSpec) -> float:
    """A /generate request's estimated work, in tiles."""
    return spec.tiles + spec.width * spec.height / PIXELS_PER_TILE + REQUEST_TILES


def encode_work(decoded_pixels: int) -> float:
    """An /encode upload's estimated work, in pixels decoded."""
    return decoded_pixels + UPLOAD_PIXELS


class Upload(NamedTuple):
    """One /encode request: the uploaded file's bytes and the digit it shows (None: infer it)."""

    data: bytes
    digit: int | None


class EncodeResult(NamedTuple):
    """The posterior of z for the given or inferred digit; probabilities only when inferred."""

    digit: int
    inferred: bool
    probabilities: list[float] | None
    mean: list[float]
    log_var: list[float]


class Prepared(NamedTuple):
    """What prepare() allowed on this machine."""

    pass_rows: int  # rows per decoder pass at most
    score_uploads: int  # inferred-digit uploads per scoring pass at most


class DecodeJob(NamedTuple):
    """One request's rows for the decoder."""

    z: Tensor  # (N, D)
    labels: Tensor  # (N,)


class DigitService:
    """Everything the API does to tensors and images, for one loaded model."""

    def __init__(self, model: LoadedModel, options: ServiceOptions) -> None:
        self.model = model
        self.options = options
        self.latent_dim = model.latent_dim
        self.tile_h, self.tile_w = (int(s) for s in model.manifest["image_shape"][-2:])
        # Until prepare() checks larger ones: one decoder chunk, one upload per scoring pass.
        self.pass_rows = options.decode_chunk
        self.score_uploads = 1

    @property
    def model_id(self) -> str:
        return self.model.id

    # --- preparation -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare(self) -> Prepared:
        """Make the service ready to answer: choose the pass sizes that keep answers independent of batching, run
        every code path (the decoder several times, at the shapes it will run at), and check that generation is
        reproducible. RuntimeError if it is not."""
        self.pass_rows = self.check_decoder_passes()
        self.score_uploads = self.check_scoring_passes()
        spec = self._warm_up_spec()
        pngs = [self.draw_batch([spec])[0] for _ in range(WARM_UP_RUNS)]
        if pngs[-1] != pngs[-2]:
            raise RuntimeError("warm-up: the same seed gave two different images; generation is not reproducible")
        stroke = encode_png(to_uint8(self._stroke())[0])
        for outcome in self.encode_batch([Upload(stroke, None), Upload(stroke, 0)]):
            if isinstance(outcome, ServiceError):
                raise RuntimeError(f"warm-up: encoding a drawn stroke failed: {outcome.detail}")
        return Prepared(self.pass_rows, self.score_uploads)

    def _warm_up_spec(self) -> GenerateSpec:
        """The request prepare() draws: every label, two samples each."""
        digits = list(range(min(10, self.model.num_classes)))
        return self.make_spec(
            digits=digits, n=2, latent=None, seed=0, temperature=1.0, columns=None, padding=2, scale=1
        )

    @torch.inference_mode()
    def check_decoder_passes(self) -> int:
        """The largest pass (whole chunks, at most max_pass_rows) such that every pass size up to it gives every row
        bit for bit what a one-chunk pass gives that row; one chunk if none larger does."""
        b = self.options.decode_chunk
        most = self.options.max_pass_rows // b * b
        if most <= b:
            return b
        g = torch.Generator().manual_seed(0)
        z = torch.randn(most, self.latent_dim, generator=g)
        labels = torch.randint(0, self.model.num_classes, (most,), generator=g)
        decoder = self.model.decoder
        reference = torch.cat([decoder(z[i : i + b], labels[i : i + b]) for i in range(0, most, b)])
        for _ in range(PASS_CHECK_ROUNDS):
            for rows in range(2 * b, most + 1, b):
                if not torch.equal(decoder(z[:rows], labels[:rows]), reference[:rows]):
                    log.info("decoder passes stay %d rows: a pass of %d rows changes some rows' bits", b, rows)
                    return b
        log.info("decoder passes of up to %d rows (each row bit-identical to a %d-row pass)", most, b)
        return most

    @torch.inference_mode()
    def check_scoring_passes(self) -> int:
        """The largest number of uploads (at most max_encode_batch) such that scoring every number up to it together
        gives each upload bit for bit what scoring it alone gives; 1 if none larger does."""
        most = self.options.max_encode_batch
        if most <= 1:
            return 1
        x = torch.rand(most, 1, self.tile_h, self.tile_w, generator=torch.Generator().manual_seed(0))
        alone = [self._score(x[i : i + 1]) for i in range(most)]
        for _ in range(PASS_CHECK_ROUNDS):
            for count in range(2, most + 1):
                together = self._score(x[:count])
                for i in range(count):
                    if not all(torch.equal(t[i], a[0]) for t, a in zip(together, alone[i], strict=True)):
                        log.info("uploads are scored one at a time: scoring %d together changes some bits", count)
                        return 1
        log.info("uploads are scored up to %d at a time (each bit-identical to scoring it alone)", most)
        return most

    def _stroke(self) -> Tensor:
        """A vertical stroke, white on black: (1, H, W) grey levels, an image of a digit one."""
        x = torch.zeros(1, self.tile_h, self.tile_w)
        x[0, self.tile_h // 4 : -self.tile_h // 4, self.tile_w // 2 - 1 : self.tile_w // 2 + 1] = 1.0
        return x

    # --- /generate -----------------------------------------------------------------------------------------------

    def make_spec(
        self,
        *,
        digits: list[int],
        n: int,
        latent: list[float] | list[list[float]] | None,
        seed: int | None,
        temperature: float | None,
        columns: int | None,
        padding: int,
        scale: int,
    ) -> GenerateSpec:
        """Check what depends on the model (labels, latent size, output size) and fix the seed and the temperature
        (None: the model's). Cheap: no tensors beyond the given latent."""
        self.check_digits(digits, ["body", "digit"])
        z = None
        if latent is not None:
            rows = latent if isinstance(latent[0], list) else [latent]
            bad = [i for i, row in enumerate(rows) if len(row) != self.latent_dim]
            if bad:
                i = bad[0]
                loc: list[str | int] = ["body", "latent"] + ([i] if rows is latent else [])
                raise ServiceError(
                    422,
                    f"latent must have {self.latent_dim} numbers (the model's latent size D = {self.latent_dim}); "
                    f"got {len(rows[i])}",
                    kind="validation-error",
                    title="Invalid request",
                    errors=[field_error(loc, f"expected {self.latent_dim} numbers, got {len(rows[i])}", "latent_dim")],
                )
            z = torch.tensor(rows, dtype=torch.float32)  # (1 or n, D)
            if z.shape[0] == 1 and n > 1:
                z = z.expand(n, -1)
            seed = None
        elif seed is None:
            seed = secrets.randbits(RANDOM_SEED_BITS)
        tiles = len(digits) * n
        columns = max(1, min(columns or n, tiles))
        grid_rows = -(-tiles // columns)
        width = (columns * (self.tile_w + padding) + padding) * scale
        height = (grid_rows * (self.tile_h + padding) + padding) * scale
        if width * height > MAX_OUTPUT_PIXELS:
            raise ServiceError(
                422,
                f"the grid would be {width}x{height} = {width * height} pixels; the limit is {MAX_OUTPUT_PIXELS} "
                "(fewer tiles, less padding or a smaller scale)",
                kind="validation-error",
                title="Invalid request",
                errors=[field_error(["body"], "output image too large", "output_too_large")],
            )
        return GenerateSpec(
            digits=tuple(digits),
            n=n,
            latent=z,
            seed=seed,
            temperature=self.model.temperature if temperature is None else temperature,
            columns=columns,
            padding=padding,
            scale=scale,
            width=width,
            height=height,
        )

    def check_digits(self, digits: list[int], loc: list[str | int]) -> None:
        """422 for digits the model has no label for (only a model with fewer than ten labels: schemas allow 0-9)."""
        unknown = sorted({d for d in digits if d >= self.model.num_classes})
        if unknown:
            raise ServiceError(
                422,
                f"this model knows digits 0-{self.model.num_classes - 1}, not {unknown}",
                kind="validation-error",
                title="Invalid request",
                errors=[field_error(loc, f"digits must be below {self.model.num_classes}", "label")],
            )

    @torch.inference_mode()
    def latents(self, spec: GenerateSpec) -> DecodeJob:
        """-> z (N, D), labels (N,) of a spec's tiles, digit-major: what draw_batch decodes for it, bit for bit."""
        if spec.latent is not None:
            labels = torch.tensor(spec.digits, dtype=torch.long).repeat_interleave(spec.n)  # (N,)
            return DecodeJob(spec.latent.repeat(len(spec.digits), 1), labels)
        assert spec.seed is not None
        return DecodeJob(*sample_latents(self.model.prior, list(spec.digits), spec.n, spec.seed, spec.temperature))

    def decode(self, z: Tensor, labels: Tensor) -> Tensor:
        """(N, D), (N,) -> (N, 1, H, W), zero-padded to whole chunks, run in passes of at most pass_rows rows."""
        b = self.options.decode_chunk
        count = z.shape[0]
        padded = -(-count // b) * b
        if padded > count:
            z = torch.cat([z, z.new_zeros(padded - count, z.shape[1])])
            labels = torch.cat([labels, labels.new_zeros(padded - count)])
        decoder, step = self.model.decoder, self.pass_rows
        images = [decoder(z[i : i + step], labels[i : i + step]) for i in range(0, padded, step)]
        return (images[0] if len(images) == 1 else torch.cat(images))[:count]

    @torch.inference_mode()
    def draw_batch(self, specs: list[GenerateSpec]) -> list[bytes]:
        """Several requests decoded in shared forward passes -> the PNG of each, in order. A request's latents, when
        its answer shows them, are recomputed by latents(spec), which is cheap and gives the same numbers."""
        jobs = self._latents_many(specs)
        if len(jobs) == 1:
            z, labels = jobs[0]
        else:
            z = torch.cat([j.z for j in jobs])
            labels = torch.cat([j.labels for j in jobs])
        tiles = to_uint8(self.decode(z, labels)).split([j.z.shape[0] for j in jobs])  # one conversion, then views
        level = self.options.png_compress_level
        return [
            encode_png(tile_grid(t, s.columns, s.padding, s.scale), level) for s, t in zip(specs, tiles, strict=True)
        ]

    def _latents_many(self, specs: list[GenerateSpec]) -> list[DecodeJob]:
        """latents(spec) for each spec, bit for bit; the sampled ones drawn together (sample_latents_many)."""
        sampled = [(s.digits, s.n, s.seed, s.temperature) for s in specs if s.seed is not None]
        drawn = iter(sample_latents_many(self.model.prior, sampled) if sampled else [])
        return [self.latents(s) if s.seed is None else DecodeJob(*next(drawn)) for s in specs]

    # --- /encode -------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_batch(self, uploads: list[Upload]) -> list[EncodeResult | ServiceError]:
        """Several uploads -> each one's result, or the error that one upload gets (the others are unaffected)."""
        outcomes: dict[int, EncodeResult | ServiceError] = {}
        to_score: list[tuple[int, Tensor]] = []
        for i, upload in enumerate(uploads):
            try:
                x = self._preprocess(upload.data)
            except ServiceError as e:
                outcomes[i] = e
                continue
            except Exception:  # a surprise in one upload fails that request only
                log.exception("preprocessing an upload failed")
                outcomes[i] = ServiceError(500, "an unexpected error occurred; it has been logged", kind="internal")
                continue
            if upload.digit is None:
                to_score.append((i, x))
            else:
                mean, log_var = self.model.encoder(x, torch.tensor([upload.digit]))
                outcomes[i] = EncodeResult(upload.digit, False, None, mean[0].tolist(), log_var[0].tolist())
        step = self.score_uploads
        for start in range(0, len(to_score), step):
            part = to_score[start : start + step]
            log_probs, means, log_vars = self._score(torch.cat([x for _, x in part]))
            for row, (i, _) in enumerate(part):
                best = int(log_probs[row].argmax())
                outcomes[i] = EncodeResult(
                    digit=best,
                    inferred=True,
                    probabilities=log_probs[row].exp().tolist(),
                    mean=means[row, best].tolist(),
                    log_var=log_vars[row, best].tolist(),
                )
        return [outcomes[i] for i in range(len(uploads))]

    def upload_pixels(self, data: bytes) -> int:
        """How many pixels an upload will decode to, from its header: 413 when too many, 415/400 when its header
        is not an image's (what decoding it would answer, found before it is queued)."""
        try:
            return decoded_pixels(data, self.options.max_image_pixels)
        except ImageError as e:
            raise _image_error(e) from e

    def _preprocess(self, data: bytes) -> Tensor:
        """Upload bytes (any format Pillow reads) -> the MNIST-style digit (1, 1, H, W) the model reads."""
        try:
            return to_mnist(decode_image(data, self.options.max_image_pixels))[None]
        except ImageError as e:
            raise _image_error(e) from e

    def _score(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, 1, H, W) -> log p(y | x) (N, C), and the posterior's mean and log_var (N, C, D) under each label."""
        m, n = self.model, x.shape[0]
        if n < SCORE_MIN_ROWS:  # rows do not depend on one another: the blank ones change no other row's figures
            x = torch.cat([x, x.new_zeros((SCORE_MIN_ROWS - n, *x.shape[1:]))])
        log_probs, mean, log_var = label_log_probs(m.encoder, m.decoder, m.prior, x, m.reader)
        return log_probs[:n], mean[:n], log_var[:n]


def _image_error(e: ImageError) -> ServiceError:
    if e.reason == "too_large":
        return ServiceError(413, str(e), kind="image-too-large", title="Image too large")
    if e.reason == "blank":
        return ServiceError(422, str(e), kind="blank-image", title="No digit in the image")
    if e.reason == "non_finite":
        return ServiceError(422, str(e), kind="non-finite-image", title="Image has non-finite pixels")
    if isinstance(e.__cause__, UnidentifiedImageError):
        return ServiceError(415, str(e), kind="unsupported-image", title="Not an image")
    return ServiceError(400, str(e), kind="corrupt-image", title="Image could not be decoded")
