"""What both TOML configs share: reading the file and validating it against frozen-dataclass sections.

``edge-runtime serve`` (:mod:`edge_runtime.config`) and ``edge-export train``
(:mod:`exporter.config`) each describe their sections as frozen dataclasses; this module turns a
file into a document and the document into those sections with the validator the bundle manifest
uses too (:mod:`edge_runtime.schema`), so both report problems the same way: one ConfigError line
naming the file, with every bad key in it (unknown keys list the allowed ones).
It lives in the runtime because the exporter may import the runtime, never the reverse.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .schema import TOML, parse

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


def validate(cls: type, raw: Mapping[str, Any], origin: str, check: Callable[[Any], list[str]]) -> Any:
    """Build ``cls`` from a parsed document, then run ``check`` on it (cross-field and range rules).

    Raises one ConfigError listing every problem, so a user fixes a file in one pass. ``check`` runs
    only once every key was valid: its rules assume well-typed values.
    """
    errors: list[str] = []
    config = parse(cls, raw, TOML, errors)
    errors.extend(check(config) if not errors else [])
    if errors:
        raise ConfigError(f"{origin}: " + "; ".join(errors))
    return config
