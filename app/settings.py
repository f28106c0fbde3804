"""The service's settings: one class, read from CVAE_* environment variables. The ground floor: imports nothing of
the app."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.manifest import ModelFormat

MIN_KEY_LENGTH = 16
# A served model's name in CVAE_MODELS: a URL's query value (?model=NAME) and a path segment (/v2/models/NAME-generate).
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
KEY_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


def read_keys(value: str, setting: str) -> tuple[str, ...]:
    """A keys setting -> the keys. The value lists keys separated by commas, or is the absolute path of a file that
    does (commas or new lines; what a container secret mounts). ValueError for a file that cannot be read or a key
    too short or with characters outside the URL-safe and base64 alphabets."""
    value = value.strip()
    if value.startswith("/"):
        try:
            value = Path(value).read_text()
        except OSError as e:
            raise ValueError(f"{setting}: cannot read the keys file {value}: {e.strerror}") from None
    keys = tuple(key.strip() for key in value.replace("\n", ",").split(",") if key.strip())
    for key in keys:
        if len(key) < MIN_KEY_LENGTH or not set(key) <= KEY_CHARACTERS:
            raise ValueError(
                f"{setting}: every key must be at least {MIN_KEY_LENGTH} characters of A-Z a-z 0-9 - . _ ~ + / = "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
    return keys


class ModelEntry(NamedTuple):
    """A model the service serves: its name (in ?model=, /models, the metrics and the protocol) and its directory."""

    name: str
    directory: Path


def read_models(value: str, default_name: str) -> tuple[ModelEntry, ...]:
    """CVAE_MODELS -> the models it names, the default first. The value lists NAME=DIRECTORY entries separated by
    commas (the first is the default), or is a folder whose sub-folders holding a manifest.json are the models, each
    named after its sub-folder (the default: the one named `default_name` when there is one, else the first by name).
    ValueError, naming the variable and what to fix, for anything else."""
    value = value.strip()
    entries: list[ModelEntry] = []
    if "=" in value:
        for item in (item.strip() for item in value.split(",") if item.strip()):
            name, found, directory = item.partition("=")
            if not found or not name.strip() or not directory.strip():
                raise ValueError(
                    f"CVAE_MODELS: {item!r:.80} is not NAME=DIRECTORY; give NAME=DIRECTORY entries separated by commas "
                    "(e.g. digits=artifacts/default,fashion=/models/fashion), or the path of a folder of models"
                )
            entries.append(ModelEntry(name.strip(), Path(directory.strip())))
    else:
        folder = Path(value)
        if not folder.is_dir():
            raise ValueError(
                f"CVAE_MODELS: {value!r:.200} is not a folder; give the path of a folder whose sub-folders are model "
                "directories, or NAME=DIRECTORY entries separated by commas"
            )
        found_dirs = sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file())
        if not found_dirs:
            raise ValueError(f"CVAE_MODELS: no sub-folder of {value!r:.200} holds a manifest.json (a model directory)")
        entries = [ModelEntry(p.name, p) for p in found_dirs]
        entries.sort(key=lambda e: e.name != default_name)  # stable: the default first, then the rest by name
    seen: set[str] = set()
    for entry in entries:
        if not MODEL_NAME.fullmatch(entry.name):
            raise ValueError(
                f"CVAE_MODELS: the model name {entry.name!r:.80} must be 1 to 63 of a-z 0-9 - _, starting with a "
                "letter or a digit (it is sent as ?model=NAME and in the protocol's NAME-generate)"
            )
        if entry.name in seen:
            raise ValueError(f"CVAE_MODELS: the model name {entry.name!r} is given twice; give each model its own")
        seen.add(entry.name)
    return tuple(entries)


def default_model_dir() -> Path:
    """The model shipped with the code: <repository>/artifacts/default."""
    return Path(__file__).resolve().parents[1] / "artifacts" / "default"


class Settings(BaseSettings):
    """Every field is read from the environment variable CVAE_<FIELD NAME>, e.g. CVAE_MODEL_DIR."""

    # hide_input_in_errors: an invalid setting's error says what is wrong, never the value (it may be a key).
    model_config = SettingsConfigDict(env_prefix="CVAE_", frozen=True, extra="ignore", hide_input_in_errors=True)

    model_dir: Path = Field(default_factory=default_model_dir, description="model directory to serve")
    model_name: str = Field(
        "digits", pattern=r"^[a-z0-9][a-z0-9_.]{0,62}$",
        description="the served model's name (?model=NAME, /models, the metrics' model label) and in the Open "
        "Inference Protocol (/v2): it answers as NAME-generate and NAME-encode",
    )  # fmt: skip
    models: str = Field(
        "", description="several models in one service: NAME=DIRECTORY entries separated by commas (the first is the "
        "default), or the path of a folder whose sub-folders holding a manifest.json are the models, each named after "
        "its sub-folder (the default: the one named CVAE_MODEL_NAME, else the first by name); set, it replaces "
        "CVAE_MODEL_DIR and CVAE_MODEL_NAME; empty: the one model CVAE_MODEL_DIR",
    )  # fmt: skip
    model_format: ModelFormat = Field(
        "torchscript", description="load the networks from the TorchScript files (.pt) or the torch.export programs "
        "(.pt2); a model directory without programs loads from TorchScript either way",
    )  # fmt: skip
    host: str = Field("127.0.0.1", description="interface `python -m app` binds (flag --host overrides)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port `python -m app` binds (flag --port overrides)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(True, description="log one line per request (uvicorn's access log)")
    torch_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads for inference")
    inference_process: bool = Field(
        True, description="run the model (/generate and /encode batches) in a child process with its own core and "
        "interpreter; false: in a thread of the server's process",
    )  # fmt: skip
    max_batch: int = Field(256, ge=1, le=65536, description="most tiles (samples) drawn in one /generate batch")
    max_encode_batch: int = Field(
        16, ge=1, le=64,
        description="most uploads in one /encode batch; they are scored in one pass where start-up checks that every "
        "such pass gives each upload bit for bit what scoring it alone does (the check's cost grows with the square)",
    )  # fmt: skip
    max_wait_ms: float = Field(
        0.0, ge=0, le=1000,
        description="longest a request waits for others to batch with; 0: a batch starts as soon as the model is "
        "free, with what arrived while the last one ran (on CPU, waiting only adds latency)",
    )  # fmt: skip
    max_queue_wait_s: float = Field(
        2.0, gt=0, le=600,
        description="longest a request may wait for the model: one whose estimated wait (the work queued before it) is "
        "longer is refused at once, and one still queued this long is refused then (503 with Retry-After)",
    )  # fmt: skip
    max_queued_bytes: int = Field(
        64 * 1024 * 1024, ge=1,
        description="most bytes of request bodies (uploads) waiting for the model at once; more: 503 with Retry-After",
    )  # fmt: skip
    decode_chunk: int = Field(
        8, ge=1, le=4096,
        description="decoder passes are zero-padded to whole chunks of this many rows; small: a lone request waits "
        "less",
    )  # fmt: skip
    max_pass_rows: int = Field(
        256, ge=1, le=1024,
        description="most rows in one decoder pass, used only where start-up checks that every pass size up to it "
        "gives each row bit for bit what one chunk does (reproducible either way; the check's cost grows with the "
        "square)",
    )  # fmt: skip
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level of PNG responses")
    max_upload_bytes: int = Field(4 * 1024 * 1024, ge=1, description="largest request body accepted (413 above)")
    max_image_pixels: int = Field(
        4096 * 4096, ge=1,
        description="largest upload in pixels decoded (a large JPEG decodes at a reduced scale), checked from its "
        "header before it is queued",
    )  # fmt: skip
    graceful_shutdown_s: int = Field(10, ge=0, description="how long in-flight requests may finish at shutdown")
    shutdown_delay_s: float = Field(
        2.0, ge=0, description="after SIGTERM, keep serving with /readyz 503 this long before closing the port"
    )
    log_format: Literal["text", "json"] = Field("text", description="text, or one JSON object per log line")
    # Connections (app/http/connections.py; python -m app only)
    keep_alive_s: float = Field(5.0, gt=0, le=3600, description="an idle kept-alive connection is closed after this")
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600,
        description="a connection (or a kept-alive one, from the next request's first byte) must send a whole request "
        "head within this, or it is closed",
    )  # fmt: skip
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a request body must arrive whole within this after its head, or 408"
    )
    max_connections: int = Field(
        1000, ge=1, description="open connections at most; requests on connections opened beyond it get 503"
    )
    # Access control (app/http/access.py): all off by default
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="API keys for /generate, /encode and /model, comma-separated, or the absolute path of a file "
        "holding them (a container secret); empty: no key needed",
    )  # fmt: skip
    metrics_api_keys: SecretStr = Field(
        SecretStr(""), description="keys for /metrics, as CVAE_API_KEYS; empty: /metrics is open"
    )
    admin_api_keys: SecretStr = Field(
        SecretStr(""),
        description="keys for POST /admin/reload, as CVAE_API_KEYS; empty: that path does not exist (404) and only "
        "SIGHUP reloads the model",
    )  # fmt: skip
    cors_origins: str = Field(
        "", description="origins allowed to call the API from a browser (comma-separated, e.g. https://a.example); "
        "empty: no CORS headers",
    )  # fmt: skip
    rate_limit: float = Field(0.0, ge=0, description="requests per second per client to /generate and /encode; 0: off")
    rate_burst: int = Field(10, ge=1, description="requests a client may make at once under CVAE_RATE_LIMIT")

    # Reloading (app/serving/reload.py)
    reload_timeout_s: float = Field(
        120.0, gt=0, le=3600,
        description="longest a reloaded model may take to load, check and warm up in its new inference process; "
        "slower, it is refused and the serving model kept",
    )  # fmt: skip

    @field_validator("api_keys", "metrics_api_keys", "admin_api_keys")
    @classmethod
    def _readable_keys(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        read_keys(value.get_secret_value(), f"CVAE_{(info.field_name or '').upper()}")  # ValueError says what is wrong
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: str, info: ValidationInfo) -> str:
        if value.strip():
            read_models(value, info.data.get("model_name", ""))  # ValueError says what is wrong
        return value

    def served_models(self) -> tuple[ModelEntry, ...]:
        """The models to serve, the default first: CVAE_MODELS's, else CVAE_MODEL_DIR's one, named CVAE_MODEL_NAME.
        A folder of models is listed again at each call: call it once, at start-up."""
        if self.models.strip():
            return read_models(self.models, self.model_name)
        return (ModelEntry(self.model_name, self.model_dir),)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in origins(value):
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path), nor *")
        return value


def origins(value: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in value.split(",") if o.strip())
