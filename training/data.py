"""Digits in MNIST's IDX format: read and validate them, split off a validation set, download the official files.

A data directory holds `train-images-idx3-ubyte` + `train-labels-idx1-ubyte` (each raw or `.gz`) and, optionally,
`t10k-images-idx3-ubyte` + `t10k-labels-idx1-ubyte`, which then serve as the validation set. Every problem with a
file raises DataError with a message that names the file and says what is wrong with it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.manifest import Preprocessing

log = logging.getLogger(__name__)

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (N, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (N,)
IMAGE_SIZE = 28
NUM_CLASSES = 10

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# The two mirrors torchvision's datasets/mnist.py uses, in its order.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# SHA-256 of the official files, as published in torch.rb's torchvision-ruby (datasets/mnist.rb) and Guild AI's
# docs, and consistent with the MD5s in torchvision's datasets/mnist.py (f68b3c2d..., d53e105e..., 9fb629c4...,
# ec29112d...) for the same files.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08  # IDX element type code for unsigned bytes, the only one MNIST uses
_CHUNK = 1 << 20


class DataError(Exception):
    """A data file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Kind:
    """What a dataset's images are: its classes' names (index = label), how an upload becomes one of its images (the
    manifest's `preprocessing`, model/imaging.py: "mnist" crops to the ink and centres its mass as MNIST's digits
    are; "frame" fits the whole picture in the frame, as Fashion-MNIST's items fill theirs), and whether they are
    digits (the digit-only steps: the flagged 1s of the reader's training, the sets of digits that are not MNIST)."""

    classes: tuple[str, ...]
    preprocessing: Preprocessing
    digits: bool


DIGITS = Kind(tuple(str(d) for d in range(NUM_CLASSES)), "mnist", True)
FASHION = Kind(
    ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"),
    "frame",
    False,
)
KINDS = {"folder": DIGITS, "mnist": DIGITS, "fashion-mnist": FASHION}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's dataset-fashion-mnist puts it
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"


@dataclass(frozen=True)
class Digits:
    images: torch.Tensor  # uint8 (N, 28, 28), white ink (255) on black (0) as in MNIST
    labels: torch.Tensor  # int64 (N,), values 0..9

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 3:
            raise ValueError(f"images must be uint8 (N, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class DataSplits:
    train: Digits
    val: Digits
    # JSON-able: name, count (train + val items read), files ({filename: sha256}), val_source ("t10k" | "split"),
    # val_size (items in val), seed (of the split; unused when val_source is "t10k")
    info: dict[str, Any]


@dataclass(frozen=True)
class _IdxFile:
    magic: int
    array: np.ndarray  # uint8, shaped by the header's dimensions
    sha256: str  # of the file as stored (compressed, if it is)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e


def _decompress(path: Path, stored: bytes) -> bytes:
    """Gunzip `stored` when it is gzip data (detected by content, not by name); else return it unchanged."""
    if not stored.startswith(_GZIP_MAGIC):
        return stored
    try:
        return gzip.decompress(stored)
    except EOFError:
        raise DataError(f"{path}: truncated gzip data (the stream ends before its end marker)") from None
    except (zlib.error, OSError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt gzip data: {e}") from e


def _parse_idx(path: Path, data: bytes) -> tuple[int, np.ndarray]:
    if len(data) < 4:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if data[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (magic number 0x{magic:08X} does not start with two zero bytes)")
    if data[2] != _UBYTE:
        raise DataError(f"{path}: IDX element type 0x{data[2]:02X} is not unsigned byte (0x{_UBYTE:02X})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header
    if found < expected:
        raise DataError(
            f"{path}: truncated: the header promises {' x '.join(map(str, dims))} = {expected} bytes of data, "
            f"the file holds {found}"
        )
    if found > expected:
        raise DataError(f"{path}: {found - expected} unexpected bytes after the {expected} bytes of data")
    return magic, np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _read(path: Path) -> _IdxFile:
    stored = _read_bytes(path)
    magic, array = _parse_idx(path, _decompress(path, stored))
    return _IdxFile(magic=magic, array=array, sha256=hashlib.sha256(stored).hexdigest())


def read_idx(path: Path) -> torch.Tensor:
    """One IDX file of unsigned bytes, raw or gzipped, as a uint8 tensor shaped by its header."""
    return torch.from_numpy(_read(Path(path)).array.copy())


def _check_magic(path: Path, idx: _IdxFile, expected: int, what: str) -> None:
    if idx.magic != expected:
        raise DataError(
            f"{path}: wrong magic number for {what}: expected {expected} (0x{expected:08X}), "
            f"found {idx.magic} (0x{idx.magic:08X})"
        )


def _load_pair(images: Path, labels: Path) -> tuple[Digits, dict[str, str]]:
    """The digits of one images/labels pair and the sha256 of each file, keyed by file name."""
    img, lab = _read(images), _read(labels)
    _check_magic(images, img, IMAGES_MAGIC, "images")
    _check_magic(labels, lab, LABELS_MAGIC, "labels")
    n, rows, cols = img.array.shape
    if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{images}: images are {rows}x{cols}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if n == 0:
        raise DataError(f"{images}: holds no images")
    if lab.array.shape[0] != n:
        raise DataError(f"count mismatch: {images} holds {n} images but {labels} holds {lab.array.shape[0]} labels")
    bad = np.flatnonzero(lab.array >= NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{labels}: label {int(lab.array[i])} at index {i} is outside 0-{NUM_CLASSES - 1} "
            f"({bad.size} such labels in all)"
        )
    mean = float(img.array.mean())
    if mean > 127:
        log.warning("%s: mean pixel %.0f > 127; MNIST digits are white on black, is this set inverted?", images, mean)
    digits = Digits(
        images=torch.from_numpy(img.array.copy()),
        labels=torch.from_numpy(lab.array.astype(np.int64)),
    )
    return digits, {images.name: img.sha256, labels.name: lab.sha256}


def load_pair(images: Path, labels: Path) -> Digits:
    """Read and check an images file (magic 2051, N x 28 x 28) and its labels file (magic 2049, N labels in 0-9)."""
    return _load_pair(Path(images), Path(labels))[0]


def _find(data_dir: Path, stem: str) -> Path | None:
    """`stem.gz` if present (the form the official checksums are for), else `stem`, else None."""
    gz, raw = data_dir / f"{stem}.gz", data_dir / stem
    if gz.is_file():
        if raw.is_file():
            log.info("%s: both %s and %s exist; reading %s", data_dir, gz.name, raw.name, gz.name)
        return gz
    return raw if raw.is_file() else None


def _require(data_dir: Path, stem: str) -> Path:
    path = _find(data_dir, stem)
    if path is None:
        raise DataError(f"{data_dir}: missing file: looked for {stem}.gz and {stem}")
    return path


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea & Flood 2014): a bijection on uint64 that scrambles well."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _permutation(n: int, seed: int) -> np.ndarray:
    """A permutation of range(n) fixed by `seed` alone: integer hashing and a sort, identical on every machine and
    every numpy/torch version (unlike randperm or Generator.permutation, whose algorithms may change)."""
    stream = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
    keys = _splitmix64(stream + np.arange(n, dtype=np.uint64))  # distinct, since _splitmix64 is a bijection
    return np.argsort(keys, kind="stable")


def _split_indices(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices, each ascending: a seeded random `val_size` items, stratified so every class gets its
    share of val to within one item."""
    n = labels.shape[0]
    perm = _permutation(n, seed)
    shuffled = labels[perm]
    # Rank of each shuffled item among those of its class, as a fraction of the class: taking the items with the
    # smallest fractions takes about the same fraction of every class.
    frac = np.empty(n, dtype=np.float64)
    for c in np.unique(shuffled):
        where = np.flatnonzero(shuffled == c)
        frac[where] = (np.arange(where.size) + 0.5) / where.size
    order = np.lexsort((np.arange(n), frac))  # by fraction, ties by shuffled position
    val = np.sort(perm[order[:val_size]])
    train = np.sort(perm[order[val_size:]])
    return train, val


def _subset(digits: Digits, index: np.ndarray) -> Digits:
    i = torch.from_numpy(index)
    return Digits(images=digits.images[i].contiguous(), labels=digits.labels[i].contiguous())


def load_data_dir(data_dir: Path, val_size: int = 1000, seed: int = 0) -> DataSplits:
    """Train and validation digits from an MNIST-layout directory.

    With t10k files present they are the validation set (val_size and seed are then unused); without them a
    deterministic, stratified `val_size` items are cut from train with `seed`.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found")
    train, files = _load_pair(_require(data_dir, TRAIN_IMAGES), _require(data_dir, TRAIN_LABELS))
    test_images, test_labels = _find(data_dir, TEST_IMAGES), _find(data_dir, TEST_LABELS)
    if (test_images is None) != (test_labels is None):
        missing = TEST_LABELS if test_labels is None else TEST_IMAGES
        raise DataError(f"{data_dir}: half a t10k pair: missing file: looked for {missing}.gz and {missing}")

    if test_images is not None and test_labels is not None:
        val, test_files = _load_pair(test_images, test_labels)
        files |= test_files
        val_source = "t10k"
        log.info("%s: %d training images, %d t10k images as validation", data_dir, len(train), len(val))
    else:
        n = len(train)
        if not 0 < val_size < n:
            raise DataError(f"{data_dir}: val_size {val_size} must be between 1 and {n - 1} ({n} training items)")
        train_index, val_index = _split_indices(train.labels.numpy(), val_size, seed)
        train, val = _subset(train, train_index), _subset(train, val_index)
        val_source = "split"
        log.info("%s: %d train, %d validation digits (seed %d split)", data_dir, len(train), len(val), seed)

    info = {
        "name": data_dir.resolve().name,
        "count": len(train) + len(val),
        "files": files,
        "val_source": val_source,
        "val_size": len(val),
        "seed": seed,
    }
    return DataSplits(train=train, val=val, info=info)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, timeout: float) -> str:
    """Stream `url` into `dest` (fsynced) and return the sha256 of what was written."""
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as f:
        for block in iter(lambda: response.read(_CHUNK), b""):
            h.update(block)
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def _download_one(name: str, expected: str, cache_dir: Path, base_urls: Sequence[str], timeout: float) -> None:
    """Try each mirror in turn; only a file whose sha256 matches ever appears under `cache_dir / name`."""
    failures = []
    for base in base_urls:
        url = base if base.endswith("/") else base + "/"
        url += name
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            log.info("downloading %s", url)
            actual = _fetch(url, tmp, timeout)
            if actual == expected:
                tmp.chmod(0o644)  # mkstemp makes it 0600; a data cache is for everyone who may read the directory
                os.replace(tmp, cache_dir / name)
                return
            failures.append(f"{url} (sha256 {actual}, expected {expected})")
            log.warning("%s: checksum mismatch (sha256 %s, expected %s)", url, actual, expected)
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError and timeouts are OSErrors
            failures.append(f"{url} ({e})")
            log.warning("%s: download failed: %s", url, e)
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"{cache_dir / name}: could not download a file with sha256 {expected}; tried "
        + "; ".join(failures or ["no mirrors"])
    )


def download_mnist(
    cache_dir: Path,
    base_urls: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 60,
    checksums: Mapping[str, str] | None = None,
) -> Path:
    """Download the official MNIST files (or the files named in `checksums`) into `cache_dir` and return it.

    Files already there with the right sha256 are kept. Each download goes to a temporary file, is verified, and is
    only then renamed into place; a mismatch moves on to the next mirror, and when none serves the file, DataError.
    """
    cache_dir = Path(cache_dir)
    checksums = MNIST_SHA256 if checksums is None else checksums
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, expected in checksums.items():
        target = cache_dir / name
        if target.is_file():
            if _sha256_file(target) == expected:
                log.info("%s: present with the expected sha256", target)
                continue
            log.warning("%s: present but its sha256 differs; downloading it again", target)
        _download_one(name, expected, cache_dir, base_urls, timeout)
    return cache_dir
