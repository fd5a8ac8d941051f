"""H.264 profiles beyond aiortc's constrained baseline, on one transceiver (aiortc 1.16.0).

aiortc 1.16.0 offers and answers H.264 only as baseline and constrained baseline
(``aiortc.codecs.CODECS``: 42001f, 42e01f), although its decoder (FFmpeg) decodes every
profile and its packetizer does not care. H.264 passthrough (``sender.passthrough``) sends
a camera's own stream, often Main or High:

- ``answer_with()`` (the sender): after ``setRemoteDescription(offer)``, puts the viewer's
  own offered codec (its payload type and parameters, e.g. High 640c1f) first in the
  transceiver's ``_codecs``, which aiortc answers with and sends the first of;
- ``offer_profiles()`` (our receiver): the transceiver also offers Main and High
  (``EXTRA_PROFILES``), and keeps receiving them after the answer, by giving this one
  transceiver a subclass whose ``_codecs`` setter appends them: aiortc assigns
  ``_codecs`` in ``createOffer`` (from its global list) and again in
  ``setRemoteDescription`` (the codecs both sides know), then builds the SDP and the
  receiver's payload type table from it.

Neither touches the module global: other connections in the process offer and answer
as stock aiortc does. ``tests/test_h264_passthrough.py`` fails if an upgrade renames
``_codecs`` or stops building the offer and the receiver from it.
"""

from __future__ import annotations

import copy

from aiortc import RTCRtpTransceiver
from aiortc.codecs import CODECS
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from . import check

EXTRA_PROFILES = ("4d001f", "640c1f")  # Main and High, level 3.1
ATTRIBUTE = "_codecs"


def _is_rtx(codec: RTCRtpCodecParameters) -> bool:
    return codec.mimeType.lower() == "video/rtx"


def our_feedback() -> list[object]:
    """The RTCP feedback aiortc sends H.264 with (NACK, PLI, REMB)."""
    h264 = next(c for c in CODECS["video"] if c.mimeType.lower() == "video/h264")
    return list(h264.rtcpFeedback)


def answer_with(
    transceiver: RTCRtpTransceiver,
    codec: RTCRtpCodecParameters,
    rtx: RTCRtpCodecParameters | None,
) -> None:
    """Answer (and send) ``codec``, one the remote offered (``rtx``: its RTX, if offered),
    first; the codecs aiortc found in common follow. Call between
    ``setRemoteDescription(offer)`` and ``createAnswer()``."""
    check(__name__)
    current = getattr(transceiver, ATTRIBUTE, None)
    if not isinstance(current, list):
        raise RuntimeError("aiortc changed: RTCRtpTransceiver has no _codecs list")
    chosen = copy.deepcopy(codec)
    chosen.rtcpFeedback = [f for f in our_feedback() if f in codec.rtcpFeedback]
    first = [chosen] + ([copy.deepcopy(rtx)] if rtx is not None else [])
    taken = {c.payloadType for c in first}
    rest = [
        c
        for c in current
        if c.payloadType not in taken and not (_is_rtx(c) and c.parameters.get("apt") in taken)
    ]
    setattr(transceiver, ATTRIBUTE, first + rest)


def extra_codecs(codecs: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
    """Main and High H.264 (with RTX) to add to ``codecs``, on payload types they leave
    free; none when ``codecs`` has no H.264 or has them already."""
    h264 = [c for c in codecs if c.mimeType.lower() == "video/h264"]
    if not h264:
        return []
    have = {str(c.parameters.get("profile-level-id", "")).lower() for c in h264}
    used = {c.payloadType for c in codecs}
    free = (pt for pt in range(96, 128) if pt not in used)
    template = h264[-1]
    rtx_template = next(
        (c for c in codecs if _is_rtx(c) and c.parameters.get("apt") == template.payloadType),
        None,
    )
    extra: list[RTCRtpCodecParameters] = []
    for profile in EXTRA_PROFILES:
        if profile in have:
            continue
        codec = copy.deepcopy(template)
        codec.payloadType = next(free)
        codec.parameters = {**template.parameters, "profile-level-id": profile}
        extra.append(codec)
        if rtx_template is not None:
            rtx = copy.deepcopy(rtx_template)
            rtx.payloadType = next(free)
            rtx.parameters = {"apt": codec.payloadType}
            extra.append(rtx)
    return extra


class _MoreProfiles(RTCRtpTransceiver):
    """One transceiver whose codecs always include Main and High H.264 (see the module)."""

    @property
    def _codecs(self) -> list[RTCRtpCodecParameters]:
        return self.__dict__["_more_profiles_codecs"]  # type: ignore[no-any-return]  # __dict__ holds Any

    @_codecs.setter
    def _codecs(self, codecs: list[RTCRtpCodecParameters]) -> None:
        offered = self.__dict__.get("_more_profiles_offered", [])
        known = {c.payloadType for c in codecs}
        if not offered:  # createOffer: the payload types we offer them on, kept
            offered = extra_codecs(codecs)
            self.__dict__["_more_profiles_offered"] = offered
        self.__dict__["_more_profiles_codecs"] = list(codecs) + [
            c for c in offered if c.payloadType not in known
        ]


def offer_profiles(transceiver: RTCRtpTransceiver) -> None:
    """Make ``transceiver`` (ours, receive-only, before ``createOffer``) offer and receive
    Main and High H.264 as well."""
    check(__name__)
    current = transceiver.__dict__.pop(ATTRIBUTE, None)
    if not isinstance(current, list):
        raise RuntimeError("aiortc changed: RTCRtpTransceiver has no _codecs list")
    transceiver.__class__ = _MoreProfiles
    transceiver.__dict__["_more_profiles_codecs"] = current
