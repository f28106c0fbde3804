"""The tensor and image work behind the engine, for one loaded model: /generate batches (latents, decoder, grid,
PNG) and /encode batches (decode, MNIST-style digit, encoder, label scoring). Imports torch: only the process that
runs the model imports it. Why passes are sized as they are (answers independent of batching): docs/architecture.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from time import time_ns
from typing import NamedTuple

import torch
from torch import Tensor

from app.engine.card import ModelCard
from app.engine.images import image_refusal
from app.engine.interface import (
    Drawing,
    EncodeResult,
    GenerateSpec,
    InferenceOptions,
    Prepared,
    Stage,
    Upload,
    freeze_heap,
)
from app.http.problems import ServiceError
from model.artifacts import LoadedModel, load_model_dir
from model.imaging import decode_image, encode_png, tile_grid, to_mnist, to_uint8
from model.inference import label_log_probs
from model.prior import sample_latents, sample_latents_many
from model.uploads import ImageError

log = logging.getLogger(__name__)

WARM_UP_RUNS = 3  # TorchScript's profiling executor settles after its first runs; the last two must agree
PASS_CHECK_ROUNDS = 2  # the pass-size checks run twice: the first run of a shape may take another path
# Fewer uploads than this are scored padded with blank images to this many. A linear layer of a few rows can take
# another CPU kernel than one of more rows (found here: 1-3 rows against 4 or more), with other last bits, which
# made scoring several uploads together differ from scoring each alone, so every upload was scored alone; padded,
# a lone upload is scored by the kernels a batch uses. check_scoring_passes() still decides, on each machine.
SCORE_MIN_ROWS = 4


class DecodeJob(NamedTuple):
    """One request's rows for the decoder."""

    z: Tensor  # (N, D)
    labels: Tensor  # (N,)


class Inference:
    """Everything the API does to tensors and images, for one loaded model."""

    def __init__(self, model: LoadedModel, options: InferenceOptions) -> None:
        self.model = model
        self.options = options
        self.card = ModelCard(manifest=model.manifest, path=model.path)
        self.latent_dim = model.latent_dim
        self.tile_h, self.tile_w = self.card.tile_shape
        # Until prepare() checks larger ones: one decoder chunk, one upload per scoring pass.
        self.pass_rows = options.decode_chunk
        self.score_uploads = 1

    # --- preparation -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prepare(self) -> Prepared:
        """Make the service ready to answer: choose the pass sizes that keep answers independent of batching, run
        every code path (the decoder several times, at the shapes it will run at), and check that generation is
        reproducible. RuntimeError if it is not."""
        self.pass_rows = self.check_decoder_passes()
        self.score_uploads = self.check_scoring_passes()
        spec = self._warm_up_spec()
        pngs = [self.draw_batch([spec])[0].png for _ in range(WARM_UP_RUNS)]
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
        return self.card.make_spec(
            digits=digits, n=2, latent=None, seed=0, temperature=1.0, columns=None, padding=2, scale=1,
            with_latents=True,
        )  # fmt: skip

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

    @torch.inference_mode()
    def latents(self, spec: GenerateSpec) -> DecodeJob:
        """-> z (N, D), labels (N,) of a spec's tiles, digit-major: what draw_batch decodes for it, bit for bit."""
        if spec.latent is not None:
            z = torch.tensor(spec.latent, dtype=torch.float32)  # (1 or n, D)
            if z.shape[0] == 1 and spec.n > 1:
                z = z.expand(spec.n, -1)
            labels = torch.tensor(spec.digits, dtype=torch.long).repeat_interleave(spec.n)  # (N,)
            return DecodeJob(z.repeat(len(spec.digits), 1), labels)
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
    def draw_batch(self, specs: list[GenerateSpec], stages: list[Stage] | None = None) -> list[Drawing]:
        """Several requests decoded in shared forward passes -> each one's PNG (and, when asked, its tiles' labels
        and latents), in order. With stages, the work is timed into it."""
        started = time_ns() if stages is not None else 0
        jobs = self._latents_many(specs)
        if len(jobs) == 1:
            z, labels = jobs[0]
        else:
            z = torch.cat([j.z for j in jobs])
            labels = torch.cat([j.labels for j in jobs])
        tiles = to_uint8(self.decode(z, labels)).split([j.z.shape[0] for j in jobs])  # one conversion, then views
        level = self.options.png_compress_level
        if stages is not None:
            stages.append(Stage("inference", None, started, time_ns()))
        drawings = []
        for i, (s, t, j) in enumerate(zip(specs, tiles, jobs, strict=True)):
            started = time_ns() if stages is not None else 0
            png = encode_png(tile_grid(t, s.columns, s.padding, s.scale), level)
            if stages is not None:
                stages.append(Stage("png", i, started, time_ns()))
            drawings.append(
                Drawing(
                    png=png,
                    labels=j.labels.tolist() if s.with_latents else None,
                    latents=j.z.tolist() if s.with_latents else None,
                )
            )
        return drawings

    def _latents_many(self, specs: list[GenerateSpec]) -> list[DecodeJob]:
        """latents(spec) for each spec, bit for bit; the sampled ones drawn together (sample_latents_many)."""
        sampled = [(s.digits, s.n, s.seed, s.temperature) for s in specs if s.seed is not None]
        drawn = iter(sample_latents_many(self.model.prior, sampled) if sampled else [])
        return [self.latents(s) if s.seed is None else DecodeJob(*next(drawn)) for s in specs]

    # --- /encode -------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_batch(
        self, uploads: list[Upload], stages: list[Stage] | None = None
    ) -> list[EncodeResult | ServiceError]:
        """Several uploads -> each one's result, or the error that one upload gets (the others are unaffected). With
        stages, the work is timed into it."""
        outcomes: dict[int, EncodeResult | ServiceError] = {}
        to_score: list[tuple[int, Tensor]] = []
        for i, upload in enumerate(uploads):
            started = time_ns() if stages is not None else 0
            try:
                x = self._preprocess(upload.data)
            except ServiceError as e:
                outcomes[i] = e
                continue
            except Exception:  # a surprise in one upload fails that request only
                log.exception("preprocessing an upload failed")
                outcomes[i] = ServiceError(500, "an unexpected error occurred; it has been logged", kind="internal")
                continue
            finally:
                if stages is not None:
                    stages.append(Stage("image", i, started, time_ns()))
            if upload.digit is None:
                to_score.append((i, x))
            else:
                started = time_ns() if stages is not None else 0
                mean, log_var = self.model.encoder(x, torch.tensor([upload.digit]))
                outcomes[i] = EncodeResult(upload.digit, False, None, mean[0].tolist(), log_var[0].tolist())
                if stages is not None:
                    stages.append(Stage("inference", i, started, time_ns()))
        step = self.score_uploads
        for start in range(0, len(to_score), step):
            started = time_ns() if stages is not None else 0
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
            if stages is not None:
                stages.append(Stage("inference", None, started, time_ns()))
        return [outcomes[i] for i in range(len(uploads))]

    def _preprocess(self, data: bytes) -> Tensor:
        """Upload bytes (any format Pillow reads) -> the MNIST-style digit (1, 1, H, W) the model reads."""
        try:
            return to_mnist(decode_image(data, self.options.max_image_pixels))[None]
        except ImageError as e:
            raise image_refusal(e) from e

    def _score(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, 1, H, W) -> log p(y | x) (N, C), and the posterior's mean and log_var (N, C, D) under each label."""
        m, n = self.model, x.shape[0]
        if n < SCORE_MIN_ROWS:  # rows do not depend on one another: the blank ones change no other row's figures
            x = torch.cat([x, x.new_zeros((SCORE_MIN_ROWS - n, *x.shape[1:]))])
        log_probs, mean, log_var = label_log_probs(m.encoder, m.decoder, m.prior, x, m.reader)
        return log_probs[:n], mean[:n], log_var[:n]


def load_inference(model_dir: Path, options: InferenceOptions) -> Inference:
    """The model loaded for inference (from the format options.model_format names, or TorchScript where the directory
    has no torch.export programs): what both engines run. ModelDirError names a file that is wrong."""
    started = time.perf_counter()
    model = load_model_dir(model_dir, model_format=options.model_format)
    loaded = "torch.export programs" if model.format == "export" else "TorchScript modules"
    absent = " (the directory has no torch.export programs)" if model.format != options.model_format else ""
    log.info("model %s loaded from its %s in %.2f s%s", model.id, loaded, time.perf_counter() - started, absent)
    return Inference(model, options)


def prepare_here(inference: Inference) -> Prepared:
    """Everything done once before serving, in the process that runs the model: the model's own preparation (pass
    sizes, warm-up, the reproducibility check), then the heap freeze."""
    prepared = inference.prepare()
    freeze_heap()
    return prepared
