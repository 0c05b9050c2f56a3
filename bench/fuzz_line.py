"""A fuzz campaign against the daemon over a real pty, with a real Prometheus running our rules.

Run: ``python bench/fuzz_line.py [--examples 300] [--seed 15]``. It prints the daemon's counters
next to the reference, and the alerts Prometheus reports, phase by phase:

1. **noise**: intact MNIST frames with line noise (random bytes, ending in 0x00) after each one.
   Nothing is lost, so no alert may even go pending.
2. **fuzz**: hypothesis draws episodes (intact runs, random blobs, bit flips, truncations, bad
   headers with a valid CRC, 4 MiB length claims, sequence jumps back and forward) and writes each
   to the pty as it is drawn.
3. **burst**: 6,000 frames written as fast as the pty takes them, into a 64-frame queue.
4. **silence**: the port stays open and nothing comes; EdgeSensorSilent must go pending and fire
   within its ``for:``.

The reference is the protocol's own decoder fed the very same bytes: the frames it accepts, the
bad packets it reports by kind and the sequence numbers it finds missing. The daemon must match it
exactly, and account for every received frame (received = inferred + dropped by reason).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from daemon_support import scrape, total, value  # noqa: E402
from deploy_support import require_tool  # noqa: E402
from test_e2e_prometheus import Process, PrometheusApi, free_port, get, prometheus_config  # noqa: E402

from edge_runtime.daemon import Daemon  # noqa: E402
from edge_runtime.emulator import PtyPort  # noqa: E402
from edge_runtime.mnist import load_mnist  # noqa: E402
from edge_runtime.protocol import (  # noqa: E402
    CRC,
    DELIMITER,
    HEADER,
    MAGIC,
    BadPacket,
    FrameDecoder,
    cobs_encode,
    encode_frame,
)

RATE = 100  # the rate= the daemon is told: stale after max(5 s, 10 periods)


class Line:
    """Writes to the pty and feeds the reference decoder the same bytes, counting what it finds."""

    def __init__(self, port: PtyPort, images: np.ndarray) -> None:
        self.port, self.images = port, images
        self.decoder = FrameDecoder()
        self.frames = 0
        self.missing = 0
        self.bad: collections.Counter[str] = collections.Counter()
        self.seq = 0
        self.write(DELIMITER)

    def write(self, data: bytes) -> None:
        self.port.write(data)
        for item in self.decoder.feed(data):
            if isinstance(item, BadPacket):
                self.bad[item.kind] += 1
            else:
                self.frames += 1
                self.missing += item.missing

    def packet(self, seq: int | None = None) -> bytes:
        seq = self.seq if seq is None else seq
        self.seq = seq + 1
        return encode_frame(seq, self.images[seq % len(self.images)])


def bad_header(kind: str, seq: int) -> bytes:
    """A packet whose CRC is right but whose header is not: magic, version, dtype or a 4 MiB length claim."""
    fields = {
        "magic": (b"ZZ", 1, 1, 4),
        "version": (MAGIC, 9, 1, 4),
        "dtype": (MAGIC, 1, 7, 4),
        "claim": (MAGIC, 1, 1, 4 << 20),
    }[kind]
    magic, version, dtype, length = fields
    body = HEADER.pack(magic, version, dtype, seq, 2, 2, 1, length) + bytes(4)
    return cobs_encode(body + CRC.pack(zlib.crc32(body))) + DELIMITER


EPISODES = st.one_of(
    st.tuples(st.just("frames"), st.integers(1, 20)),
    st.tuples(st.just("blob"), st.binary(min_size=1, max_size=3000)),
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(1, 800)),
    st.tuples(st.just("header"), st.sampled_from(["magic", "version", "dtype", "claim"])),
    st.tuples(st.just("seq"), st.integers(-50, 70_000)),
)


def play(line: Line, episode: tuple) -> None:
    kind = episode[0]
    if kind == "frames":
        line.write(b"".join(line.packet() for _ in range(episode[1])))
    elif kind == "blob":
        line.write(episode[1] + DELIMITER)
    elif kind == "flip":
        packet = bytearray(line.packet())
        index = episode[1] % (len(packet) - 1)
        packet[index] ^= 1 << episode[2]
        line.write(bytes(packet))
    elif kind == "truncate":
        line.write(line.packet()[: episode[1]] + DELIMITER)
    elif kind == "header":
        line.write(bad_header(episode[1], line.seq))
        line.seq += 1
    else:  # a sequence game: jump back, or forward by up to 70,000 (beyond 65,535 is a sender restart)
        line.write(line.packet(max(0, line.seq + episode[1]) % (1 << 32)))


def wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}")


def accounted(url: str, line: Line) -> dict:
    def done() -> dict | None:
        samples = scrape(url)
        received = value(samples, "edge_frames_received_total")
        lost = ("queue_full", "bad_shape", "inference_error")  # after receipt; seq_gap frames never arrived
        settled = total(samples, "edge_inferences_total") + sum(
            value(samples, "edge_frames_dropped_total", reason=r) for r in lost
        )
        return samples if received == line.frames and settled == received else None

    return wait(done, 120, "every frame to be accounted for")


def report(phase: str, samples: dict, line: Line, api: PrometheusApi) -> None:
    bad = {
        k: int(v)
        for (n, labels), v in samples.items()
        if n == "edge_sensor_bad_packets_total" and v
        for k in [dict(labels)["kind"]]
    }
    dropped = {dict(labels)["reason"]: int(v) for (n, labels), v in samples.items() if n == "edge_frames_dropped_total"}
    inferred = int(total(samples, "edge_inferences_total"))
    received = int(value(samples, "edge_frames_received_total"))
    alerts = [(a["labels"]["alertname"], a["state"]) for a in api.get_json("/api/v1/alerts")["alerts"]]
    print(
        f"[{phase}] received {received} (reference {line.frames}) = inferred {inferred} + queue_full "
        f"{dropped['queue_full']} + bad_shape {dropped['bad_shape']} + inference_error {dropped['inference_error']}; "
        f"seq_gap {dropped['seq_gap']} (reference {line.missing})"
    )
    print(
        f"[{phase}] bad packets {dict(sorted(bad.items()))} (reference {dict(sorted(line.bad.items()))}); "
        f"flushed bytes {int(value(samples, 'edge_sensor_flushed_bytes_total'))}; alerts {alerts or 'none'}"
    )
    assert received == line.frames and dropped["seq_gap"] == line.missing and bad == dict(line.bad), phase
    assert phase != "noise" or not alerts, "an alert went pending on line noise alone"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    images = load_mnist().test_images[:, :, :, None]
    with tempfile.TemporaryDirectory(prefix="edge-fuzz-") as scratch, PtyPort() as port:
        workdir = Path(scratch)
        daemon_port, prometheus_port = free_port(), free_port()
        daemon = Daemon(
            None,
            {
                "model.bundle": str(REPO / "models" / "mnist-zeroaware"),
                "source.spec": f"serial:{port.path}?rate={RATE}",
                "source.queue_size": 64,
                "inference.backend": "simulator",
                "metrics.listen": f"127.0.0.1:{daemon_port}",
            },
        )
        daemon.start()
        url = daemon.url
        prometheus = Process(
            "prometheus",
            [
                require_tool("prometheus"),
                f"--config.file={prometheus_config(workdir, f'127.0.0.1:{daemon_port}')}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            workdir,
        )
        api = PrometheusApi(f"http://127.0.0.1:{prometheus_port}")
        try:
            wait(lambda: get(f"{url}/readyz")[0] == 200, 60, "the daemon")
            wait(lambda: api.query('up{job="edge-runtime"} == 1'), 60, "Prometheus to scrape the daemon")
            line = Line(port, images)
            rng = np.random.default_rng(args.seed)
            started = time.monotonic()
            while time.monotonic() - started < 20:  # 1. noise between intact frames, at the sensor's rate
                noise = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
                line.write(line.packet() + noise + DELIMITER)
                time.sleep(1 / RATE)
            report("noise", accounted(url, line), line, api)

            @settings(
                max_examples=args.examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(st.lists(EPISODES, min_size=1, max_size=8))
            def fuzz(episodes: list[tuple]) -> None:
                for episode in episodes:
                    play(line, episode)

            fuzz()  # 2.
            line.write(b"".join(line.packet() for _ in range(3)))  # a good tail: gaps before it are counted
            report("fuzz", accounted(url, line), line, api)
            line.write(b"".join(line.packet() for _ in range(6000)))  # 3.
            report("burst", accounted(url, line), line, api)
            silent_at = time.monotonic()  # 4.
            pending = wait(
                lambda: [
                    a
                    for a in api.get_json("/api/v1/alerts")["alerts"]
                    if a["labels"]["alertname"] == "EdgeSensorSilent"
                ],
                120,
                "EdgeSensorSilent",
            )
            print(
                f"[silence] EdgeSensorSilent {pending[0]['state']} after {time.monotonic() - silent_at:.0f} s; "
                f"/readyz: {get(f'{url}/readyz')[1].decode().strip()}"
            )
            wait(
                lambda: [
                    a
                    for a in api.get_json("/api/v1/alerts")["alerts"]
                    if a["labels"]["alertname"] == "EdgeSensorSilent" and a["state"] == "firing"
                ],
                180,
                "EdgeSensorSilent to fire",
            )
            print(
                f"[silence] EdgeSensorSilent firing after {time.monotonic() - silent_at:.0f} s of silence "
                "(stale after 5 s, for: 1m, rules evaluated every 1 s)"
            )
        finally:
            daemon.post(15)
            daemon.wait()
            prometheus.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
