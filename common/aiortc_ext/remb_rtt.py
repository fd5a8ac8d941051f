"""The round trip our receiver measured, given to its REMB estimator (aiortc 1.16.0).

aiortc's receive-side bandwidth estimate (``aiortc.rate.AimdRateControl``, GCC's
delay-based controller) assumes a 200 ms round trip and never learns the real one. Near
the last capacity it found (after any overuse, such as a keyframe through a narrow link)
it raises its REMB by one packet per round trip + 100 ms: with 200 ms that is about
17 kbit/s a second at 300 kbit/s, so after a link widens again the sender, which REMB
caps, took 10-15 s to exceed what the narrow link carried. libwebrtc feeds the measured
round trip (``OnRttUpdate``); we do the same with the one our receiver measures over ICE
(``ice_rtt``), per receiver: on a LAN the increase is about three times faster.
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver
from aiortc.rate import AimdRateControl, RemoteBitrateEstimator

from common import aiortc_ext

aiortc_ext.check(__name__)

MIN_RTT_MS = 10  # a loopback round trip is well under 1 ms; GCC's rule wants a floor


def update(receiver: RTCRtpReceiver, rtt: float) -> None:
    """Tell ``receiver``'s REMB estimator the round trip just measured (seconds)."""
    estimator = aiortc_ext.private(receiver, RTCRtpReceiver, "remote_bitrate_estimator")
    if estimator is None:  # an audio receiver has none
        return
    if not isinstance(estimator, RemoteBitrateEstimator):
        raise RuntimeError(f"aiortc's REMB estimator is a {type(estimator).__name__} now")
    control: object = getattr(estimator, "rate_control", None)
    if not isinstance(control, AimdRateControl) or not isinstance(control.rtt, int):
        raise RuntimeError("aiortc's AimdRateControl no longer has an rtt to set")
    control.rtt = max(MIN_RTT_MS, round(rtt * 1000))


def rtt_ms(receiver: RTCRtpReceiver) -> int | None:
    """The round trip ``receiver``'s REMB estimator works with (ms), for tests."""
    estimator = aiortc_ext.private(receiver, RTCRtpReceiver, "remote_bitrate_estimator")
    if not isinstance(estimator, RemoteBitrateEstimator):
        return None
    return estimator.rate_control.rtt
