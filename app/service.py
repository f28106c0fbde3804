"""Tensor and image work: sampling, decoding, grids and PNGs, and encoding uploads. No HTTP, no asyncio.

Reproducibility: a request's PNG depends only on the request and the model. Its latents are computed per
request (per digit), and the decoder runs on passes of a whole number of `decode_chunk` rows (zero-padded). By
default each pass is exactly one chunk, so whatever else shares a batch, each row goes through a forward pass of
the same shape. Larger passes cost less per row (one 128-row pass of the shipped decoder costs about as much as
9 passes of 8), but a matrix kernel may sum in another order for another shape: enable_large_passes() allows
them only after checking, on this machine, that every pass size it may use gives each row bit for bit what a
chunk gives it (the kernel a shape gets does not depend on the numbers in it).
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
from model.imaging import ImageError, decode_image, encode_png, tile_grid, to_mnist, to_uint8
from model.inference import label_log_probs
from model.prior import sample_latents, sample_latents_many

log = logging.getLogger(__name__)

MAX_PASS_ROWS = 256  # the largest decoder pass checked at start-up: past ~64 rows a row costs no less, and the
# check's cost grows with the square of it
MAX_OUTPUT_PIXELS = 4096 * 4096  # largest PNG /generate writes (width * height)
RANDOM_SEED_BITS = 53  # seeds drawn for requests without one stay exact in JSON / JavaScript numbers


@dataclass(frozen=True, slots=True)
class GenerateSpec:
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
    def size(self) -> int:
        return len(self.digits) * self.n


class DecodeJob(NamedTuple):
    """One request's rows for the decoder."""

    z: Tensor  # (N, D)
    labels: Tensor  # (N,)


@dataclass(frozen=True, slots=True)
class GenerateResult:
    png: bytes
    z: Tensor  # (N, D), the latent of each tile
    labels: Tensor  # (N,)


@dataclass(frozen=True, slots=True)
class EncodeResult:
    digit: int
    inferred: bool
    probabilities: list[float] | None
    mean: list[float]
    log_var: list[float]


class DigitService:
    """Everything the API does to tensors and images, for one loaded model."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        decode_chunk: int,
        png_compress_level: int,
        max_image_pixels: int,
        png_store_max_pixels: int = 0,
    ) -> None:
        self.model = model
        self.decode_chunk = decode_chunk
        self.pass_rows = decode_chunk  # rows per forward pass at most; enable_large_passes() may raise it
        self.png_compress_level = png_compress_level
        self.png_store_max_pixels = png_store_max_pixels
        self.max_image_pixels = max_image_pixels
        self.latent_dim = model.latent_dim
        self.tile_h, self.tile_w = (int(s) for s in model.manifest["image_shape"][-2:])

    @property
    def model_id(self) -> str:
        return self.model.id

    # --- /generate -------------------------------------------------------------------------------------------

    def make_spec(
        self,
        digits: list[int],
        n: int,
        latent: list[float] | list[list[float]] | None,
        seed: int | None,
        temperature: float | None,
        columns: int | None,
        padding: int,
        scale: int,
    ) -> GenerateSpec:
        """Check what depends on the model (latent size, output size) and fix the seed and the temperature
        (None: the model's). Cheap: no tensors beyond the given latent."""
        unknown = sorted({d for d in digits if d >= self.model.num_classes})
        if unknown:  # only for a model with fewer than ten labels: the schema allows 0-9
            raise ServiceError(
                422,
                f"this model draws digits 0-{self.model.num_classes - 1}, not {unknown}",
                kind="validation-error",
                title="Invalid request",
                errors=[field_error(["body", "digit"], f"digits must be below {self.model.num_classes}", "label")],
            )
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

    @torch.inference_mode()
    def latents(self, spec: GenerateSpec) -> DecodeJob:
        """-> z (N, D), labels (N,) for a spec, digit-major. Sampled as evaluation samples (sample_latents): the
        styles eps ~ N(0, I) of shape (n, D) come from the seed and are shared by every digit, one per column."""
        if spec.latent is not None:
            labels = torch.tensor(spec.digits, dtype=torch.long).repeat_interleave(spec.n)  # (N,)
            return DecodeJob(spec.latent.repeat(len(spec.digits), 1), labels)
        assert spec.seed is not None
        return DecodeJob(*sample_latents(self.model.prior, list(spec.digits), spec.n, spec.seed, spec.temperature))

    def decode(self, z: Tensor, labels: Tensor) -> Tensor:
        """(N, D), (N,) -> (N, 1, H, W), zero-padded to whole chunks, run in passes of at most pass_rows rows."""
        b = self.decode_chunk
        count = z.shape[0]
        padded = -(-count // b) * b
        if padded > count:
            z = torch.cat([z, z.new_zeros(padded - count, z.shape[1])])
            labels = torch.cat([labels, labels.new_zeros(padded - count)])
        decoder, step = self.model.decoder, self.pass_rows
        images = [decoder(z[i : i + step], labels[i : i + step]) for i in range(0, padded, step)]
        return (images[0] if len(images) == 1 else torch.cat(images))[:count]

    @torch.inference_mode()
    def enable_large_passes(self, max_rows: int, rounds: int = 2) -> bool:
        """Decode batches in passes of up to max_rows rows (at most MAX_PASS_ROWS; rounded down to whole chunks)
        if, for every pass size that allows (each whole number of chunks), the decoder gives every row bit for bit
        what it gives that row in a pass of one chunk; checked `rounds` times (TorchScript settles after its first
        runs). -> whether allowed. Otherwise passes stay one chunk long."""
        b = self.decode_chunk
        max_rows = min(max_rows, max(MAX_PASS_ROWS, b)) // b * b
        self.pass_rows = b
        if max_rows <= b:
            return False
        g = torch.Generator().manual_seed(0)
        z = torch.randn(max_rows, self.latent_dim, generator=g)
        labels = torch.randint(0, self.model.num_classes, (max_rows,), generator=g)
        reference = self.decode(z, labels)
        decoder = self.model.decoder
        for _ in range(rounds):
            for rows in range(2 * b, max_rows + 1, b):
                if not torch.equal(decoder(z[:rows], labels[:rows]), reference[:rows]):
                    log.info(
                        "decoder passes stay %d rows: a pass of %d rows does not give the same rows bit for bit",
                        b, rows,
                    )  # fmt: skip
                    return False
        self.pass_rows = max_rows
        log.info("decoder passes of up to %d rows (each row checked bit-identical to a %d-row pass)", max_rows, b)
        return True

    @torch.inference_mode()
    def decode_batch(self, jobs: list[DecodeJob]) -> list[Tensor]:
        """Several requests' latents in shared forward passes -> each one's tiles, uint8 (N_i, 1, H, W).

        The whole batch is converted to uint8 at once; what comes back are views of it."""
        if len(jobs) == 1:
            z, labels = jobs[0]
        else:
            z = torch.cat([j.z for j in jobs])
            labels = torch.cat([j.labels for j in jobs])
        pixels = to_uint8(self.decode(z, labels))
        return list(pixels.split([j.z.shape[0] for j in jobs]))

    def render(self, spec: GenerateSpec, tiles: Tensor) -> bytes:
        """A request's tiles (grey levels, or uint8 from decode_batch) -> its PNG grid."""
        grid = tile_grid(tiles, spec.columns, spec.padding, spec.scale)
        level = 0 if grid.numel() <= self.png_store_max_pixels else self.png_compress_level
        return encode_png(grid, level)

    def draw_batch(self, specs: list[GenerateSpec]) -> list[bytes]:
        """Several requests decoded in shared forward passes -> the PNG of each, in order. What the service's
        batches run (in the inference process or thread); a request's latents, if wanted, are recomputed by
        latents(spec), which is cheap and deterministic."""
        return [png for png, _ in self._draw(specs)]

    def generate_batch(self, specs: list[GenerateSpec]) -> list[GenerateResult]:
        """draw_batch, with each request's latents and labels."""
        return [GenerateResult(png, job.z, job.labels) for png, job in self._draw(specs)]

    @torch.inference_mode()
    def _latents_many(self, specs: list[GenerateSpec]) -> list[DecodeJob]:
        """latents(spec) for each spec, bit for bit; the sampled ones drawn together (sample_latents_many)."""
        sampled = [s for s in specs if s.latent is None]
        drawn = iter(
            sample_latents_many(self.model.prior, [(s.digits, s.n, s.seed, s.temperature) for s in sampled])
            if sampled
            else []
        )
        return [self.latents(s) if s.latent is not None else DecodeJob(*next(drawn)) for s in specs]

    def _draw(self, specs: list[GenerateSpec]) -> list[tuple[bytes, DecodeJob]]:
        jobs = self._latents_many(specs)
        tiles = self.decode_batch(jobs)
        return [(self.render(s, t), j) for s, j, t in zip(specs, jobs, tiles, strict=True)]

    def warm_up_generate(self, runs: int = 3) -> None:
        """Decode a few batches at the shape the decoder always runs at (TorchScript settles after its first runs)."""
        spec = self.make_spec(list(range(min(10, self.model.num_classes))), 2, None, 0, 1.0, None, 2, 1)
        for _ in range(runs):
            self.draw_batch([spec])

    # --- /encode ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def preprocess(self, data: bytes) -> Tensor:
        """Upload bytes (any format Pillow reads) -> the MNIST-style digit (1, 1, H, W) the model reads."""
        try:
            return to_mnist(decode_image(data, self.max_image_pixels))[None]
        except ImageError as e:
            raise _image_error(e) from e

    @torch.inference_mode()
    def encode(self, x: Tensor, digit: int | None) -> EncodeResult:
        """A preprocessed digit (1, 1, H, W) -> the posterior of z for the given or inferred digit."""
        m = self.model
        if digit is None:
            log_probs, means, log_vars = label_log_probs(m.encoder, m.decoder, m.prior, x)
            best = int(log_probs[0].argmax())
            return EncodeResult(
                digit=best,
                inferred=True,
                probabilities=log_probs[0].exp().tolist(),
                mean=means[0, best].tolist(),
                log_var=log_vars[0, best].tolist(),
            )
        mean, log_var = m.encoder(x, torch.tensor([digit]))
        return EncodeResult(digit, False, None, mean[0].tolist(), log_var[0].tolist())

    @torch.inference_mode()
    def warm_up_encoder(self) -> None:
        x = torch.zeros(1, 1, self.tile_h, self.tile_w)
        x[0, 0, self.tile_h // 4 : -self.tile_h // 4, self.tile_w // 2] = 1.0
        label_log_probs(self.model.encoder, self.model.decoder, self.model.prior, x)


def _image_error(e: ImageError) -> ServiceError:
    if e.reason == "too_large":
        return ServiceError(413, str(e), kind="image-too-large", title="Image too large")
    if e.reason == "blank":
        return ServiceError(422, str(e), kind="blank-image", title="No digit in the image")
    if isinstance(e.__cause__, UnidentifiedImageError):
        return ServiceError(415, str(e), kind="unsupported-image", title="Not an image")
    return ServiceError(400, str(e), kind="corrupt-image", title="Image could not be decoded")
