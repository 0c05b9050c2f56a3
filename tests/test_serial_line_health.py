"""What the daemon says about the serial line: noise is not lost frames, silence is noticed, and bytes
sent before the port opened are counted (issue 15, items 7, 8 and 10). The daemon runs in-process on
a real pty; every number is checked against what the test itself sent.
"""

from __future__ import annotations

import numpy as np
import pytest
from daemon_support import BundleUnderTest, PtyWriter, build_bundle, http_get, packets, scrape_when, total, value
from test_daemon import ready, running

from edge_runtime.emulator import PtyPort
from edge_runtime.health import STALE_MIN_S
from edge_runtime.protocol import DELIMITER, FrameDecoder

FRAMES = 300


@pytest.fixture(scope="module")
def images(mnist_data) -> np.ndarray:
    return mnist_data.test_images[:FRAMES, :, :, None]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray, mnist_data) -> BundleUnderTest:
    return build_bundle(tmp_path_factory.mktemp("bundle") / "a", 5, images[:100], mnist_data.test_labels[:100])


def noisy_stream(images: np.ndarray, seed: int) -> tuple[list[bytes], int]:
    """Intact packets for every frame, each followed by a burst of line noise ending in 0x00.

    Returns the chunks and how many bad packets the protocol's own decoder finds in them (the
    reference: the daemon must count exactly those, and lose no frame).
    """
    rng = np.random.default_rng(seed)
    chunks = []
    for packet in packets(images):
        noise = rng.integers(0, 256, int(rng.integers(1, 60))).astype(np.uint8).tobytes()
        chunks += [packet, noise + DELIMITER]
    decoded = FrameDecoder().feed(DELIMITER + b"".join(chunks))
    bad = sum(1 for item in decoded if not hasattr(item, "image"))
    assert sum(1 for item in decoded if hasattr(item, "image")) == len(images)  # the noise hid no frame
    return chunks, bad


def test_line_noise_between_intact_frames_is_bad_packets_not_lost_frames(
    images: np.ndarray, bundle: BundleUnderTest
) -> None:
    chunks, bad = noisy_stream(images, seed=7)
    assert bad > len(images)  # noise bursts often hold several 0x00s: more bad packets than frames
    with (
        PtyPort() as port,
        running(
            {"model.bundle": str(bundle.path), "source.spec": f"serial:{port.path}", "source.queue_size": 1024}
        ) as daemon,
    ):
        ready(daemon)
        writer = PtyWriter(port).send_chunks(chunks)
        samples = scrape_when(
            daemon.url, lambda s: total(s, "edge_inferences_total") == len(images), "every frame inferred"
        )
        writer.join(30)
        samples = scrape_when(
            daemon.url, lambda s: total(s, "edge_sensor_bad_packets_total") == bad, "every bad packet counted"
        )
    assert total(samples, "edge_frames_dropped_total") == 0
    assert value(samples, "edge_frames_received_total") == len(images)
    assert sum(value(samples, "edge_sensor_bad_packets_total", kind=k) for k in ("cobs", "short", "crc")) > 0


def test_a_silent_sensor_makes_the_daemon_unready_and_says_how_long(
    images: np.ndarray, bundle: BundleUnderTest
) -> None:
    with (
        PtyPort() as port,
        running({"model.bundle": str(bundle.path), "source.spec": f"serial:{port.path}?rate=50"}) as daemon,
    ):
        ready(daemon)
        PtyWriter(port).send_chunks(packets(images[:5])).join(30)
        samples = scrape_when(daemon.url, lambda s: total(s, "edge_inferences_total") == 5, "5 frames inferred")
        assert value(samples, "edge_sensor_stale_after_seconds") == STALE_MIN_S  # 10 periods of 20 ms < 5 s
        # The port stays open and nothing comes: stale once the silence passes the limit.
        samples = scrape_when(
            daemon.url,
            lambda s: value(s, "edge_sensor_silence_seconds") > STALE_MIN_S,
            "the silence to pass the staleness limit",
            timeout=30,
        )
        status, why = http_get(f"{daemon.url}/readyz")
        assert status == 503 and why.startswith("source stale"), why
        assert value(samples, "edge_sensor_up") == 1  # the link itself is fine: that is the point
        PtyWriter(port).send_chunks(packets(images[5:6], start_seq=5)).join(30)  # the sensor is back
        ready(daemon)


def test_a_sensor_without_an_expected_rate_is_never_called_stale(bundle: BundleUnderTest) -> None:
    with PtyPort() as port, running({"model.bundle": str(bundle.path), "source.spec": f"serial:{port.path}"}) as d:
        ready(d)
        samples = scrape_when(d.url, lambda s: value(s, "edge_sensor_silence_seconds") > 0, "a silence reading")
        assert value(samples, "edge_sensor_stale_after_seconds") == float("inf")


def test_bytes_sent_before_the_port_opens_are_counted_as_flushed(images: np.ndarray, bundle: BundleUnderTest) -> None:
    early = b"".join(packets(images[:10]))
    with PtyPort() as port:
        port.write(early)  # the sensor starts before the daemon listens (the pty holds the bytes)
        with running({"model.bundle": str(bundle.path), "source.spec": f"serial:{port.path}"}) as daemon:
            ready(daemon)
            samples = scrape_when(
                daemon.url, lambda s: value(s, "edge_sensor_flushed_bytes_total") > 0, "the flushed bytes"
            )
            PtyWriter(port).send_chunks(packets(images[10:12], start_seq=10)).join(30)
            samples = scrape_when(daemon.url, lambda s: total(s, "edge_inferences_total") == 2, "2 frames inferred")
    assert value(samples, "edge_sensor_flushed_bytes_total") == len(early)
    assert value(samples, "edge_sensor_received_bytes_total") == 1 + len(b"".join(packets(images[10:12])))
