"""``--config FILE`` (``common.config``): a TOML file says what the options say; the
command line wins; anything the options would refuse is one line naming the key and the
file, exit code 2, before anything starts."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from receiver import Receiver
from sender.cli import parse_args

from .helpers import SenderProcess, assert_one_line_error, run_receiver, run_sender


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sender.toml"
    path.write_text(text)
    return path


async def test_a_sender_runs_from_its_config_file(tmp_path: Path) -> None:
    config = write(tmp_path, 'source = "testsrc"\nsize = "320x240"\nfps = 15\nmax-viewers = 2\n')
    sender = SenderProcess(["--config", str(config)], tmp_path / "sender.log")
    try:
        async with Receiver(sender.url, connect_timeout=30) as rx:
            frames = rx.frames()
            frame = await anext(frames)
            await frames.aclose()
        health = sender.health()
    finally:
        assert sender.stop() == 0
    assert (frame.width, frame.height) == (320, 240)
    assert health["source"] == "fake camera (testsrc)"


def test_the_command_line_wins_and_replaces_repeated_options(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'source = "scene"\nfps = 15\nallow_origin = ["https://a.example", "https://b.example"]\n'
        "no_local = false\nverbose = 1\n",
    )
    args = parse_args(["--config", str(config)])
    assert (args.source, args.fps, args.verbose, args.no_local) == (["scene"], 15.0, 1, False)
    assert args.allow_origin == ["https://a.example", "https://b.example"]
    args = parse_args(
        ["--config", str(config), "--fps", "20", "--allow-origin", "https://c.example"]
    )
    assert args.fps == 20.0 and args.source == ["scene"]
    assert args.allow_origin == ["https://c.example"]  # replaced, not added to


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('sise = "640x480"', "unknown key 'sise'"),
        ("help = true", "unknown key 'help'"),
        ('fps = "thirty"', "fps: not a number: 'thirty'"),
        ("fps = -5", "fps: must be positive: '-5'"),
        ("fps = true", "fps: expected a string or a number, not true/false"),
        ('size = "641x480"', "size: width and height must be even and positive"),
        ("size = [640, 480]", "size: expected a string or a number, not list"),
        ('codec = "av1"', "codec: 'av1' is not one of vp8, h264"),
        ('no_local = "yes"', "no_local: expected true or false"),
        ("verbose = -1", "verbose: expected a whole number >= 0"),
        ("max-viewers = 0", "max-viewers: must be positive: '0'"),
        ("port = 80.5", "port: not a port number: '80.5'"),
        ("allow_origin = [{ a = 1 }]", "allow_origin: expected a string or a number, not dict"),
        ("fps = ", "not valid TOML"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_key_and_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    config = write(tmp_path, text + "\n")
    result = run_sender("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert f"{config}: {message}" in result.stderr, result.stderr


def test_a_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = run_sender("--config", str(tmp_path / "nowhere.toml"))
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert "cannot read" in result.stderr and "nowhere.toml" in result.stderr


def test_cameras_from_the_config_file_and_a_receiver_recording_its_streams(
    tmp_path: Path,
) -> None:
    """The sender's ``[cameras]`` table and the receiver's ``streams``: one file each."""
    config = write(tmp_path, 'size = "320x240"\n[cameras]\nleft = "testsrc"\nright = "scene"\n')
    sender = SenderProcess(["--config", str(config)], tmp_path / "sender.log")
    try:
        assert list(sender.health()["cameras"]) == ["left", "right"]
        streams = ", ".join(f'"{sender.url}/whep/{name}"' for name in ("left", "right"))
        receiver_config = tmp_path / "receiver.toml"
        receiver_config.write_text(
            f"streams = [{streams}]\n"
            f'record = "{tmp_path}/{{name}}.mkv"\nduration = 3\nquiet = true\n'
        )
        result = run_receiver("--config", str(receiver_config))
    finally:
        assert sender.stop() == 0
    assert result.returncode == 0, result.stderr
    for name in ("left", "right"):
        with av.open(str(tmp_path / f"{name}.mkv")) as container:
            frames = sum(1 for _ in container.decode(video=0))
        assert frames >= 30, name


RECEIVER_CASES = [
    ('streams = "http://h/whep"', "streams: expected a list of strings"),
    ("max-retries = -1", "max-retries: must be 0-1000: '-1'"),
    ('record-mode = "zip"', "record-mode: 'zip' is not one of copy, encode"),
    ("duration = 0", "duration: must be positive: '0'"),
]


@pytest.mark.parametrize(("text", "message"), RECEIVER_CASES)
def test_a_bad_receiver_config_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "receiver.toml"
    config.write_text(text + "\n")
    result = run_receiver("--config", str(config), "http://127.0.0.1:9/whep")
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert f"{config}: {message}" in result.stderr, result.stderr
