"""The two command-line tools through a real Janus: publish with --publish, subscribe
with a janus+http:// URL, and the errors a user meets."""

import itertools
import json
import urllib.request
from pathlib import Path

import aiohttp
import cv2
import pytest
from aiortc import RTCPeerConnection

from common import stamp

from .helpers import SenderProcess, assert_one_line_error, run_receiver, wait_until


def publication(sender: SenderProcess) -> dict:
    return sender.health()["publications"][0]


async def local_offer() -> str:
    """A real aiortc viewer's offer (recvonly video), as a WHEP client would post it."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def viewer_endpoints(url: str, offer: str) -> dict[str, int]:
    """What the sender answers on each of its viewer endpoints (HTTP status)."""
    statuses = {}
    async with aiohttp.ClientSession() as http:
        for method, path, body, content_type in (
            ("GET", "/", None, None),
            ("POST", "/whep", offer, "application/sdp"),
            ("POST", "/offer", json.dumps({"sdp": offer, "type": "offer"}), "application/json"),
            ("GET", "/healthz", None, None),
        ):
            headers = {"Content-Type": content_type} if content_type else {}
            async with http.request(method, url + path, data=body, headers=headers) as response:
                statuses[f"{method} {path}"] = response.status
    return statuses


def captured(sender: SenderProcess) -> int:
    """webcam_frames_captured_total from the sender's /metrics."""
    with urllib.request.urlopen(sender.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("webcam_frames_captured_total ")
    ]
    assert values, text
    return int(values[0])


def snapshot_stamps(directory: Path) -> list[tuple[stamp.Stamp, float]]:
    """The stamp in each snapshot, with the time the receiver wrote the file."""
    found = []
    for path in sorted(directory.glob("frame-*.jpg")):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert gray is not None, path
        found.append((stamp.read(gray), path.stat().st_mtime))
    return found


async def test_publish_and_subscribe_with_the_clis(janus, sender_process, tmp_path) -> None:
    sender = sender_process("--source", "testsrc", "--publish", janus.url(), "--no-local")
    await wait_until(lambda: publication(sender)["state"] == "publishing", within=30)
    # --no-local: the sender serves no viewers of its own, only its health and metrics.
    statuses = await viewer_endpoints(sender.url, await local_offer())
    assert statuses == {"GET /": 404, "POST /whep": 404, "POST /offer": 404, "GET /healthz": 200}
    stats, snapshots = tmp_path / "stats.json", tmp_path / "snapshots"
    result = run_receiver(
        janus.url(), "--frames", "60", "--stats-json", str(stats),
        "--snapshots", str(snapshots), "--snapshot-every", "10",
        "--quiet", "--connect-timeout", "20",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(stats.read_text())
    assert (summary["width"], summary["height"]) == (640, 480)
    assert summary["stamped_frames"] >= 55  # the first frames may precede the keyframe
    assert 0 < summary["latency_ms"]["p50"] < 2000
    # The frames are this sender's, live, in order: the only way they could reach the
    # receiver is through Janus. Each snapshot carries a stamp captured shortly before the
    # receiver wrote it, sequence numbers rise about ten frames apart, and none is newer
    # than what the sender has captured.
    found = snapshot_stamps(snapshots)
    assert len(found) == 6, found
    sequences = [s.sequence for s, _ in found]
    assert all(5 <= b - a <= 30 for a, b in itertools.pairwise(sequences)), sequences
    assert sequences[-1] < captured(sender)
    for found_stamp, written in found:
        age = stamp.age_us(found_stamp, now=round(written * 1e6) % stamp.MODULUS)
        assert age < 5_000_000, f"{found_stamp} written {age / 1e6:.1f} s after its capture"
    assert publication(sender)["bitrate"] > 0, sender.stderr()[-3000:]
    assert "Traceback" not in sender.stderr()


def test_receiver_errors_are_one_line(janus) -> None:
    for url, reason in [
        (janus.url(room=999999), "does not exist"),
        (janus.url().replace("room=", "room=x"), "room"),
        (janus.url(), "nobody is publishing"),
    ]:
        result = run_receiver(url, "--frames", "1", "--max-retries", "0")
        assert result.returncode != 0, url
        assert_one_line_error(result.stderr)
        assert reason in result.stderr, result.stderr


async def test_sender_retries_and_logs_a_refused_publication(janus, sender_process) -> None:
    sender = sender_process("--source", "testsrc", "--publish", janus.url(room=999999))
    await wait_until(lambda: publication(sender)["state"] == "failed", within=30)
    assert "999999" in publication(sender)["error"]
    assert sender.health()["status"] == "ok"  # still serving its own viewers
    log = sender.stderr()
    assert "Traceback" not in log and "999999" in log


def test_bad_publish_url_is_a_one_line_error(tmp_path) -> None:
    with pytest.raises(AssertionError, match="did not start"):
        SenderProcess(
            ["--source", "testsrc", "--publish", "janus+http://h/janus"], tmp_path / "s.log"
        )
    log = (tmp_path / "s.log").read_text()
    assert "Traceback" not in log and "room" in log
