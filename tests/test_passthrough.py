"""Recording without re-encoding: the file holds exactly the frames the sender sent."""

import aiortc
import av
import pytest
from aiortc import RTCRtpReceiver

from common.aiortc_ext import AIORTC_VERSION
from common.aiortc_ext.passthrough import QUEUE_ATTRIBUTE
from receiver import Receiver, ReceiverError
from receiver.encoded import is_keyframe, nal_units
from receiver.recorder import Recorder

from .helpers import run_receiver


def test_aiortc_still_has_the_decoder_queue() -> None:
    """Fails if an aiortc upgrade breaks what common/aiortc_ext/passthrough.py replaces."""
    assert aiortc.__version__ == AIORTC_VERSION, "re-check common/aiortc_ext/passthrough.py"
    from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
    from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport

    transport = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    receiver = RTCRtpReceiver("video", transport)
    assert hasattr(receiver, QUEUE_ATTRIBUTE)


def test_keyframe_detection() -> None:
    assert is_keyframe("vp8", bytes([0x10, 0, 0]))  # P bit clear
    assert not is_keyframe("vp8", bytes([0x11, 0, 0]))
    idr = b"\x00\x00\x00\x01\x67sps\x00\x00\x00\x01\x68pps\x00\x00\x01\x65idr"
    assert [u[0] & 0x1F for u in nal_units(idr)] == [7, 8, 5]
    assert is_keyframe("h264", idr)
    assert not is_keyframe("h264", b"\x00\x00\x00\x01\x41slice")


@pytest.mark.parametrize(("codec", "extension"), [("vp8", ".webm"), ("h264", ".mp4")])
async def test_copy_keeps_the_received_bytes(sender_factory, tmp_path, codec, extension) -> None:
    sender = await sender_factory(codec=codec)
    received = []
    path = tmp_path / f"copy{extension}"
    async with Receiver(sender.url, encoded=True, decode=False, connect_timeout=30) as rx:
        with pytest.raises(ReceiverError):
            async for _ in rx.frames():
                pass
        recorder = Recorder(str(path), mode="copy", request_keyframe=rx.request_keyframe)
        async for frame in rx.encoded_frames():
            if not received:
                assert frame.keyframe, "a recording starts at a keyframe"
            received.append(frame.data)
            await recorder.write(frame)
            if len(received) == 60:
                break
        await recorder.close()
    assert rx.stats.frames == 60 and not rx.stats.latencies_ms  # counted, not decoded
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 480)
        packets = [bytes(p) for p in container.demux(stream) if p.size]
    if codec == "vp8":
        assert packets == received
    else:  # MP4 stores H.264 with length prefixes instead of start codes: same NAL units
        units = [u for frame in received for u in nal_units(frame) if u[0] & 0x1F not in (7, 8)]
        stored = []
        for packet in packets:
            i = 0
            while i < len(packet):
                size = int.from_bytes(packet[i : i + 4], "big")
                stored.append(packet[i + 4 : i + 4 + size])
                i += 4 + size
        assert [u for u in stored if u[0] & 0x1F not in (7, 8)] == units
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 60


@pytest.mark.parametrize(
    ("sender_codec", "extension", "recorded"),
    [("vp8", ".mp4", "h264"), ("h264", ".webm", "vp8"), ("h264", ".mkv", "h264")],
)
def test_copy_negotiates_what_the_container_holds(
    sender_process, tmp_path, sender_codec, extension, recorded
) -> None:
    sender = sender_process("--source", "testsrc", "--codec", sender_codec)
    path = tmp_path / f"clip{extension}"
    result = run_receiver(sender.url, "--frames", "30", "--record", str(path), "--quiet")
    assert result.returncode == 0, result.stderr
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == recorded
        assert sum(1 for _ in container.decode(video=0)) == 30


def test_encode_mode_reencodes(sender_process, tmp_path) -> None:
    sender = sender_process("--source", "testsrc")  # VP8
    path = tmp_path / "clip.mkv"
    result = run_receiver(
        sender.url, "--frames", "30", "--record", str(path), "--record-mode", "encode", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in container.decode(video=0)) == 30
