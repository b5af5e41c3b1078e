"""In-memory connections: a real twisted.web ``Site`` and our protocol on a
``StringTransport``, so most behaviour is tested without a socket."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from crowtwist import Crow

from . import frames as F


class MemoryClient:
    """One client connection to ``app``, driven by plain calls.

    ``crow_site``: served by ``app.site()``, whose channel takes ordinary
    upgrades on its own fast path; otherwise by a plain twisted.web ``Site``
    (the resource tree mounted elsewhere).  ``None``: the class default.
    """

    crow_site = False

    def __init__(
        self,
        app: Crow,
        path: str = "/",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        crow_site: bool | None = None,
    ) -> None:
        use_crow_site = self.crow_site if crow_site is None else crow_site
        self.site = app.site() if use_crow_site else Site(app.resource())
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
        channel = self.site.buildProtocol(self.transport.getPeer())
        self.transport.protocol = channel
        channel.makeConnection(self.transport)
        channel.dataReceived(raw if raw is not None else F.handshake(path, headers))
        self._buffer = b""
        self.status_line, self.headers, self.body = self._read_response()
        self.frames: list[F.Frame] = []

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def _read_response(self) -> tuple[str, dict[str, str], bytes]:
        data = self.transport.value()
        self.transport.clear()
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if lines[0].split()[1:2] == ["101"]:
            self._buffer = rest
            return lines[0], headers, b""
        return lines[0], headers, rest

    @property
    def protocol(self) -> Any:
        return self.transport.protocol

    def send(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.protocol.dataReceived(F.encode(opcode, payload, **kwargs))

    def send_text(self, text: str) -> None:
        self.send(F.TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        self.send(F.BINARY, data)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self.send(F.CLOSE, F.close_payload(code, reason))

    def received(self) -> list[F.Frame]:
        """Every frame the server has sent so far."""
        self._buffer += self.transport.value()
        self.transport.clear()
        new, self._buffer = F.decode_all(self._buffer)
        self.frames.extend(new)
        return self.frames

    def messages(self) -> list[str | bytes]:
        return [
            f.payload.decode("utf-8") if f.opcode == F.TEXT else f.payload
            for f in self.received()
            if f.opcode in (F.TEXT, F.BINARY)
        ]

    def close_frame(self) -> F.Frame | None:
        for frame in self.received():
            if frame.opcode == F.CLOSE:
                return frame
        return None

    def drop(self, clean: bool = False) -> None:
        """The TCP connection ends (cleanly closed by the peer or lost)."""
        reason = ConnectionDone() if clean else ConnectionLost()
        self.protocol.connectionLost(Failure(reason))

    def finish_close(self) -> None:
        """Answer the server's close frame and let the connection end, as a polite client does."""
        frame = self.close_frame()
        assert frame is not None, "the server sent no close frame"
        self.send_close(frame.close_code or 1000)
        self.drop(clean=True)
