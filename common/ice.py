"""ICE configuration. Always explicit: with ``iceServers=None`` aiortc silently adds
Google's STUN server, which stalls candidate gathering for seconds on an offline host."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from aiortc import RTCConfiguration, RTCIceServer

SCHEMES = ("stun", "stuns", "turn", "turns")


def parse_ice_server(url: str) -> RTCIceServer:
    """Parse ``stun:host:port`` or ``turn:user:pass@host:port?transport=udp``.

    Credentials for TURN go before ``@`` (percent-encoded if they contain ``:`` or ``@``).
    """
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in SCHEMES or not rest:
        raise ValueError(f"not an ICE server URL (stun:, stuns:, turn:, turns:): {url!r}")
    username = credential = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, _, password = userinfo.partition(":")
        username, credential = unquote(user), unquote(password)
    host = urlsplit(f"//{rest}").hostname
    if not host:
        raise ValueError(f"ICE server URL has no host: {url!r}")
    return RTCIceServer(urls=f"{scheme.lower()}:{rest}", username=username, credential=credential)


def rtc_configuration(urls: Iterable[str] = ()) -> RTCConfiguration:
    """An RTCConfiguration with exactly these servers (none means host candidates only)."""
    return RTCConfiguration(iceServers=[parse_ice_server(url) for url in urls])


def link_header(server: RTCIceServer) -> str:
    """A WHEP/WHIP ``Link: <uri>; rel="ice-server"`` value (RFC 9725 section 4.6)."""
    value = f'<{server.urls}>; rel="ice-server"'
    if server.username is not None:
        value += f'; username="{server.username}"; credential="{server.credential or ""}"'
        value += '; credential-type="password"'
    return value
