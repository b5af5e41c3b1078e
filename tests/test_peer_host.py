"""``peer_host``: the one way crowtwist names the other end of a connection."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent

from crowtwist import Crow, Response
from crowtwist._peer import peer_host

from . import frames as F
from .conftest import LogCapture


@pytest.mark.parametrize(
    "address, host",
    [
        (IPv4Address("TCP", "10.1.2.3", 40000), "10.1.2.3"),
        (IPv6Address("TCP", "::1", 40000, 0, 0), "::1"),
        (IPv6Address("TCP", "fe80::1%eth0", 40000), "fe80::1%eth0"),
        (UNIXAddress("/run/app.sock"), "/run/app.sock"),
        (UNIXAddress(b"/run/app.sock"), "/run/app.sock"),
        (UNIXAddress(None), ""),
        (UNIXAddress(""), ""),
        (None, ""),
        (object(), ""),
    ],
)
def test_peer_host(address: Any, host: str) -> None:
    assert peer_host(address) == host


@pytest.mark.parametrize("crow_site", [True, False])
def test_refusals_and_onaccept_failures_name_a_unix_peer_by_its_path(crow_site: bool, logs: LogCapture) -> None:
    """What the leaf logs names the peer as peer_host does: a UNIX socket's path, not the address's repr."""
    from twisted.web.server import Site

    app = Crow()
    app.route("/no").websocket().onaccept(lambda request: Response(403, "no\n"))
    app.route("/boom").websocket().onaccept(lambda request: 1 / 0)
    for path in ("/no", "/boom"):
        site = app.site() if crow_site else Site(app.resource())
        transport = StringTransport(peerAddress=UNIXAddress("/run/app.sock"))
        channel = site.buildProtocol(transport.getPeer())
        transport.protocol = channel
        channel.makeConnection(transport)
        channel.dataReceived(F.handshake(path))
    texts = [formatEvent(e) for e in logs.events if e.get("log_namespace") == "crowtwist"]
    assert any("refused for /run/app.sock" in text for text in texts)
    assert any("(peer /run/app.sock)" in text for text in texts)
