"""The two command-line tools through a real Janus: publish with --publish, subscribe
with a janus+http:// URL, and the errors a user meets."""

import json

import pytest

from .helpers import SenderProcess, assert_one_line_error, run_receiver, wait_until


def publication(sender: SenderProcess) -> dict:
    return sender.health()["publications"][0]


async def test_publish_and_subscribe_with_the_clis(janus, sender_process, tmp_path) -> None:
    sender = sender_process("--source", "testsrc", "--publish", janus.url(), "--no-local")
    await wait_until(lambda: publication(sender)["state"] == "publishing", within=30)
    stats = tmp_path / "stats.json"
    result = run_receiver(
        janus.url(),
        "--frames",
        "60",
        "--stats-json",
        str(stats),
        "--quiet",
        "--connect-timeout",
        "20",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(stats.read_text())
    assert (summary["width"], summary["height"]) == (640, 480)
    assert summary["stamped_frames"] >= 55  # the first frames may precede the keyframe
    assert summary["latency_ms"]["p50"] > 0
    health = sender.health()
    assert health["viewers"] == 0  # nobody watched the sender itself: Janus fanned out
    assert publication(sender)["bitrate"] > 0, sender.stderr()[-3000:]
    log = sender.stderr()
    assert "Traceback" not in log
    # --no-local: no viewer endpoints here
    no_viewers = run_receiver(sender.url, "--frames", "1", "--max-retries", "0")
    assert no_viewers.returncode != 0 and "404" in no_viewers.stderr


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
