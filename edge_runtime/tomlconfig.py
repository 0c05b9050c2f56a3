"""What both TOML configs share: reading the file and building a frozen-dataclass section from a table.

``edge-runtime serve`` (:mod:`edge_runtime.config`) and ``edge-export train``
(:mod:`exporter.config`) each describe their sections as frozen dataclasses; this module turns a
file into a document and a table into one section, so both report problems the same way: one
ConfigError line naming the file, with every bad key in it (unknown keys list the allowed ones).
It lives in the runtime because the exporter may import the runtime, never the reverse.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed document at ``path``; ConfigError (one line with the path) if it cannot be read or parsed."""
    try:
        with open(path, "rb") as handle:  # binary, as tomllib requires: TOML is UTF-8 whatever the locale
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text: byte {error.start} is invalid)") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML ({error})") from None


def parse_toml_value(text: str) -> Any:
    """One value with TOML's rules (``3e-4``, ``true``, ``"l1"``); a bare word is returned as the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def build_section(name: str, cls: type, raw: Any, errors: list[str]) -> Any:
    """``cls`` (a frozen dataclass of str/int/float/bool fields, or tuples of them) from the table ``[name]``.

    Appends one message per bad key to ``errors`` instead of stopping at the first, and returns the
    section with the good keys applied (defaults elsewhere). An int is accepted for a float; a bool
    is never accepted as a number.
    """
    if not isinstance(raw, Mapping):
        errors.append(f"[{name}] must be a table")
        return cls()
    hints = get_type_hints(cls)
    allowed = [f.name for f in fields(cls)]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            errors.append(f"unknown key {name}.{key} (allowed: {', '.join(allowed)})")
            continue
        expected = hints[key]
        if get_origin(expected) is tuple:  # tuple[str, ...]: a TOML array of that type
            item = get_args(expected)[0]
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, item) and not isinstance(v, bool) for v in value
            ):
                errors.append(f"{name}.{key} must be an array of {item.__name__}, got {value!r}"[:200])
                continue
            values[key] = tuple(value)
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            errors.append(f"{name}.{key} must be {expected.__name__}, got {type(value).__name__}")
            continue
        values[key] = value
    return cls(**values)


def build_sections(cls: type, raw: Mapping[str, Any], errors: list[str]) -> Any:
    """``cls`` (a dataclass whose fields are sections) from a whole document; unknown sections are errors."""
    hints = get_type_hints(cls)
    built: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            errors.append(f"unknown section [{key}] (allowed: {', '.join(hints)})")
            continue
        built[key] = build_section(key, hints[key], value, errors)
    return cls(**built)


def validate(cls: type, raw: Mapping[str, Any], origin: str, check: Callable[[Any], list[str]]) -> Any:
    """Build ``cls`` from a parsed document, then run ``check`` on it (cross-field and range rules).

    Raises one ConfigError listing every problem, so a user fixes a file in one pass. ``check`` runs
    only once every key was valid: its rules assume well-typed values.
    """
    errors: list[str] = []
    config = build_sections(cls, raw, errors)
    errors.extend(check(config) if not errors else [])
    if errors:
        raise ConfigError(f"{origin}: " + "; ".join(errors))
    return config
