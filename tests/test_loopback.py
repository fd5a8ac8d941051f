"""A real sender and a real receiver in one process, over 127.0.0.1."""

import itertools

import numpy as np
import pytest

from common import stamp
from receiver import Receiver, ReceiverError
from receiver.stats import read_stamp

TIER_UP_SECONDS = 45.0  # a lone 720p viewer on loopback moved up after about 20 s
PIXEL_CHANGE = 4  # luma levels: more than coding noise between two encodings of one picture
MOVING_SHARE = 0.2  # the fake camera's bands scroll 4 px a frame: most of the picture changes


def stamp_cells(frame) -> list[int]:
    """The luma at the stamp's cell centres, to explain a failed read."""
    s = stamp.cell_size(frame.width)
    luma = frame.to_ndarray(format="gray")
    return luma[s // 2 : 2 * s : s, s // 2 : 40 * s : s].tolist()


@pytest.mark.parametrize(
    ("codec", "size"), [("vp8", (640, 480)), ("h264", (640, 480)), ("vp8", (1280, 720))]
)
async def test_frames_arrive_stamped_at_the_requested_size(sender_factory, codec, size) -> None:
    width, height = size
    sender = await sender_factory(codec=codec, width=width, height=height)
    sequences = []
    changed = []  # per pair of consecutive frames: the share of the picture that changed
    previous: np.ndarray | None = None
    below_stamp = 2 * stamp.cell_size(width)
    async with Receiver(sender.url, connect_timeout=20) as rx:
        async for frame in rx.frames():
            if (frame.width, frame.height) != (width, height):
                # Above 640x480 a new viewer starts on the reduced tier (sender/tiers.py)
                # and moves up once its feedback shows the link takes the full picture.
                assert frame.width * 2 == width and not sequences, "full size, then reduced"
                assert rx.stats.seconds < TIER_UP_SECONDS, "never moved up to the full size"
                continue
            found = read_stamp(frame)
            assert found is not None, (
                f"frame {len(sequences)}: the stamp did not survive encoding: {stamp_cells(frame)}"
            )
            sequences.append(found.sequence)
            image = frame.to_ndarray(format="bgr24")
            assert image.shape == (height, width, 3)
            luma = frame.to_ndarray(format="gray")[below_stamp:].astype(np.int16)
            if previous is not None:
                changed.append(float(np.mean(np.abs(luma - previous) > PIXEL_CHANGE)))
            previous = luma
            if len(sequences) == 45:
                break
        summary = rx.stats.summary()
    steps = [b - a for a, b in itertools.pairwise(sequences)]
    assert all(step > 0 for step in steps), f"stamp sequence numbers must rise: {sequences}"
    assert sequences[-1] - sequences[0] < 90, "frames should be nearly consecutive"
    # The picture moves (the pattern scrolls every frame): each frame differs from the one
    # before it, not only in the stamp. A repeated or frozen frame fails here.
    assert min(changed) > MOVING_SHARE, (
        f"consecutive frames barely differ: {[round(c, 3) for c in changed]}"
    )
    assert summary["frames"] >= 45  # the reduced-tier frames before count too
    latency = summary["latency_ms"]
    assert latency is not None and 0 <= latency["p50"] <= latency["p95"] < 2000


async def test_h264_answer_is_constrained_baseline(sender_factory) -> None:
    sender = await sender_factory(codec="h264")
    async with Receiver(sender.url, connect_timeout=20) as rx:
        answer = rx.connection.pc.remoteDescription.sdp
        async for _ in rx.frames():
            break
    rtpmap = [line for line in answer.splitlines() if line.startswith("a=rtpmap:")]
    assert "H264/90000" in rtpmap[0], answer
    assert "profile-level-id=42e01f" in answer


async def test_receiver_error_when_nobody_listens(unused_tcp_port) -> None:
    with pytest.raises(ReceiverError, match="cannot reach"):
        async with Receiver(f"http://127.0.0.1:{unused_tcp_port}", connect_timeout=10):
            pass
