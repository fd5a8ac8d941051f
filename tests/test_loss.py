"""Loss without freezes (issue 10, item 1), measured as a user would: the sender and the
receiver CLIs in two network namespaces (tests/netns.py), the fake camera at 640x480 and 30
fps, nftables dropping UDP packets on their way into the receiver. The figures come from
the receiver's ``--stats-json``: fps, capture-to-decoded latency, the longest gap between
two decoded frames.

What makes them hold (common/aiortc_ext/nack_retry.py and jitterbuffer.py): a packet still
missing is NACKed again at the round-trip time; frames that wait behind a repaired gap all
go to the decoder at once; a hole that cannot be repaired is given up and skipped to a
keyframe, asked for at once. Needs root, ``ip`` and ``nft``: skipped without them, failed
in CI."""

from __future__ import annotations

from pathlib import Path

from .lossy import LOSSY_SECONDS, Run, run_lossy

# aiortc's offer (our receiver's) numbers VP8 97, H.264 99 and 101; their RTX 98, 100, 102
RTX_PAYLOAD_TYPES = "{ 98, 100, 102 }"


def check_picture(run: Run, seconds: int) -> None:
    summary, detail = run.summary, run.detail
    assert "Traceback" not in run.log, detail
    assert summary["reconnects"] == 0, detail
    assert summary["seconds"] >= seconds - 5, detail
    # 640x480, or 320x240 when the sender's estimate moved us to its reduced tier
    assert summary["width"] >= 320, detail
    assert summary["stamped_frames"] >= 0.9 * summary["frames"], detail


def test_random_loss_for_a_minute_without_a_freeze(lossy_minute: Run) -> None:
    """5% random UDP loss for 60 s: fps >= 29, p95 capture-to-decoded <= 80 ms, no gap
    between decoded frames over 250 ms. Measured (sender at 1 Mbit/s, two runs): p95 40
    and 40 ms, longest gap 165 and 123 ms. With aiortc's single NACK (``--nack-retries 0``,
    giving up off) this fails: 5 and 3 freezes, longest gap 1201 and 570 ms. The minute
    (``lossy_minute``) also carries the fake audio and is recorded: ``test_av_sync`` reads
    its lip sync from the same run."""
    run = lossy_minute
    check_picture(run, LOSSY_SECONDS)
    summary, detail = run.summary, run.detail
    assert run.dropped[0] > 0 and 0.03 <= summary["loss"] <= 0.08, detail
    assert summary["fps"] >= 29, detail
    assert summary["latency_ms"]["p95"] <= 80, detail
    assert summary["max_gap_ms"] <= 250 and summary["freezes"] == 0, detail


# Out of every 1200 UDP packets: a run of 8, one gets through (it shows the gap, so the
# NACK goes out) and the next 2 are lost too (on a LAN: the first retransmissions); a run
# of 5, one through, 3 more; a run of 10. 28 packets, 2.3%. The first 392 pass, so the
# connection sets up untouched.
BURSTS = "numgen inc mod 1200 { 392-399, 401-402, 795-799, 801-803, 1190-1199 }"


def test_burst_loss_without_a_long_freeze(tmp_path: Path) -> None:
    """Loss in runs of 5-10 packets (``BURSTS``) for 30 s: no gap over 500 ms, and latency
    as low as under random loss. Measured (two runs): longest gap 316 and 200 ms (a run of
    10 packets is a third of a second of video at 300 kbit/s), p95 9 and 10 ms. With
    aiortc's single NACK this fails: the lost retransmissions are never asked for again,
    the picture stops until the 3 s stall timeout reconnects (2 reconnections, 3.3 s gaps,
    in both runs). 30 s hold at least one whole cycle of bursts (measured: at 80 packets a
    second, 1200 packets take 15 s)."""
    seconds = 30
    run = run_lossy(tmp_path, seconds, [BURSTS])
    check_picture(run, seconds)
    summary, detail = run.summary, run.detail
    # at least one whole cycle: every kind of burst (at 70-80 packets a second, 15-17 s)
    assert run.dropped[0] >= 28, detail
    assert summary["packets_lost"] > 0 and 0.01 <= summary["loss"] <= 0.05, detail
    assert summary["max_gap_ms"] <= 500, detail
    assert summary["fps"] >= 29, detail
    assert summary["latency_ms"]["p95"] <= 80, detail


def test_a_hole_that_cannot_be_repaired_skips_to_a_keyframe(tmp_path: Path) -> None:
    """Every retransmission is dropped and one packet in 250 lost: 100 ms after such a
    hole appeared a keyframe is asked for, and when it has come the hole is given up and
    the frames before the keyframe skipped, so the picture goes on within 300 ms. Measured
    (two runs): 10 holes each, longest gap 215 and 214 ms, fps 28.5 and 28.7. Asking for
    the keyframe only when giving up (300 ms) fails this: longest gap 405 and 403 ms, fps
    26.7 and 27.0. Without giving up it fails worse: the hole holds every later frame until
    the 3 s stall timeout reconnects (5 reconnections, 3.3 s gaps, fps 14.2 and 14.3).

    At a fixed bitrate: with the bitrate following REMB, each step up is a new encoder that
    starts with a keyframe, and when the one packet in 250 fell in that keyframe, the
    keyframe asked for 100 ms later waited out the sender's 0.3 s between keyframes
    (``KEYFRAME_INTERVAL_MIN``): 340-370 ms gaps in about 1 run in 4. That is the sender's
    rule, not the repair this test is about."""
    seconds = 30
    rules = [f"@th,64,2 2 @th,73,7 {RTX_PAYLOAD_TYPES}", "numgen inc mod 250 125"]
    fixed = ("--source", "testsrc", "--bitrate", "800000")
    run = run_lossy(tmp_path, seconds, rules, source=fixed)
    check_picture(run, seconds)
    summary, detail = run.summary, run.detail
    rtx, holes = run.dropped
    assert rtx > 0, "no retransmission was dropped: has aiortc renumbered RTX?\n" + detail
    assert holes >= 5, detail
    assert len(run.gave_up()) >= 3, detail
    assert any("a keyframe came after it" in line for line in run.gave_up()), detail
    assert summary["dropped"] > 0, detail  # frames skipped to the keyframe
    assert summary["max_gap_ms"] <= 300, detail
    assert summary["fps"] >= 27, detail
