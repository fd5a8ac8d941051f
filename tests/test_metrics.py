"""GET /metrics: Prometheus text that a scraper can parse, with numbers that move."""

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from receiver import Receiver

from .helpers import wait_until


async def scrape(url: str) -> dict[str, list]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(metrics: dict, name: str) -> float:
    return metrics[name][0].value


async def test_metrics_follow_a_viewer(sender) -> None:
    before = await scrape(sender.url)
    assert value(before, "webcam_viewers") == 0
    assert value(before, "webcam_sessions_started") == 0
    async with Receiver(sender.url, connect_timeout=30) as rx:
        async for _ in rx.frames():
            if rx.stats.frames >= 30:
                break
        during = await scrape(sender.url)
        assert value(during, "webcam_viewers") == 1
        assert value(during, "webcam_source_open") == 1
        assert value(during, "webcam_frames_captured") >= 30
        assert value(during, "webcam_frames_encoded") >= 30
        assert value(during, "webcam_frames_sent") >= 30
        assert value(during, "webcam_bytes_sent") > 10_000
        assert value(during, "webcam_encode_seconds") > 0

        async def rtt_reported() -> bool:
            metrics = await scrape(sender.url)
            rtt = metrics["webcam_viewer_rtt_seconds"]
            bitrate = metrics["webcam_viewer_bitrate_bps"]
            return bool(rtt) and 0 < rtt[0].value < 1 and bool(bitrate) and bitrate[0].value > 0

        # RTCP receiver reports come every second or so
        await wait_until(rtt_reported, within=20, what="RTT and bitrate from WebRTC stats")
        metrics = await scrape(sender.url)
        assert metrics["webcam_viewer_packets_lost"][0].value == 0
    after = await scrape(sender.url)
    assert value(after, "webcam_viewers") == 0
    assert value(after, "webcam_sessions_started") == 1
    assert after["webcam_viewer_rtt_seconds"] == []


async def test_failed_offers_are_counted(sender) -> None:
    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": "application/sdp"}
        async with http.post(sender.url + "/whep", data="v=0\r\n", headers=headers) as resp:
            assert resp.status == 400
    metrics = await scrape(sender.url)
    assert value(metrics, "webcam_sessions_failed") == 1
