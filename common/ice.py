"""ICE configuration: the servers each side uses, what the sender hands out in WHEP
``Link`` headers, and TURN REST API credentials (``turn_check.py`` says why a TURN server
gave no relay).

Always explicit: with ``iceServers=None`` aiortc silently adds Google's STUN server, which
stalls candidate gathering for seconds on an offline host.

Credentials never reach a log or an error message: URLs are shown with their user part
replaced by ``***`` (``redact()``), servers by their address (``describe()``), and the
TURN secret and minted passwords are kept out of every ``repr``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

import aiohttp
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

from .cli import CliError, not_empty, positive

logger = logging.getLogger(__name__)

SCHEMES = ("stun", "stuns", "turn", "turns")
POLICIES = ("all", "relay")
DEFAULT_TURN_TTL = 3600  # seconds a handed-out TURN password stays valid
OPTIONS_TIMEOUT_SECONDS = 5.0
_URL_RE = re.compile(r"(?P<scheme>[A-Za-z]+):(?:(?P<userinfo>.*)@)?(?P<rest>.*)")
_HOST_PORT_RE = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:/?#@]+)(?::(?P<port>[^?]*))?")


# --- one server ----------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` with its credentials (``user:pass@``) replaced by ``***@``: for messages."""
    match = _URL_RE.fullmatch(url.strip())
    if match and match["userinfo"] is not None:
        return f"{match['scheme']}:***@{match['rest']}"
    return url.strip()


def parse_ice_server(url: str) -> RTCIceServer:
    """Parse ``stun:HOST[:PORT]`` or ``turn[s]:[USER:PASS@]HOST[:PORT][?transport=udp|tcp]``.

    Credentials go before ``@``, percent-encoded if they contain ``:`` (a password may
    hold ``@``: the last one ends it). Checked as strictly as aiortc will use it: a URL
    aiortc would silently skip (``stuns:``, an unknown transport, ``turns`` over UDP) is
    an error here. ValueError names the URL redacted.
    """
    shown = redact(url)
    match = _URL_RE.fullmatch(url.strip())
    scheme = match["scheme"].lower() if match else ""
    if not match or scheme not in SCHEMES:
        raise ValueError(f"not an ICE server URL (stun:, turn:, turns:): {shown!r}")
    if scheme == "stuns":
        raise ValueError(f"stuns: is not supported (aiortc ignores it), use stun: {shown!r}")
    rest, _, query = match["rest"].partition("?")
    where = _HOST_PORT_RE.fullmatch(rest)
    if not where:
        raise ValueError(f"ICE server URL needs HOST or HOST:PORT: {shown!r}")
    port = where["port"]
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"ICE server URL has a bad port {port!r}: {shown!r}")
    if query and (scheme.startswith("stun") or not query.startswith("transport=")):
        raise ValueError(f"ICE server URL: only turn: takes ?transport=udp|tcp: {shown!r}")
    transport = (
        query.partition("=")[2].lower() if query else ("tcp" if scheme == "turns" else "udp")
    )
    if transport not in ("udp", "tcp") or (scheme == "turns" and transport != "tcp"):
        raise ValueError(f"ICE server URL: transport must be udp or tcp (turns: tcp): {shown!r}")
    username = credential = None
    if match["userinfo"] is not None:
        if not scheme.startswith("turn"):
            raise ValueError(f"only TURN servers take credentials: {shown!r}")
        user, sep, password = match["userinfo"].partition(":")
        if not user or not sep:
            raise ValueError(f"TURN credentials go as USER:PASS@: {shown!r}")
        username, credential = unquote(user), unquote(password)
    uri = f"{scheme}:{rest}" + (f"?transport={transport}" if query else "")
    try:
        parse_stun_turn_uri(uri)  # what aiortc itself will do with it
    except ValueError:
        raise ValueError(f"aiortc cannot use this ICE server URL: {shown!r}") from None
    return RTCIceServer(urls=uri, username=username, credential=credential)


def is_turn(server: RTCIceServer) -> bool:
    return _urls(server)[0].startswith("turn")


def describe(server: RTCIceServer) -> str:
    """The server's URL, never its credentials (they are not in ``urls``)."""
    return ", ".join(_urls(server))


def _urls(server: RTCIceServer) -> list[str]:
    return server.urls if isinstance(server.urls, list) else [server.urls]


# --- TURN REST API credentials -----------------------------------------------------------


@dataclass(frozen=True)
class TurnSecret:
    """coturn's ``use-auth-secret`` (the TURN REST API): anyone holding the secret can
    make a user name ``EXPIRY:NAME`` (EXPIRY in Unix seconds) and its password,
    base64(HMAC-SHA1(secret, user name)); the TURN server accepts them until EXPIRY."""

    secret: str = field(repr=False)
    ttl: int = DEFAULT_TURN_TTL

    def credentials(self, name: str, now: float | None = None) -> tuple[str, str]:
        expiry = int(time.time() if now is None else now) + self.ttl
        username = f"{expiry}:{name}"
        digest = hmac.new(self.secret.encode(), username.encode(), hashlib.sha1).digest()
        return username, base64.b64encode(digest).decode()


class IceServers:
    """The ICE servers of one side and its transport policy. With a ``turn_secret``,
    every TURN server given without credentials gets freshly made ones each time they
    are handed out (``resolved()``), valid for the secret's ``ttl`` from then: each WHEP
    client its own user name (``EXPIRY:viewer-RANDOM``), our own peer connections
    ``EXPIRY:sender``."""

    def __init__(
        self,
        urls: Iterable[str] = (),
        policy: str = "all",
        turn_secret: TurnSecret | None = None,
    ) -> None:
        self.servers = [parse_ice_server(url) for url in urls]
        self.policy = RTCIceTransportPolicy(policy)
        self.turn_secret = turn_secret

    def __repr__(self) -> str:
        names = [describe(s) for s in self.servers]
        return f"IceServers({names}, policy={self.policy.value}, minted={self.mints})"

    @property
    def mints(self) -> bool:
        """Whether some servers get credentials made from the TURN secret."""
        return self.turn_secret is not None and any(map(_needs_credentials, self.servers))

    def resolved(self, name: str) -> list[RTCIceServer]:
        """The servers with credentials, minted for ``name`` where needed."""
        if not self.mints:
            return list(self.servers)
        assert self.turn_secret is not None
        username, credential = self.turn_secret.credentials(name)
        return [
            RTCIceServer(urls=s.urls, username=username, credential=credential)
            if _needs_credentials(s)
            else s
            for s in self.servers
        ]

    def configuration(self, name: str = "sender") -> RTCConfiguration:
        """For our own peer connections. With minted credentials each peer connection
        made from it gets fresh ones (aiortc reads ``iceServers`` once per ICE gatherer),
        so a sender that runs for weeks never uses an expired password."""
        if self.mints:
            return _MintingConfiguration(self, name)
        return RTCConfiguration(iceServers=list(self.servers), iceTransportPolicy=self.policy)

    def link_headers(self) -> list[str]:
        """``Link`` header values for one WHEP client: its own TURN credentials."""
        name = f"viewer-{secrets.token_hex(4)}" if self.mints else ""
        return [link_header(server) for server in self.resolved(name)]


def _needs_credentials(server: RTCIceServer) -> bool:
    return is_turn(server) and server.username is None


class _MintingConfiguration(RTCConfiguration):
    """An RTCConfiguration whose ``iceServers`` carries new TURN credentials at every
    read. Its repr shows no credentials."""

    def __init__(self, servers: IceServers, name: str) -> None:
        self._servers = servers
        self._name = name
        super().__init__(iceServers=None, iceTransportPolicy=servers.policy)

    @property
    def iceServers(self) -> list[RTCIceServer]:
        return self._servers.resolved(self._name)

    @iceServers.setter
    def iceServers(self, value: object) -> None:
        """The dataclass __init__ assigns None: the servers come from ``_servers``."""

    def __repr__(self) -> str:
        return f"RTCConfiguration({self._servers!r})"


def rtc_configuration(urls: Iterable[str] = (), policy: str = "all") -> RTCConfiguration:
    """An RTCConfiguration with exactly these servers (none means host candidates only)
    and this ICE transport policy (``all`` or ``relay``)."""
    return IceServers(urls, policy).configuration()


# --- WHEP Link headers -----------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def link_header(server: RTCIceServer) -> str:
    """A WHEP/WHIP ``Link: <uri>; rel="ice-server"`` value (RFC 9725 section 4.6)."""
    (url,) = _urls(server)  # ours hold one URL each
    value = f'<{url}>; rel="ice-server"'
    if server.username is not None:
        value += (
            f"; username={_quote(server.username)}; credential={_quote(server.credential or '')}"
        )
        value += '; credential-type="password"'
    return value


def _split_links(header: str) -> list[str]:
    """A Link header value split at the commas between links (not inside <> or quotes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = bracket = escaped = False
    for char in header:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"' and not bracket:
            quoted = not quoted
        elif char == "<" and not quoted:
            bracket = True
        elif char == ">" and not quoted:
            bracket = False
        elif char == "," and not (quoted or bracket):
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


_PARAM_RE = re.compile(
    r'\s*;\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^";\s]*))?'
)


def _parse_link(link: str) -> tuple[str, dict[str, str]] | None:
    match = re.match(r"\s*<([^>]*)>", link)
    if not match:
        return None
    params: dict[str, str] = {}
    position = match.end()
    while position < len(link):
        param = _PARAM_RE.match(link, position)
        if not param or param.end() == position:
            return None
        value = param[2] or ""
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params.setdefault(param[1].lower(), value)
        position = param.end()
    return match[1], params


def parse_link_headers(values: Iterable[str]) -> list[RTCIceServer]:
    """The ICE servers in ``Link`` header values (``rel="ice-server"``); links that are
    not ICE servers are ignored, unusable ones skipped with a warning."""
    servers = []
    for header in values:
        for link in _split_links(header):
            parsed = _parse_link(link)
            if parsed is None:
                logger.warning("ignoring a malformed Link header")
                continue
            uri, params = parsed
            if "ice-server" not in params.get("rel", "").lower().split():
                continue
            try:
                server = parse_ice_server(uri)
            except ValueError as exc:
                logger.warning("ignoring an advertised ICE server: %s", exc)
                continue
            if "username" in params:
                if params.get("credential-type", "password") != "password":
                    logger.warning("ignoring %s: not password credentials", describe(server))
                    continue
                server.username = params["username"]
                server.credential = params.get("credential", "")
            servers.append(server)
    return servers


async def fetch_link_ice_servers(
    url: str,
    headers: Mapping[str, str],
    tls: ssl.SSLContext | bool = True,
) -> list[RTCIceServer]:
    """The ICE servers a WHEP endpoint advertises in answer to ``OPTIONS`` (which the
    WHEP draft allows it to, for clients that must gather before they offer, as aiortc
    does). Empty when it advertises none or the request fails: the POST that follows
    reports an unreachable or refusing endpoint."""
    try:
        async with (
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=OPTIONS_TIMEOUT_SECONDS),
                connector=aiohttp.TCPConnector(ssl=tls),
            ) as http,
            http.options(url, headers=dict(headers)) as response,
        ):
            if response.status >= 300:
                logger.debug("OPTIONS %s: %s, no ICE servers from it", url, response.status)
                return []
            servers = parse_link_headers(response.headers.getall("Link", []))
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.debug("OPTIONS %s failed (%s): no ICE servers from it", url, type(exc).__name__)
        return []
    shown = ", ".join(describe(s) for s in servers)
    (logger.info if servers else logger.debug)(
        "using the ICE servers %s advertises: %s", url, shown or "none"
    )
    return servers


# --- command-line options, shared by both tools -----------------------------------------


def add_arguments(parser: argparse.ArgumentParser, *, sender: bool) -> None:
    """``--ice-server`` and ``--ice-transport-policy`` (and the sender's TURN secret)."""
    where = "" if sender else "; default: those the sender advertises (WHEP)"
    parser.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="stun:HOST:PORT or turn:USER:PASS@HOST:PORT[?transport=udp|tcp] "
        f"(repeatable{where}; none: host candidates only)",
    )
    parser.add_argument(
        "--ice-transport-policy",
        choices=POLICIES,
        default="all",
        help="all (default): direct or relayed, whichever works; relay: only through TURN",
    )
    if sender:
        parser.add_argument(
            "--turn-secret",
            type=not_empty,
            metavar="SECRET",
            help="TURN REST API secret (coturn's static-auth-secret): each viewer gets its "
            "own short-lived credentials for every turn: URL given without USER:PASS@ "
            "(or set WEBCAM_SENDER_TURN_SECRET)",
        )
        parser.add_argument(
            "--turn-ttl",
            type=positive(int),
            default=DEFAULT_TURN_TTL,
            metavar="S",
            help=f"seconds such credentials stay valid ({DEFAULT_TURN_TTL})",
        )


def check_arguments(
    args: argparse.Namespace, *, turn_secret: str | None = None, from_peer: bool = False
) -> IceServers:
    """The ICE options as ``IceServers``, or CliError (exit 2) naming what is wrong.
    ``from_peer``: no servers given, the peer's advertised ones will be used (the
    receiver over WHEP), so ``relay`` does not need a TURN server of our own."""
    secret = None
    if turn_secret:
        secret = TurnSecret(turn_secret, getattr(args, "turn_ttl", DEFAULT_TURN_TTL))
    try:
        servers = IceServers(args.ice_server, args.ice_transport_policy, secret)
    except ValueError as exc:
        raise CliError(f"--ice-server: {exc}") from None
    bare = [s for s in servers.servers if _needs_credentials(s)]
    if bare and not turn_secret:
        hint = ", or --turn-secret" if hasattr(args, "turn_secret") else ""
        raise CliError(
            f"--ice-server {describe(bare[0])} has no credentials: "
            f"give turn:USER:PASS@HOST:PORT{hint}"
        )
    if turn_secret and not bare:
        raise CliError(
            "--turn-secret makes credentials for TURN servers given without them: "
            "add --ice-server turn:HOST:PORT"
        )
    relay = args.ice_transport_policy == "relay"
    if relay and not any(map(is_turn, servers.servers)) and not (from_peer and not servers.servers):
        raise CliError("--ice-transport-policy relay needs a TURN server (--ice-server turn:...)")
    return servers
