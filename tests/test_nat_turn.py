"""Through NAT, with TURN: the sender and the viewer each behind its own masquerading
NAT, coturn on the "public" side, direct UDP between the two sides impossible
(``tests/nat.py``), both given ``--ice-server turn:u:p@TURN:3478``. Only a relay can
carry the video, and the user does not have to know that: the default ICE transport
policy must connect (``common/aiortc_ext/relay_pairs.py`` is why it can), as must
``--ice-transport-policy relay``, and TURN over TCP when UDP to the TURN server is
blocked too. The browser page in Chromium, run inside the viewer's private namespace,
connects with nothing but the ICE servers (and TURN credentials, made from
``--turn-secret``) the sender advertises in its WHEP ``Link`` headers. Needs root,
``ip``, ``nft`` and coturn (and Chromium with playwright for the page): skipped without
them, failed in CI.

    python -m tests.test_nat_turn watch URL SECONDS   # the page's viewer (run in a netns)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import netns, turn_server
from .ci import require_or_skip
from .helpers import SenderProcess
from .nat import TURN_ADDR, NatTopology, nat_topology
from .turn_server import TurnServer

PORT = 8080
DURATION = 10
RECEIVER_TIMEOUT = 90.0
MIN_FPS = 25
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FIRST_FRAME_TIMEOUT_MS = 30_000


@dataclass
class Run:
    summary: dict
    sender_exit: int
    allocations: int
    counters: dict[str, dict[str, int]]  # "sender"/"receiver" router: rule comment -> packets
    detail: str
    logs: str = ""  # the sender's log, the viewer's output and coturn's log, together
    turn_log: str = ""

    def check_video(self) -> None:
        """What a user checks: video came, at the camera's pace, for most of the run."""
        summary, detail = self.summary, self.detail
        assert self.sender_exit == 0, detail  # SIGTERM: a clean stop
        assert "Traceback" not in detail, detail
        assert summary["seconds"] >= DURATION / 2, detail  # connected within a few seconds
        assert summary["fps"] >= MIN_FPS, detail
        assert (summary["width"], summary["height"]) == (640, 480), detail
        assert self.allocations >= 2, detail  # a relay for each side

    def from_turn(self, transport: str) -> int:
        """Packets the TURN server sent the receiver over ``transport`` (its NAT's count)."""
        return self.counters["receiver"].get(f"turn-{transport}", 0)


@contextlib.contextmanager
def turn_behind_nats(
    tmp_path: Path, *, secret: str | None = None, block_turn_udp: bool = False
) -> Iterator[tuple[NatTopology, TurnServer]]:
    """The topology with the sender's HTTP port forwarded, and coturn running (with a
    static user, or the REST API ``secret``); all torn down, whatever happens."""
    netns.require()
    turn_server.require()
    with nat_topology() as net:
        net.forward_tcp(PORT)
        if block_turn_udp:
            net.block_turn_udp()
        turn = TurnServer(
            tmp_path / "turn", net.turn_addr, prefix=net.command(net.public, []), secret=secret
        )
        turn.start()
        try:
            yield net, turn
        finally:
            turn.stop()


def run_through_nat(
    tmp_path: Path,
    *,
    policy: str | None = None,
    transport: str | None = None,
    block_turn_udp: bool = False,
    stun: bool = False,
    secret: str | None = None,
    browser: bool = False,
    verbose: bool = False,
) -> Run:
    """coturn in the public namespace, the sender behind one NAT, a 10 s viewer (the
    Python receiver, or the page in Chromium) behind the other; the sender is stopped
    with SIGTERM afterwards. With ``secret`` the sender is given the TURN server without
    credentials and ``--turn-secret`` (in its environment), and the viewer no ICE
    options at all: it uses what the sender hands out."""
    stats = tmp_path / "stats.json"
    with turn_behind_nats(tmp_path, secret=secret, block_turn_udp=block_turn_udp) as (net, turn):
        if secret is None:
            ice = ["--ice-server", turn.url(transport=transport)]
        else:
            query = f"?transport={transport}" if transport else ""
            ice = ["--ice-server", f"turn:{turn.addr}:{turn.port}{query}"]
        if stun:
            ice += ["--ice-server", f"stun:{net.turn_addr}:{turn.port}"]
        if policy is not None:
            ice += ["--ice-transport-policy", policy]
        loud = ["-vv"] if verbose else []
        env = {"WEBCAM_SENDER_TURN_SECRET": secret} if secret else {}
        sender = namespaced_sender(net, tmp_path / "sender.log", [*ice, *loud], env)
        try:
            url = f"http://{net.sender_public}:{PORT}"
            if browser:
                args = ["-m", "tests.test_nat_turn", "watch", url, str(DURATION)]
            else:
                mine = ice if secret is None else []
                if secret is not None and policy is not None:
                    mine = ["--ice-transport-policy", policy]
                args = ["-m", "receiver", url, *mine, "--duration", str(DURATION)]
                args += ["--stats-json", str(stats), *(loud or ["--quiet"])]
            result = net.run(net.receiver, args, timeout=RECEIVER_TIMEOUT)
        finally:
            sender_exit = sender.stop()
        counters = {
            "sender": net.counters(net.nat_sender),
            "receiver": net.counters(net.nat_receiver),
        }
    turn_log = turn.text()
    detail = (
        f"viewer exited {result.returncode}: {result.stderr[-5000:]}\n"
        f"sender: {sender.stderr()[-5000:]}\n"
        f"router counters: {counters}\nturnserver: {turn_log[-3000:]}"
    )
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{detail}"
    if browser:
        summary = json.loads(result.stdout.strip().splitlines()[-1])
    else:
        summary = json.loads(stats.read_text())
    what = f"policy {policy or 'default'}, TURN over {transport or 'udp'}"
    what += (", STUN" if stun else "") + (", REST credentials" if secret else "")
    print(f"{'Chromium' if browser else 'receiver'}, {what}: {json.dumps(summary)}")
    print(f"router counters: {counters}, allocations: {turn.allocations()}")
    logs = "\n".join((sender.stderr(), result.stdout, result.stderr))
    return Run(
        summary,
        sender_exit,
        turn.allocations(),
        counters,
        f"{summary}\n{detail}",
        logs,
        turn_log,
    )


def namespaced_sender(
    net: NatTopology, log: Path, ice: list[str], env: dict[str, str] | None = None
) -> SenderProcess:
    """``python -m sender --source testsrc`` on the sender's private address."""
    prefix = net.command(net.sender, ["env", *(f"{k}={v}" for k, v in (env or {}).items())])
    return SenderProcess(
        ["--source", "testsrc", "--host", net.sender_addr, *ice], log, prefix=prefix, port=PORT
    )


def test_default_policy_through_turn(tmp_path: Path) -> None:
    """The issue's setup: TURN on both sides, nothing else. Stock aiortc 1.16 stays in
    "checking" here: its relayed candidate is checked against the peer's private host
    address first, and coturn drops the allocation on that send error."""
    run = run_through_nat(tmp_path)
    run.check_video()
    assert run.from_turn("udp") >= run.summary["frames"], run.detail  # all through the relay


def test_relay_policy_through_turn(tmp_path: Path) -> None:
    run = run_through_nat(tmp_path, policy="relay")
    run.check_video()
    assert run.from_turn("udp") >= run.summary["frames"], run.detail


def test_default_policy_with_stun_tries_direct_and_relays(tmp_path: Path) -> None:
    """With a STUN server too, both sides learn the NATs' public addresses and try UDP
    between them (which two Linux masquerading NATs would let through): the topology
    drops it, and the video still comes, through the relay."""
    run = run_through_nat(tmp_path, stun=True)
    run.check_video()
    dropped = run.counters["sender"].get("direct", 0) + run.counters["receiver"].get("direct", 0)
    assert dropped > 0, run.detail  # direct UDP was tried, and dropped
    assert run.from_turn("udp") >= run.summary["frames"], run.detail


def test_turn_over_tcp_when_udp_to_turn_is_blocked(tmp_path: Path) -> None:
    run = run_through_nat(tmp_path, transport="tcp", block_turn_udp=True)
    run.check_video()
    assert run.from_turn("udp") == 0, run.detail  # nothing came back from TURN over UDP
    # Every frame is at least one ChannelData message; TCP may carry a few per segment.
    assert run.from_turn("tcp") >= run.summary["frames"] // 2, run.detail


def test_receiver_uses_the_turn_credentials_the_sender_hands_out(tmp_path: Path) -> None:
    """The sender has the TURN REST secret; the receiver is given nothing but the URL,
    asks the sender (OPTIONS) and relays with its own short-lived credentials."""
    run = run_through_nat(tmp_path, secret="nat-test-secret", policy="relay")
    run.check_video()
    assert run.from_turn("udp") >= run.summary["frames"], run.detail
    users = turn_users(run.turn_log)
    assert any(u.endswith(":sender") for u in users), run.detail
    assert any(":viewer-" in u for u in users), run.detail  # the receiver's, from Link


def test_browser_page_through_turn_with_handed_out_credentials(tmp_path: Path) -> None:
    """Chromium behind the receiver's NAT opens the page and presses Start: it gathers
    with the ICE server and the TURN credentials of the WHEP answer's Link headers (it
    has no other), and the live picture arrives through the relay at the camera's pace."""
    require_or_skip(browser_missing(), "the NAT browser test")
    run = run_through_nat(tmp_path, secret="nat-browser-secret", browser=True)
    run.check_video()
    summary = run.summary
    assert summary["iceServers"] == [f"turn:{TURN_ADDR}:3478"], run.detail
    assert "relay" in summary["route"], run.detail  # the pair in use is relayed
    assert summary["stamped"], run.detail  # the camera's own picture, read from the page
    assert run.from_turn("udp") >= summary["frames"], run.detail
    assert any(":viewer-" in u for u in turn_users(run.turn_log)), run.detail


def turn_users(turn_log: str) -> set[str]:
    """The user names coturn granted allocations to."""
    users = set()
    for line in turn_log.splitlines():
        if "ALLOCATE processed, success" in line and "user <" in line:
            users.add(line.split("user <", 1)[1].split(">", 1)[0])
    return users


def browser_missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


# --- the page's viewer, run inside the viewer's namespace -------------------------------


async def watch(url: str, seconds: float) -> dict:
    """Open the page, press Start, count the frames the page shows for ``seconds`` after
    the first one; what the page's stats say, and whether its stamp reads. No frame in
    time: what the page shows instead (``error``)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout
    from playwright.async_api import async_playwright

    from bench.browser_first_frame import launch_chromium

    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright, CHROMIUM)  # a fresh profile each time
        try:
            page = await browser.new_page()
            await page.goto(url + "/")
            await page.click("#start")
            try:
                await page.wait_for_function(
                    "window.viewerStats.frames > 0", timeout=FIRST_FRAME_TIMEOUT_MS
                )
            except PlaywrightTimeout:
                stats = await page.evaluate("({...window.viewerStats})")
                shown = await page.text_content("#error")
                return {"error": f"no frame in {FIRST_FRAME_TIMEOUT_MS} ms: {shown!r}", **stats}
            frames = await page.evaluate("window.viewerStats.frames")
            started = time.monotonic()
            await asyncio.sleep(seconds)
            await page.wait_for_function("window.viewerStats.route !== null", timeout=5000)
            stats = await page.evaluate("({...window.viewerStats})")
            elapsed = time.monotonic() - started
            await page.click("#stop")
        finally:
            await browser.close()
    counted = stats["frames"] - frames
    return {
        "frames": counted,
        "seconds": round(elapsed, 2),
        "fps": round(counted / elapsed, 1),
        "width": stats["width"],
        "height": stats["height"],
        "first_frame_ms": stats["firstFrameMs"],
        "iceServers": stats["iceServers"],
        "route": stats["route"],
        "stamped": stats["latencyMs"] is not None,
        "latency_ms": stats["latencyMs"],
    }


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3 or argv[0] != "watch":
        print("usage: python -m tests.test_nat_turn watch URL SECONDS", file=sys.stderr)
        return 2
    result = asyncio.run(watch(argv[1], float(argv[2])))
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
