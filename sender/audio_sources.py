"""Real audio sources, read with PyAV: microphones (FFmpeg's capture devices), audio files
and the audio of network cameras (RTSP: AAC, G.711, whatever FFmpeg decodes).

Each ``AvAudioSource`` reads in a thread of its own (reading blocks), resamples what it
gets, once, to the 48 kHz mono s16 the Opus encoder takes, and hands out frames whose
``pts`` count samples on the capture clock (``audio.capture_pts``):

- When the samples were captured: ALSA and OSS stamp each packet with the wall clock
  (``av_gettime()``) of its first sample, less what still waited in the driver's buffer;
  a packet time that reads as the wall clock within ``TRUSTED_SECONDS`` of the arrival is
  used (mapped onto ``time.monotonic()``). Anything else is timed by its arrival, less
  its duration: lavfi and RTSP count stream time from 0, AVFoundation and DirectShow
  were not tried here, and ALSA's time is off where its delay is (the tests' ``null``
  device reports seconds). A file's samples are counted from when it started.
- Samples are counted from there, so the stream stays seamless; the count jumps ahead to
  the capture time when that runs more than ``RESYNC_SECONDS`` ahead of it (samples lost,
  a device clock slower than ours; ``EXACT_SECONDS`` for a camera's audio on its video's
  timeline, exact times rather than arrivals), and never goes back: a frame whose capture time is
  more than that behind the count (a device clock faster than ours, a camera's timeline
  anchored afresh) is dropped, since its time was handed out already (RTP timestamps
  that go back read as a wrap to aiortc's receivers, and the recorder drops what
  follows). A frame is never handed out before its last sample is due on the capture
  clock: files (and graphs without ``arealtime``) play in real time, files loop.

A device (or camera) that fails or ends mid-stream is reopened with backoff
(``common.backoff``, as video devices are) until it comes back, with one INFO line when
it is lost and one when it is back; meanwhile nothing is handed out, so listeners hear a
pause (no packets: their players conceal it as silence) while the video goes on.

``--audio camera`` with a network camera is ``CameraAudioSource``: no connection of its
own, but the audio track of the video's (``sender.live`` decodes it with a ``Stamper``,
``fanout.SharedSource`` hands it over), so the camera sees one RTSP session; it pauses and
resumes with the video. A file's audio (``--source clip.mp4 --audio camera``) is still
read by a reader of its own, looped on its own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import platform
import threading
import time

import av
import av.device
import numpy as np

from common import stamp
from common.backoff import Backoff

from . import alsa_log, live
from .audio import (
    AUTO,
    CAMERA,
    DEVICE,
    FILE,
    FRAME_SAMPLES,
    NETWORK,
    SAMPLE_RATE,
    TIME_BASE,
    AudioSource,
    AudioSourceEnded,
    AudioSourceError,
    AudioSpec,
    capture_pts,
    resolve,
)
from .fanout import SharedSource
from .h264_stream import REANCHOR_SECONDS
from .sources import CLOCK_ORIGIN, SourceSpec

logger = logging.getLogger(__name__)

TRUSTED_SECONDS = 1.0  # a device's packet time this close to arrival is on the wall clock
RESYNC_SECONDS = 0.1  # the sample count follows the capture time again past this
EXACT_SECONDS = 0.005  # ...or past this, for a stream's own time (not an arrival's)
QUEUE_FRAMES = 50  # about a second; a reader further behind loses the oldest
# A camera's frames may be timed up to REANCHOR_SECONDS ahead (on its video's timeline) and
# are held until due: its queue keeps those besides the second a reader may fall behind.
CAMERA_QUEUE_FRAMES = QUEUE_FRAMES + round(REANCHOR_SECONDS * SAMPLE_RATE / FRAME_SAMPLES)
REOPEN_FIRST = 0.5  # seconds before a lost device is first reopened, doubling...
REOPEN_CAP = 5.0  # ...up to this
OPEN_SECONDS = 5.0  # opening a device, file or camera
READ_SECONDS = 5.0  # no data for this long: the device (or camera) is gone
PROBE_SECONDS = 10.0  # at start-up: a named source that gives no samples by then is an error
AUTO_SECONDS = 2.0  # ``auto``: the default microphone's check, at most
WALL_CLOCK_DEMUXERS = ("alsa", "oss")  # packet times: the wall clock at capture


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


class AvAudioSource(AudioSource):
    """A microphone, an audio file (looped, in real time) or a network camera's audio."""

    def __init__(self, spec: AudioSpec) -> None:
        self._spec = spec
        self._frames: collections.deque[av.AudioFrame] = collections.deque(maxlen=QUEUE_FRAMES)
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None  # set and cleared by the capture thread

    @property
    def error(self) -> str | None:
        return self._error

    def _open_container(self) -> av.container.InputContainer:
        spec = self._spec
        network = spec.kind in (NETWORK, CAMERA)
        options = live.options(spec.url, spec.rtsp_transport) if network else {}
        if spec.format == "alsa":
            alsa_log.install()
            alsa_log.last_message()
        try:
            container = av.open(
                spec.url, format=spec.format, options=options, timeout=(OPEN_SECONDS, READ_SECONDS)
            )
        except (av.FFmpegError, OSError) as exc:
            reason = (alsa_log.last_message() if spec.format == "alsa" else None) or _reason(exc)
            raise AudioSourceError(f"cannot open {spec.describe()}: {reason}") from None
        if not container.streams.audio:
            container.close()
            shown = live.redact(spec.url) if network else spec.describe()
            raise AudioSourceError(f"{shown} has no audio track")
        return container

    async def open(self) -> None:
        """Open it now (an error for a file; a device or camera that does not open is
        retried in the background, as one lost mid-stream)."""
        self._loop = asyncio.get_running_loop()
        container: av.container.InputContainer | None = None
        try:
            container = await asyncio.to_thread(self._open_container)
        except AudioSourceError as exc:
            if self._spec.kind == FILE:
                raise
            self._error = f"{exc}; trying again"
            logger.info("%s; trying again (video goes on)", exc)
        self._thread = threading.Thread(
            target=self._run, args=(container,), name="audio-capture", daemon=True
        )
        self._thread.start()

    async def read(self) -> av.AudioFrame:
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    async def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    # -- the capture thread ------------------------------------------------------------

    def _run(self, container: av.container.InputContainer | None) -> None:
        backoff = Backoff(REOPEN_FIRST, REOPEN_CAP)
        lost: float | None = None if container is not None else time.monotonic()
        while not self._stopping.is_set():
            if container is None:
                if self._stopping.wait(backoff.failure()):
                    return
                try:
                    container = self._open_container()
                except AudioSourceError as exc:
                    logger.debug("%s", exc)
                    continue
            if lost is not None:
                logger.info(
                    "%s is back after %.1f s", self._spec.describe(), time.monotonic() - lost
                )
                lost = None
                self._error = None
            backoff.reset()
            try:
                reason = self._pump(container)
            except (av.FFmpegError, OSError, ValueError) as exc:
                reason = _reason(exc)
            finally:
                container.close()
                container = None
            if self._stopping.is_set():
                return
            lost = time.monotonic()
            self._error = f"lost ({reason}); reopening it"
            logger.info(
                "%s is lost (%s); reopening it (video goes on)", self._spec.describe(), reason
            )

    def _pump(self, container: av.container.InputContainer) -> str:
        """Read until the end (a file: forever, looped) or ``close()``; why it ended."""
        stream = container.streams.audio[0]
        wall_clock = container.format.name in WALL_CLOCK_DEMUXERS
        stamper = Stamper()  # a new connection resumes on the capture clock, after a gap
        while True:
            for packet in container.demux(stream):
                if self._stopping.is_set():
                    return "closed"
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as exc:  # one bad packet, not a lost device
                    logger.debug("%s: a packet not decoded: %s", self._spec.describe(), exc)
                    continue
                for frame in frames:
                    arrived = time.monotonic()
                    captured = self._captured(frame, arrived, wall_clock)
                    for out in stamper.add(frame, captured):
                        if not self._hand_out(out):
                            return "closed"
            if self._spec.kind != FILE:
                return "it ended"
            container.seek(0)

    def _captured(self, frame: av.AudioFrame, arrived: float, wall_clock: bool) -> float | None:
        """When ``frame``'s first sample was captured; None for a file (its samples are
        counted from the first one)."""
        return None if self._spec.kind == FILE else capture_time(frame, arrived, wall_clock)

    def _hand_out(self, frame: av.AudioFrame) -> bool:
        """Wait until ``frame``'s last sample is due, queue it; False once closed."""
        wait = due_in(frame)
        if wait > 0 and self._stopping.wait(wait):
            return False
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver, frame)
        except RuntimeError:  # the loop is closed: we are shutting down
            return False
        return True

    def _deliver(self, frame: av.AudioFrame) -> None:
        self._frames.append(frame)
        self._ready.set()


class CameraAudioSource(AudioSource):
    """A network camera's audio from the video's own connection: a user of the camera's
    ``SharedSource`` (``hear()``), like a passthrough viewer, so opening it opens the
    camera (without decoding its video, when nobody watches) and the connection stays
    while anyone listens or watches. Frames come ready (``Stamper``, in the camera's
    reader thread, timed on the video's clock: see ``sender.live``); each is handed out
    when its last sample is due, as ``AvAudioSource`` does. When the camera drops, the
    frames stop and the listeners hear a pause until the reader has reconnected, as the
    viewers see one. A camera without an audio track was refused at start (``choose``
    probes it); one that loses its track later shows in ``error``. The first camera's
    (``--audio camera`` with several: the default one's)."""

    def __init__(self, spec: AudioSpec, camera: SharedSource) -> None:
        self._spec = spec
        self._camera = camera
        self._frames: collections.deque[av.AudioFrame] = collections.deque(
            maxlen=CAMERA_QUEUE_FRAMES
        )
        self._ready = asyncio.Event()
        self._ended = False

    async def open(self) -> None:
        self._camera.hear(self)

    @property
    def error(self) -> str | None:
        """The camera's own (connecting, lost), or an audio track that went missing."""
        camera = self._camera
        if camera.state not in (live.LIVE, live.CLOSED):
            return f"the camera is {camera.state}" + (f" ({camera.error})" if camera.error else "")
        info = camera.stream_info
        if info is not None and info.audio is None:
            return "the camera's stream has no audio track"
        return None

    def on_audio(self, frame: av.AudioFrame | None) -> None:
        """From the camera (``live.AudioSink``); None: it closed for good."""
        if frame is None:
            self._ended = True
        else:
            self._frames.append(frame)
        self._ready.set()

    async def read(self) -> av.AudioFrame:
        while not self._frames:
            if self._ended:
                raise AudioSourceEnded(f"{self._spec.describe()}: the camera closed")
            self._ready.clear()
            await self._ready.wait()
        frame = self._frames.popleft()
        wait = due_in(frame)
        if wait > 0:
            await asyncio.sleep(wait)
        return frame

    async def close(self) -> None:
        self._camera.unhear(self)


class Stamper:
    """One stream's decoded frames made ready for the Opus encoder, wherever they are read
    (``AvAudioSource``'s thread, or the camera's reader for ``--audio camera``,
    ``sender.live``): resampled once to 48 kHz mono s16, gathered into frames of at least
    ``FRAME_SAMPLES`` (``Batch``), and timed: ``pts`` counts samples on the capture clock
    from the first one's capture time, following it again past ``RESYNC_SECONDS`` (see the
    module's docstring), or past ``EXACT_SECONDS`` for an exact capture time (a camera's
    audio on its video's timeline). A new connection (or a gap) takes a new Stamper."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._batch = Batch()
        self._next: int | None = None  # the pts of the next sample handed out
        self._dropping = False  # frames whose time was handed out already

    def add(
        self, frame: av.AudioFrame, captured: float | None, exact: bool = False
    ) -> list[av.AudioFrame]:
        """The frames ready to hand out after ``frame`` (whose first sample was captured
        at ``captured``, on ``time.monotonic()``; None: counted from the first one), each
        timed; ``due_in()`` says when each may go. ``exact``: ``captured`` is no estimate
        from the arrival but the stream's own time (the count follows it closely)."""
        frame.pts = None  # counted here: the resampler wants no gaps in them
        resync = (EXACT_SECONDS if exact else RESYNC_SECONDS) * SAMPLE_RATE  # samples it may part
        ready = []
        for out in self._resampler.resample(frame):
            batch = self._batch.add(out, captured)
            if batch is not None and (stamped := self._stamp(*batch, resync)) is not None:
                ready.append(stamped)
        return ready

    def _stamp(
        self, frame: av.AudioFrame, captured: float | None, resync: float
    ) -> av.AudioFrame | None:
        """``frame`` timed (the count follows ``captured`` past ``resync`` samples); None:
        dropped, its time was handed out already."""
        if self._next is None:
            self._next = capture_pts(time.monotonic() if captured is None else captured)
        elif captured is not None:
            ahead = capture_pts(captured) - self._next
            if ahead < -resync or (self._dropping and ahead < 0):
                # Dropped until the capture time is back at the count, then on time again.
                logger.debug("audio frame dropped: %d samples behind its count", -ahead)
                self._dropping = True
                return None
            if ahead > resync or self._dropping:
                logger.debug("audio resynced: %d samples ahead", ahead)
                self._next += ahead
                self._dropping = False
        frame.pts = self._next
        frame.time_base = TIME_BASE
        self._next += frame.samples
        return frame


def due_in(frame: av.AudioFrame) -> float:
    """Seconds until a timed frame's last sample is due on the capture clock (a frame is
    never handed out before: files play in real time, a fast device clock is held back)."""
    assert frame.pts is not None
    return CLOCK_ORIGIN + (frame.pts + frame.samples) / SAMPLE_RATE - time.monotonic()


class Batch:
    """Resampled frames gathered into frames of at least ``FRAME_SAMPLES``: a device
    that gives a few samples a read (ALSA's minimum period can be 1 frame) would
    otherwise wake the event loop thousands of times a second."""

    def __init__(self) -> None:
        self._frames: list[av.AudioFrame] = []
        self._samples = 0
        self._captured: float | None = None  # the first sample's

    def add(
        self, frame: av.AudioFrame, captured: float | None
    ) -> tuple[av.AudioFrame, float | None] | None:
        """Add ``frame`` (captured when said); a frame to hand out, and when its first
        sample was captured, once there are enough."""
        if not self._frames:
            self._captured = captured
        self._frames.append(frame)
        self._samples += frame.samples
        if self._samples < FRAME_SAMPLES:
            return None
        frames, self._frames, self._samples = self._frames, [], 0
        if len(frames) == 1:
            return frames[0], self._captured
        samples = np.concatenate([f.to_ndarray() for f in frames], axis=1)
        merged = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        merged.sample_rate = SAMPLE_RATE
        return merged, self._captured


def capture_time(frame: av.AudioFrame, arrived: float, wall_clock: bool) -> float:
    """When ``frame``'s first sample was captured, on ``time.monotonic()``: its own time
    when it is the wall clock (``wall_clock``: ALSA, OSS) within ``TRUSTED_SECONDS`` of
    the arrival, else the arrival less the frame's duration."""
    by_arrival = arrived - frame.samples / frame.sample_rate
    if wall_clock and frame.pts is not None and frame.time_base is not None:
        device = float(frame.pts * frame.time_base) - stamp.wall_offset()
        if abs(device - by_arrival) < TRUSTED_SECONDS:
            return device
    return by_arrival


# -- choosing the source at start-up ---------------------------------------------------


def default_microphone() -> AudioSpec | None:
    """The platform's default microphone, if it has an obvious one (not yet opened)."""
    system = platform.system()
    if system == "Linux":
        return AudioSpec(DEVICE, "default", "alsa")
    if system == "Darwin":  # AVFoundation's "default": the system's input device
        return AudioSpec(DEVICE, "none:default", "avfoundation")
    if system == "Windows":  # DirectShow has no default: its first audio device
        try:
            devices = av.device.enumerate_input_devices("dshow")
        except (av.FFmpegError, ValueError, NotImplementedError) as exc:
            logger.debug("dshow cannot list its devices: %s", exc)
            return None
        for device in devices:
            if "audio" in device.media_types:
                return AudioSpec(DEVICE, f"audio={device.description or device.name}", "dshow")
    return None


def _first_samples(spec: AudioSpec) -> None:
    """Open ``spec`` and decode its first samples (raises AudioSourceError)."""
    source = AvAudioSource(spec)
    container = source._open_container()
    try:
        stream = container.streams.audio[0]
        for packet in container.demux(stream):
            if packet.decode():
                return
        raise AudioSourceError(f"{spec.describe()} gave no samples")
    except (av.FFmpegError, OSError) as exc:
        raise AudioSourceError(f"reading {spec.describe()} failed: {_reason(exc)}") from None
    finally:
        container.close()


async def probe(spec: AudioSpec, within: float = PROBE_SECONDS) -> None:
    """Open ``spec`` and read its first samples, in a daemon thread given ``within``
    seconds (a stuck device must not hold the sender's start, nor its exit)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BaseException | None] = loop.create_future()

    def check() -> None:
        try:
            _first_samples(spec)
            outcome: BaseException | None = None
        except AudioSourceError as exc:
            outcome = exc
        loop.call_soon_threadsafe(settle, outcome)

    def settle(outcome: BaseException | None) -> None:
        if not done.done():
            done.set_result(outcome)

    threading.Thread(target=check, name="audio-probe", daemon=True).start()
    try:
        outcome = await asyncio.wait_for(done, within)
    except TimeoutError:
        raise AudioSourceError(f"{spec.describe()} gave no samples in {within:g} s") from None
    if outcome is not None:
        raise outcome


def camera_audio(camera: SourceSpec | None) -> AudioSpec:
    """``--audio camera``: the audio of the video source (with several, the first: the
    default camera's). A network camera's comes from the video's own connection (kind
    ``CAMERA``: ``CameraAudioSource``); a file's is read by a reader of its own, looped on
    its own (sharing the video's reader would tie the audio to whether video is decoded
    and paced, for no saving: a file has no session limit)."""
    if camera is None or camera.kind not in (FILE, NETWORK):
        shown = "no camera" if camera is None else camera.describe()
        raise AudioSourceError(f"camera: {shown} is not a file or network camera with audio")
    kind = CAMERA if camera.kind == NETWORK else FILE
    return AudioSpec(kind, camera.url, rtsp_transport=camera.rtsp_transport)


async def choose(
    name: str, rtsp_transport: str = live.DEFAULT_TRANSPORT, camera: SourceSpec | None = None
) -> AudioSpec | None:
    """``--audio``, resolved and checked: a named source that does not open (or gives no
    samples) is an AudioSourceError; ``auto`` is the default microphone when it gives
    samples within ``AUTO_SECONDS``, else no audio (one INFO line saying why); ``camera``
    is ``camera``'s audio (``camera_audio``)."""
    if name != AUTO:
        spec = camera_audio(camera) if name == CAMERA else resolve(name, rtsp_transport)
        if spec is not None and spec.kind in (DEVICE, FILE, NETWORK, CAMERA):
            await probe(spec)
        return spec
    microphone = default_microphone()
    if microphone is None:
        logger.info("no microphone found: sending no audio")
        return None
    try:
        await probe(microphone, AUTO_SECONDS)
    except AudioSourceError as exc:
        logger.info("no microphone (%s): sending no audio", exc)
        return None
    logger.info("audio: the default microphone, %s", microphone.describe())
    return microphone
