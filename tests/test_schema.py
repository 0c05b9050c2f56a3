"""The one validator behind both configs and the manifest: the same rules, every problem at once."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from edge_runtime.errors import ConfigError
from edge_runtime.schema import INVALID, JSON, TOML, parse
from edge_runtime.tomlconfig import validate


@dataclass(frozen=True)
class Inner:
    size: tuple[int, int]
    scale: float = 1.0


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    limit: int | None = None
    tags: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Section:
    rate: float = 1.0
    seed: int | None = None  # an optional field: the old TOML validator crashed on these
    on: bool = False


@dataclass(frozen=True)
class Document:
    run: Section = field(default_factory=Section)


def _parse(kind, value, dialect=JSON):
    errors: list[str] = []
    return parse(kind, value, dialect, errors), errors


def test_builds_nested_dataclasses_tuples_dicts_and_optionals() -> None:
    value, errors = _parse(Outer, {"name": "a", "inner": {"size": [1, 2], "scale": 3}, "limit": None})
    assert errors == []
    assert value == Outer("a", Inner((1, 2), 3.0), None, {})
    assert isinstance(value.inner.scale, float)  # an int is accepted for a float, and becomes one


def test_every_problem_is_reported_with_its_key_path() -> None:
    value, errors = _parse(
        Outer,
        {"inner": {"size": [1, True], "scale": True, "colour": 1}, "limit": 1.5, "tags": {"x": 0}},
    )
    assert value is INVALID
    assert errors == [
        "inner.size[1] must be int, got true",  # a bool is never a number
        "inner.scale must be float, got true",
        "unknown key inner.colour (allowed: size, scale)",
        "limit must be int, got 1.5",
        "tags.x must be bool, got 0",
        "missing key name",
    ]


def test_shapes_of_lists_and_objects() -> None:
    assert _parse(Inner, {"size": [1]})[1] == ["size must have 2 items, got 1"]
    assert _parse(Inner, {"size": 3})[1] == ["size must be a list, got int"]
    assert _parse(Outer, {"name": "a", "inner": []})[1] == ["inner must be an object, got list"]


def test_toml_names_sections_and_types() -> None:
    value, errors = _parse(Document, {"run": {"seed": "x", "speed": 1}, "walk": {}}, TOML)
    assert value is INVALID
    assert errors == [
        "run.seed must be int, got str",
        "unknown key run.speed (allowed: rate, seed, on)",
        "unknown section [walk] (allowed: run)",
    ]
    assert _parse(Document, {"run": [1]}, TOML)[1] == ["[run] must be a table, got list"]


def test_a_toml_config_with_an_optional_field_loads() -> None:
    assert validate(Document, {"run": {"seed": 3, "rate": 2}}, "x.toml", lambda c: []) == Document(Section(2.0, 3))
    with pytest.raises(ConfigError, match=r"^x\.toml: run\.seed must be int, got float$"):
        validate(Document, {"run": {"seed": 3.5}}, "x.toml", lambda c: [])


@dataclass(frozen=True)
class Names:
    class_names: tuple[str, ...] = ()


def test_toml_arrays_become_tuples_and_a_tuple_is_taken_back() -> None:
    assert _parse(Names, {"class_names": ["a", "b"]}, TOML) == (Names(("a", "b")), [])
    assert _parse(Names, {"class_names": ("a", "b")}, TOML) == (Names(("a", "b")), [])  # a config rebuilt from itself
    assert _parse(Names, {"class_names": "a,b"}, TOML)[1] == ["class_names must be an array of str, got str"]
    assert _parse(Names, {"class_names": ["a", 3]}, TOML)[1] == ["class_names[1] must be str, got int"]
