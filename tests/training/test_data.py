"""training/data.py: reading and checking IDX files, the validation split, and the verified download."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import (
    MNIST_MIRRORS,
    MNIST_SHA256,
    DataError,
    DataSplits,
    Digits,
    download_mnist,
    load_data_dir,
    load_pair,
    read_idx,
)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "mnist-1000"
IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file holding `array` (uint8), with the magic number its shape implies."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes) -> Path:
    """Write `data` to `path`, gzipped when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def write_pair(directory: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "train", ext: str = ".gz"):
    img = write(directory / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(images))
    lab = write(directory / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels))
    return img, lab


def fake_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


@pytest.fixture(scope="module")
def fixture_digits() -> Digits:
    return load_pair(FIXTURE / f"{IMAGES}.gz", FIXTURE / f"{LABELS}.gz")


# --- reading ---------------------------------------------------------------------------------------------------


def test_fixture_loads_as_1000_uint8_28x28_digits_with_int64_labels_0_to_9(fixture_digits: Digits) -> None:
    assert fixture_digits.images.shape == (1000, 28, 28)
    assert fixture_digits.images.dtype == torch.uint8
    assert fixture_digits.labels.shape == (1000,)
    assert fixture_digits.labels.dtype == torch.int64
    assert len(fixture_digits) == 1000
    counts = torch.bincount(fixture_digits.labels, minlength=10).tolist()
    assert counts == [119, 104, 90, 112, 103, 80, 90, 101, 99, 102]  # as stated in tests/fixtures/README.md


def test_fixture_digits_are_white_ink_on_black(fixture_digits: Digits) -> None:
    images = fixture_digits.images
    assert images[:, 0, :].max() == 0  # the top row is background
    assert images.max() == 255
    assert 20 < images.float().mean() < 50  # MNIST's mean pixel is about 33


def test_read_idx_reads_raw_and_gzipped_files_identically(tmp_path: Path) -> None:
    raw = write(tmp_path / IMAGES, gzip.decompress((FIXTURE / f"{IMAGES}.gz").read_bytes()))
    from_raw, from_gz = read_idx(raw), read_idx(FIXTURE / f"{IMAGES}.gz")
    assert from_raw.dtype == torch.uint8 and from_raw.shape == (1000, 28, 28)
    assert torch.equal(from_raw, from_gz)


def test_read_idx_returns_the_dims_the_header_declares(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert torch.equal(read_idx(write(tmp_path / "a.idx", idx_bytes(array))), torch.from_numpy(array))


def test_load_pair_reads_a_raw_images_file_with_a_gzipped_labels_file(tmp_path: Path) -> None:
    images, labels = fake_digits(5)
    img = write(tmp_path / IMAGES, idx_bytes(images))
    lab = write(tmp_path / f"{LABELS}.gz", idx_bytes(labels))
    digits = load_pair(img, lab)
    assert torch.equal(digits.images, torch.from_numpy(images))
    assert digits.labels.tolist() == labels.tolist()


# --- load_data_dir: split ----------------------------------------------------------------------------------------


def _rows(digits: Digits) -> list[bytes]:
    """Each item as bytes (image then label), to compare sets of items."""
    return [
        bytes(x) + bytes([y]) for x, y in zip(digits.images.flatten(1).numpy(), digits.labels.tolist(), strict=True)
    ]


def test_split_cuts_val_size_items_from_train_and_keeps_every_item_once(fixture_digits: Digits) -> None:
    splits = load_data_dir(FIXTURE, val_size=100, seed=0)
    assert (len(splits.train), len(splits.val)) == (900, 100)
    assert splits.info["val_source"] == "split"
    assert splits.info["val_size"] == 100
    assert splits.info["count"] == 1000
    assert sorted(_rows(splits.train) + _rows(splits.val)) == sorted(_rows(fixture_digits))


def test_split_is_the_same_on_every_machine_and_version() -> None:
    """Golden values: any change to the split algorithm (or to its seed handling) changes every experiment."""
    val = load_data_dir(FIXTURE, val_size=100, seed=0).val
    assert val.labels[:12].tolist() == GOLDEN_VAL_LABELS
    assert hashlib.sha256(val.images.numpy().tobytes()).hexdigest() == GOLDEN_VAL_IMAGES_SHA256


GOLDEN_VAL_LABELS = [4, 6, 2, 3, 9, 1, 5, 1, 3, 4, 2, 0]
GOLDEN_VAL_IMAGES_SHA256 = "5a8e5970bc4110c94fd2d4f08a38e29f842f466c6a70e7a045d1a44625f8fb9e"


def test_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    a, b = load_data_dir(FIXTURE, val_size=100, seed=0), load_data_dir(FIXTURE, val_size=100, seed=0)
    c = load_data_dir(FIXTURE, val_size=100, seed=1)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.val.images, c.val.images)


def test_split_gives_each_class_its_share_of_val_to_within_one(fixture_digits: Digits) -> None:
    for val_size in (10, 100, 333):
        val = load_data_dir(FIXTURE, val_size=val_size, seed=3).val
        expected = torch.bincount(fixture_digits.labels, minlength=10).double() * val_size / 1000
        assert (torch.bincount(val.labels, minlength=10) - expected).abs().max() < 1


@pytest.mark.parametrize("val_size", [0, -1, 1000, 5000])
def test_split_rejects_val_size_outside_1_to_count_minus_1(val_size: int) -> None:
    with pytest.raises(DataError, match="val_size") as e:
        load_data_dir(FIXTURE, val_size=val_size)
    assert "mnist-1000" in str(e.value)


def test_info_is_json_and_names_each_file_with_its_sha256() -> None:
    info = load_data_dir(FIXTURE, val_size=100).info
    assert json.loads(json.dumps(info)) == info
    assert info["name"] == "mnist-1000"
    assert info["files"] == {
        f"{IMAGES}.gz": "29e4c02f587727336d67fd2a2220ad0da8f30f54d93a451275a8e2ce847080a7",
        f"{LABELS}.gz": "672e62003e1c800c99fff1066dcc4dcaff47451c7c250c0c0f71a3f24e9d508f",
    }


# --- load_data_dir: t10k, raw vs gz --------------------------------------------------------------------------------


def test_t10k_files_are_the_validation_set_when_present(tmp_path: Path) -> None:
    write_pair(tmp_path, *fake_digits(30), prefix="train")
    test_images, test_labels = fake_digits(7, seed=1)
    write_pair(tmp_path, test_images, test_labels, prefix="t10k", ext="")
    splits = load_data_dir(tmp_path, val_size=5)
    assert isinstance(splits, DataSplits)
    assert (len(splits.train), len(splits.val)) == (30, 7)
    assert torch.equal(splits.val.images, torch.from_numpy(test_images))
    assert splits.info["val_source"] == "t10k"
    assert splits.info["val_size"] == 7
    assert splits.info["count"] == 37
    assert sorted(splits.info["files"]) == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        f"{IMAGES}.gz",
        f"{LABELS}.gz",
    ]


def test_half_a_t10k_pair_is_rejected_naming_the_missing_file(tmp_path: Path) -> None:
    write_pair(tmp_path, *fake_digits(30))
    write(tmp_path / "t10k-images-idx3-ubyte.gz", idx_bytes(fake_digits(7)[0]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_data_dir(tmp_path, val_size=5)


def test_gz_is_read_when_both_raw_and_gz_exist(tmp_path: Path) -> None:
    write_pair(tmp_path, *fake_digits(20), ext=".gz")
    write_pair(tmp_path, *fake_digits(40), ext="")
    splits = load_data_dir(tmp_path, val_size=5)
    assert splits.info["count"] == 20
    assert sorted(splits.info["files"]) == [f"{IMAGES}.gz", f"{LABELS}.gz"]


def test_raw_files_alone_are_read(tmp_path: Path) -> None:
    write_pair(tmp_path, *fake_digits(20), ext="")
    assert load_data_dir(tmp_path, val_size=5).info["files"].keys() == {IMAGES, LABELS}


# --- corrupt inputs: each a DataError naming the file --------------------------------------------------------------


_IMG, _LAB = idx_bytes(fake_digits(10)[0]), idx_bytes(fake_digits(10)[1])
_GZ = gzip.compress(_IMG)


def _flip(data: bytes, start: int, stop: int) -> bytes:
    return data[:start] + bytes(b ^ 0xFF for b in data[start:stop]) + data[stop:]


CORRUPT = {
    # name: (bytes of the images file as stored, words the message must contain)
    "wrong_magic_labels_file_as_images": (gzip.compress(_LAB), ["expected 2051", "found 2049"]),
    "not_idx_at_all": (gzip.compress(b"GIF89a" + _IMG), ["not an IDX file"]),
    "element_type_not_ubyte": (gzip.compress(_IMG[:2] + b"\x0d" + _IMG[3:]), ["element type 0x0D"]),
    "wrong_dims": (gzip.compress(idx_bytes(np.zeros((10, 27, 28), np.uint8))), ["27x28", "28x28"]),
    "truncated_body": (gzip.compress(_IMG[:-100]), ["truncated", "7840", "7740"]),
    "truncated_header": (gzip.compress(_IMG[:10]), ["truncated IDX header"]),
    "trailing_bytes": (gzip.compress(_IMG + b"\x00" * 3), ["3 unexpected bytes"]),
    "empty_file": (b"", ["too short"]),
    "truncated_gzip": (_GZ[: len(_GZ) // 2], ["truncated gzip"]),
    "corrupt_deflate_stream": (
        _flip(gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8))), 12, 30),
        ["corrupt gzip", "Error -3"],
    ),
    "gzip_bad_crc": (_GZ[:-8] + b"\x00\x00\x00\x00" + _GZ[-4:], ["corrupt gzip"]),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_images_file_raises_data_error_naming_it(tmp_path: Path, case: str) -> None:
    stored, words = CORRUPT[case]
    images = tmp_path / f"{IMAGES}.gz"
    images.write_bytes(stored)
    write(tmp_path / f"{LABELS}.gz", _LAB)
    with pytest.raises(DataError) as e:
        load_data_dir(tmp_path, val_size=2)
    message = str(e.value)
    assert str(images) in message
    for word in words:
        assert word in message


def test_count_mismatch_names_both_files_and_both_counts(tmp_path: Path) -> None:
    images, labels = fake_digits(10)
    img, lab = write_pair(tmp_path, images, labels[:9])
    with pytest.raises(DataError) as e:
        load_pair(img, lab)
    for part in (str(img), str(lab), "10 images", "9 labels"):
        assert part in str(e.value)


def test_label_10_is_rejected_naming_the_file_the_value_and_the_index(tmp_path: Path) -> None:
    images, labels = fake_digits(10)
    labels[6] = 10
    img, lab = write_pair(tmp_path, images, labels)
    with pytest.raises(DataError) as e:
        load_pair(img, lab)
    for part in (str(lab), "label 10", "index 6"):
        assert part in str(e.value)


def test_missing_labels_file_names_the_names_looked_for(tmp_path: Path) -> None:
    write(tmp_path / f"{IMAGES}.gz", _IMG)
    with pytest.raises(DataError) as e:
        load_data_dir(tmp_path)
    assert str(tmp_path) in str(e.value)
    assert f"{LABELS}.gz and {LABELS}" in str(e.value)


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as e:
        load_data_dir(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value)


def test_missing_file_passed_to_read_idx_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as e:
        read_idx(tmp_path / "absent.gz")
    assert str(tmp_path / "absent.gz") in str(e.value)


# --- download ------------------------------------------------------------------------------------------------------


class _Server:
    """A static file server on 127.0.0.1 (port 0) that records the paths it was asked for."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def mirror(self, name: str) -> str:
        return f"{self.url}/{name}/"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a developer's http_proxy must not intercept the local server
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    s = _Server(tmp_path / "www")
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _publish(www: Path, mirror: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (www / mirror).mkdir(parents=True, exist_ok=True)
        (www / mirror / name).write_bytes(data)


def _fake_mnist() -> dict[str, bytes]:
    """Four tiny files under the official names, gzipped IDX, so the download can be loaded afterwards."""
    train, test = fake_digits(20), fake_digits(6, seed=1)
    files = {
        "train-images-idx3-ubyte.gz": train[0],
        "train-labels-idx1-ubyte.gz": train[1],
        "t10k-images-idx3-ubyte.gz": test[0],
        "t10k-labels-idx1-ubyte.gz": test[1],
    }
    return {name: gzip.compress(idx_bytes(a), mtime=0) for name, a in files.items()}


def _sums(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def test_download_fetches_every_file_verified_and_loadable(tmp_path: Path, server: _Server) -> None:
    files = _fake_mnist()
    _publish(tmp_path / "www", "a", files)
    cache = tmp_path / "cache" / "mnist"
    assert download_mnist(cache, base_urls=[server.mirror("a")], checksums=_sums(files)) == cache
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == files  # nothing else, no temporary files
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in cache.iterdir())
    splits = load_data_dir(cache)
    assert splits.info["val_source"] == "t10k" and (len(splits.train), len(splits.val)) == (20, 6)


def test_download_falls_back_to_the_next_mirror_on_a_bad_checksum(tmp_path: Path, server: _Server) -> None:
    files = _fake_mnist()
    _publish(tmp_path / "www", "bad", {name: data + b"junk" for name, data in files.items()})
    _publish(tmp_path / "www", "good", files)
    cache = tmp_path / "cache"
    download_mnist(cache, base_urls=[server.mirror("bad"), server.mirror("good")], checksums=_sums(files))
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == files
    assert sorted(server.requests) == sorted([f"/bad/{n}" for n in files] + [f"/good/{n}" for n in files])


def test_download_falls_back_past_a_missing_file_and_an_unreachable_mirror(tmp_path: Path, server: _Server) -> None:
    files = _fake_mnist()
    _publish(tmp_path / "www", "good", files)
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    cache = tmp_path / "cache"
    download_mnist(
        cache, base_urls=[dead, server.mirror("empty"), server.mirror("good")], checksums=_sums(files), timeout=5
    )
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == files


def test_download_with_no_good_mirror_raises_and_leaves_no_file(tmp_path: Path, server: _Server) -> None:
    files = _fake_mnist()
    _publish(tmp_path / "www", "a", {name: b"not it" for name in files})
    _publish(tmp_path / "www", "b", {name: data[:-1] for name, data in files.items()})
    cache = tmp_path / "cache"
    mirrors = [server.mirror("a"), server.mirror("b")]
    with pytest.raises(DataError) as e:
        download_mnist(cache, base_urls=mirrors, checksums=_sums(files))
    first = "train-images-idx3-ubyte.gz"
    for part in (str(cache / first), mirrors[0] + first, mirrors[1] + first):
        assert part in str(e.value)
    assert list(cache.iterdir()) == []


def test_download_skips_files_already_present_with_the_right_checksum(tmp_path: Path, server: _Server) -> None:
    files = _fake_mnist()
    _publish(tmp_path / "www", "a", files)
    cache = tmp_path / "cache"
    cache.mkdir()
    for name, data in files.items():
        (cache / name).write_bytes(data)
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"stale")  # wrong checksum: fetched again
    download_mnist(cache, base_urls=[server.mirror("a")], checksums=_sums(files))
    assert server.requests == ["/a/t10k-labels-idx1-ubyte.gz"]
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == files


def test_official_checksums_and_mirrors_are_the_four_mnist_files_over_https() -> None:
    assert sorted(MNIST_SHA256) == sorted(
        f"{p}-{k}-idx{d}-ubyte.gz" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))
    )
    assert all(len(s) == 64 and int(s, 16) >= 0 for s in MNIST_SHA256.values())
    assert all(url.startswith("https://") and url.endswith("/") for url in MNIST_MIRRORS)
