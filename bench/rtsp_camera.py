"""A test RTSP camera: the project's stamped fake camera served over RTSP as H.264 by
GStreamer's RTSP server (Debian: gir1.2-gst-rtsp-server-1.0, python3-gi,
gstreamer1.0-plugins-bad for openh264enc), in a process of its own.

    with RtspCamera(size=(640, 480), fps=30, user="u", password="p") as camera:
        camera.url()                        # rtsp://u:p@127.0.0.1:PORT/cam
        camera.restart()                    # stopped, then serving on the same port again

    with RtspCamera(audio="aac") as camera:  # with a sine (AUDIO_HZ) as AAC, or "pcma"

    with RtspCamera(log=path) as camera:
        camera.clients()                    # RTSP clients that connected so far

    python -m bench.rtsp_camera --port 8554 [--size 640x480] [--fps 30] [--user U]
                                [--audio aac|pcma [--clicks]]
                                (the password: RTSP_CAMERA_PASSWORD)

Why this way: the picture must carry the frame stamp (``common.stamp``: capture time and
sequence number) so latency is measured end to end through camera, sender and receiver.
The server process is the project's venv Python (numpy, ``sender.sources.TestPattern``
drawing the picture and the stamp) with Debian's ``/usr/lib/python3/dist-packages``
appended to ``sys.path`` for PyGObject (``gi``) alone: appended, so every other package
still comes from the venv; both are CPython 3.11, so ``gi``'s extension loads. Frames go
into an ``appsrc``, paced by a thread at the frame rate; the encoder is x264enc
(tune=zerolatency) if installed, else openh264enc, constrained baseline with a keyframe
every ``key_interval`` frames. Frame ``n`` of a pipeline is stamped with sequence
``round(start * fps) + n`` (``start``: the wall clock when it started), so sequence numbers
keep rising across restarts, as a camera's clock does. One pipeline is shared by every client
(``set_shared``), as a camera's one encoder is. With ``user``, RTSP Basic authentication
is required. With ``audio``, the stream has a second track: a live ``AUDIO_HZ`` sine
(``audiotestsrc``) as AAC (``avenc_aac`` from gstreamer1.0-libav, else ``voaacenc``),
48 kHz mono, or as G.711 A-law (PCMA, 8 kHz), as cameras send it. With ``clicks`` the sine
clicks at every whole second of the wall clock, as the sender's fake audio does
(``sender.audio.tone``), pushed from a thread into an ``appsrc`` timed like the frames:
the frame stamp and the clicks then measure the audio-to-video offset of a recording
through the camera (``bench.av_sync``). A line on stdout ("ready URL") says it listens; one on stderr per client
that connects (GStreamer's ``client-connected``: one per RTSP connection, and an FFmpeg
reader's session is one connection), which ``clients()`` counts: how many sessions a sender
opened.
"""

from __future__ import annotations

import argparse
import contextlib
import fractions
import functools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.senders import ROOT, child_env, stop_process
from common import cli
from sender.sources import TestPattern

SYSTEM_SITE = "/usr/lib/python3/dist-packages"  # Debian's python3-gi
PATH = "/cam"
STARTUP_TIMEOUT = 20.0
BITRATE = 2_000_000  # bit/s; plenty for the test pattern at 640x480
KEY_INTERVAL = 30
AUDIO_CODECS = ("aac", "pcma")
AUDIO_HZ = 1200.0  # the audio track's sine
AUDIO_VOLUME = 0.3
AAC_ENCODERS = ("avenc_aac", "voaacenc")
CLIENT_LINE = "client connected"  # on stderr, once per RTSP client (``clients()``)
# Tried in order: (element, its settings, the caps that follow it).
ENCODERS = (
    (
        "x264enc",
        f"tune=zerolatency speed-preset=ultrafast bitrate={BITRATE // 1000} "
        "key-int-max={key} bframes=0",
        "video/x-h264,profile=constrained-baseline",
    ),
    (
        "openh264enc",
        f"bitrate={BITRATE} gop-size={{key}} complexity=low usage-type=camera rate-control=bitrate",
        "video/x-h264,profile=constrained-baseline",
    ),
)


def import_gi() -> Any:
    """``gi`` from the venv if it has it, else from Debian's system packages."""
    try:
        import gi
    except ImportError:
        if SYSTEM_SITE not in sys.path:
            sys.path.append(SYSTEM_SITE)
        import gi
    for namespace in ("Gst", "GstRtspServer"):
        gi.require_version(namespace, "1.0")
    return gi


def find_encoder(gst: Any) -> tuple[str, str, str] | None:
    for name, settings, caps in ENCODERS:
        if gst.ElementFactory.find(name) is not None:
            return name, settings, caps
    return None


@functools.cache
def problem() -> str | None:
    """Why the test camera cannot run here, or None: asked of a child process, which
    imports what the server needs (the caller's process stays free of GStreamer)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.rtsp_camera", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=ROOT,
        check=False,
    )
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"the check exited with {result.returncode}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RtspCamera:
    """One server process on ``127.0.0.1:port`` (a free one unless given), kept on that
    port across ``restart()``; its stderr goes to ``log`` (or is dropped)."""

    def __init__(
        self,
        *,
        port: int | None = None,
        size: tuple[int, int] = (640, 480),
        fps: float = 30.0,
        key_interval: int = KEY_INTERVAL,
        user: str | None = None,
        password: str | None = None,
        audio: str | None = None,
        clicks: bool = False,
        log: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.size = size
        self.fps = fps
        self.key_interval = key_interval
        self.user = user
        self.password = password
        self.audio = audio
        self.clicks = clicks
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def url(self, *, user: str | None = None, password: str | None = None, path: str = PATH) -> str:
        """The stream's URL with ``user``/``password`` (by default the camera's own)."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        credentials = f"{user}:{password}@" if user else ""
        return f"rtsp://{credentials}127.0.0.1:{self.port}{path}"

    def command(self) -> list[str]:
        width, height = self.size
        args = [sys.executable, "-m", "bench.rtsp_camera", "--port", str(self.port)]
        args += ["--size", f"{width}x{height}", "--fps", f"{self.fps:g}"]
        args += ["--key-interval", str(self.key_interval), "--quit-at-eof"]
        if self.user:
            args += ["--user", self.user]
        if self.audio:
            args += ["--audio", self.audio]
        if self.clicks:
            args += ["--clicks"]
        return args

    def start(self) -> None:
        """Start the server and wait until it listens."""
        assert not self.running, "the RTSP camera is already running"
        env = child_env()
        if self.password is not None:  # not on the command line, where ps shows it
            env["RTSP_CAMERA_PASSWORD"] = self.password
        stderr = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.PIPE,  # its end (we are gone) stops the server
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C on the caller does not hit it first
            )
        finally:
            if self.log:
                stderr.close()
        self.starts += 1
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, lines), daemon=True).start()
        try:
            line = lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            line = ""
        if not line.startswith("ready "):
            self.stop()
            raise AssertionError(f"the RTSP camera did not start: {line!r} {self.tail()}")

    @staticmethod
    def _read(proc: subprocess.Popen[bytes], lines: queue.Queue[str]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put("")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, SIGKILL if it takes too long: its connections close."""
        if self.proc is not None:
            stop_process(self.proc)
            self._close_pipes()

    def _close_pipes(self) -> None:
        assert self.proc is not None
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def kill(self) -> None:
        """SIGKILL: the camera vanishes, as in a power cut."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
            self._close_pipes()

    def restart(self) -> None:
        self.stop()
        self.start()

    def clients(self) -> int:
        """RTSP clients that connected, over every start (the ``log``'s lines for them)."""
        assert self.log is not None, "clients() counts the lines of the log: give one"
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count(CLIENT_LINE)

    def tail(self, lines: int | None = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text if lines is None else text[-lines:])

    def __enter__(self) -> RtspCamera:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the server process ---------------------------------------------------------------


class Pusher:
    """Feeds one media's ``appsrc`` with stamped frames at the frame rate, from a thread,
    until ``stop()`` (its media is unprepared)."""

    def __init__(self, gst: Any, appsrc: Any, size: tuple[int, int], fps: float) -> None:
        self._gst = gst
        self._appsrc = appsrc
        self._camera = TestPattern(size[0], size[1], fps)
        self._fps = fps
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pusher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        first = round(time.time() * self._fps)
        n = 0
        while not self._stopped.wait(max(0.0, started + n / self._fps - time.monotonic())):
            if time.monotonic() - (started + n / self._fps) > 1.0:  # far behind: skip on
                n = int((time.monotonic() - started) * self._fps)
            running = running_time(self._appsrc)
            if running is not None:
                buffer = self._gst.Buffer.new_wrapped(self._camera.picture(first + n).tobytes())
                buffer.pts = running
                self._appsrc.emit("push-buffer", buffer)
            n += 1

    def stop(self) -> None:
        self._stopped.set()


def running_time(appsrc: Any) -> int | None:
    """Now on the pipeline's running clock (ns), or None before it plays. Not appsrc's
    do-timestamp: a frame pushed before the pipeline had its base time was stamped
    with the absolute clock (hours), and the server held it, and all after it, that
    long (once in about ten starts)."""
    clock = appsrc.get_clock()
    base = appsrc.get_base_time()
    if clock is None or base == 0:
        return None
    now: int = clock.get_time()
    return now - base if now >= base else None


class ClickPusher:
    """Feeds the audio ``appsrc`` (``clicks``) with 20 ms of the clicking sine as each is
    due, timed on the running clock from when its first sample was due, as a capture
    device's are, until ``stop()``."""

    def __init__(self, gst: Any, appsrc: Any) -> None:
        self._gst = gst
        self._appsrc = appsrc
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clicks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from sender.audio import FRAME_SAMPLES, SAMPLE_RATE, capture_pts, tone
        from sender.sources import CLOCK_ORIGIN

        anchor: tuple[int, int] | None = None  # (running ns, sample) at the same instant
        sample = 0
        while not self._stopped.is_set():
            if anchor is None:
                running = running_time(self._appsrc)
                if running is None:
                    self._stopped.wait(0.01)
                    continue
                sample = capture_pts(time.monotonic())
                anchor = (running, sample)
            due = CLOCK_ORIGIN + (sample + FRAME_SAMPLES) / SAMPLE_RATE - time.monotonic()
            if due > 0 and self._stopped.wait(due):
                return
            samples = tone(
                sample, FRAME_SAMPLES, time.time() - time.monotonic(), AUDIO_HZ, AUDIO_VOLUME
            )
            buffer = self._gst.Buffer.new_wrapped(samples.astype("<i2").tobytes())
            buffer.pts = anchor[0] + (sample - anchor[1]) * 10**9 // SAMPLE_RATE
            buffer.duration = FRAME_SAMPLES * 10**9 // SAMPLE_RATE
            self._appsrc.emit("push-buffer", buffer)
            sample += FRAME_SAMPLES

    def stop(self) -> None:
        self._stopped.set()


def audio_branch(gst: Any, codec: str | None, clicks: bool = False) -> str | None:
    """The launch text of the audio track (``pay1``): "" for none, None when the encoder
    ``codec`` needs is missing. ``clicks``: from the ``asrc`` appsrc (``ClickPusher``)."""
    if codec is None:
        return ""
    source = (
        f"audiotestsrc is-live=true wave=sine freq={AUDIO_HZ:g} volume={AUDIO_VOLUME:g} "
        "samplesperbuffer=960 ! audioconvert ! audioresample"
    )
    if clicks:
        source = (
            "appsrc name=asrc is-live=true format=time max-buffers=5 "
            "caps=audio/x-raw,format=S16LE,rate=48000,channels=1,layout=interleaved "
            "! audioconvert ! audioresample"
        )
    if codec == "pcma":
        return f"{source} ! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay1 max-ptime=20000000"
    for encoder in AAC_ENCODERS:
        if gst.ElementFactory.find(encoder) is not None:
            return (
                f"{source} ! audio/x-raw,rate=48000,channels=1 ! {encoder} ! aacparse "
                "! rtpmp4gpay name=pay1 pt=97"
            )
    return None


def serve(args: argparse.Namespace) -> int:
    import_gi()
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    encoder = find_encoder(Gst)
    if encoder is None:
        print("no H.264 encoder (x264enc or openh264enc) in GStreamer", file=sys.stderr)
        return 1
    name, settings, caps = encoder
    audio = audio_branch(Gst, args.audio, args.clicks)
    if audio is None:
        print(f"no AAC encoder ({', '.join(AAC_ENCODERS)}) in GStreamer", file=sys.stderr)
        return 1
    width, height = args.size
    fps = fractions.Fraction(args.fps).limit_denominator(1001)
    launch = (
        "( appsrc name=src is-live=true format=time max-buffers=2 leaky-type=downstream "
        f"caps=video/x-raw,format=I420,width={width},height={height},"
        f"framerate={fps.numerator}/{fps.denominator} "
        f"! queue max-size-buffers=2 leaky=downstream ! {name} {settings.format(key=args.key_interval)} "
        f"! {caps} ! h264parse config-interval=-1 "
        f"! rtph264pay name=pay0 pt=96 config-interval=-1 {audio} )"
    )
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    if audio:  # audiotestsrc answers that it can seek: PLAY would seek, and appsrc cannot
        factory.set_publish_clock_mode(GstRtspServer.RTSPPublishClockMode.CLOCK_AND_OFFSET)
    pushers: list[Pusher | ClickPusher] = []

    def configure(factory: Any, media: Any) -> None:
        appsrc = media.get_element().get_by_name("src")
        pusher = Pusher(Gst, appsrc, (width, height), args.fps)
        pushers.append(pusher)
        media.connect("unprepared", lambda *_: pusher.stop())
        clicking = media.get_element().get_by_name("asrc")
        if clicking is not None:
            clicks = ClickPusher(Gst, clicking)
            pushers.append(clicks)
            media.connect("unprepared", lambda *_: clicks.stop())

    factory.connect("media-configure", configure)
    if args.user:
        password = os.environ.get("RTSP_CAMERA_PASSWORD", "")
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", "media.factory.access", True)
        permissions.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(PATH, factory)

    def connected(server: Any, client: Any) -> None:
        print(f"{CLIENT_LINE} ({name})", file=sys.stderr, flush=True)

    server.connect("client-connected", connected)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    if args.quit_at_eof:  # in its own session, it would outlive a killed RtspCamera owner
        threading.Thread(target=_quit_at_eof, args=(GLib, loop), daemon=True).start()
    print(f"ready rtsp://127.0.0.1:{args.port}{PATH}", flush=True)
    loop.run()
    for pusher in pushers:
        pusher.stop()
    return 0


def _quit_at_eof(glib: Any, loop: Any) -> None:
    while sys.stdin.buffer.read(4096):
        pass
    glib.idle_add(loop.quit)


def check() -> int:
    """Exit 0 when the server can run here; else say why on stderr."""
    try:
        import_gi()
        from gi.repository import Gst, GstRtspServer  # noqa: F401
    except (ImportError, ValueError) as exc:
        print(
            f"GStreamer's RTSP server is missing ({exc}; Debian: apt-get install "
            "python3-gi gir1.2-gst-rtsp-server-1.0)",
            file=sys.stderr,
        )
        return 1
    Gst.init(None)
    if find_encoder(Gst) is None:
        print(
            "no H.264 encoder in GStreamer (Debian: apt-get install "
            "gstreamer1.0-plugins-bad for openh264enc)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rtsp_camera", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that it can run")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--size", type=cli.size, default=(640, 480))
    parser.add_argument("--fps", type=cli.positive(float), default=30.0)
    parser.add_argument("--key-interval", type=cli.positive(int), default=KEY_INTERVAL)
    parser.add_argument(
        "--user", help="require this user (password: the RTSP_CAMERA_PASSWORD variable)"
    )
    parser.add_argument(
        "--audio", choices=AUDIO_CODECS, help=f"an audio track too: a {AUDIO_HZ:g} Hz sine"
    )
    parser.add_argument(
        "--clicks",
        action="store_true",
        help="the sine clicks at every whole second (for python -m bench.av_sync)",
    )
    parser.add_argument("--quit-at-eof", action="store_true", help="stop when stdin ends")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    with contextlib.suppress(KeyboardInterrupt):
        return serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
