"""Where a frame's milliseconds go in the sender, as Prometheus histograms (``/metrics``).

Two stages, labelled by codec and tier (and the encoder's share of the first):

- ``webcam_capture_to_encoded_seconds``: from capture (``sources.capture_time``: the
  frame's presentation time) until the tier's packets are handed to its viewers; it
  includes the wait for the encoder and, with two tiers, for the slower of the two. One
  observation per frame and tier. Of it, ``webcam_encoding_seconds`` is the encoder's own
  time (scaling included, in its worker thread); the rest is waiting: the hops to and
  from that thread, a busy event loop, a busy CPU.
- ``webcam_encoded_to_sent_seconds``: from then until aiortc has sent the frame's RTP
  packets to that viewer (waiting in the viewer's queue, packetizing, encryption); one
  observation per frame and viewer.

The receiver measures the rest (``receiver.stats``). Buckets from 0.5 ms to 1 s, half a
millisecond apart up to 3 ms and one apart to 6: a stage normally takes a few
milliseconds, a quantile interpolated within a bucket is off by at most its width (the
benchmarks read the encoder's time from here), and anything above a frame interval is
worth seeing.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import Histogram
from prometheus_client.core import Metric

BUCKETS_SECONDS = (
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.0025,
    0.003,
    0.004,
    0.005,
    0.006,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.025,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
)
LABELS = ("codec", "tier")


def _histogram(name: str, documentation: str) -> Histogram:
    return Histogram(name, documentation, LABELS, buckets=BUCKETS_SECONDS, registry=None)


class StageTimes:
    """The sender's per-frame stage histograms; registered nowhere, so that several
    senders in one process keep their own (``sender.metrics`` collects them)."""

    def __init__(self) -> None:
        self.capture_to_encoded = _histogram(
            "webcam_capture_to_encoded_seconds",
            "From capture until the frame's packets are handed to the viewers of its tier",
        )
        self.encoding = _histogram(
            "webcam_encoding_seconds",
            "The encoder's own time per frame (part of capture to encoded)",
        )
        self.encoded_to_sent = _histogram(
            "webcam_encoded_to_sent_seconds",
            "From then until the viewer's RTP packets of the frame were sent",
        )

    def encoded(self, codec: str, tier: str, seconds: float) -> None:
        self.capture_to_encoded.labels(codec, tier).observe(max(0.0, seconds))

    def encoding_took(self, codec: str, tier: str, seconds: float) -> None:
        self.encoding.labels(codec, tier).observe(max(0.0, seconds))

    def sent(self, codec: str, tier: str, seconds: float) -> None:
        self.encoded_to_sent.labels(codec, tier).observe(max(0.0, seconds))

    def collect(self) -> Iterator[Metric]:
        yield from self.capture_to_encoded.collect()
        yield from self.encoding.collect()
        yield from self.encoded_to_sent.collect()
