"""Audio-to-video sync of a recording, from the file alone; and the same for stock aiortc.

The fake camera stamps every frame with its capture wall-clock time, and the fake audio
clicks at every whole second of that clock (``sender.audio``). In a recording, each
click's onset is compared with the frame whose stamp is nearest that second: where the
video says the second fell in the file (the frame's time plus the rest of the way to
the second) against where the audio put it. The difference is the audio's offset
(positive: audio late).

    python -m bench.av_sync FILE                  # measure a recording
    python -m bench.av_sync --run 60 [--stock]    # record 60 s from our sender (or
                                                  # stock aiortc's pattern) and measure it

The stock pattern is aiortc's examples': the same fake camera and fake audio as tracks of
a plain ``RTCPeerConnection`` (aiortc encodes per viewer), received by a plain one and
written by ``aiortc.contrib.media.MediaRecorder``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from common import stamp
from receiver.stats import read_stamp

ONSET = 0.4  # of full scale: the click is 0.8, the tone 0.1
QUIET_BEFORE = 0.5  # seconds without a loud sample before an onset


@dataclass(frozen=True)
class Sync:
    """One recording's offsets (ms, audio minus video) and what was found."""

    offsets_ms: list[float]
    clicks: int
    frames: int
    stamped: int

    def summary(self) -> dict[str, object]:
        offsets = self.offsets_ms
        return {
            "clicks": self.clicks,
            "matched": len(offsets),
            "frames": self.frames,
            "stamped_frames": self.stamped,
            "offset_ms_median": round(statistics.median(offsets), 1) if offsets else None,
            "offset_ms_min": round(min(offsets), 1) if offsets else None,
            "offset_ms_max": round(max(offsets), 1) if offsets else None,
            "abs_offset_ms_max": round(max(map(abs, offsets)), 1) if offsets else None,
        }


def click_times(path: Path) -> list[float]:
    """The file times (seconds) of the clicks' onsets in the first audio track."""
    onsets: list[float] = []
    last_loud = -math.inf
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            samples = frame.to_ndarray()
            if samples.dtype.kind == "i":
                samples = samples.astype(np.float64) / 32768.0
            if frame.format.is_planar:
                channel = samples[0]
            else:
                channel = samples.reshape(-1, len(frame.layout.channels))[:, 0]
            start = float(frame.pts * frame.time_base)
            loud = np.flatnonzero(np.abs(channel) >= ONSET)
            for index in loud:
                at = start + index / frame.sample_rate
                if at - last_loud >= QUIET_BEFORE:
                    onsets.append(at)
                last_loud = at
    return onsets


def stamped_frames(path: Path) -> tuple[int, list[tuple[float, int]]]:
    """Frames decoded, and (file time, capture wall-clock microseconds) of each stamped
    frame. The stamp holds the time modulo 2**40 µs; the wrap is taken from now."""
    now = time.time_ns() // 1000
    base = now - now % stamp.MODULUS
    found: list[tuple[float, int]] = []
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames += 1
            if frame.pts is None:
                continue
            picture = frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")
            read = read_stamp(picture)
            if read is None:
                continue
            capture = base + read.capture_us
            if capture > now + 10**6:  # captured before the last wrap
                capture -= stamp.MODULUS
            found.append((float(frame.pts * frame.time_base), capture))
    return frames, found


def measure(path: Path) -> Sync:
    """Each click's offset from where the video puts its second."""
    clicks = click_times(path)
    frames, stamped = stamped_frames(path)
    offsets: list[float] = []
    if stamped:
        times = np.array([t for t, _ in stamped])
        captures = np.array([c for _, c in stamped], dtype=np.int64)
        for click in clicks:
            # Which second this click marks: the wall time the video gives its file time.
            nearest = int(np.argmin(np.abs(times - click)))
            wall_us = captures[nearest] + (click - times[nearest]) * 1e6
            second_us = round(wall_us / 1e6) * 10**6
            # The frame whose stamp marks that second, and where it puts the second.
            frame = int(np.argmin(np.abs(captures - second_us)))
            if abs(captures[frame] - second_us) > 100_000:
                continue  # no picture near that second (a gap in the video)
            expected = times[frame] + (second_us - captures[frame]) / 1e6
            offsets.append((click - expected) * 1000)
    return Sync(offsets, len(clicks), frames, len(stamped))


# -- recording one ----------------------------------------------------------------------


def record_ours(seconds: float, out: Path) -> None:
    """Our sender (fake camera and audio) and receiver, as the README runs them."""
    import subprocess

    from bench.senders import ROOT, SenderProcess, child_env

    sender = SenderProcess(["--source", "testsrc", "--audio", "testsrc"], out.with_suffix(".log"))
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "receiver",
                sender.url,
                "--record",
                str(out),
                "--quiet",
                "--duration",
                str(seconds),
            ],
            check=True,
            env=child_env(),
            cwd=ROOT,
            timeout=seconds + 90,
        )
    finally:
        sender.stop()


async def record_stock(seconds: float, out: Path) -> None:
    """aiortc's own pattern, in one process: the same fake tracks on a plain peer
    connection (one encoder per viewer), a plain receiver, ``MediaRecorder``."""
    from aiortc import MediaStreamTrack, RTCPeerConnection
    from aiortc.contrib.media import MediaRecorder

    from sender import audio, sources

    class Camera(MediaStreamTrack):
        kind = "video"

        def __init__(self) -> None:
            super().__init__()
            self._source = sources.TestPattern(640, 480, 30)

        async def recv(self) -> av.VideoFrame:
            return await self._source.read()

    class Microphone(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._source = audio.ToneSource()

        async def recv(self) -> av.AudioFrame:
            return await self._source.read()

    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    sender.addTrack(Camera())
    sender.addTrack(Microphone())
    recorder = MediaRecorder(str(out))

    @receiver.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        recorder.addTrack(track)

    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    await recorder.start()
    await asyncio.sleep(seconds)  # recording for that long is the point
    await recorder.stop()
    await receiver.close()
    await sender.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.av_sync", description=__doc__)
    parser.add_argument("file", nargs="?", help="a recording to measure")
    parser.add_argument("--run", type=float, metavar="S", help="record S seconds, then measure")
    parser.add_argument("--stock", action="store_true", help="with stock aiortc's pattern")
    args = parser.parse_args(argv)
    if args.file:
        path = Path(args.file)
    elif args.run:
        path = Path(tempfile.mkdtemp(prefix="av-sync-")) / "clip.mkv"
        if args.stock:
            asyncio.run(record_stock(args.run, path))
        else:
            record_ours(args.run, path)
    else:
        parser.error("give a FILE or --run S")
    result = measure(path).summary()
    result["implementation"] = "stock aiortc (MediaRecorder)" if args.stock else "webrtc-webcam"
    result["machine"] = f"{platform.machine()}, {platform.processor() or platform.system()}"
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
