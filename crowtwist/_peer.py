"""Who is at the other end of a connection, as logs and ``Connection.get_remote_ip()`` name it."""

from __future__ import annotations

import os

__all__ = ["peer_host"]


def peer_host(address: object) -> str:
    """The host of ``address`` (an ``IAddress``): the IP of an IPv4 or IPv6 peer, the path of a UNIX socket.

    ``""`` when there is none to give: an unnamed UNIX socket (a client's
    usually is), no address, or a kind of address without a host.
    """
    host = getattr(address, "host", None)
    if isinstance(host, str):
        return host
    name = getattr(address, "name", None)
    if isinstance(name, (str, bytes)):
        return os.fsdecode(name)
    return ""
