"""The machinery under ``crowtwist.testing``: an in-memory connection, an HTTP response reader, WebSocket frames.

``Pipe`` joins two protocols (the test's client and the app's ``CrowSite``
channel) with two in-memory transports.  Bytes move between them only in
reactor turns (``callLater(0)``), as over a socket: a write never runs the
peer's code inside the writer's call, so neither side sees an order of
events a socket could not give.  It keeps what TCP gives a server and what
crowtwist relies on: reads of at most 64 KiB, reading paused and resumed
(``pauseProducing``), a writer's producer paused while more than 64 KiB of
its data is unread, an orderly close after what was written, an abort that
drops it.

``ResponseReader`` reads one HTTP/1.1 response (RFC 9112 section 6.3's
framing: length, chunked, or to the close); ``FrameReader`` reads a
server's WebSocket frames and ``encode_frame`` writes a client's (masked,
RFC 6455 section 5.3).  They are written here, not taken from the server's
own code, so that a test checks the server against bytes it did not make.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
from typing import Any
from collections.abc import Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "READ_SIZE",
    "FrameReader",
    "Pipe",
    "ResponseReader",
    "accept_key",
    "address",
    "encode_frame",
]

READ_SIZE = 64 * 1024
"""Bytes handed to a protocol per ``dataReceived``: what Twisted reads from a socket at a time."""

HIGH_WATER = 64 * 1024
"""Unread bytes over which a writer's producer is paused, as a Twisted TCP transport's ``bufferSize``."""

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def address(host: str, port: int) -> IPv4Address | IPv6Address:
    """A TCP address for ``host`` (an IPv6 one when it has a colon)."""
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


@implementer(ITransport, IConsumer, IPushProducer)
class End:
    """One end of a ``Pipe``: the transport its protocol writes to and reads from."""

    def __init__(self, pipe: Pipe, host: IPv4Address | IPv6Address, peer: IPv4Address | IPv6Address) -> None:
        self.pipe = pipe
        self.host = host
        self.peer = peer
        self.protocol: Protocol | None = None
        self.outgoing: list[bytes] = []
        self.unread = 0
        """Bytes written here that the other end has not been given yet."""
        self.connected = True
        self.disconnecting = False
        self.aborted = False
        self.reading_paused = False
        """This end's protocol asked not to be given data (``pauseProducing``)."""
        self.producer: Any = None
        self.streaming = False
        self.producer_paused = False
        """We paused the registered push producer: too much of what it wrote is unread."""
        self.flushed: list[Deferred[None]] = []
        """Fired once all written so far has been read by the other end (or the connection is gone)."""

    # ITransport

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"a transport takes bytes, not {type(data).__name__}")
        if not data or self.disconnecting or not self.connected:
            return  # as a TCP transport drops writes after loseConnection
        self.outgoing.append(data)
        self.unread += len(data)
        if self.unread > HIGH_WATER and self.streaming and not self.producer_paused:
            self.producer_paused = True
            self.producer.pauseProducing()
        self.pipe.schedule()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close once what was written has been read by the other end."""
        if not self.disconnecting:
            self.disconnecting = True
            self.pipe.schedule()

    def abortConnection(self) -> None:
        """Drop the connection now; what is unread is lost (the other end sees a reset)."""
        if self.connected and not self.aborted:
            self.aborted = True
            self.disconnecting = True
            self.outgoing.clear()
            self.unread = 0
            self.pipe.schedule()

    def getPeer(self) -> IPv4Address | IPv6Address:
        return self.peer

    def getHost(self) -> IPv4Address | IPv6Address:
        return self.host

    # Socket options a TCP transport has (autobahn sets TCP_NODELAY): nothing to do here.

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    # IConsumer: who writes here, and may be asked to wait.

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.streaming = bool(streaming)
        self.producer_paused = False
        if not self.streaming:
            self.pipe.schedule()  # a pull producer is asked for data when there is room

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = False
        self.producer_paused = False

    # IPushProducer: this end's protocol pausing its reading.

    def pauseProducing(self) -> None:
        self.reading_paused = True

    def resumeProducing(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self.pipe.schedule()

    def stopProducing(self) -> None:
        self.loseConnection()

    # Used by the pipe.

    def take(self) -> bytes:
        """Up to ``READ_SIZE`` of what was written here, for the other end."""
        data = b"".join(self.outgoing)
        chunk, rest = data[:READ_SIZE], data[READ_SIZE:]
        self.outgoing[:] = [rest] if rest else []
        self.unread = len(rest)
        return chunk

    def when_flushed(self) -> Deferred[None]:
        """A Deferred that fires once the other end has read everything written here so far."""
        if not self.unread or not self.connected:
            return succeed(None)
        waiting: Deferred[None] = Deferred()
        self.flushed.append(waiting)
        return waiting

    def fire_flushed(self) -> None:
        waiting, self.flushed = self.flushed, []
        for each in waiting:
            self.pipe.after(each.callback, None)

    def drained(self) -> None:
        """What was written has been read: the producer may go on."""
        if not self.unread:
            self.fire_flushed()
        producer = self.producer
        if producer is None or self.unread:
            return
        if self.streaming:
            if self.producer_paused:
                self.producer_paused = False
                producer.resumeProducing()
        elif self.connected and not self.disconnecting:
            producer.resumeProducing()


class Pipe:
    """Two protocols joined by two ``End``s, moved between in reactor turns (see the module's docstring)."""

    def __init__(
        self,
        client_address: IPv4Address | IPv6Address,
        server_address: IPv4Address | IPv6Address,
        call_later: Callable[..., IDelayedCall],
    ) -> None:
        self.client = End(self, client_address, server_address)
        self.server = End(self, server_address, client_address)
        self._call_later = call_later
        self._call: IDelayedCall | None = None
        self._pumping = False
        self._after: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self.lost = False

    def connect(self, client: Protocol, server: Protocol) -> None:
        """Make the connection: the server's protocol hears of it first, as from an accepting port."""
        self.server.protocol = server
        self.client.protocol = client
        server.makeConnection(self.server)
        client.makeConnection(self.client)

    def after(self, func: Callable[..., object], *args: Any) -> None:
        """Call ``func(*args)`` once the bytes stop moving (now, if they are not moving).

        Deferreds the test waits on are fired this way, so that the test's code
        never runs in the middle of a protocol's ``dataReceived`` or
        ``connectionLost``, where a socket would never run it either.
        """
        if self._pumping:
            self._after.append((func, args))
        else:
            func(*args)

    def schedule(self) -> None:
        """Move what is waiting in a coming reactor turn (not now: see the module's docstring)."""
        if not self._pumping and self._call is None and not self.lost:
            self._call = self._call_later(0, self.pump)

    def cancel(self) -> None:
        """Forget a scheduled move (the connection is gone, or being torn down)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def pump(self) -> None:
        """Move bytes both ways until neither side has anything the other may take, then any close."""
        self._call = None
        if self._pumping:
            return
        self._pumping = True
        try:
            moved = True
            while moved and not self.lost:
                moved = False
                aborted = [end for end in (self.client, self.server) if end.aborted]
                if aborted:
                    self._lose(aborted[0])  # nothing more is read on either side
                    break
                for source, target in ((self.client, self.server), (self.server, self.client)):
                    if source.outgoing and not target.reading_paused and target.protocol is not None:
                        data = source.take()
                        target.protocol.dataReceived(data)
                        source.drained()
                        moved = True
                    elif not source.outgoing and source.producer is not None and not source.streaming:
                        before = source.unread
                        source.drained()  # a pull producer's turn to write
                        moved = moved or source.unread != before
                for end in (self.client, self.server):
                    if end.disconnecting and not end.outgoing:
                        self._lose(end)
                        break
        finally:
            self._pumping = False
        while self._after:
            func, args = self._after.pop(0)
            func(*args)

    def _lose(self, closer: End) -> None:
        """The connection ends: each protocol hears how (a clean close, or an abort and a reset), the server first."""
        self.lost = True
        self.cancel()
        for end in (self.client, self.server):
            end.connected = False
            end.disconnecting = True
            end.outgoing.clear()
            end.unread = 0
            end.fire_flushed()
            if end.producer is not None:
                producer, end.producer = end.producer, None
                producer.stopProducing()
        # The app hears first, so that what it does on a close (``onclose``) has run
        # by the time the test's wait for the close returns.
        for end in (self.server, self.client):
            if closer.aborted:
                reason: Failure = Failure(ConnectionAborted() if end is closer else ConnectionLost("reset by the peer"))
            else:
                reason = Failure(ConnectionDone())
            protocol = end.protocol
            if protocol is not None:
                protocol.connectionLost(reason)


# HTTP responses.

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: (.*))?\Z")


class ResponseReader:
    """One HTTP/1.1 response, read as it comes (RFC 9112 section 6.3 for where its body ends).

    ``head_only``: the answer to a ``HEAD`` (no body whatever the headers say).
    ``stop_at_upgrade``: a ``101`` ends the response (what follows is another
    protocol's, kept in ``rest``).  Interim 1xx responses are skipped.
    """

    def __init__(self, head_only: bool = False, stop_at_upgrade: bool = False) -> None:
        self.head_only = head_only
        self.stop_at_upgrade = stop_at_upgrade
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.rest = b""
        self.complete = False
        self.error: str | None = None
        """Why the bytes are not an HTTP response; set once, then nothing more is read."""
        self._buffer = b""
        self._head_done = False
        self._length: int | None = None
        self._chunked = False
        self._to_close = False
        self._chunks: list[bytes] = []

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, if any."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def feed(self, data: bytes) -> bool:
        """Read ``data``; whether the response is complete (or broken: ``error``)."""
        if self.complete or self.error is not None:
            self.rest += data
            return True
        self._buffer += data
        while not self._head_done:
            if not self._read_head():
                return False
            if self.complete or self.error is not None:
                return True
        self._read_body()
        return self.complete or self.error is not None

    def finish(self) -> bool:
        """The connection has closed: whether that completed the response."""
        if self.complete or self.error is not None:
            return True
        if self._head_done and self._to_close:
            self.body = self._buffer
            self._buffer = b""
            self.complete = True
        return self.complete

    def _fail(self, why: str) -> None:
        self.error = why

    def _read_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        lines = head.split(b"\r\n")
        found = _STATUS_LINE.match(lines[0])
        if found is None:
            self._fail(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
            return True
        status = int(found.group(1))
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                self._fail(f"malformed header line: {line[:80]!r}")
                return True
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        if 100 <= status < 200 and not (status == 101 and self.stop_at_upgrade):
            return True  # an interim response (100 Continue): the final one follows
        self.status = status
        self.reason = (found.group(2) or b"").decode("latin-1")
        self.headers = headers
        self._head_done = True
        if status == 101 or self.head_only or status in (204, 304):
            self.complete = True
            self.rest, self._buffer = self._buffer, b""
            return True
        encoding = [t.strip().lower() for t in (self.header("transfer-encoding") or "").split(",") if t.strip()]
        length = self.header("content-length")
        if encoding:
            if encoding[-1] != "chunked":
                self._to_close = True
            else:
                self._chunked = True
        elif length is not None:
            if not length.isdigit():
                self._fail(f"malformed Content-Length: {length!r}")
                return True
            self._length = int(length)
        else:
            self._to_close = True
        return True

    def _read_body(self) -> None:
        if self._length is not None:
            if len(self._buffer) >= self._length:
                self.body = self._buffer[: self._length]
                self.rest = self._buffer[self._length :]
                self._buffer = b""
                self.complete = True
            return
        while self._chunked and not self.complete and self.error is None:
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                return
            size_text = self._buffer[:line_end].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                self._fail(f"malformed chunk size: {size_text[:40]!r}")
                return
            if size == 0:
                # The last chunk, then trailer fields up to an empty line.
                trailer_end = self._buffer.find(b"\r\n", line_end + 2)
                while trailer_end >= 0 and trailer_end != line_end + 2:
                    line_end = trailer_end
                    trailer_end = self._buffer.find(b"\r\n", line_end + 2)
                if trailer_end < 0:
                    return
                self.body = b"".join(self._chunks)
                self.rest = self._buffer[trailer_end + 2 :]
                self._buffer = b""
                self.complete = True
                return
            start = line_end + 2
            if len(self._buffer) < start + size + 2:
                return
            if self._buffer[start + size : start + size + 2] != b"\r\n":
                self._fail("a chunk not followed by CRLF")
                return
            self._chunks.append(self._buffer[start : start + size])
            self._buffer = self._buffer[start + size + 2 :]


# WebSocket frames.


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XORed with the 4-byte ``key``, repeated (RFC 6455 section 5.3)."""
    if not payload:
        return payload
    length = len(payload)
    stream = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(length, "big")


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """One frame as a client sends it: masked with a fresh random key unless ``masked`` is false."""
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, bit | 127, length)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + mask(payload, key)


class FrameReader:
    """Frames from a server, read as they come: ``(fin, rsv, opcode, payload)``.

    A masked frame is returned with its payload unmasked and ``masked`` set
    on the reader, for the caller to refuse (a server must not mask).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.masked = False

    def feed(self, data: bytes) -> list[tuple[bool, int, int, bytes]]:
        """The frames completed by ``data``."""
        self._buffer += data
        frames: list[tuple[bool, int, int, bytes]] = []
        buffer = self._buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length = second & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                (length,) = struct.unpack("!H", buffer[2:4])
                offset = 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                (length,) = struct.unpack("!Q", buffer[2:10])
                offset = 10
            key = b""
            if second & 0x80:
                self.masked = True
                key = buffer[offset : offset + 4]
                offset += 4
            if len(buffer) < offset + length:
                break
            payload = buffer[offset : offset + length]
            if key:
                payload = mask(payload, key)
            frames.append((bool(first & 0x80), (first >> 4) & 7, first & 0x0F, payload))
            buffer = buffer[offset + length :]
        self._buffer = buffer
        return frames
