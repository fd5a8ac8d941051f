"""A real sender and a real receiver in one process, over 127.0.0.1."""

import numpy as np
import pytest

from common import stamp
from receiver import Receiver, ReceiverError
from receiver.stats import read_stamp


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
    async with Receiver(sender.url, connect_timeout=20) as rx:
        async for frame in rx.frames():
            assert (frame.width, frame.height) == (width, height)
            found = read_stamp(frame)
            assert found is not None, (
                f"frame {len(sequences)}: the stamp did not survive encoding: {stamp_cells(frame)}"
            )
            sequences.append(found.sequence)
            image = frame.to_ndarray(format="bgr24")
            assert image.shape == (height, width, 3)
            if len(sequences) == 45:
                break
        summary = rx.stats.summary()
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    assert sequences[-1] - sequences[0] < 90, "frames should be nearly consecutive"
    assert summary["frames"] == 45
    latency = summary["latency_ms"]
    assert latency is not None and 0 <= latency["p50"] <= latency["p95"] < 2000
    # the picture moves, so the encoder does real work
    assert not np.array_equal(image[100:], np.zeros_like(image[100:]))


async def test_h264_answer_is_constrained_baseline(sender_factory) -> None:
    sender = await sender_factory(codec="h264")
    async with Receiver(sender.url, connect_timeout=20) as rx:
        answer = rx._pc.remoteDescription.sdp
        async for _ in rx.frames():
            break
    rtpmap = [line for line in answer.splitlines() if line.startswith("a=rtpmap:")]
    assert "H264/90000" in rtpmap[0], answer
    assert "profile-level-id=42e01f" in answer


async def test_receiver_error_when_nobody_listens(unused_tcp_port) -> None:
    with pytest.raises(ReceiverError, match="cannot reach"):
        async with Receiver(f"http://127.0.0.1:{unused_tcp_port}", connect_timeout=10):
            pass
