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
- loss above 10% *and* a queue: the link is full and passes what got through, so
  ``A = sent * (1 - loss)`` (GCC's half-the-loss cut is for loss without a queue, which
  may be the radio's, not the link's);
- the estimate is ``min(A, REMB)``: REMB is the cap. Until the first REMB arrives the cap
  is the start bitrate (300 kbit/s). A peer that sends receiver reports but no REMB for
  ``NO_REMB`` (5 s) gets ``A`` alone, from the start bitrate.

Behind a 400 kbit/s link with a 300 ms queue, when the link drops from 4 Mbit/s, the
queue is full at once and the first receiver report says 40-60% lost with a 300 ms round
trip: the estimate is cut within about a second, while REMB takes longer to get there.

Receiver reports come 0.5-1.5 s apart, and a link that drops fills its queue within a
tenth of a second. The NACKs tell sooner (``on_nack``, fed by ``common.aiortc_ext.
rtcp_feedback``): the packets a NACK asks for the first time were just found missing, when
the packet after them arrived, so the time since that packet was sent is a round trip,
and it shows the queue once a packet after a lost one is through it. When it does, the
first NACKs over the last ``NACK_WINDOW`` give a loss figure (those packets against the
span of sequence numbers they cover, at least ``NACK_MIN_PACKETS``), judged by a
report's rules (so with the queue, a cut to what got through). Behind a 400 kbit/s link
with a 300 ms queue, a 1.3 Mbit/s stream was cut to what got through 0.6 s after the
drop (the first NACK showing the queue came 0.47 s after it), where receiver reports
come 0.5-1.5 s apart. For a round trip after such a cut the NACKs are ignored, and
without a queue they cut nothing (``on_nack`` says why).

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
NACK_WINDOW = 0.5  # seconds of first NACKs a loss figure is read from
NACK_MIN_PACKETS = 20  # the fewest packets (a span of sequence numbers) to read one from


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


class NackLoss:
    """The loss the first NACKs of packets show over the last ``NACK_WINDOW``: how many
    were asked for against the span of sequence numbers they cover. The packets before
    the first and after the last loss in the window are not counted, which reads a
    little high; the span must cover ``NACK_MIN_PACKETS`` (a lone loss is no figure)."""

    def __init__(self, window: float = NACK_WINDOW) -> None:
        self._window = window
        self._lost: deque[tuple[float, int]] = deque()  # (when asked, sequence number)

    def add(self, sequence_numbers: list[int], now: float) -> None:
        self._lost.extend((now, seq) for seq in sequence_numbers)
        while self._lost and self._lost[0][0] < now - self._window:
            self._lost.popleft()

    def fraction(self) -> tuple[float, int] | None:
        """(fraction lost, packets it is over), or None while too few are covered."""
        if not self._lost:
            return None
        first = self._lost[0][1]
        # sequence numbers wrap at 2**16; a window holds far fewer than 2**15 of them
        offsets = [(seq - first + 2**15) % 2**16 - 2**15 for _, seq in self._lost]
        span = max(offsets) - min(offsets) + 1
        if span < NACK_MIN_PACKETS:
            return None
        return min(1.0, len(set(offsets)) / span), span


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
        self._nack_loss = NackLoss()
        self._nack_quiet_until = -1e9  # NACKs before then follow the last cut's (on_nack)
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
            delayed = self._queue(rtt)
        sent = self._judge(fraction_lost, packets, delayed, now, "report")
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

    def on_nack(self, lost: list[int], rtt: float | None, now: float | None = None) -> None:
        """A NACK: ``lost``, the sequence numbers it asks for the first time, and the
        round trip they show (None: not known). With a queue (that round trip over the
        reports' least by ``QUEUE_DELAY``) the link is full: cut as a report would, for
        the NACKs' loss or the queue. Without one, loss may be the radio's, and the
        reports judge it: read on every NACK, a loss figure near 10% came out high often
        enough to cut again and again, and 2-10% loss never wins a cut back."""
        now = time.monotonic() if now is None else now
        if now < self._nack_quiet_until:
            return
        self._nack_loss.add(lost, now)
        if rtt is None or not self._rtts or not self._queue(rtt):
            return
        fraction, packets = self._nack_loss.fraction() or (0.0, None)
        last_loss_cut = self._last_loss_decrease
        self._judge(fraction, packets, True, now, "NACKs")
        self._last_increase = now  # growth restarts after the congestion
        if self._last_loss_decrease != last_loss_cut:
            # For a round trip the NACKs still ask for packets lost before this cut (the
            # queue dropped them on the way in): they say nothing of the rate now, and
            # read as loss they cut 1.3 Mbit/s to the 100 kbit/s floor within 0.6 s.
            self._nack_loss = NackLoss()
            self._nack_quiet_until = now + rtt

    def _queue(self, rtt: float) -> bool:
        """Whether ``rtt`` is over the least round trip of the last ``RTT_WINDOW`` by more
        than a queue's ``QUEUE_DELAY``."""
        self.queue_delay = max(0.0, rtt - min(r for _, r in self._rtts))
        return self.queue_delay > QUEUE_DELAY

    def _judge(
        self, fraction_lost: float, packets: int | None, delayed: bool, now: float, source: str
    ) -> float:
        """Cut for loss (to what got through, with a queue; else by half the loss) or a
        queue, each at most as often as its rule allows. Returns the rate sent."""
        sent = self.sent.rate(now)
        if significant_loss(fraction_lost, packets):
            interval = DECREASE_MIN_INTERVAL + (self.rtt or 0.0)
            if now - self._last_loss_decrease >= interval:
                kept = 1 - fraction_lost if delayed else 1 - 0.5 * fraction_lost
                self._decrease(sent * kept, now, f"loss {fraction_lost:.2f} in {source}")
                self._last_loss_decrease = now
        elif delayed and now - self._last_delay_decrease >= DELAY_HOLD:
            self._decrease(sent * DELAY_DECREASE, now, f"queue delay in {source}")
            self._last_delay_decrease = now
        return sent

    def _decrease(self, bitrate: float, now: float, why: str) -> None:
        bitrate = max(float(self.minimum), bitrate)
        if bitrate < self.loss_based:
            logger.debug(
                "estimate down to %d bit/s (%s, queue %.0f ms)",
                bitrate,
                why,
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
