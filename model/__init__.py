"""cvae-digits' model: the network, its loss, its prior and its image pre/post-processing (torch only, plus
Pillow for decoding uploads). Training, export and serving all import from here."""

from model.artifacts import LoadedModel, ModelDirError, load_model_dir
from model.checkpoint import load_checkpoint, save_checkpoint
from model.network import CVAE, CVAEConfig, Decoder, Encoder, reparameterize
from model.prior import GaussianPrior

__all__ = [
    "CVAE",
    "CVAEConfig",
    "Decoder",
    "Encoder",
    "GaussianPrior",
    "LoadedModel",
    "ModelDirError",
    "load_checkpoint",
    "load_model_dir",
    "reparameterize",
    "save_checkpoint",
]
