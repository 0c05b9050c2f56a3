"""The one place where user errors become a single line on stderr and an exit code.

Both console scripts (``edge-runtime`` and ``edge-export``) are built with :func:`run`, so they
share argument parsing (``--version``; ``-v`` before or after the command), logging set-up (syslog
priorities under journald) and error handling (a missing optional extra is a user error too).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
import types
from collections.abc import Callable, Mapping, Sequence

from . import __version__
from .errors import EdgeError

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

EXIT_USER_ERROR = 2
DISTRIBUTION = "akida-edge"
VERBOSE_HELP = "log debug messages (before or after COMMAND)"


def syslog_priority(levelno: int) -> int:
    """The syslog(3) priority of a logging level: err 3, warning 4, info 6, debug 7 (crit 2)."""
    for floor, priority in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6)):
        if levelno >= floor:
            return priority
    return 7


def under_journald() -> bool:
    """systemd sets JOURNAL_STREAM when stdout/stderr are connected to the journal (systemd.exec(5))."""
    return bool(os.environ.get("JOURNAL_STREAM"))


class JournalFormatter(logging.Formatter):
    """One journal entry per record, with its priority.

    Why: journald reads a leading ``<N>`` on a stderr line as that entry's syslog priority
    (sd-daemon(3)), so ``journalctl -p err`` finds our errors; and it makes every line its own entry,
    so a record's newlines (a traceback) are written as a literal ``\\n`` to keep it in one entry.
    """

    def format(self, record: logging.LogRecord) -> str:
        return f"<{syslog_priority(record.levelno)}>" + super().format(record).replace("\n", "\\n")


def configure_logging(verbose: bool) -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) leave timestamps to journald and add priorities."""
    level = logging.DEBUG if verbose else logging.INFO
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journald():
        logging.basicConfig(level=level, format="%(asctime)s " + fmt)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JournalFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
    # An uncaught exception (main or any thread) becomes one critical entry, not one entry per line.
    sys.excepthook = _log_uncaught
    threading.excepthook = lambda hook: _log_uncaught(hook.exc_type, hook.exc_value, hook.exc_traceback)


def _log_uncaught(
    kind: type[BaseException], value: BaseException | None, traceback: types.TracebackType | None
) -> None:
    if value is not None:
        logging.getLogger("uncaught").critical("uncaught %s", kind.__name__, exc_info=(kind, value, traceback))


def error_line(prog: str, message: str) -> None:
    """``PROG: error: MESSAGE`` on stderr, as an err-priority entry under journald."""
    prefix = "<3>" if under_journald() else ""
    print(f"{prefix}{prog}: error: {message}", file=sys.stderr)


def build_parser(prog: str, description: str, registrars: Sequence[Registrar]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s ({DISTRIBUTION}) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in registrars:
        register(sub)
    # The global flags are accepted after the command too (`edge-runtime serve -v`). SUPPRESS: a
    # subcommand that was not given -v must not overwrite the -v given before it.
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def run(
    prog: str,
    description: str,
    registrars: Sequence[Registrar],
    argv: Sequence[str] | None = None,
    extras: Mapping[str, str] | None = None,
) -> int:
    """Parse ``argv``, call the chosen command's ``func(args) -> int`` and map user errors to exit 2.

    ``extras`` maps a top-level module to the optional extra that installs it: a command that needs
    a module the host does not have says which extra to install instead of printing a traceback.
    """
    parser = build_parser(prog, description, registrars)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except EdgeError as error:
        error_line(prog, str(error))
        return EXIT_USER_ERROR
    except ModuleNotFoundError as error:
        extra = (extras or {}).get((error.name or "").partition(".")[0])
        if extra is None:
            raise
        error_line(
            prog,
            f"`{prog} {args.command}` needs the {extra} extra (no module {error.name!r}): "
            f"pip install '{DISTRIBUTION}[{extra}]'",
        )
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
