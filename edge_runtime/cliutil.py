"""The one place where user errors become a single line on stderr and an exit code.

Both console scripts (``edge-runtime`` and ``edge-export``) are built with :func:`run`, so they
share argument parsing, logging set-up and error handling.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence

from .errors import EdgeError

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

EXIT_USER_ERROR = 2


def configure_logging(verbose: bool) -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) leave timestamps to journald."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt)


def build_parser(prog: str, description: str, registrars: Sequence[Registrar]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in registrars:
        register(sub)
    return parser


def run(
    prog: str, description: str, registrars: Sequence[Registrar], argv: Sequence[str] | None = None
) -> int:
    """Parse ``argv``, call the chosen command's ``func(args) -> int`` and map user errors to exit 2."""
    parser = build_parser(prog, description, registrars)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except EdgeError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def positive_float(text: str) -> float:
    """argparse ``type`` for rates and durations: a finite number above zero."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
