#!/usr/bin/python3
"""A GStreamer ``webrtcbin`` viewer for the interoperability tests.

Runs under Debian's system Python (``/usr/bin/python3`` with python3-gst-1.0), not the
project's venv: PyGObject and GStreamer come from apt. It is a second, independent WebRTC
stack (libnice, GStreamer's DTLS/SRTP on the system OpenSSL, an RSA certificate in 1.22),
so it catches what an aiortc-to-aiortc test cannot.

    gst_viewer.py URL --signalling json|whep --frames N --timeout S [--audio SECONDS]

Offers a recvonly video transceiver (VP8 and H.264, the sender picks), sends the offer
with every candidate in it (no trickle), decodes what arrives and reads the frame stamp
(README, "The frame stamp") from the first frames. Success: one JSON line on stdout,
``{"frames", "width", "height", "codec", "sequences"}``, exit 0. Failure or timeout: one
line on stderr, exit 1.

With ``--audio SECONDS`` it also offers a recvonly Opus transceiver and, when the answer
accepts it, waits for that much decoded audio too; the line then also has
``"audio": {"codec", "packets", "rate", "channels", "seconds", "rms_median", "rms_max",
"peak"}``
(RTP packets counted as they leave webrtcbin; RMS of each decoded buffer, 0 to 1).
"""

from __future__ import annotations

import argparse
import array
import contextlib
import itertools
import json
import math
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstVideo", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import Gst, GstSdp, GstVideo, GstWebRTC  # noqa: E402

PROG = "gst_viewer"
GATHER_TIMEOUT = 3.0  # seconds to wait for ICE gathering before offering what we have
STAMP_CELLS = 40
STAMP_FRAMES = 10  # read the stamp of this many first frames
HTTP_TIMEOUT = 15.0

# What we can decode; payload types are ours to choose in the offer.
OFFER_CAPS = (
    "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000;"
    "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
    "packetization-mode=(string)1,profile-level-id=(string)42e01f,"
    "level-asymmetry-allowed=(string)1"
)
AUDIO_CAPS = (
    "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
    "encoding-params=(string)2"
)
DECODERS = {
    "VP8": ["rtpvp8depay", "vp8dec"],
    "H264": ["rtph264depay", "h264parse", "avdec_h264"],
}


class ViewerError(Exception):
    """A failure to report as one line."""


def read_stamp_row(plane: bytes, stride: int, width: int, row: int) -> int | None:
    """One row of the frame stamp, or None when a cell is too grey to trust."""
    s = width // STAMP_CELLS
    y = row * s + s // 2
    value = 0
    for i in range(STAMP_CELLS):
        luma = plane[y * stride + i * s + s // 2]
        if 64 < luma < 192:
            return None
        if luma >= 128:
            value |= 1 << i
    return value


class Audio:
    """What the audio branch received and decoded."""

    def __init__(self, seconds: float) -> None:
        self.wanted_seconds = seconds
        self.expected = True  # until the answer refuses the audio section
        self.codec = ""
        self.packets = 0
        self.rate = 0
        self.channels = 0
        self.samples = 0  # per channel
        self.levels: list[float] = []  # RMS of each decoded buffer
        self.peak = 0.0  # the loudest sample, full scale 1

    @property
    def seconds(self) -> float:
        return self.samples / self.rate if self.rate else 0.0

    @property
    def enough(self) -> bool:
        return not self.expected or self.seconds >= self.wanted_seconds

    def summary(self) -> dict[str, object]:
        levels = sorted(self.levels)
        return {
            "codec": self.codec,
            "packets": self.packets,
            "rate": self.rate,
            "channels": self.channels,
            "seconds": round(self.seconds, 3),
            "rms_median": levels[len(levels) // 2] if levels else 0.0,
            "rms_max": levels[-1] if levels else 0.0,
            "peak": self.peak,
        }


class Viewer:
    def __init__(self, frames: int, audio_seconds: float | None = None) -> None:
        self.wanted = frames
        self.audio = Audio(audio_seconds) if audio_seconds is not None else None
        self.frames = 0
        self.width = 0
        self.height = 0
        self.codec = ""
        self.sequences: list[int] = []
        self.done = threading.Event()
        self.gathered = threading.Event()
        self.failure: str | None = None
        self.candidates: list[tuple[int, str]] = []
        self.dtls_errors: list[str] = []
        capture_dtls_errors(self.dtls_errors)

        self.pipe = Gst.Pipeline.new("viewer")
        self.webrtc = make("webrtcbin")
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        self.pipe.add(self.webrtc)
        self.webrtc.connect("pad-added", self._on_pad_added)
        self.webrtc.connect("on-ice-candidate", self._on_ice_candidate)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering)
        self.webrtc.connect("notify::connection-state", self._on_connection_state)

    # --- signalling -------------------------------------------------------------------

    def start(self) -> None:
        if self.pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise ViewerError("cannot start the GStreamer pipeline")
        self.webrtc.emit(
            "add-transceiver",
            GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
            Gst.Caps.from_string(OFFER_CAPS),
        )
        if self.audio is not None:
            self.webrtc.emit(
                "add-transceiver",
                GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                Gst.Caps.from_string(AUDIO_CAPS),
            )

    def create_offer(self, gather_timeout: float) -> str:
        reply = self._call("create-offer", None)
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            raise ViewerError(f"webrtcbin could not create an offer: {reply}")
        self._call("set-local-description", offer)
        self.gathered.wait(gather_timeout)
        return self._with_candidates(self.webrtc.get_property("local-description").sdp.as_text())

    def set_answer(self, sdp: str) -> None:
        result, message = GstSdp.SDPMessage.new_from_text(sdp)
        if result != GstSdp.SDPResult.OK:
            raise ViewerError(f"cannot parse the SDP answer: {sdp[:80]!r}")
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        if self.audio is not None:
            self.audio.expected = audio_accepted(sdp)
        self._call("set-remote-description", answer)

    def _call(self, action: str, description: object) -> Gst.Structure | None:
        promise = Gst.Promise.new()
        if description is None:
            self.webrtc.emit(action, None, promise)
        else:
            self.webrtc.emit(action, description, promise)
        if promise.wait() != Gst.PromiseResult.REPLIED:
            raise ViewerError(f"webrtcbin {action} did not complete")
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            raise ViewerError(f"webrtcbin {action} failed: {reply.get_value('error')}")
        return reply

    def _with_candidates(self, sdp: str) -> str:
        """The offer with every gathered candidate, whether or not webrtcbin added them."""
        lines = sdp.replace("\r\n", "\n").rstrip("\n").split("\n")
        media_starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
        for mline, candidate in reversed(self.candidates):
            line = candidate if candidate.startswith("a=") else "a=" + candidate
            if line in lines or mline >= len(media_starts):
                continue
            ends = [*media_starts[1:], len(lines)]
            lines.insert(ends[mline], line)
            media_starts = [i for i, text in enumerate(lines) if text.startswith("m=")]
        return "\r\n".join(lines) + "\r\n"

    def _on_ice_candidate(self, _webrtc: Gst.Element, mline: int, candidate: str) -> None:
        if candidate:
            self.candidates.append((mline, candidate))

    def _on_gathering(self, webrtc: Gst.Element, _spec: object) -> None:
        if webrtc.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            self.gathered.set()

    def _on_connection_state(self, webrtc: Gst.Element, _spec: object) -> None:
        if webrtc.get_property("connection-state") == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            self.fail("connection failed")

    # --- media ------------------------------------------------------------------------

    def _on_pad_added(self, _webrtc: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        if caps.get_structure(0).get_string("media") == "audio":
            self._add_audio(pad, caps)
            return
        codec = caps.get_structure(0).get_string("encoding-name") or ""
        if codec.upper() not in DECODERS:
            self.fail(f"unexpected codec {codec!r} in {caps.to_string()}")
            return
        self.codec = codec.upper()
        names = [*DECODERS[self.codec], "videoconvert"]
        if not self._decode_into(pad, names, "video/x-raw,format=GRAY8", self._on_sample):
            self.fail(f"cannot link the {self.codec} decoder")

    def _decode_into(self, pad: Gst.Pad, names: list[str], caps: str, on_sample: object) -> bool:
        """``pad`` -> the elements ``names`` -> ``caps`` -> an appsink calling
        ``on_sample``, added to the running pipeline; whether the pad linked."""
        chain = [make(name) for name in names]
        capsfilter = make("capsfilter")
        capsfilter.set_property("caps", Gst.Caps.from_string(caps))
        sink = make("appsink")
        sink.set_property("emit-signals", True)
        sink.set_property("sync", False)
        sink.connect("new-sample", on_sample)
        chain += [capsfilter, sink]
        for element in chain:
            self.pipe.add(element)
        for upstream, downstream in itertools.pairwise(chain):
            upstream.link(downstream)
        for element in chain:
            element.sync_state_with_parent()
        return bool(pad.link(chain[0].get_static_pad("sink")) == Gst.PadLinkReturn.OK)

    def _add_audio(self, pad: Gst.Pad, caps: Gst.Caps) -> None:
        """Opus RTP: counted as it leaves webrtcbin, depayloaded, decoded to S16."""
        codec = (caps.get_structure(0).get_string("encoding-name") or "").upper()
        if self.audio is None or codec != "OPUS":
            self.fail(f"unexpected audio {codec!r} in {caps.to_string()}")
            return
        self.audio.codec = codec
        pad.add_probe(Gst.PadProbeType.BUFFER, self._count_audio_packet)
        names = ["rtpopusdepay", "opusdec", "audioconvert"]
        if not self._decode_into(pad, names, "audio/x-raw,format=S16LE", self._on_audio_sample):
            self.fail("cannot link the Opus decoder")

    def _count_audio_packet(self, _pad: Gst.Pad, _info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        assert self.audio is not None
        self.audio.packets += 1
        return Gst.PadProbeReturn.OK

    def _on_audio_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None or self.audio is None:
            return Gst.FlowReturn.ERROR
        structure = sample.get_caps().get_structure(0)
        _, self.audio.rate = structure.get_int("rate")
        _, self.audio.channels = structure.get_int("channels")
        buffer = sample.get_buffer()
        ok, mapped = buffer.map(Gst.MapFlags.READ)
        if ok:
            try:
                samples = array.array("h", bytes(mapped.data))
            finally:
                buffer.unmap(mapped)
            if sys.byteorder != "little":
                samples.byteswap()
            if samples:
                power = sum(x * x for x in samples) / len(samples)
                self.audio.levels.append(math.sqrt(power) / 32768)
                self.audio.peak = max(self.audio.peak, max(map(abs, samples)) / 32768)
                self.audio.samples += len(samples) // max(1, self.audio.channels)
        if self.frames >= self.wanted and self.audio.enough:
            self.done.set()
        return Gst.FlowReturn.OK

    def _on_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.ERROR
        self.frames += 1
        info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
        self.width, self.height = info.width, info.height
        if len(self.sequences) < STAMP_FRAMES and info.width >= 320:
            buffer = sample.get_buffer()
            ok, mapped = buffer.map(Gst.MapFlags.READ)
            if ok:
                try:
                    sequence = read_stamp_row(mapped.data, info.stride[0], info.width, 1)
                finally:
                    buffer.unmap(mapped)
                if sequence is not None:
                    self.sequences.append(sequence)
        if self.frames >= self.wanted and (self.audio is None or self.audio.enough):
            self.done.set()
        return Gst.FlowReturn.OK

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.done.set()

    def wait(self, timeout: float) -> None:
        """Until enough frames, a failure, a pipeline error or the deadline."""
        bus = self.pipe.get_bus()
        deadline = time.monotonic() + timeout
        while not self.done.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                heard = "" if self.audio is None else f", {self.audio.seconds:.2f} s of audio"
                raise ViewerError(
                    f"timed out after {timeout:g} s with {self.frames} of {self.wanted} frames"
                    f"{heard}"
                    f" (connection {self.webrtc.get_property('connection-state').value_nick})"
                )
            message = bus.timed_pop_filtered(
                int(min(left, 0.1) * Gst.SECOND), Gst.MessageType.ERROR
            )
            if message is not None:
                error, debug = message.parse_error()
                source = message.src.get_name() if message.src else "pipeline"
                detail = (debug or "").strip().splitlines()[-1:]  # the last line says why
                self.fail(f"{source}: {' '.join([error.message, *detail])}")
        if self.failure is not None:
            ice = self.webrtc.get_property("ice-connection-state").value_nick
            dtls = "; ".join(self.dtls_errors) or "none logged"
            raise ViewerError(f"{self.failure} (ICE {ice}; DTLS errors: {dtls})")

    def stop(self) -> None:
        self.pipe.set_state(Gst.State.NULL)


def capture_dtls_errors(errors: list[str]) -> None:
    """Collect GStreamer's DTLS errors: the OpenSSL reason never reaches the bus."""

    def log(_category, _level, _file, _function, _line, _object, message, *_data) -> None:
        text = message.get()
        if text.startswith("ssl error:"):
            parts = text.split(":")
            # "ssl error: ...:error:0A0000C1:SSL routines:FUNCTION:REASON:FILE:LINE:"
            at = parts.index("SSL routines") if "SSL routines" in parts else len(parts)
            errors.append(":".join(parts[at + 1 : at + 3]) or text)

    Gst.debug_add_log_function(log, None)
    if not os.environ.get("GST_DEBUG"):  # else leave the user's debug output alone
        Gst.debug_remove_log_function(None)  # the default one, printing to stderr
        Gst.debug_set_threshold_for_name("dtlsconnection", Gst.DebugLevel.ERROR)


def audio_accepted(sdp: str) -> bool:
    """Whether the answer's audio section will carry media to us: not port 0, and the
    sender sends (sendonly or sendrecv, not inactive or recvonly)."""
    for section in sdp.replace("\r\n", "\n").split("\nm=")[1:]:
        if section.startswith("audio "):
            port = section.split(" ", 2)[1]
            refused = ("\na=inactive", "\na=recvonly")
            return port != "0" and not any(line in section for line in refused)
    return False


def make(factory: str) -> Gst.Element:
    element = Gst.ElementFactory.make(factory, None)
    if element is None:
        raise ViewerError(f"GStreamer element {factory!r} is missing (install its plugin)")
    return element


# --- HTTP signalling ------------------------------------------------------------------


def http(request: urllib.request.Request) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            body = response.read().decode("utf-8", errors="replace")
            return response.status, dict(response.headers.items()), body
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", errors="replace")
        raise ViewerError(f"{request.get_method()} {request.full_url}: {exc.code} {body}") from None
    except OSError as exc:
        raise ViewerError(f"{request.get_method()} {request.full_url}: {exc}") from None


def post_json_offer(base: str, sdp: str) -> str:
    body = json.dumps({"sdp": sdp, "type": "offer"}).encode()
    request = urllib.request.Request(
        base + "/offer", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    _, _, text = http(request)
    try:
        answer = json.loads(text)
    except ValueError:
        raise ViewerError(f"/offer answered with non-JSON: {text[:80]!r}") from None
    if not isinstance(answer, dict) or answer.get("type") != "answer":
        raise ViewerError(f"/offer answered with no SDP answer: {text[:80]!r}")
    return answer["sdp"]


def post_whep_offer(base: str, sdp: str) -> tuple[str, str]:
    """The answer and the absolute session URL."""
    request = urllib.request.Request(
        base + "/whep",
        data=sdp.encode(),
        headers={"Content-Type": "application/sdp", "Accept": "application/sdp"},
        method="POST",
    )
    status, headers, answer = http(request)
    if status != 201:
        raise ViewerError(f"POST /whep answered {status}, not 201 Created")
    location = {k.lower(): v for k, v in headers.items()}.get("location")
    if not location:
        raise ViewerError("POST /whep answered without a Location header")
    return answer, urllib.parse.urljoin(base + "/whep", location)


def delete_session(url: str) -> None:
    status, _, _ = http(urllib.request.Request(url, method="DELETE"))
    if status != 200:
        raise ViewerError(f"DELETE {url} answered {status}, not 200")


# --- main -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n", 1)[0])
    parser.add_argument("url", help="the sender, e.g. http://127.0.0.1:8080")
    parser.add_argument("--signalling", choices=("json", "whep"), default="json")
    parser.add_argument("--frames", type=int, default=30, help="decoded frames to wait for")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds for all of it")
    parser.add_argument(
        "--audio",
        type=float,
        metavar="SECONDS",
        help="also offer Opus; decoded seconds to wait for",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, object]:
    Gst.init(None)
    base = args.url.rstrip("/")
    started = time.monotonic()
    viewer = Viewer(args.frames, args.audio)
    session_url: str | None = None
    try:
        viewer.start()
        offer = viewer.create_offer(min(GATHER_TIMEOUT, args.timeout))
        if args.signalling == "whep":
            answer, session_url = post_whep_offer(base, offer)
        else:
            answer = post_json_offer(base, offer)
        viewer.set_answer(answer)
        viewer.wait(max(0.0, args.timeout - (time.monotonic() - started)))
        if session_url is not None:
            url, session_url = session_url, None
            delete_session(url)
    finally:
        viewer.stop()
        if session_url is not None:  # failed part-way: still free the sender's session
            with contextlib.suppress(ViewerError):
                delete_session(session_url)
    result: dict[str, object] = {
        "frames": viewer.frames,
        "width": viewer.width,
        "height": viewer.height,
        "codec": viewer.codec,
        "sequences": viewer.sequences,
    }
    if viewer.audio is not None:
        result["audio"] = viewer.audio.summary()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ViewerError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
