"""The serve daemon's config: the shipped example loads, mistakes are all reported, flags override keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_runtime import cli
from edge_runtime.config import (
    DEFAULT_LISTEN,
    ServeConfig,
    config_from_dict,
    load_config,
    parse_listen,
)
from edge_runtime.errors import ConfigError
from edge_runtime.tomlconfig import tomllib

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "edge-runtime.toml"
REQUIRED = {"model": {"bundle": "/b"}, "source": {"spec": "replay:mnist-test"}}


def test_shipped_example_loads_and_documents_every_key() -> None:
    config = load_config(EXAMPLE)
    assert config.source.spec.startswith("serial:/dev/serial/by-id/")
    assert config.metrics.listen == DEFAULT_LISTEN
    document = tomllib.loads(EXAMPLE.read_text())
    for section in dataclasses.fields(ServeConfig):
        keys = {f.name for f in dataclasses.fields(getattr(config, section.name))}
        assert set(document[section.name]) == keys, f"[{section.name}] in the example"


def test_defaults_fill_what_is_not_given() -> None:
    config = config_from_dict(REQUIRED)
    assert config.inference.backend == "auto"
    assert config.source.queue_size == 64
    assert config.predictions.path == "" and config.predictions.stdout is False


def test_every_mistake_is_reported_at_once_with_the_allowed_keys() -> None:
    raw = {
        **REQUIRED,
        "inference": {"backend": "gpu", "max_batch": 0, "sample_evry": 3},
        "metrics": {"listen": 9464},
        "extra": {},
    }
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw, "site.toml")
    message = str(error.value)
    assert message.startswith("site.toml: ")
    assert "\n" not in message
    assert "unknown key inference.sample_evry (allowed: backend, max_batch, sample_every" in message
    assert "metrics.listen must be str, got int" in message
    assert "unknown section [extra] (allowed: model, source, inference, metrics, predictions)" in message


def test_ranges_and_cross_checks() -> None:
    raw = {**REQUIRED, "inference": {"backend": "gpu", "max_batch": 0, "power_window_s": 0.2}}
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw)
    message = str(error.value)
    assert "inference.backend must be one of auto, akida, simulator, onnx" in message
    assert "inference.max_batch must be >= 1" in message
    assert "power_window_s must be >= 0.4224 (three 140.8 ms power-meter updates)" in message


def test_required_keys_name_the_flag_that_sets_them() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None)
    assert str(error.value) == (
        "command line: model.bundle is required (set it or pass --model); "
        "source.spec is required (set it or pass --source)"
    )


def test_bad_source_spec_and_listen_address_are_config_errors() -> None:
    raw = {"model": {"bundle": "/b"}, "source": {"spec": "usb:/dev/x"}, "metrics": {"listen": "localhost"}}
    with pytest.raises(ConfigError) as error:
        config_from_dict(raw)
    message = str(error.value)
    assert "bad source 'usb:/dev/x'" in message
    assert "bad listen address 'localhost'" in message


def test_flags_override_file_keys_and_are_validated_like_them(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nbundle = "/from/file"\n[source]\nspec = "replay:mnist-test"\n')
    config = load_config(path, {"model.bundle": "/from/flag", "predictions.stdout": True})
    assert config.model.bundle == "/from/flag"
    assert config.predictions.stdout is True
    with pytest.raises(ConfigError, match=r"metrics\.listen must be str"):
        load_config(path, {"metrics.listen": 1})


def test_unreadable_and_invalid_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot be read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(bad)


def test_a_binary_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ls"  # e.g. `--config /bin/ls`: tomllib decodes UTF-8 and raised UnicodeDecodeError
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe binary, not TOML\n")
    assert cli.main(["serve", "--config", str(path), "--metrics-addr", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-runtime: error: ") and "\n" not in err
    assert f"{path}: not a TOML file (not UTF-8 text" in err


def test_device_profile_defaults_to_the_packaged_akd1000_one() -> None:
    assert config_from_dict(REQUIRED).inference.device_profile == ""
    assert config_from_dict(REQUIRED).inference.device == "akd1000"
    config = config_from_dict(
        {**REQUIRED, "inference": {"device_profile": "/etc/edge-runtime/profile.json", "device": "akd1500"}}
    )
    assert config.inference.device_profile == "/etc/edge-runtime/profile.json"
    with pytest.raises(ConfigError, match=r"inference\.device must be one of akd1000, akd1500"):
        config_from_dict({**REQUIRED, "inference": {"device": "akd2000"}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)), ("0.0.0.0:0", ("0.0.0.0", 0))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9464", ":9464", "host:", "host:http", "host:70000"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        parse_listen(text)


def test_a_penalty_or_pruning_that_never_starts_is_warned_about() -> None:
    from exporter.config import Config, PenaltyConfig, PruneConfig, TrainConfig, config_warnings

    never = Config(
        train=TrainConfig(qat_epochs=2),
        penalty=PenaltyConfig(activations=4.0, start_epoch=2),
        prune=PruneConfig(sparsity=0.5, start_epoch=3, end_epoch=4),
    )
    warnings = config_warnings(never)
    assert len(warnings) == 2
    assert "penalties start at QAT epoch 2 but train.qat_epochs is 2: they never apply" in warnings[0]
    assert "pruning starts at QAT epoch 3" in warnings[1]
    fine = Config(train=TrainConfig(qat_epochs=3), penalty=PenaltyConfig(activations=4.0, start_epoch=2))
    assert config_warnings(fine) == []
    assert (
        config_warnings(Config(train=TrainConfig(qat_epochs=1), penalty=PenaltyConfig(activations=0.0, weights=0.0)))
        == []
    )


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "c.toml"
    path.write_text(
        '[model]\nbundle = "bundles/current"\n[source]\nspec = "replay:frames/f.npy?rate=5"\n'
        '[inference]\ndevice_profile = "/abs/profile.json"\n[predictions]\npath = "../log/p.jsonl"\n'
    )
    monkeypatch.chdir(tmp_path)  # the file is named relative to here, its paths are not
    config = load_config(Path("etc") / "c.toml", {"predictions.stdout": True})
    assert config.model.bundle == str(tmp_path / "etc" / "bundles" / "current")
    assert config.source.spec == f"replay:{tmp_path / 'etc' / 'frames' / 'f.npy'}?rate=5"
    assert config.inference.device_profile == "/abs/profile.json"
    assert config.predictions.path == str(tmp_path / "etc" / ".." / "log" / "p.jsonl")


def test_flags_and_special_values_are_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[model]\nbundle = "b"\n[source]\nspec = "replay:mnist-test?rate=5"\n[predictions]\npath = ""\n')
    config = load_config(path, {"model.bundle": "relative/to/cwd"})
    assert config.model.bundle == "relative/to/cwd"  # a flag means what it means on any command line
    assert config.source.spec == "replay:mnist-test?rate=5" and config.predictions.path == ""


def test_the_local_config_points_at_files_of_the_clone() -> None:
    config = load_config(EXAMPLE.parent / "local.toml")
    assert (Path(config.model.bundle) / "manifest.json").is_file()
    assert config.source.spec == "replay:mnist-test?rate=100"


def test_a_missing_bundle_names_the_key_and_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """The edge host's config tried on a development machine, as a new user would."""
    assert cli.main(["serve", "--config", str(EXAMPLE), "--metrics-addr", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"edge-runtime: error: /var/lib/edge-runtime/bundles/current: no such bundle directory "
        f"(model.bundle, from {EXAMPLE}; set it or pass --model BUNDLE_DIR)\n"
    )
