"""A lone quick encode runs on the sender's event loop (``common.loop_budget``): real
senders and viewers on 127.0.0.1, and the budget's own rules."""

import asyncio

import av
import pytest

from common.loop_budget import MAX_SHARE, WINDOW_SECONDS, LoopBudget
from receiver import Receiver
from sender.encoders import Encoder

from .helpers import wait_until, watch_stamps
from .test_breakdown import scrape
from .test_fanout import first_frame_width

FRAMES = 60


def test_an_encode_of_unknown_or_long_duration_stays_off_the_loop() -> None:
    budget = LoopBudget(max_seconds=0.010)
    assert not budget.allows(None, now=0.0), "a tier's first encode: its time is unknown"
    assert not budget.allows(0.011, now=0.0)
    assert budget.allows(0.010, now=0.0)
    assert not LoopBudget(max_seconds=0).allows(0.001, now=0.0), "0 turns it off"


def test_the_loop_spends_at_most_its_share_of_each_second() -> None:
    budget = LoopBudget(max_seconds=0.010)
    for frame in range(300):  # 8 ms encodes at 30 fps: 240 ms a second, within the share
        now = frame / 30
        assert budget.allows(0.008, now), f"frame {frame}"
        budget.spent(0.008, now)
    budget = LoopBudget(max_seconds=0.010)
    fit = int(MAX_SHARE * WINDOW_SECONDS / 0.008)  # 37
    for frame in range(fit):  # at 120 fps: four encodes in a frame's time
        budget.spent(0.008, frame / 120)
    assert not budget.allows(0.008, fit / 120), "one more would be over the share"
    assert budget.allows(0.008, fit / 120 + WINDOW_SECONDS), "a second later it has expired"


async def metric(url: str, name: str) -> float:
    families = await scrape(url)
    [sample] = families[name][name + "_total"]
    return sample.value


@pytest.mark.parametrize("loop_ms", ["10", "0"])
async def test_a_lone_viewers_frames_are_encoded_on_the_loop(sender_process, loop_ms) -> None:
    """With the default budget (10 ms), a lone 640x480 tier encodes on the loop (its
    first frame, of unknown cost, in a thread), most frames in the capture task as they
    are captured (``SharedEncoder._take``); ``--loop-encode-ms 0`` keeps every encode in
    a thread. Either way the viewer decodes the right frames, in order."""
    sender = sender_process("--source", "testsrc", "--size", "640x480", "--loop-encode-ms", loop_ms)
    sequences = await watch_stamps(sender.url, FRAMES)
    encoded = await metric(sender.url, "webcam_frames_encoded")  # counters outlive viewers
    on_loop = await metric(sender.url, "webcam_frames_encoded_on_loop")
    at_capture = await metric(sender.url, "webcam_frames_encoded_at_capture")
    assert sequences == sorted(set(sequences)), "frames out of order or repeated"
    assert encoded >= FRAMES
    if loop_ms == "0":
        assert on_loop == at_capture == 0
    else:
        # A frame that took over 10 ms (a busy machine) sends the next to a thread.
        assert on_loop >= encoded / 2, f"{on_loop} of {encoded} frames encoded on the loop"
        # ...and that one's successor to the encoder's task; the rest are taken at once.
        assert at_capture >= on_loop / 2, f"{at_capture} of {on_loop} encoded at capture"


async def test_an_encoder_failing_at_capture_leaves_the_camera_to_the_others(
    sender, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """VP8's encoder fails while encoding in the capture task (``SharedEncoder._take``):
    the failure is logged, the H.264 viewer of the same camera keeps getting frames
    (the failure must not end the capture), and a later VP8 viewer gets video again."""
    encode = Encoder.encode
    broken = asyncio.Event()

    def failing(self: Encoder, frame: av.VideoFrame | None) -> list[av.Packet]:
        if broken.is_set() and self.params.codec == "vp8":
            raise RuntimeError("the VP8 encoder broke")
        return encode(self, frame)

    monkeypatch.setattr(Encoder, "encode", failing)
    async with (
        Receiver(sender.url, codecs=["vp8"], connect_timeout=30, stall_timeout=30) as vp8,
        Receiver(sender.url, codecs=["h264"], connect_timeout=30) as h264,
    ):
        vp8_frames, h264_frames = aiter(vp8.frames()), aiter(h264.frames())
        await asyncio.wait_for(anext(vp8_frames), 30)
        await asyncio.wait_for(anext(h264_frames), 30)

        async def encoded_at_capture() -> bool:
            return await metric(sender.url, "webcam_frames_encoded_at_capture") > 0

        await wait_until(encoded_at_capture, what="an encode at capture")
        broken.set()
        await wait_until(
            lambda: "the vp8 encoder failed" in caplog.text, within=30, what="the failure"
        )
        for _ in range(30):  # a second of frames after it
            await asyncio.wait_for(anext(h264_frames), 10)
    assert "_take" in caplog.text, "the failure was not in the capture task"
    broken.clear()
    assert await first_frame_width(sender.url) == 640
