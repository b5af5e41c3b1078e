"""``Outgoing``, the outgoing flow of one connection, with in-memory transports and sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

from crowtwist.websocket._outgoing import HIGH_WATER, Outgoing


class FakeSocket:
    """A socket that takes up to ``room`` bytes per call, recording what it took."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        return self._take(bytes(data))

    def sendmsg(self, parts: list[bytes]) -> int:
        return self._take(b"".join(parts))

    def _take(self, data: bytes) -> int:
        if not self.room:
            raise BlockingIOError
        taken = data[: self.room]
        self.room -= len(taken)
        self.sent.append(taken)
        return len(taken)


class FakeTLS:
    """Any transport but plain TCP (TLS, say): buffers writes, holds one producer."""

    def __init__(self) -> None:
        self.buffer: list[bytes] = []
        self.producer: Any = None
        self.streaming: bool | None = None
        self.disconnecting = False
        self.connected = True

    def write(self, data: bytes) -> None:
        self.buffer.append(data)

    def writeSequence(self, data: Any) -> None:
        self.buffer.extend(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer, self.streaming = producer, streaming

    def unregisterProducer(self) -> None:
        self.producer = None


class FakeTCP(FakeTLS, tcp.Connection):  # type: ignore[misc]  # tcp.Connection for isinstance only
    """A plain TCP transport without a reactor, whose socket frames may go to directly."""

    def __init__(self, sock: FakeSocket) -> None:  # tcp.Connection's own needs a reactor
        FakeTLS.__init__(self)
        self.sock = sock

    def getHandle(self) -> Any:
        return self.sock


def flow(transport: Any, limit: int | None = None, fresh: bool = True) -> tuple[Outgoing, list[bool], list[int]]:
    changes: list[bool] = []
    over: list[int] = []
    out = Outgoing(transport, changes.append, limit, over.append)
    out.attach(fresh)
    return out, changes, over


def wire(sock: FakeSocket, transport: Any) -> bytes:
    """Everything in the order the peer gets it: the socket's share, then the transport's buffer."""
    return b"".join(sock.sent) + b"".join(transport.buffer)


def test_plain_tcp_writes_go_to_the_socket() -> None:
    """On a fresh plain TCP connection a frame goes to the socket in one send, nothing to the transport."""
    sock = FakeSocket()
    transport = FakeTCP(sock)
    out, changes, _ = flow(transport)
    assert transport.producer is out and transport.streaming is False  # a pull producer
    out.write(b"head", b"payload")
    assert sock.sent == [b"headpayload"] and transport.buffer == []
    assert out.writable and changes == [] and not out.behind


def test_what_the_socket_leaves_waits_in_order() -> None:
    """The rest of a partial send goes to the transport; later frames wait in the backlog until it drains."""
    sock = FakeSocket(room=5)
    transport = FakeTCP(sock)
    out, _, _ = flow(transport)
    out.write(b"0123456789")
    assert sock.sent == [b"01234"] and transport.buffer == [b"56789"] and out.behind
    out.write(b"abc")
    out.write(b"def")
    assert transport.buffer == [b"56789"]  # held back, behind what the transport holds
    transport.buffer.clear()
    sock.room = 100
    out.resumeProducing()  # the transport drained
    assert sock.sent[-1] == b"abcdef" and not out.behind


def test_writable_turns_false_over_the_high_water_mark_and_back() -> None:
    """More than HIGH_WATER owed makes the connection unwritable; the drain makes it writable again, once each."""
    sock = FakeSocket(room=0)
    transport = FakeTCP(sock)
    out, changes, _ = flow(transport)
    out.write(b"x" * (HIGH_WATER + 1))
    assert not out.writable and changes == [False]
    sock.room = 1 << 30
    out.resumeProducing()
    assert out.writable and changes == [False, True]


def test_a_cork_sends_a_reads_replies_together() -> None:
    """Corked writes go out in one send at release, in order."""
    sock = FakeSocket()
    out, _, _ = flow(FakeTCP(sock))
    assert out.cork() and not out.cork()  # already corked
    out.write(b"a")
    out.write(b"b", b"c")
    assert sock.sent == [] and out.held == 3
    out.release()
    assert sock.sent == [b"abc"] and out.held == 0


def test_a_control_frame_goes_ahead_of_the_backlog() -> None:
    """write_first puts a ping before frames still waiting, and declines when nothing waits."""
    sock = FakeSocket(room=1)
    transport = FakeTCP(sock)
    out, _, _ = flow(transport)
    assert not out.write_first(b"PING")
    out.write(b"12")
    out.write(b"data")
    assert out.write_first(b"PING")
    transport.buffer.clear()
    sock.room = 100
    out.resumeProducing()
    assert sock.sent[-1] == b"PINGdata"


def test_the_bound_counts_what_waited_before_a_frame() -> None:
    """One message over the bound, sent while writable, is no slow peer; a second one behind it is, reported once."""
    sock = FakeSocket(room=1)
    out, _, over = flow(FakeTCP(sock), limit=100)
    out.write(b"12")  # "2" stays with the transport: later frames wait in the backlog
    assert out.writable
    out.write(b"y" * 500)  # nothing waited before it: the peer is not behind
    assert over == []
    out.write(b"z" * 10)  # 500 bytes waited before it
    out.write(b"w" * 10)
    assert over == [510]


def test_a_connection_that_answered_http_first_sends_after_the_drain() -> None:
    """Not fresh: the 101 goes through the transport, and direct sends wait for its buffer to drain."""
    sock = FakeSocket()
    transport = FakeTCP(sock)
    out, _, _ = flow(transport, fresh=False)
    out.write(b"HTTP/1.1 101")
    assert transport.buffer == [b"HTTP/1.1 101"] and sock.sent == []
    out.after_handshake()
    assert out.direct and out.behind
    out.write(b"frame")
    assert sock.sent == []  # in order, after what the transport holds
    transport.buffer.clear()
    out.resumeProducing()
    assert sock.sent == [b"frame"]


def test_push_transports_hold_frames_while_paused() -> None:
    """Over TLS frames go to the transport, wait while it is paused, and go on in order when it resumes."""
    transport = FakeTLS()
    out, changes, _ = flow(transport)
    assert transport.streaming is True and not out.direct
    out.write(b"a")
    out.pauseProducing()
    assert changes == [False]
    out.write(b"b")
    out.write(b"c")
    assert transport.buffer == [b"a"]
    out.resumeProducing()
    assert transport.buffer == [b"a", b"b", b"c"] and changes == [False, True]


def test_a_clean_close_flushes_and_an_abort_discards() -> None:
    """flush() sends what the backlog and cork hold; discard() forgets it."""
    sock = FakeSocket(room=1)
    transport = FakeTCP(sock)
    out, _, _ = flow(transport)
    out.write(b"12")
    out.write(b"34")
    out.flush()
    assert wire(sock, transport) == b"1234"
    out2, _, _ = flow(FakeTCP(FakeSocket(room=1)))
    out2.write(b"12")
    out2.write(b"34")
    out2.discard()
    assert not out2.behind or out2.held == 0


def test_a_stopped_transport_leaves_nothing_owed() -> None:
    """stopProducing (the transport is gone) empties the backlog and makes the connection writable."""
    out, changes, _ = flow(FakeTCP(FakeSocket(room=0)))
    out.write(b"x" * (HIGH_WATER + 10))
    out.stopProducing()
    assert out.writable and not out.behind and changes == [False, True]


def test_over_twisted_tls_a_cork_is_encrypted_at_once_in_one_write(monkeypatch: Any) -> None:
    """With a TLS writer, a read's replies go out in one call to it; frames outside a read go to the transport."""
    from crowtwist.websocket import _outgoing

    encrypted: list[bytes] = []
    transport = FakeTLS()
    monkeypatch.setattr(_outgoing, "tls_writer", lambda t: encrypted.append if t is transport else None)
    out, changes, _ = flow(transport)
    assert transport.streaming is True and not out.direct
    out.write(b"outside a read")
    assert transport.buffer == [b"outside a read"] and encrypted == []
    assert out.cork()
    out.write(b"a")
    out.write(b"b", b"c")
    assert encrypted == [] and out.held == 3
    out.release()
    assert encrypted == [b"abc"] and out.held == 0
    # Paused by the transport: a cork's frames wait in the backlog, in order, as any frame does.
    out.pauseProducing()
    assert out.cork()
    out.write(b"d")
    out.release()
    assert encrypted == [b"abc"] and transport.buffer == [b"outside a read"]
    out.resumeProducing()
    assert transport.buffer == [b"outside a read", b"d"] and changes == [False, True]


def test_without_a_tls_writer_nothing_is_corked_over_tls(monkeypatch: Any) -> None:
    """The public fallback: no writer, no cork, frames to the transport as they come."""
    from crowtwist.websocket import _outgoing

    monkeypatch.setattr(_outgoing, "tls_writer", lambda t: None)
    transport = FakeTLS()
    out, _, _ = flow(transport)
    assert not out.cork()
    out.write(b"a")
    assert transport.buffer == [b"a"]
