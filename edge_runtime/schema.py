"""One typed validator for both configs (TOML) and the bundle manifest (JSON): dataclass fields are the schema.

:func:`parse` builds a (frozen) dataclass from a parsed document and appends one line per problem to
``errors``, each naming its key path (``inference.max_batch``, ``layers[0].activation``), instead of
stopping at the first: a user fixes a file in one pass. The rules are the same for both formats:
unknown keys are refused with the allowed ones listed, a field without a default is required, an int
is accepted for a float, a bool is never a number, ``X | None`` takes null (JSON), lists (TOML
arrays) become tuples. Only how a message names tables and lists and shows a wrong value depends on
the format (:class:`Dialect`).

Why our own ~120 lines and not a library: pydantic would put a compiled core of several MB on every
edge host for two small schemas; dacite stops at the first problem, and cattrs reports problems as
nested exception groups; both callers want every problem at once, as one line each.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints


@dataclass(frozen=True)
class Dialect:
    """How messages name things in one file format."""

    table: str  # what an object is called: "table" (TOML) or "object" (JSON)
    array: str  # and a list: "an array" (TOML) or "a list" (JSON)
    show: Callable[[Any], str]  # a wrong scalar as its message shows it
    sections: bool  # the document's own keys are [sections] (both TOML configs)

    def label(self, where: str) -> str:
        """A table's name in a message: ``[inference]`` in TOML, ``target`` in JSON."""
        return f"[{where}]" if self.sections else where


TOML = Dialect("table", "an array", lambda value: type(value).__name__, sections=True)
JSON = Dialect("object", "a list", lambda value: json.dumps(value)[:40], sections=False)


class _Invalid:
    """What :func:`parse` returns for a value it reported as wrong (its parent leaves that key out)."""


INVALID: Any = _Invalid()


def parse(kind: Any, value: Any, dialect: Dialect, errors: list[str], where: str = "") -> Any:
    """``value`` as ``kind`` (a dataclass, ``tuple[...]``, ``dict[str, ...]``, ``X | None``, a scalar or
    ``Any``), or INVALID after appending its problems to ``errors``. ``where``: the key path so far."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (arg for arg in args if arg is not type(None))  # the schemas use X | None only
        return parse(inner, value, dialect, errors, where)
    if dataclasses.is_dataclass(kind):
        return _parse_dataclass(kind, value, dialect, errors, where)
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, list | tuple):  # a tuple: a config rebuilt from its own dataclasses
            of = f" of {_name(args[0], dialect)}" if variadic else ""
            errors.append(f"{where} must be {dialect.array}{of}, got {type(value).__name__}")
            return INVALID
        items = args[:1] * len(value) if variadic else args
        if len(items) != len(value):
            errors.append(f"{where} must have {len(items)} items, got {len(value)}")
            return INVALID
        parsed = [
            parse(item, v, dialect, errors, f"{where}[{i}]")
            for i, (item, v) in enumerate(zip(items, value, strict=True))
        ]
        return INVALID if any(p is INVALID for p in parsed) else tuple(parsed)
    if origin is dict:
        if not isinstance(value, Mapping):
            errors.append(f"{where} must be an {dialect.table}, got {type(value).__name__}")
            return INVALID
        entries = {key: parse(args[1], v, dialect, errors, f"{where}.{key}") for key, v in value.items()}
        return INVALID if any(v is INVALID for v in entries.values()) else entries
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool) and isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    errors.append(f"{where} must be {getattr(kind, '__name__', kind)}, got {dialect.show(value)}")
    return INVALID


def _name(kind: Any, dialect: Dialect) -> str:
    """What a message calls the items of a list: ``str``, ``objects``, ..."""
    if dataclasses.is_dataclass(kind) or get_origin(kind) is dict:
        return f"{dialect.table}s"
    return str(getattr(kind, "__name__", kind))


def _parse_dataclass(kind: Any, value: Any, dialect: Dialect, errors: list[str], where: str) -> Any:
    if not isinstance(value, Mapping):
        article = "an" if dialect.table[0] in "aeiou" else "a"
        errors.append(f"{dialect.label(where)} must be {article} {dialect.table}, got {type(value).__name__}")
        return INVALID
    hints = get_type_hints(kind)
    fields = dataclasses.fields(kind)
    names = [f.name for f in fields]
    prefix = f"{where}." if where else ""
    reported = len(errors)
    built: dict[str, Any] = {}
    for key, item in value.items():  # in the document's order, so messages follow the file
        if key not in names:
            unknown = f"section [{key}]" if dialect.sections and not where else f"key {prefix}{key}"
            errors.append(f"unknown {unknown} (allowed: {', '.join(names)})")
            continue
        built[key] = parse(hints[key], item, dialect, errors, f"{prefix}{key}")
    for f in fields:
        if f.name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"missing key {prefix}{f.name}")
    if len(errors) > reported:
        return INVALID
    return kind(**built)
