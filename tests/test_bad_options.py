"""Every option with a wrong, an empty and an extreme value: one line naming the problem,
exit code 2, before anything starts (never a traceback, never a daemon that starts and
fails at its first viewer). The table runs each case as a real process, four at a time."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .helpers import assert_one_line_error, run_receiver, run_sender

# (arguments after --source testsrc, what the error line says)
SENDER_CASES: list[tuple[list[str], str]] = [
    (["--size", "320x"], "expected WIDTHxHEIGHT"),
    (["--size", ""], "expected WIDTHxHEIGHT"),
    (["--size", "641x480"], "must be even and positive"),
    (["--size", "0x0"], "must be even and positive"),
    (["--size", "100000x100000"], "at most 8192 pixels a side"),
    (["--size", "10x10"], "the stamp needs a width of at least 320 pixels"),
    (["--fps", ""], "not a number"),
    (["--fps", "0"], "must be positive"),
    (["--fps", "0.5"], "must be at least 1.0"),
    (["--fps", "100000"], "must be at most 240.0"),
    (["--fps", "nan"], "not a finite number"),
    (["--fps", "inf"], "not a finite number"),
    (["--port", "70000"], "a port is 0-65535"),
    (["--port", "-1"], "a port is 0-65535"),
    (["--port", "http"], "not a port number"),
    (["--host", "999.1.1.1"], "cannot serve on 999.1.1.1"),
    (["--host", ""], "--host: must not be empty"),
    (["--bitrate", "1"], "must be at least 10000"),
    (["--bitrate", "1e12"], "not a number"),
    (["--bitrate", "999999999999"], "must be at most 100000000"),
    (["--max-viewers", "0"], "must be positive"),
    (["--max-viewers", "100000000"], "must be at most 10000"),
    (["--codec", ""], "invalid choice"),
    (["--codec", "av1"], "invalid choice"),
    (["--encoder", ""], "--encoder: no vp8 encoder ''"),
    (["--encoder-speed", "ludicrous"], "invalid choice"),
    (["--loop-encode-ms", "-1"], "must be 0-1000"),
    (["--loop-encode-ms", "2.5"], "not a whole number"),
    (["--input-format", ""], "unknown format ''"),
    (["--rtsp-transport", "sctp"], "invalid choice"),
    (["--token", ""], "--token: must not be empty"),
    (["--name", " "], "--name: must not be empty"),
    (["--allow-origin", ""], "not an origin"),
    (["--allow-origin", "https://a.example/page"], "not an origin"),
    (["--cert", "/nonexistent.pem"], "--cert and --key go together"),
    (["--cert", "/nonexistent.pem", "--key", "/nonexistent.key"], "cannot load --cert/--key"),
    (["--publish", ""], "not a Janus URL"),
    (["--publish-token", ""], "--publish-token: must not be empty"),
    (["--ice-server", ""], "not an ICE server URL"),
    (["--ice-server", "turn:u:p@host:99999"], "bad port"),
    (["--ice-transport-policy", "relay"], "relay"),
    (["--turn-secret", ""], "--turn-secret: must not be empty"),
    (["--turn-ttl", "0"], "must be positive"),
    (["--log-format", "xml"], "invalid choice"),
    (["--config", ""], "cannot read"),
]


# (arguments after a sender URL nobody serves, what the error line says)
RECEIVER_CASES: list[tuple[list[str], str]] = [
    (["--signalling", "xml"], "invalid choice"),
    (["--token", ""], "--token: must not be empty"),
    (["--cafile", "/nonexistent.pem"], "/nonexistent.pem"),
    (["--record", "/nonexistent-dir/x.mkv"], "/nonexistent-dir"),
    (["--record", "out.avi_nope"], "out.avi_nope"),
    (["--snapshot-every", "0"], "must be positive"),
    (["--frames", "-3"], "must be positive"),
    (["--frames", "many"], "not a number"),
    (["--duration", "nan"], "not a finite number"),
    (["--duration", "0"], "must be positive"),
    (["--connect-timeout", "inf"], "not a finite number"),
    (["--record-mode", "zip"], "invalid choice"),
    (["--segment-seconds", "0"], "must be positive"),
    (["--max-retries", "-1"], "must be 0-1000"),
    (["--max-retries", "1e9"], "not a whole number"),
    (["--nack-retries", "100000"], "must be 0-1000"),
    (["--loop-decode-ms", "-5"], "must be 0-1000"),
    (["--stall-timeout", "-1"], "must be positive"),
    (["--ice-server", "stun:"], "--ice-server"),
    (["--log-format", ""], "invalid choice"),
    (["--config", "/nonexistent.toml"], "cannot read /nonexistent.toml"),
]


def test_every_receiver_option_refuses_bad_values_in_one_line() -> None:
    refused_alike(RECEIVER_CASES, lambda args: run_receiver("http://127.0.0.1:9/whep", *args))
    result = run_receiver(timeout=60)  # no URL at all
    assert check(result, "give the sender's URL") is None, result.stderr
    result = run_receiver("notaurl", timeout=60)  # exited 1 once
    assert check(result, "not an http(s) URL: 'notaurl'") is None, result.stderr


def test_the_cases_the_issue_found() -> None:
    """``--size 10x10`` with the default ``--source auto`` (no camera here: the fake
    camera) once started and failed at its first viewer; a receiver that got nothing once
    printed an all-zero summary before its error line."""
    result = run_sender("--size", "10x10", timeout=60)
    assert check(result, "the stamp needs a width of at least 320 pixels") is None, result.stderr
    result = run_receiver("http://127.0.0.1:9/whep", "--max-retries", "0", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "{" not in result.stderr, "a summary of nothing"
    assert result.stderr.strip().splitlines()[-1].startswith("webcam-receiver: error: ")


def check(result: subprocess.CompletedProcess[str], expected: str) -> str | None:
    """What is wrong with how the tool refused (None: refused as it should)."""
    if result.returncode != 2:
        return f"exit code {result.returncode}: {result.stderr[-500:]}"
    try:
        assert_one_line_error(result.stderr)
    except AssertionError as exc:
        return f"not one error line: {exc}"
    if expected not in result.stderr:
        return f"{expected!r} not said: {result.stderr.splitlines()[-1]}"
    return None


def test_every_sender_option_refuses_bad_values_in_one_line() -> None:
    refused_alike(SENDER_CASES, lambda args: run_sender("--source", "testsrc", *args))


def refused_alike(
    cases: list[tuple[list[str], str]],
    run: Callable[[list[str]], subprocess.CompletedProcess[str]],
) -> None:
    """Every case as a real process, four at a time; all the problems in one failure."""

    def one(case: tuple[list[str], str]) -> str | None:
        args, expected = case
        try:
            problem = check(run(args), expected)
        except subprocess.TimeoutExpired:
            problem = "started and kept running"
        return None if problem is None else f"{' '.join(args)!r}: {problem}"

    with ThreadPoolExecutor(4) as pool:
        problems = [p for p in pool.map(one, cases) if p]
    assert not problems, "\n".join(problems)
