"""Live network cameras: RTSP (what IP cameras speak) and HTTP MJPEG.

A file is paced by its timestamps and looped; a camera's stream is neither (pacing a live
stream by its timestamps, as files are, added a second of delay). Its frames are taken as
they come, with FFmpeg's buffering off: ``fflags=nobuffer``, a small probe, the decoder's
``low_delay`` flag, slice threads only. When the stream drops or ends the reader connects
again, waiting longer after each failure in a row (``common.backoff``), while the
sender's viewers stay connected and see a pause.

Reading runs in a thread of its own (demux, decode, scale), which hands each frame to the
event loop, where only the newest one waits: a slow consumer gets the latest picture, not
a backlog. If decoding itself falls behind an RTSP camera (``Lag``, from its RTP times),
the packets up to a recent keyframe are skipped. User names and passwords in a URL never
reach a log line or ``/healthz``: ``redact()`` shows ``user:***@``.

An H.264 stream's packets also go, as they are, to a ``sink`` (``sender.h264_stream``: H.264
passthrough), and decoding runs only while frames are wanted (``decode``): with only
passthrough viewers nothing is decoded. The same reader plays an H.264 file (``paced``:
held to its timestamps, looped without a word).

A camera's audio track comes out of the same connection (``--audio camera``: one RTSP
session for video and audio, as many cameras allow no more than one or two): while an
``audio`` sink is set, the reader demuxes the audio too, decodes it and makes it ready for
Opus with ``audio_sources.Stamper`` (48 kHz mono, timed on the capture clock), in its
thread, and hands the frames to the sink. Sync: FFmpeg gives both streams of an RTSP
session times on one clock (from the PLAY answer's RTP-Info, re-based on the camera's RTCP
sender reports), so an H.264 camera's audio is timed on the video's ``Timeline``: the
camera's own time between audio and video is kept, anchored on the video's least delayed
packet (the audio starts with the video: what comes before is dropped). Where that is
not there (another video codec) or is far from the arrival (over ``REANCHOR_SECONDS``: a
re-basing), the audio is timed by its arrival, less its duration. A decoded H.264 picture
(``--transcode``, or any viewer that needs decoding) is timed on that timeline too, not by
when its decoding ended: the least delayed packet's anchor moves earlier as the stream
goes on, and the audio with it, so pictures timed as decoded drifted behind their audio
(19 ms in 14 s in a CI run). Other codecs' pictures are timed as decoded. When the
camera drops, audio and video pause together; the next connection's audio starts afresh
on the capture clock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import av
from av.codec.context import Flags

from common.backoff import Backoff

from .h264_stream import REANCHOR_SECONDS, AnnexB, PacketSink, StreamInfo, Timeline

if TYPE_CHECKING:
    from .audio_sources import Stamper

logger = logging.getLogger(__name__)

RTSP_SCHEMES = ("rtsp", "rtsps")
HTTP_SCHEMES = ("http", "https")
# An http(s) URL ending in one of these is a file on a web server (played as a file).
FILE_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".ts", ".m3u8", ".flv")
TRANSPORTS = ("tcp", "udp")
DEFAULT_TRANSPORT = "tcp"  # through NAT and firewalls, and no picture broken by UDP loss
OPEN_SECONDS = 5.0  # connect, RTSP handshake, and again to find the stream
READ_SECONDS = 5.0  # no packet for this long: the camera is gone
START_SECONDS = 10.0  # at start-up, a camera that gives no frame by then is an error
MAX_LAG_SECONDS = 0.5  # decoding this far behind the camera: skip to the next keyframe...
LATE_PACKETS = 3  # ...for this many packets in a row (FFmpeg hands the last one out late)
MAX_SKIP_SECONDS = 5.0  # then any keyframe ends the skip (a GOP that long, or odd times)
DRIFT = 0.001  # clock drift allowed between camera and us (1 ms/s), see ``Lag``
FILE_ENDED = "the file ended"  # a paced (file) reader's normal end: it starts over
SECRET_KEYS = ("password", "passwd", "pass", "pwd", "token", "secret", "key", "auth")

# States, as /healthz and /metrics show them.
CONNECTING = "connecting"
LIVE = "live"
RECONNECTING = "reconnecting"
CLOSED = "closed"
STATES = (CONNECTING, LIVE, RECONNECTING, CLOSED)


class AudioSink(Protocol):
    """Who gets the camera's audio (``fanout.SharedSource``, for ``--audio camera``), on
    the event loop."""

    def on_audio(self, frame: av.AudioFrame | None) -> None:
        """A 48 kHz mono s16 frame, timed on the capture clock; None: the camera closed."""


class LiveError(Exception):
    """A camera that gave no frame in time, or a reader already closed; one line."""


def is_live(url: str) -> bool:
    """Whether ``--source`` names a live network camera: rtsp(s)://, or http(s):// not
    ending in a video file's suffix (an MJPEG camera)."""
    if is_rtsp(url):
        return True
    if url.partition("://")[0].lower() not in HTTP_SCHEMES:
        return False
    try:
        path = urlsplit(url).path.lower()
    except ValueError:  # FFmpeg will say what is wrong with it
        return True
    return not path.endswith(FILE_SUFFIXES)


def is_rtsp(url: str) -> bool:
    return url.partition("://")[0].lower() in RTSP_SCHEMES


def redact(url: str) -> str:
    """``url`` for messages: ``user:***@`` for its credentials, ``***`` for the values of
    query parameters that look like secrets (``?pwd=``, some MJPEG cameras)."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    user, at, host = parts.netloc.rpartition("@")
    if at:
        name, colon, _ = user.partition(":")
        host = f"{name}{':***' if colon else ''}@{host}"
    query = "&".join(
        f"{key}=***" if key.lower() in SECRET_KEYS else f"{key}={value}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))


def options(url: str, transport: str = DEFAULT_TRANSPORT) -> dict[str, str]:
    """FFmpeg's options for opening a live camera with the least delay."""
    opts = {
        "fflags": "nobuffer",  # no packets kept back while the stream is analysed
        "probesize": "32768",  # enough for the parameter sets (RTSP has them in its SDP)
        "analyzeduration": "500000",  # µs
        "timeout": str(round(READ_SECONDS * 1_000_000)),  # socket I/O, µs (FFmpeg >= 5)
    }
    if is_rtsp(url):
        opts["rtsp_transport"] = transport
    return opts


@dataclass(frozen=True)
class Failure:
    """Why one connection ended; ``refused``: the camera said no (401, 403, 404...), so
    waiting will not help at start-up."""

    reason: str
    refused: bool = False


def failure(exc: BaseException, url: str) -> Failure:
    """A one-line reason for an FFmpeg error, without the URL (PyAV puts it in ``str``)."""
    text = " ".join(str(getattr(exc, "strerror", None) or type(exc).__name__).split())
    if isinstance(exc, av.error.HTTPUnauthorizedError):
        if "@" in urlsplit(url).netloc:
            return Failure(f"the camera refused the credentials ({text})", refused=True)
        return Failure(f"the camera wants credentials: USER:PASSWORD@ in the URL ({text})", True)
    if isinstance(exc, av.error.HTTPNotFoundError):
        return Failure(f"the camera has no stream at this path ({text})", refused=True)
    if isinstance(exc, av.error.HTTPClientError):
        return Failure(f"the camera refused the request ({text})", refused=True)
    if isinstance(exc, av.error.ExitError):  # PyAV's timeout interrupted FFmpeg
        return Failure("no answer in time")
    return Failure(text)


class Lag:
    """How far behind the camera the packets being read are: the growth of (arrival time
    - decoding time) over its lowest value. The lowest value may creep up by ``DRIFT`` a
    second, so that a camera clock slightly slower than ours does not pile up into a lag;
    decoding that is really too slow grows it faster than that. A stream whose time goes
    back (FFmpeg re-basing it on an RTCP report) starts the measure afresh."""

    def __init__(self) -> None:
        self._offset: float | None = None
        self._at = 0.0
        self._media = 0.0
        self._late = 0  # packets in a row over MAX_LAG_SECONDS
        self.skipping_since: float | None = None
        self.skipped = 0  # packets skipped in the last (or current) skip

    def behind(self, arrival: float, media: float) -> float:
        """Seconds behind, for a packet read at ``arrival`` with time ``media``."""
        offset = arrival - media
        if self._offset is None or media < self._media:
            self._offset = offset
        else:
            self._offset = min(self._offset + DRIFT * (arrival - self._at), offset)
        self._at, self._media = arrival, media
        behind = offset - self._offset
        self._late = self._late + 1 if behind > MAX_LAG_SECONDS else 0
        return behind

    @property
    def too_far(self) -> bool:
        """``LATE_PACKETS`` in a row over ``MAX_LAG_SECONDS`` behind: time to skip."""
        return self._late >= LATE_PACKETS

    def skip(self, arrival: float, media: float | None, keyframe: bool) -> bool:
        """Whether to drop this packet undecoded: from ``too_far`` until a keyframe that
        is not far behind itself; after ``MAX_SKIP_SECONDS``, until any keyframe (and the
        lag is measured afresh from there)."""
        behind = 0.0 if media is None else self.behind(arrival, media)
        if self.skipping_since is None:
            if not self.too_far:
                return False
            self.skipping_since, self.skipped = arrival, 0
        if keyframe and (
            behind <= MAX_LAG_SECONDS or arrival - self.skipping_since > MAX_SKIP_SECONDS
        ):
            if behind > MAX_LAG_SECONDS:
                self.reset()
            self.skipping_since = None
            return False
        self.skipped += 1
        return True

    def reset(self) -> None:
        self._offset = None
        self._late = 0


class LiveReader:
    """One camera URL, read in a thread and reconnected until ``close()``.

    ``convert`` turns each decoded frame into the one handed out (scaled, timed; it runs
    in the thread), given the frame's capture time when the stream tells it (an H.264
    stream's ``Timeline``; None: timed as it is decoded). ``patience``: seconds to wait
    for the first frame before giving up (``next_frame()`` then raises LiveError; a
    refusal gives up at once); None: never give up, as while viewers watch. ``state``,
    ``reconnects`` and ``error`` are for /healthz and /metrics. ``paced``: a file, read
    at its own pace and looped; ``fmt``: FFmpeg's demuxer (None: guessed from the URL);
    ``origin``: the capture clock's origin (``sources.CLOCK_ORIGIN``) for the packets'
    times.

    Set from the event loop: ``sink`` gets an H.264 stream's packets (``h264_stream``),
    ``decode`` says whether frames are wanted (decoding restarts at a keyframe), ``audio``
    gets a live camera's audio (decoded only while it is set; a file's is not read)."""

    def __init__(
        self,
        url: str,
        opts: dict[str, str],
        convert: Callable[[av.VideoFrame, float | None], av.VideoFrame],
        *,
        patience: float | None = None,
        backoff: Backoff | None = None,
        paced: bool = False,
        fmt: str | None = None,
        origin: float = 0.0,
    ) -> None:
        self.url = url
        self.shown = redact(url)
        self._options = opts
        self._convert = convert
        self._patience = patience
        self._retry = backoff or Backoff()
        self.state = CONNECTING
        self.reconnects = 0  # times the stream came back after a drop
        self.error: str | None = None  # the last failure, for /healthz
        self._stopping = threading.Event()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._newest: av.VideoFrame | None = None
        self._fresh = asyncio.Event()
        self._gave_up: str | None = None
        self._had_frames = False  # over every connection
        self._lost_at = 0.0  # when the stream last dropped
        self._paced = paced
        self._format = fmt
        self._looping = False  # a file starting over: not a reconnection
        self._timeline = Timeline(origin)
        self.decode = True  # frames wanted (set from the loop)
        self.sink: PacketSink | None = None  # H.264 packets wanted (set from the loop)
        self.audio: AudioSink | None = None  # the audio wanted (set from the loop)
        self.stream_info: StreamInfo | None = None  # the current connection's, on the loop

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"live {self.shown}", daemon=True)
        self._thread.start()

    async def next_frame(self) -> av.VideoFrame:
        """The newest frame not handed out yet; waits (across reconnections) for one."""
        while self._newest is None:
            if self._gave_up is not None:
                raise LiveError(self._gave_up)
            if self.state == CLOSED:
                raise LiveError(f"{self.shown} is closed")
            self._fresh.clear()
            await self._fresh.wait()
        frame, self._newest = self._newest, None
        return frame

    async def close(self) -> None:
        """Stop reading. The thread ends once FFmpeg returns: at once while frames flow,
        else within the read timeout."""
        self._stopping.set()
        if self._thread is not None:
            await asyncio.shield(asyncio.wrap_future(self._done))
        self.state = CLOSED

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        deadline = None if self._patience is None else time.monotonic() + self._patience
        try:
            while not self._stopping.is_set():
                ended = self._connection()
                if self._stopping.is_set():
                    return
                if self._paced and ended.reason == FILE_ENDED:
                    self._looping = True
                    continue
                self.error = ended.reason
                out_of_time = deadline is not None and time.monotonic() >= deadline
                if not self._had_frames and deadline is not None and (ended.refused or out_of_time):
                    why = ended.reason
                    if not ended.refused:
                        why = f"no video within {self._patience:g} s ({why})"
                    self._post(self._give_up, f"network camera {self.shown}: {why}")
                    return
                delay = self._retry.failure()
                if self.state == LIVE:
                    self._lost_at = time.monotonic()
                    logger.warning("%s: %s; reconnecting", self.shown, ended.reason)
                elif self._retry.failures == 1:
                    logger.warning("%s: %s; trying again", self.shown, ended.reason)
                else:
                    logger.info("%s: %s; again in %.2g s", self.shown, ended.reason, delay)
                if self._had_frames:
                    self.state = RECONNECTING
                self._stopping.wait(delay)
        finally:
            self.state = CLOSED
            self._post(self._fresh.set)
            self._done.set_result(None)

    def _connection(self) -> Failure:
        """One connection, until it ends: why it did."""
        try:
            container = av.open(
                self.url,
                format=self._format,
                options=self._options,
                timeout=(OPEN_SECONDS, READ_SECONDS),
            )
        except (av.FFmpegError, OSError) as exc:
            return failure(exc, self.url)
        try:
            if not container.streams.video:
                return Failure("no video stream", refused=True)
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"  # frame threads would hold frames back
            stream.codec_context.flags |= Flags.low_delay  # each frame out as soon as it can
            audio = (
                None if self._paced or not container.streams.audio else container.streams.audio[0]
            )
            return self._receive(container, stream, audio)
        except av.error.EOFError:  # a file's end, as a decoder reports it
            return Failure(FILE_ENDED if self._paced else "the stream ended")
        except (av.FFmpegError, OSError) as exc:
            return failure(exc, self.url)
        finally:
            container.close()

    def _receive(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        audio: av.AudioStream | None,
    ) -> Failure:
        lag = Lag()
        # RTP times are the camera's clock; other demuxers may make them up (FFmpeg's
        # MJPEG over HTTP counts frames at 25 fps), and then no lag can be measured.
        timed = container.format.name == "rtsp"
        received = False
        context = stream.codec_context
        h264 = AnnexB(stream, self._timeline) if context.name == "h264" else None
        info = h264.info if h264 is not None else None
        if h264 is None:
            info = StreamInfo(context.name, context.width, context.height)
        # What the connection carries, its audio track too (None: it has none).
        audio_codec = None if audio is None else audio.codec_context.name
        if info is not None:
            self._post(self._stream, replace(info, audio=audio_codec))
        decoding = False  # the decoder has had a keyframe since frames were wanted
        clock: tuple[float, float] | None = None  # a file's pace: (wall, media seconds)
        stamper: Stamper | None = None  # the audio, while it is wanted
        for packet in container.demux(stream) if audio is None else container.demux(stream, audio):
            if self._stopping.is_set():
                return Failure("closed")
            if audio is not None and packet.stream_index == audio.index:
                stamper = self._hear(audio, packet, stamper, h264 is not None)
                continue
            if self._paced and packet.dts is not None and packet.time_base is not None:
                media_seconds = float(packet.dts * packet.time_base)
                if clock is None:
                    clock = (time.monotonic(), media_seconds)
                delay = clock[0] + media_seconds - clock[1] - time.monotonic()
                if delay > 0 and self._stopping.wait(delay):
                    return Failure("closed")
            keyframe = packet.is_keyframe
            if h264 is not None and packet.size:
                sent = h264.convert(packet, time.monotonic())
                if h264.changed and h264.info is not None:
                    self._post(self._stream, replace(h264.info, audio=audio_codec))
                keyframe = keyframe or any(p.is_keyframe for p in sent)
                if sent and not received:
                    received = True
                    self._live(stream)
                if self.sink is not None:
                    for out in sent:
                        self._post(self._packet, out)
            if not self.decode:
                decoding = False
                continue
            if not decoding:
                if not keyframe:
                    continue  # a decoder starts at a keyframe
                decoding = True
            if timed:
                media = packet.dts if packet.dts is not None else packet.pts
                seconds = None if media is None else float(media * packet.time_base)
                skipping = lag.skipping_since is not None
                if lag.skip(time.monotonic(), seconds, packet.is_keyframe):
                    if not skipping:
                        logger.warning(
                            "%s: decoding fell over %g s behind the camera; skipping to a "
                            "recent keyframe", self.shown, MAX_LAG_SECONDS,
                        )  # fmt: skip
                    continue
                if skipping:
                    logger.info("%s: %d packets skipped", self.shown, lag.skipped)
            try:
                frames = context.decode(packet)
            except av.error.InvalidDataError:  # a damaged packet (UDP loss): go on
                continue
            for frame in frames:
                if not received:
                    received = True
                    self._live(stream)
                captured = self._captured(frame, stream) if h264 is not None else None
                self._post(self._hand_over, self._convert(frame, captured))
        return Failure(FILE_ENDED if self._paced else "the stream ended")

    def _captured(self, frame: av.VideoFrame, stream: av.VideoStream) -> float | None:
        """A decoded H.264 picture's capture time on the video's ``Timeline``, where its
        packets and the camera's audio are timed; None when unknown or far from now (a
        re-basing: then it is timed as decoded)."""
        base = frame.time_base or stream.time_base
        if frame.pts is None or base is None:
            return None
        at = self._timeline.capture(float(frame.pts * base))
        if at is None or abs(at - time.monotonic()) > REANCHOR_SECONDS:
            return None
        return at

    def _hear(
        self, stream: av.AudioStream, packet: av.Packet[Any], stamper: Stamper | None, timed: bool
    ) -> Stamper | None:
        """An audio packet: decoded and made ready for Opus while the audio is wanted; the
        stamper to use for the next one (None: not wanted, the next one starts afresh).
        ``timed``: on the video's ``Timeline`` (an H.264 stream's)."""
        from .audio_sources import Stamper, capture_time  # it builds on this module

        if self.audio is None:
            return None
        if not packet.size:  # an empty packet (the end): nothing to decode
            return stamper
        try:
            frames = stream.codec_context.decode(packet)
        except av.FFmpegError as exc:  # a damaged packet (UDP loss): the video goes on
            logger.debug("%s: an audio packet not decoded: %s", self.shown, exc)
            return stamper
        arrived = time.monotonic()
        for frame in frames:
            captured = capture_time(frame, arrived, wall_clock=False)
            exact = False
            if timed and frame.pts is not None and frame.time_base is not None:
                at = self._timeline.capture(float(frame.pts * frame.time_base))
                if at is None:
                    continue  # before the video's first packet
                if abs(at - captured) <= REANCHOR_SECONDS:
                    captured, exact = at, True
            stamper = stamper or Stamper()
            for out in stamper.add(frame, captured, exact):
                self._post(self._heard, out)
        return stamper

    def _live(self, stream: av.VideoStream) -> None:
        """The first frame (or H.264 packet) of a connection."""
        if self._looping:  # a file starting over
            self._looping = False
            return
        codec = stream.codec_context
        transport = self._options.get("rtsp_transport")
        how = f"{codec.name} {codec.width}x{codec.height}" + (
            f" over {transport}" if transport else ""
        )
        if self._had_frames:
            self.reconnects += 1
            down = time.monotonic() - self._lost_at
            logger.info("%s: back (%s) after %.1f s", self.shown, how, down)
        else:
            logger.info("%s: receiving %s", self.shown, how)
        self._had_frames = True
        self._retry.reset()
        self.error = None
        self.state = LIVE

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback`` on the event loop (gone at interpreter exit: nothing to do)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # -- on the event loop ------------------------------------------------------------

    def _hand_over(self, frame: av.VideoFrame) -> None:
        self._newest = frame  # one not taken yet is replaced: the newest only
        self._fresh.set()

    def _stream(self, info: StreamInfo) -> None:
        self.stream_info = info
        if self.sink is not None:
            self.sink.on_stream(info)

    def _heard(self, frame: av.AudioFrame) -> None:
        if self.audio is not None:
            self.audio.on_audio(frame)

    def _packet(self, packet: av.Packet[Any]) -> None:
        if self.sink is not None:
            self.sink.on_packet(packet)

    def _give_up(self, reason: str) -> None:
        self._gave_up = reason
        self._fresh.set()
