"""Process-wide settings the daemon applies at start (and on reload): GIL switch interval, BLAS threads."""

from __future__ import annotations

import sys

# The daemon's GIL switch interval (CPython's default is 5 ms); see prompt_thread_switches().
SWITCH_INTERVAL_S = 0.0005


def prompt_thread_switches() -> None:
    """Let a thread waiting for the GIL in after 0.5 ms instead of 5 ms, for the whole process.

    Why: the inference thread holds the GIL through the simulator's Python code between NumPy
    calls, while the source thread needs it only briefly to queue the frames that just arrived.
    At 5 ms the source thread can wait out most of a batch before it queues anything, and the
    inference thread then finds the queue empty and waits in turn. Measured over a pty on this
    project's 2-core host (9 interleaved runs each of 3,000 frames, shipped bundle): median 9,500
    frames/s at 0.5 ms against 8,900 at 5 ms; the host's run-to-run spread (7,100-11,400) is larger
    than that gain, so it is a small one, and the extra switches cost no measurable CPU per frame.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def limit_blas_threads(threads: int) -> None:
    """Cap the BLAS library's worker threads (OpenBLAS, MKL, BLIS) for the whole process.

    NumPy's OpenBLAS starts a busy-waiting worker per core. The simulator multiplies small matrices
    (one micro-batch), so extra workers only fight the reader thread and each other: on a loaded
    2-core host, measured simulator throughput at batch 16 fell from 15,000 frames/s with one BLAS
    thread to 460 with the default two. threadpoolctl changes the limit at run time, after NumPy
    has loaded its BLAS, which an environment variable can no longer do.
    """
    from threadpoolctl import threadpool_limits  # lazy: only the daemon needs it

    threadpool_limits(limits=threads, user_api="blas")
