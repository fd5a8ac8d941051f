"""Quick frames decoded on the receiver's event loop (``common.aiortc_ext.loop_decode``):
real senders and receivers on 127.0.0.1, and the queue's own rules with real VP8."""

import asyncio
import random
import threading

import av
import pytest
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from common.aiortc_ext import AIORTC_VERSION
from common.aiortc_ext.loop_decode import LoopDecoder
from common.loop_budget import LoopBudget
from receiver import Receiver
from receiver.stats import read_stamp
from sender.sources import TestPattern

FRAMES = 60
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)


def test_written_against_this_aiortc() -> None:
    import aiortc

    assert aiortc.__version__ == AIORTC_VERSION, "re-check loop_decode against this aiortc"


def vp8_frames(count: int) -> list[JitterFrame]:
    """``count`` frames of the flat fake camera as VP8, as aiortc's jitter buffer hands
    them to the decoder (RTP timestamp n * 3000)."""
    source = TestPattern(320, 240, 30)
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.options = {"deadline": "realtime", "lag-in-frames": "0"}
    frames = []
    for n in range(count):
        picture = source._draw(n)
        picture.pts = n
        for packet in encoder.encode(picture):
            frames.append(JitterFrame(data=bytes(packet), timestamp=len(frames) * 3000))
    return frames


class Coin(LoopBudget):
    """Allows the loop at random (seeded): frames go both ways, in any pattern."""

    def __init__(self) -> None:
        super().__init__(1.0)
        self._random = random.Random(7)

    def allows(self, expected: float | None, now: float) -> bool:
        return self._random.random() < 0.5


async def test_frames_keep_their_order_between_the_loop_and_the_worker() -> None:
    output: asyncio.Queue = asyncio.Queue()
    error = threading.Event()
    decoder = LoopDecoder(output, error, Coin())
    frames = vp8_frames(FRAMES)
    shuffle = random.Random(3)
    for frame in frames:
        decoder.put((VP8, frame))
        await asyncio.sleep(shuffle.choice([0, 0, 0.003]))  # the worker catches up or not
    pictures = [await asyncio.wait_for(output.get(), 10) for _ in frames]
    assert [p.pts for p in pictures] == [f.timestamp for f in frames]
    assert decoder.on_loop > 5 and decoder.in_thread > 5, (decoder.on_loop, decoder.in_thread)
    assert decoder.on_loop + decoder.in_thread == FRAMES
    assert not error.is_set()
    decoder.put(None)  # aiortc stopping: the None reaches its decoder thread
    assert decoder.get(timeout=1) is None


async def test_a_frame_that_fails_to_decode_asks_for_a_keyframe() -> None:
    output: asyncio.Queue = asyncio.Queue()
    error = threading.Event()
    decoder = LoopDecoder(output, error, LoopBudget(1.0))
    first, *_ = vp8_frames(1)
    decoder.put((VP8, first))  # unknown cost: in the worker
    assert (await asyncio.wait_for(output.get(), 10)).pts == 0
    # a keyframe (its first bit 0) without its start code
    decoder.put((VP8, JitterFrame(data=bytes(40), timestamp=3000)))  # on the loop
    assert error.is_set(), "aiortc sends a PLI when this event is set"
    assert output.empty()
    decoder.put((VP8, JitterFrame(data=first.data, timestamp=6000)))  # the decoder goes on
    assert (await asyncio.wait_for(output.get(), 10)).pts == 6000
    assert decoder.on_loop == 2 and decoder.in_thread == 1
    decoder.put(None)


@pytest.mark.parametrize("loop_decode", [0.005, 0.00001, 0], ids=["loop", "worker", "aiortc"])
async def test_a_receiver_decodes_the_right_frames_on_the_loop(
    sender_factory, loop_decode: float
) -> None:
    """By default a 640x480 stream is decoded on the loop; with a budget no decode fits,
    in our worker; with 0, aiortc's own decoder thread. The frames are right each way."""
    sender = await sender_factory()
    sequences = []
    async with Receiver(sender.url, connect_timeout=30, loop_decode=loop_decode) as rx:
        async for frame in rx.frames():
            found = read_stamp(frame)
            assert found is not None, "a frame decoded without its stamp"
            assert (frame.width, frame.height) == (640, 480)
            sequences.append(found.sequence)
            if len(sequences) >= FRAMES:
                break
        assert rx.connection is not None
        decoder = rx.connection.loop_decoder
        # Our decoder times each frame for the breakdown; aiortc's thread does not.
        decodes = rx.stats.breakdown.stages_ms["decoding"]
        decoded_times = rx.stats.breakdown.stages_ms["complete_to_decoded"]
        if loop_decode == 0:
            assert decoder is None
            assert not decodes and rx.stats.summary()["breakdown_ms"]["decoding"] is None
        else:
            assert len(decodes) == len(decoded_times) >= FRAMES - 1
            assert all(0 < d <= t for d, t in zip(decodes, decoded_times, strict=True))
            assert decoder is not None
            decoded = decoder.on_loop + decoder.in_thread
            assert decoded >= FRAMES
            # every picture straight to the receiver, not through the track's queue
            assert decoder.handed == decoded
            if loop_decode == 0.005:
                assert decoder.on_loop >= decoded / 2, (decoder.on_loop, decoded)
            else:
                assert decoder.on_loop == 0
    assert sequences == sorted(set(sequences)), "frames out of order or repeated"
    assert sequences[-1] - sequences[0] < 2 * FRAMES, "frames should be mostly consecutive"


async def test_a_decoder_that_raises_costs_only_its_frame() -> None:
    """On the loop the decode runs inside aiortc's DTLS transport task: anything it
    raises would end the connection, so it must not escape."""

    class Broken:
        def decode(self, frame: JitterFrame) -> list:
            raise RuntimeError("a bug")

    output: asyncio.Queue = asyncio.Queue()
    error = threading.Event()
    decoder = LoopDecoder(output, error, LoopBudget(1.0))
    decoder._decoder, decoder._codec_name = Broken(), VP8.name  # type: ignore[assignment]
    decoder._last_seconds = 0.001  # known and quick: on the loop
    decoder.put((VP8, JitterFrame(data=b"x", timestamp=0)))
    assert error.is_set() and output.empty() and decoder.on_loop == 1
    decoder.put(None)


async def test_a_reader_gets_each_picture_at_once_and_cannot_break_the_decoder() -> None:
    """With a reader, pictures skip the track's queue; one that raises costs nothing."""
    output: asyncio.Queue = asyncio.Queue()
    decoder = LoopDecoder(output, threading.Event(), LoopBudget(1.0))
    got: list[int] = []

    def reader(picture: av.VideoFrame) -> None:
        got.append(picture.pts)
        if len(got) == 2:
            raise RuntimeError("a bug in the reader")

    decoder.reader = reader
    decoder._last_seconds = 0.001  # known and quick: on the loop, so at once
    frames = vp8_frames(3)
    for frame in frames:
        decoder.put((VP8, frame))
    assert got == [f.timestamp for f in frames] and output.empty()
    assert decoder.on_loop == decoder.handed == 3
    decoder.put(None)
