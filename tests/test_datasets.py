"""The training data sources (exporter/datasets.py): real small files written here, and every error path.

Nothing here trains: the sources are checked on their own, then ``edge-export train`` is run only to
see that a bad data set is one line and exit 2 before any epoch.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import ConfigError, DataError
from exporter import cli, datasets, run_data
from exporter.config import Config, config_from_dict, load_config, with_overrides

RNG_SEED = 3


def frames(n: int, shape: tuple[int, ...] = (6, 5), seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_npz(path: Path, **overrides: object) -> Path:
    arrays: dict[str, object] = {
        "x_train": frames(12),
        "y_train": np.arange(12) % 3,
        "x_test": frames(6, seed=4),
        "y_test": np.arange(6) % 3,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_dir(directory: Path, gz: bool, prefix: str = "", test: str = "t10k") -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": frames(10, (4, 4)),
        "train-labels-idx1-ubyte": (np.arange(10) % 4).astype(np.uint8),
        f"{test}-images-idx3-ubyte": frames(4, (4, 4), seed=9),
        f"{test}-labels-idx1-ubyte": np.array([3, 2, 1, 0], np.uint8),
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        (directory / (prefix + name + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_image_classes(root: Path, classes: dict[str, int], shape: tuple[int, ...] = (5, 7)) -> None:
    for k, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_png(root / name / f"{i:02d}.png", np.full(shape, 10 * k + i, np.uint8))


# --------------------------------------------------------------------------- the source setting


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("mnist", ("mnist", "")),
        ("digits", ("digits", "")),
        ("npz:a/b.npz", ("npz", "a/b.npz")),
        ("idx:/d", ("idx", "/d")),
    ],
)
def test_sources_parse(text: str, parsed: tuple[str, str]):
    assert datasets.parse_source(text) == parsed


@pytest.mark.parametrize("text", ["", "cifar", "npz", "npz:", "mnist:x", "images"])
def test_unknown_sources_name_the_forms(text: str):
    with pytest.raises(DataError, match=r"expected one of mnist, digits, npz:FILE.npz, idx:DIR, images:DIR"):
        datasets.parse_source(text)


def test_config_resolves_data_paths_against_the_config_file(tmp_path: Path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "train.toml"
    path.write_text('[data]\nsource = "npz:../data/set.npz"\nclass_names = ["a", "b"]\n')
    config = load_config(path)
    assert config.data.source == f"npz:{tmp_path / 'cfg' / '../data/set.npz'}"
    assert config.data.class_names == ("a", "b")
    path.write_text('[data]\nsource = "idx:/abs/dir"\n')
    assert load_config(path).data.source == "idx:/abs/dir"
    assert Config().data.source == "mnist" and Config().data.class_names == ()


def test_config_refuses_bad_sources_and_names_in_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"x\.toml: data.source 'cifar': expected one of"):
        config_from_dict({"data": {"source": "cifar"}}, "x.toml")
    with pytest.raises(ConfigError, match=r"data\.class_names\[1\] must be str, got int"):
        config_from_dict({"data": {"class_names": ["a", 3]}}, "x.toml")
    with pytest.raises(ConfigError, match=r"data.class_names must be an array of str"):
        config_from_dict({"data": {"class_names": "a,b"}}, "x.toml")
    # --set and the recorded config.json round-trip the tuple
    config = with_overrides(Config(), [("data.class_names", ["x", "y"])])
    assert with_overrides(config, []).data.class_names == ("x", "y")


# --------------------------------------------------------------------------- digits


def test_digits_are_rescaled_exactly_and_split_stratified_and_fixed():
    assert datasets.digits_to_uint8(np.arange(17)).tolist()[:3] == [0, 16, 32]
    assert datasets.digits_to_uint8(np.array([8, 16])).tolist() == [128, 255]
    data = datasets.load_dataset("digits")
    assert data.x_train.shape[1:] == (8, 8, 1) and data.x_train.dtype == np.uint8
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.classes == 10 and data.class_names is None
    per_class = np.bincount(data.y_test, minlength=10) / np.bincount(np.r_[data.y_train, data.y_test])
    assert np.all(np.abs(per_class - datasets.TEST_FRACTION) < 0.02)
    again = datasets.load_digits()
    assert np.array_equal(again.x_test, data.x_test) and np.array_equal(again.y_train, data.y_train)
    from sklearn.datasets import load_digits

    raw = load_digits()
    first = int(np.flatnonzero(np.isin(np.arange(1797), datasets.stratified_split(raw.target)[0]))[0])
    assert np.array_equal(data.x_train[0, ..., 0], datasets.digits_to_uint8(raw.images[first]))


def test_stratified_split_keeps_every_class_and_is_disjoint():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
    train, test = datasets.stratified_split(labels)
    assert sorted(np.r_[train, test].tolist()) == list(range(len(labels)))
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 1, 1, 0]


# --------------------------------------------------------------------------- npz


def test_npz_loads_with_class_names_and_channel_axis(tmp_path: Path):
    path = write_npz(tmp_path / "d.npz", class_names=np.array(["cat", "dog", "eel"]))
    data = datasets.load_dataset(f"npz:{path}")
    assert data.x_train.shape == (12, 6, 5, 1) and data.y_train.dtype == np.int64
    assert data.class_names == ("cat", "dog", "eel") and data.classes == 3
    rgb = write_npz(tmp_path / "rgb.npz", x_train=frames(12, (4, 4, 3)), x_test=frames(6, (4, 4, 3)))
    plain = datasets.load_dataset(f"npz:{rgb}")
    assert plain.input_shape == (4, 4, 3) and plain.class_names is None and plain.classes == 3
    renamed = datasets.load_dataset(f"npz:{rgb}", class_names=("a", "b", "c"))
    assert renamed.class_names == ("a", "b", "c")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"x_train": frames(12).astype(np.float32)}, "x_train are float32; frames must be uint8"),
        ({"x_test": frames(6, (6,))}, r"x_test are shaped \(6, 6\); expected \(N, H, W\)"),
        ({"x_test": frames(6, (5, 5))}, r"training frames are \(6, 5, 1\), test frames \(5, 5, 1\)"),
        ({"y_train": np.arange(11) % 3}, "11 y_train for 12 frames"),
        ({"y_test": np.arange(6) - 1}, "y_test include -1; class indices start at 0"),
        ({"y_train": (np.arange(12) % 3).astype(np.float64)}, r"y_train are float64 \(12,\); expected \(N,\) integer"),
        ({"y_train": np.zeros(12, int), "y_test": np.zeros(6, int)}, "needs at least two classes"),
        ({"class_names": np.array(["a", "b"])}, "label 2 but 2 class names"),
        ({"class_names": np.array(["a", "a", "b"])}, "class name 'a' appears twice"),
        ({"class_names": np.array(["a", "", "b"])}, "class name '' is empty or spans lines"),
        ({"class_names": np.arange(3)}, "class_names is int64"),
        ({"x_train": None}, "has class_names|has x_test, y_test, y_train"),
        ({"extra": np.zeros(2)}, "has extra, x_test"),
    ],
)
def test_npz_errors_are_one_line_naming_the_file(tmp_path: Path, overrides: dict, fragment: str):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError, match=fragment) as caught:
        datasets.load_dataset(f"npz:{path}")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_npz_object_arrays_and_missing_files_are_refused(tmp_path: Path):
    path = tmp_path / "objects.npz"
    np.savez(
        path,
        **{"x_train": frames(2), "y_train": np.arange(2), "x_test": frames(2), "y_test": np.arange(2)},
        class_names=np.array(["a", "b"], dtype=object),
    )
    with pytest.raises(DataError, match="object array; save class_names as strings"):
        datasets.load_dataset(f"npz:{path}")
    with pytest.raises(DataError, match="no such file"):
        datasets.load_dataset(f"npz:{tmp_path / 'none.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk.npz: cannot read"):
        datasets.load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_toml_class_names_must_match_the_class_count(tmp_path: Path):
    path = write_npz(tmp_path / "d.npz")
    with pytest.raises(DataError, match=r"data.class_names for npz:.*2 class names for 3 classes"):
        datasets.load_dataset(f"npz:{path}", class_names=("a", "b"))


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_of_any_data_set(tmp_path: Path, gz: bool):
    arrays = write_idx_dir(tmp_path / "fashion", gz)
    data = datasets.load_dataset(f"idx:{tmp_path / 'fashion'}")
    assert np.array_equal(data.x_train[..., 0], arrays["train-images-idx3-ubyte"])
    assert data.y_test.tolist() == [3, 2, 1, 0] and data.classes == 4 and data.input_shape == (4, 4, 1)


def test_idx_prefixed_names_and_test_instead_of_t10k(tmp_path: Path):
    write_idx_dir(tmp_path / "emnist", gz=True, prefix="emnist-letters-", test="test")
    assert len(datasets.load_dataset(f"idx:{tmp_path / 'emnist'}").x_test) == 4


def test_idx_prefers_the_raw_file_to_its_gz_twin(tmp_path: Path):
    write_idx_dir(tmp_path / "d", gz=True)
    arrays = write_idx_dir(tmp_path / "d", gz=False)
    data = datasets.load_dataset(f"idx:{tmp_path / 'd'}")
    assert np.array_equal(data.x_test[..., 0], arrays["t10k-images-idx3-ubyte"])


def test_idx_errors(tmp_path: Path):
    with pytest.raises(DataError, match="no such directory"):
        datasets.load_dataset(f"idx:{tmp_path / 'nowhere'}")
    write_idx_dir(tmp_path / "d", gz=False)
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"no test labels file \(expected e.g. t10k-labels-idx1-ubyte\[.gz\]\)"):
        datasets.load_dataset(f"idx:{tmp_path / 'd'}")
    write_idx_dir(tmp_path / "two", gz=False)
    write_idx_dir(tmp_path / "two", gz=False, prefix="other-")
    with pytest.raises(DataError, match="several train images files"):
        datasets.load_dataset(f"idx:{tmp_path / 'two'}")
    write_idx_dir(tmp_path / "cut", gz=False)
    path = tmp_path / "cut" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: expected 160 bytes"):
        datasets.load_dataset(f"idx:{tmp_path / 'cut'}")
    write_idx_dir(tmp_path / "count", gz=False)
    (tmp_path / "count" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2], np.uint8)))
    with pytest.raises(DataError, match="2 y_test for 4 frames"):
        datasets.load_dataset(f"idx:{tmp_path / 'count'}")


# --------------------------------------------------------------------------- image folders


def test_image_folders_with_train_and_test(tmp_path: Path):
    write_image_classes(tmp_path / "set" / "train", {"cat": 3, "dog": 2})
    write_image_classes(tmp_path / "set" / "test", {"cat": 1, "dog": 1})
    (tmp_path / "set" / "train" / "cat" / "notes.txt").write_text("ignored")
    data = datasets.load_dataset(f"images:{tmp_path / 'set'}")
    assert data.class_names == ("cat", "dog") and data.input_shape == (5, 7, 1)
    assert data.y_train.tolist() == [0, 0, 0, 1, 1] and data.y_test.tolist() == [0, 1]
    assert data.x_train[1, 0, 0, 0] == 1 and data.x_train[3, 0, 0, 0] == 10  # file order, exact pixels


def test_image_folders_rgb_and_seeded_split(tmp_path: Path):
    write_image_classes(tmp_path / "set", {"a": 5, "b": 5, "c": 5}, shape=(4, 3, 3))
    data = datasets.load_dataset(f"images:{tmp_path / 'set'}")
    assert data.input_shape == (4, 3, 3) and data.class_names == ("a", "b", "c")
    assert np.bincount(data.y_test).tolist() == [1, 1, 1] and len(data.y_train) == 12
    assert np.array_equal(datasets.load_dataset(f"images:{tmp_path / 'set'}").x_test, data.x_test)


def test_image_folder_errors(tmp_path: Path):
    def fails(root: Path, fragment: str) -> None:
        with pytest.raises(DataError, match=fragment) as caught:
            datasets.load_dataset(f"images:{root}")
        assert "\n" not in str(caught.value)

    fails(tmp_path / "nowhere", "no such directory")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "no class folders")
    write_image_classes(tmp_path / "sizes", {"a": 2, "b": 2})
    write_png(tmp_path / "sizes" / "b" / "odd.png", np.zeros((6, 7), np.uint8))
    fails(tmp_path / "sizes", r"odd.png: 7x6 pixels, .*00.png is 7x5; resize them all to one size")
    write_image_classes(tmp_path / "mixed", {"a": 2, "b": 2})
    write_png(tmp_path / "mixed" / "b" / "rgb.png", np.zeros((5, 7, 3), np.uint8))
    fails(tmp_path / "mixed", "rgb.png: colour, .* is greyscale; make them all greyscale or all RGB")
    write_image_classes(tmp_path / "alpha", {"a": 2, "b": 2})
    write_png(tmp_path / "alpha" / "a" / "z.png", np.zeros((5, 7, 4), np.uint8))
    fails(tmp_path / "alpha", "z.png: image mode RGBA; save the images as 8-bit greyscale")
    write_image_classes(tmp_path / "broken", {"a": 2, "b": 2})
    (tmp_path / "broken" / "a" / "bad.png").write_bytes(b"no png")
    fails(tmp_path / "broken", "bad.png: not a readable image")
    write_image_classes(tmp_path / "hollow", {"a": 2})
    (tmp_path / "hollow" / "b").mkdir()
    fails(tmp_path / "hollow", "b: no images")
    write_image_classes(tmp_path / "half" / "train", {"a": 2, "b": 2})
    fails(tmp_path / "half", "has train/ but not test/")
    write_image_classes(tmp_path / "new" / "train", {"a": 2, "b": 2})
    write_image_classes(tmp_path / "new" / "test", {"a": 1, "zebra": 1})
    fails(tmp_path / "new", "class 'zebra' has no training folder")
    write_image_classes(tmp_path / "one", {"a": 1, "b": 1})
    fails(tmp_path / "one", "too few images to split off a test set")


# --------------------------------------------------------------------------- run directories and the CLI


def test_run_data_round_trips(tmp_path: Path):
    record = run_data.RunData(
        "npz:/x.npz", (4, 4, 1), 3, ("a", "b", "c"), "as stored", frames(5, (4, 4, 1)), np.arange(5) % 3
    )
    run_data.write_run_data(tmp_path, record)
    back = run_data.read_run_data(tmp_path)
    assert back is not None and back.class_names == ("a", "b", "c") and back.input_shape == (4, 4, 1)
    assert np.array_equal(back.test_frames, record.test_frames) and back.test_labels.dtype == np.int64
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    run_data.write_run_data(mnist, run_data.RunData("mnist", (28, 28, 1), 10, None, "x", None, None))
    assert not (mnist / run_data.RUN_TEST_SET).exists()
    assert run_data.read_run_data(mnist).test_frames is None
    assert run_data.read_run_data(tmp_path / "old") is None
    (mnist / run_data.RUN_RECORD).write_text(json.dumps({"source": "mnist"}))
    with pytest.raises(DataError, match=r"dataset.json: unreadable"):
        run_data.read_run_data(mnist)


def test_train_cli_reports_a_bad_data_set_in_one_line_exit_2(tmp_path: Path, capsys):
    write_npz(tmp_path / "d.npz", x_train=frames(12).astype(np.int16))
    config = tmp_path / "c.toml"
    config.write_text('[data]\nsource = "npz:d.npz"\n')  # relative to the config, not the cwd
    assert cli.main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"{tmp_path / 'd.npz'}: x_train are int16; frames must be uint8" in err


def test_train_refuses_data_the_network_cannot_take(tmp_path: Path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('[data]\nsource = "digits"\n')
    assert cli.main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the data's frames are 8x8x1 (X x Y x C) but model.input_shape is 28x28x1" in err
    assert err.count("\n") == 0 and "Traceback" not in err


def test_train_refuses_data_with_more_classes_than_outputs(tmp_path: Path, capsys):
    square = {"x_train": frames(12, (28, 28)), "x_test": frames(6, (28, 28), seed=4)}
    write_npz(tmp_path / "d.npz", y_train=np.arange(12), **square)
    config = tmp_path / "c.toml"
    config.write_text('[data]\nsource = "npz:d.npz"\n')
    assert cli.main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "12 classes, but the network's last layer has 10 outputs" in err
