"""One viewer's available bandwidth, estimated at the sender from its RTCP feedback.

aiortc's receivers (and browsers offered ``goog-remb``) send REMB, a delay-based estimate
made at the receiver. Alone it is slow to follow a link that narrows: its overuse
detector needs a delay trend, and it reports 85% of what arrived over the last second, so
after a drop the sender keeps overfilling the bottleneck's queue for seconds. The sender
also sees the receiver reports (RTCP RR, about once a second): the fraction of packets
lost since the previous report, and, through the sender report they echo, the round-trip
time, which grows with the queue in front of the bottleneck. ``BandwidthEstimator``
combines them the way GCC's sender side does (draft-ietf-rmcat-gcc-02, section 6):

- loss above 10%: ``A = sent * (1 - 0.5 * loss)`` (at most once per RTT + 300 ms), when
  the report counts enough packets to tell (below);
- loss below 2%: ``A = A * 1.08`` per second;
- in between: hold;
- the round-trip time more than ``QUEUE_DELAY`` (150 ms) above its minimum over the last
  30 s (a queue is building): ``A = min(A, 0.85 * sent)`` (at most once a second); no
  increase while it lasts;
- the estimate is ``min(A, REMB)``: REMB is the cap. Until the first REMB arrives the cap
  is the start bitrate (300 kbit/s). A peer that sends receiver reports but no REMB for
  ``NO_REMB`` (5 s) gets ``A`` alone, from the start bitrate.

Behind a 400 kbit/s link with a 300 ms queue, when the link drops from 4 Mbit/s, the
queue is full at once and the first receiver report says 40-60% lost with a 300 ms round
trip: the estimate is cut within about a second, while REMB takes longer to get there.

A report covers about a second: at 300 kbit/s, some 35 packets. With 5% random loss
(a lossy radio link, no congestion), one report in ten then says more than 10%, and
each cut is never won back, since 2-10% loss holds the estimate: a viewer on such a link
was cut step by step below its picture size's tier within seconds. So a report cuts the
estimate only when its loss is above 10% by more than ``LOSS_SIGNIFICANCE`` (2) standard
deviations of what 10% loss over that many packets would give (35 packets: 8 lost;
100 packets: 17), the packet count taken from the report's highest sequence number
(the first report's from its cumulative loss: ``reported_packets``).
libwebrtc, for the same reason, waits for 20 packets before it reads a loss fraction;
a queue that overflows loses far more (40-60% when a link drops) and is cut at once.

``sent`` is what this viewer was actually sent over the last second. The estimate stays
within ``[minimum, maximum]``. Times come from the caller (monotonic seconds), so the rule
can be tested packet by packet.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque

from aiortc.rtp import RtcpReceiverInfo

logger = logging.getLogger(__name__)

LOSS_HIGH = 0.10  # above: decrease
LOSS_LOW = 0.02  # below: increase
LOSS_SIGNIFICANCE = 2.0  # standard deviations above LOSS_HIGH a report's loss must be
INCREASE_PER_SECOND = 1.08
DECREASE_MIN_INTERVAL = 0.3  # plus one RTT between two loss-based decreases
QUEUE_DELAY = 0.15  # seconds of round-trip time above the minimum that mean a queue
DELAY_DECREASE = 0.85
DELAY_HOLD = 1.0  # seconds between two delay-based decreases (the queue needs to drain)
RTT_WINDOW = 30.0  # seconds over which the minimum round-trip time is taken
RATE_WINDOW = 1.0  # seconds over which the sent rate is measured
CONGESTION_RECENT = 1.0  # seconds a loss- or delay-based decrease counts as congestion
NO_REMB = 5.0  # seconds of receiver reports without a REMB: the peer sends none


class RateMeter:
    """Bits per second over the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._bytes = 0
        self._first: float | None = None

    def add(self, size: int, now: float) -> None:
        if self._first is None:
            self._first = now
        self._samples.append((now, size))
        self._bytes += size
        self._expire(now)

    def rate(self, now: float) -> float:
        """The rate over the window (or over the time since the first sample, when
        shorter: a meter that just started is not diluted by time before it)."""
        self._expire(now)
        if self._first is None:
            return 0.0
        span = min(self._window, max(now - self._first, 0.1))
        return self._bytes * 8 / span

    def _expire(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self._window:
            _, size = self._samples.popleft()
            self._bytes -= size


def significant_loss(fraction_lost: float, packets: int | None) -> bool:
    """Whether ``fraction_lost`` of ``packets`` is clearly above ``LOSS_HIGH``, not
    random loss below it that happened to come out high in a small sample."""
    if fraction_lost <= LOSS_HIGH:
        return False
    if packets is None:
        return True
    spread = math.sqrt(LOSS_HIGH * (1 - LOSS_HIGH) * max(packets, 1))
    return fraction_lost * packets > LOSS_HIGH * packets + LOSS_SIGNIFICANCE * spread


def reported_packets(report: RtcpReceiverInfo, previous_highest: int | None) -> int | None:
    """How many packets ``report``'s loss fraction is over (None: not known).

    Between two reports, the difference of their highest sequence numbers, taken modulo
    2**16: RFC 3550 sends the extended number, aiortc 1.16 its low 16 bits alone, and
    no second carries 65536 packets. The first report counts from the stream's start, so
    its cumulative loss is its interval's: the count is that loss over the fraction (8
    bits, rounded down by the receiver, hence the half).
    """
    if previous_highest is not None:
        return (report.highest_sequence - previous_highest) % 2**16
    if report.fraction_lost == 0:
        return None
    return round(report.packets_lost * 256 / (report.fraction_lost + 0.5))


class BandwidthEstimator:
    """GCC-style sender-side estimate for one viewer (see the module docstring)."""

    def __init__(self, start: int, minimum: int, maximum: int) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.start = max(minimum, min(start, maximum))
        self.loss_based = float(maximum)  # A: only loss and delay bring it down
        self.remb: int | None = None
        self.fraction_lost = 0.0
        self.rtt: float | None = None
        self.queue_delay = 0.0
        self.congested_at: float | None = None  # when loss or delay last cut the estimate
        self.sent = RateMeter()
        self._last_increase: float | None = None
        self._last_loss_decrease = -1e9
        self._last_delay_decrease = -1e9
        self._rtts: deque[tuple[float, float]] = deque()
        self._first_report: float | None = None
        self.remb_less = False  # receiver reports but no REMB: loss and delay alone

    @property
    def estimate(self) -> int:
        if self.remb is not None:
            cap = float(self.remb)
        else:
            cap = float(self.maximum) if self.remb_less else float(self.start)
        return int(max(self.minimum, min(self.loss_based, cap, self.maximum)))

    @property
    def informed(self) -> bool:
        """Whether this viewer's own feedback has said anything about its bandwidth yet:
        a REMB, loss or a queue that cut the estimate, or receiver reports long enough
        without a REMB for the loss-based estimate alone to count."""
        return self.remb is not None or self.congested_at is not None or self.remb_less

    def congested(self, now: float | None = None, within: float = CONGESTION_RECENT) -> bool:
        """Whether loss or queue delay cut the estimate within the last ``within`` s."""
        now = time.monotonic() if now is None else now
        return self.congested_at is not None and now - self.congested_at < within

    def on_sent(self, size: int, now: float | None = None) -> None:
        self.sent.add(size, time.monotonic() if now is None else now)

    def on_remb(self, bitrate: int, now: float | None = None) -> None:
        self.remb = bitrate

    def on_report(
        self,
        fraction_lost: float,
        rtt: float | None = None,
        now: float | None = None,
        packets: int | None = None,
    ) -> None:
        """A receiver report: ``fraction_lost`` in [0, 1] of the ``packets`` expected
        since the previous report (None: not known, taken as many), and the round-trip
        time it measured (None when it echoed no sender report we know)."""
        now = time.monotonic() if now is None else now
        self.fraction_lost = fraction_lost
        if self._first_report is None:
            self._first_report = now
        if self.remb is None and not self.remb_less and now - self._first_report >= NO_REMB:
            # A peer that sends no REMB: GCC's loss-based rule alone, from the start bitrate.
            self.remb_less = True
            self.loss_based = min(self.loss_based, float(self.start))
            self._last_increase = now
        delayed = False
        if rtt is not None and rtt >= 0:
            self.rtt = rtt
            self._rtts.append((now, rtt))
            while self._rtts and self._rtts[0][0] < now - RTT_WINDOW:
                self._rtts.popleft()
            self.queue_delay = rtt - min(r for _, r in self._rtts)
            delayed = self.queue_delay > QUEUE_DELAY
        sent = self.sent.rate(now)
        if significant_loss(fraction_lost, packets):
            interval = DECREASE_MIN_INTERVAL + (self.rtt or 0.0)
            if now - self._last_loss_decrease >= interval:
                self._decrease(sent * (1 - 0.5 * fraction_lost), now, "loss")
                self._last_loss_decrease = now
        elif delayed and now - self._last_delay_decrease >= DELAY_HOLD:
            self._decrease(sent * DELAY_DECREASE, now, "queue delay")
            self._last_delay_decrease = now
        if fraction_lost < LOSS_LOW and not delayed:
            self._increase(now)
        else:
            self._last_increase = now  # held or decreased: growth restarts from here
        logger.debug(
            "report: loss %.2f, round trip %s ms (queue %.0f ms), sent %d, loss-based %d,"
            " REMB %s: estimate %d bit/s",
            fraction_lost,
            "?" if rtt is None else f"{rtt * 1000:.0f}",
            self.queue_delay * 1000,
            sent,
            self.loss_based,
            self.remb,
            self.estimate,
        )

    def _decrease(self, bitrate: float, now: float, why: str) -> None:
        bitrate = max(float(self.minimum), bitrate)
        if bitrate < self.loss_based:
            logger.debug(
                "estimate down to %d bit/s (%s: loss %.2f, queue %.0f ms)",
                bitrate,
                why,
                self.fraction_lost,
                self.queue_delay * 1000,
            )
            self.loss_based = bitrate
        self.congested_at = now

    def _increase(self, now: float) -> None:
        if self._last_increase is not None:
            elapsed = min(now - self._last_increase, 1.0)
            grown = self.loss_based * INCREASE_PER_SECOND**elapsed
            self.loss_based = min(float(self.maximum), grown)
        self._last_increase = now
