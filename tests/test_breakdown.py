"""Where the milliseconds go: the sender's stage histograms on /metrics, the receiver's
breakdown in its statistics and --stats-json, measured with real peers on 127.0.0.1."""

import asyncio
import json
import statistics
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiortc.rtp import is_rtcp
from prometheus_client.parser import text_string_to_metric_families

from common import stamp
from common.aiortc_ext.frame_timing import FrameTimes
from receiver import Receiver
from receiver.stats import STAGES, FrameStats

from .helpers import run_receiver

FRAMES = 60


async def scrape(url: str) -> dict[str, dict[str, list]]:
    """/metrics over HTTP: family name -> sample name -> samples."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    families: dict[str, dict[str, list]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            families.setdefault(family.name, {}).setdefault(sample.name, []).append(sample)
    return families


def histogram(families: dict, name: str) -> tuple[float, float, list[tuple[float, float]]]:
    """count, sum and (bound, cumulative count) of the codec=vp8, tier=full series."""
    samples = families[name]

    def ours(sample) -> bool:
        return sample.labels.get("codec") == "vp8" and sample.labels.get("tier") == "full"

    [count] = [s.value for s in samples[name + "_count"] if ours(s)]
    [total] = [s.value for s in samples[name + "_sum"] if ours(s)]
    buckets = [(float(s.labels["le"]), s.value) for s in samples[name + "_bucket"] if ours(s)]
    return count, total, buckets


async def test_stages_on_both_sides_after_a_real_viewer(sender) -> None:
    async with Receiver(sender.url, connect_timeout=30) as rx:
        async for _ in rx.frames():
            if rx.stats.frames >= FRAMES:
                break
        stages = {name: list(values) for name, values in rx.stats.breakdown.stages_ms.items()}
        families = await scrape(sender.url)
    # The sender: one observation per frame (and per viewer for the send stage).
    encoded, encoded_sum, buckets = histogram(families, "webcam_capture_to_encoded_seconds")
    sent, sent_sum, _ = histogram(families, "webcam_encoded_to_sent_seconds")
    assert encoded >= FRAMES and sent >= FRAMES - 1
    assert encoded_sum > 0 and sent_sum > 0
    counts = [count for _, count in buckets]
    assert counts == sorted(counts) and buckets[-1] == (float("inf"), encoded)
    assert encoded_sum / encoded < 0.2, "a frame's encode stage should take milliseconds"
    # The encoder's own time is part of that stage, for every frame.
    encoding, encoding_sum, _ = histogram(families, "webcam_encoding_seconds")
    assert encoding == encoded and 0 < encoding_sum <= encoded_sum
    # The receiver: every decoded frame timed and stamped, every stage >= 0.
    for name in STAGES:
        assert len(stages[name]) >= FRAMES - 1, name
        assert min(stages[name]) >= 0, name
    # Per frame, capture to decoded is the sum of the three stages, so it bounds each...
    total = stages["capture_to_decoded"]
    for name in ("capture_to_receive", "receive_to_complete", "complete_to_decoded"):
        assert all(s <= t + 1e-6 for s, t in zip(stages[name], total, strict=True)), name
    # ...and the decoder's own time is part of complete to decoded.
    pairs = zip(stages["decoding"], stages["complete_to_decoded"], strict=True)
    assert all(0 < d <= c + 1e-6 for d, c in pairs)
    # ...and the first packet cannot arrive before the frame was encoded (one clock here).
    assert statistics.mean(stages["capture_to_receive"]) >= encoded_sum / encoded * 1000 - 1
    summary = rx.stats.summary()
    breakdown = summary["breakdown_ms"]
    assert breakdown is not None and set(breakdown) == set(STAGES)
    for name in STAGES:
        assert 0 <= breakdown[name]["p50"] <= breakdown[name]["p95"]
        assert breakdown[name]["p50"] <= breakdown["capture_to_decoded"]["p50"] + 1e-6


async def test_the_send_stage_ends_when_the_frame_is_out(sender) -> None:
    """The send stage ends when aiortc asks the viewer's track for the next packet: by
    then it has sent every RTP packet of the last one (aiortc 1.16's ``_run_rtp``), the
    last with the marker bit. Fails if an aiortc upgrade asks for the next one sooner."""
    async with Receiver(sender.url, connect_timeout=30) as rx:
        [session] = sender.sessions.live()
        track = session.track
        transport = session.pc.getSenders()[0].transport
        markers: list[int] = []  # the marker bit of each RTP packet sent
        send_rtp, recv = transport._send_rtp, track.recv

        async def record(data: bytes) -> None:
            if not is_rtcp(data):
                markers.append(data[1] >> 7)
            await send_rtp(data)

        taken: list[int] = []  # RTP packets out when aiortc asks for the next packet

        async def checked_recv() -> av.Packet:
            taken.append(len(markers))
            if len(taken) > 1:  # one packet was taken before: all of it is out
                assert markers and markers[-1] == 1, "asked for more before the last was out"
            return await recv()

        transport._send_rtp = record
        track.recv = checked_recv
        async for _ in rx.frames():
            if len(taken) >= 30:
                break
        assert rx.stats.frames > 0
    assert taken == sorted(taken) and len(set(taken)) > 20


def test_stats_json_and_status_line_have_the_breakdown(sender_process, tmp_path: Path) -> None:
    sender = sender_process("--source", "testsrc", "--size", "640x480")
    stats_file = tmp_path / "stats.json"
    result = run_receiver(
        sender.url, "--duration", "3", "--stats-breakdown", "--stats-json", str(stats_file)
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads(stats_file.read_text())
    breakdown = stats["breakdown_ms"]
    assert set(breakdown) == set(STAGES)
    for name in STAGES:
        assert 0 <= breakdown[name]["p50"] <= breakdown[name]["p95"] < 2000, (name, breakdown)
    total = breakdown["capture_to_decoded"]
    assert total["p50"] >= max(breakdown[name]["p50"] for name in STAGES)
    status = [line for line in result.stderr.splitlines() if line.startswith("frames ")]
    assert any("capture>receive" in line for line in status), result.stderr


def test_the_default_status_line_stays_short() -> None:
    frame = stamped_frame(1, age_us=0)
    now = time.monotonic()
    stats = FrameStats()
    stats.update(frame)
    stats.decoded(frame, FrameTimes(first_packet=now - 0.004, complete=now - 0.003, decoded=now))
    assert "capture>receive" not in stats.status_line()
    line = stats.status_line(breakdown=True)
    assert "receive>complete 1/1" in line and "complete>decoded 3/3" in line, line
    assert "decoding" not in line  # aiortc's decoder thread decoded it: not timed
    times = FrameTimes(now - 0.004, now - 0.003, decoded=now, decoding=0.002)
    stats.decoded(frame, times)
    assert "decoding 2/2" in stats.status_line(breakdown=True)


def stamped_frame(sequence: int, age_us: int) -> av.VideoFrame:
    image = np.full((480 * 3 // 2, 640), 128, dtype=np.uint8)  # yuv420p: luma, then chroma
    stamp.draw(image[:480], stamp.Stamp(capture_us=stamp.now_us() - age_us, sequence=sequence))
    return av.VideoFrame.from_ndarray(image, format="yuv420p")


async def test_the_reader_gets_the_frame_before_its_stamp_is_read() -> None:
    """Reading the stamp (0.1-0.2 ms) waits for the reader's turn; the latency is still
    up to when the reader got the frame, and the summary counts every frame."""
    stats = FrameStats()
    stats.update(stamped_frame(1, age_us=5000))
    assert stats.frames == 1 and stats.stamped == 0  # counted now, not read yet
    await asyncio.sleep(0.05)  # the reader's turn, and more
    assert stats.stamped == 1 and 5 <= stats.latencies_ms[0] < 30, stats.latencies_ms
    stats.update(stamped_frame(2, age_us=5000))
    stats.update(stamped_frame(4, age_us=5000))  # taken without a pause: 2 is read then
    assert stats.stamped == 2 and stats.last_sequence == 2
    summary = stats.summary()  # settles the last one
    assert summary["stamped_frames"] == 3 and summary["dropped"] == 1
