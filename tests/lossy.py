"""A sender and a receiver CLI in two network namespaces with UDP loss on the way into
the receiver (nftables), and the receiver's ``--stats-json``: what ``test_loss`` (the
picture) and ``test_av_sync`` (lip sync under loss) measure. ``lossy_minute`` (a session
fixture in ``conftest``) runs the issue's minute at 5% random loss once, the fake camera
with fake audio, recorded, and both read it: the same link, one minute less suite."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .helpers import SenderProcess
from .netns import TwoHosts, require, two_hosts

PORT = 8080
RECEIVER_TIMEOUT = 90.0
LOSSY_SECONDS = 60  # the shared minute at 5% random loss
LOSSY_CLIP = "lossy.mkv"  # its recording, in ``Run.folder``
TABLE = "wwc_loss_test"


@dataclass
class Run:
    summary: dict
    dropped: list[int]  # packets each nft rule dropped, in order
    log: str  # the receiver's stderr (INFO)
    detail: str
    folder: Path  # the logs, the stats, and whatever the receiver recorded

    def gave_up(self) -> list[str]:
        return re.findall(r"gave up .*", self.log)


def add_drop_rules(net: TwoHosts, rules: list[str]) -> None:
    """nftables rules (``... drop``) on UDP into the receiver, each with a counter."""
    nft = ["nft"]
    net.exec(net.receiver, [*nft, "add", "table", "inet", TABLE])
    chain = "{ type filter hook input priority 0; policy accept; }"
    net.exec(net.receiver, [*nft, "add", "chain", "inet", TABLE, "input", chain])
    for rule in rules:
        words = f"meta l4proto udp {rule} counter drop".split()
        net.exec(net.receiver, [*nft, "add", "rule", "inet", TABLE, "input", *words])


def dropped_by_rules(net: TwoHosts) -> list[int]:
    listing = net.exec(net.receiver, ["nft", "list", "table", "inet", TABLE]).stdout
    return [int(n) for n in re.findall(r"counter packets (\d+)", listing)]


def run_lossy(
    tmp_path: Path,
    seconds: int,
    rules: list[str],
    random_percent: int = 0,
    *args: str,
    source: Sequence[str] = ("--source", "testsrc"),
) -> Run:
    """The sender (``source``: its options) in one namespace, the receiver (more options:
    ``args``) in the other for ``seconds``, ``rules`` (and ``random_percent``% random loss)
    on the way into the receiver."""
    require()
    stats = tmp_path / "stats.json"
    with two_hosts(random_percent) as net:
        if rules:
            add_drop_rules(net, rules)
        sender = SenderProcess(
            [*source, "--host", net.sender_addr],
            tmp_path / "sender.log",
            prefix=net.command(net.sender, []),
            port=PORT,
        )
        try:
            command = ["-m", "receiver", sender.url, "--duration", str(seconds)]
            command += ["--stats-json", str(stats), *args]
            result = net.run(net.receiver, command, timeout=RECEIVER_TIMEOUT + seconds)
        finally:
            sender.stop()
        dropped = dropped_by_rules(net) if rules else []
        if random_percent:
            dropped.append(net.dropped_packets())
    detail = f"receiver exited {result.returncode}: {result.stderr[-4000:]}\nsender: {sender.stderr()[-2000:]}"
    assert result.returncode == 0, detail
    summary = json.loads(stats.read_text())
    print(f"dropped {dropped}: {json.dumps(summary)}")
    return Run(summary, dropped, result.stderr, f"{json.dumps(summary)}\n{detail}", tmp_path)
