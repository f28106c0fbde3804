"""The loaded model, for the operations' batch functions (app/operations/): decoder passes and label scoring sized so
that answers do not depend on batching, and the preparation that sizes them and warms every operation up. Imports
torch: only the process that runs the model imports it. Why passes are sized as they are: docs/architecture.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from app.core.errors import ServiceError
from app.core.stages import Stage
from app.engine.interface import InferenceOptions, Prepared, freeze_heap
from app.operations.registry import BY_NAME, OPERATIONS
from model.artifacts import LoadedModel, load_model_dir
from model.inference import label_log_probs

log = logging.getLogger(__name__)

WARM_UP_RUNS = 3  # TorchScript's profiling executor settles after its first runs; the last two must agree
PASS_CHECK_ROUNDS = 2  # the pass-size checks run twice: the first run of a shape may take another path
# Fewer uploads than this are scored padded with blank images to this many. A linear layer of a few rows can take
# another CPU kernel than one of more rows (found here: 1-3 rows against 4 or more), with other last bits, which
# made scoring several uploads together differ from scoring each alone, so every upload was scored alone; padded,
# a lone upload is scored by the kernels a batch uses. check_scoring_passes() still decides, on each machine.
SCORE_MIN_ROWS = 4


class Inference:
    """One loaded model and what the operations' batch functions run on it (app/operations/base.py's Worker)."""

    def __init__(self, model: LoadedModel, options: InferenceOptions) -> None:
        self.model = model
        self.options = options
        self.card = model.card
        self.png_compress_level = options.png_compress_level
        self.max_image_pixels = options.max_image_pixels
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
        for operation in OPERATIONS:
            operation.warm_up(self)
        return Prepared(self.pass_rows, self.score_uploads)

    @torch.inference_mode()
    def run(self, operation: str, payloads: list[Any], stages: list[Stage] | None = None) -> list[Any | ServiceError]:
        """A batch of one operation (by name): its batch function's outcomes, in order."""
        return BY_NAME[operation].run(self, payloads, stages)

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
        alone = [self.score(x[i : i + 1]) for i in range(most)]
        for _ in range(PASS_CHECK_ROUNDS):
            for count in range(2, most + 1):
                together = self.score(x[:count])
                for i in range(count):
                    if not all(torch.equal(t[i], a[0]) for t, a in zip(together, alone[i], strict=True)):
                        log.info("uploads are scored one at a time: scoring %d together changes some bits", count)
                        return 1
        log.info("uploads are scored up to %d at a time (each bit-identical to scoring it alone)", most)
        return most

    # --- what the operations' batch functions call ------------------------------------------------------------

    def decode(self, z: Tensor, labels: Tensor) -> Tensor:
        """(N, D), (N,) -> (N, 1, H, W) as the model draws them (LoadedModel.draw), zero-padded to whole chunks, run in
        passes of at most pass_rows rows."""
        b = self.options.decode_chunk
        count = z.shape[0]
        padded = -(-count // b) * b
        if padded > count:
            z = torch.cat([z, z.new_zeros(padded - count, z.shape[1])])
            labels = torch.cat([labels, labels.new_zeros(padded - count)])
        draw, step = self.model.draw, self.pass_rows  # the decoder, then the model's tone curves when it has them
        images = [draw(z[i : i + step], labels[i : i + step]) for i in range(0, padded, step)]
        return (images[0] if len(images) == 1 else torch.cat(images))[:count]

    def score(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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
