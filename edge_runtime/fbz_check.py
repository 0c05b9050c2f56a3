"""Checks a ``.fbz`` must pass before akida's reader sees it in our process.

Why: ``akida.Model(path)`` (akida 2.19.3) dereferences what the file says without checking it, so
a truncated or bit-flipped file kills the whole process with SIGSEGV (measured: files cut to 100 B,
1 kB or 100 kB, and 6 of 20 files with 4 flipped bits). No user file may crash a command, so:

1. **Length.** akida's writer stores the model as one Snappy block (a varint with the uncompressed
   size, then the compressed data) in a buffer of Snappy's worst-case size, ``32 + n + n // 6``
   bytes, and writes the whole buffer (every ``.fbz`` we have checked, both shipped bundles and
   every test bundle, has exactly that length). A shorter file is a truncated copy, even where the
   compressed data happens to end before the cut (akida would then load it without a word).
2. **A reader in a child process.** Damage inside a complete file can only be found by reading it,
   so a child process reads it first; if akida crashes there, we report it in one line instead. A
   file that read cleanly once is not read twice by the same process (keyed by its SHA-256), so
   reloading the same bundle or re-verifying it costs one child (~0.2 s) per process, not one per load.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

from .errors import ModelError

# The child only reads the model; its exit status (or the signal that killed it) is the answer.
_PROBE = "import sys, akida; akida.Model(sys.argv[1])"
_PROBE_TIMEOUT_S = 120.0
_read_cleanly: set[str] = set()


def snappy_frame_size(head: bytes) -> int | None:
    """The file size akida writes for a model whose Snappy preamble starts ``head``; None if unreadable."""
    size = shift = 0
    for byte in head[:5]:  # a uint32 varint takes at most 5 bytes
        size |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return 32 + size + size // 6 if size else None
    return None


def check_fbz(path: Path) -> None:
    """Raise ModelError (one line, saying what to do) unless akida can read ``path`` without crashing."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"{path}: cannot read the model ({error.strerror or error})") from None
    expected = snappy_frame_size(data)
    if expected is None:
        raise ModelError(f"{path}: not a readable Akida model (no model header); give a .fbz written by akida")
    if len(data) < expected:
        raise ModelError(
            f"{path}: not a readable Akida model (truncated, or not a .fbz: {len(data)} bytes where "
            f"akida writes {expected} for the model it announces); copy or export it again"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest in _read_cleanly:
        return
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ModelError(f"{path}: akida did not finish reading the model in {_PROBE_TIMEOUT_S:.0f} s") from None
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        raise ModelError(
            f"{path}: not a readable Akida model (damaged: akida's reader died with {name} on "
            "it); copy or export it again"
        )
    if result.returncode == 0:
        _read_cleanly.add(digest)
    # Any other status is an ordinary error: the in-process read raises it as a ModelError with its message.
