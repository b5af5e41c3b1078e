"""``Outgoing``: one connection's outgoing bytes, from a finished frame to the socket.

On plain TCP, frames go to the socket directly (one ``send``/``sendmsg``
now instead of a buffered write, an epoll change and a reactor turn); what
the socket does not take goes to the transport, and later frames wait in a
backlog until the transport has drained, so order is kept.  Over TLS (or any
other transport) frames go to the transport, and wait in the backlog while it
is over its high-water mark.  The frames written while one read is handled
can be corked and sent together at its end (``_coalesce`` may hold them to
the end of a busy reactor turn): on plain TCP in one send, over Twisted's
TLS in one ``SSL_write`` made at once (``_twisted.tls_writer``), not from the
timed call with which Twisted gathers a turn's small TLS writes.

``writable`` is what ``Connection.drained()`` waits on: true while at most a
high-water mark's worth waits to go out.  ``max_send_buffer`` bounds the
backlog: passing it is reported once (``on_over_limit``), and the protocol
applies the policy.  Registered with the transport as its producer, this
object hears when the transport's buffer drains.
"""

from __future__ import annotations

import socket
from collections import deque
from typing import Any
from collections.abc import Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IPullProducer, IPushProducer
from zope.interface import implementer

from .._twisted import tls_writer

__all__ = ["HIGH_WATER", "HOLD_BELOW", "Outgoing"]

# Twisted reads and sends at most 64 KiB and 128 KiB at a time, so each 64 KiB
# message took two reads and a join; asyncio reads 256 KiB.  The read size is also
# the transport's high-water mark, above which frames wait in the backlog.
HIGH_WATER = 256 * 1024
# Frames gathered into one sendmsg(2); more small ones are cheaper joined.
_MAX_PARTS = 64
# Below this, joining the parts and one send(2) beat sendmsg(2)'s gathering.
_JOIN_BELOW = 2048
# Replies held to the end of a busy turn only below this: large ones gain
# nothing from company, and holding them idles the peer (measured: 64 KiB
# echoes lost a fifth of their throughput).
HOLD_BELOW = 16 * 1024


@implementer(IPushProducer, IPullProducer)
class Outgoing:
    """The outgoing side of one connection (see the module's docstring)."""

    __slots__ = (
        "_transport",
        "_on_writable",
        "_on_over_limit",
        "_limit",
        "_pull",
        "_tls_write",
        "_socket",
        "_backlog",
        "_backlog_size",
        "_in_transport",
        "_paused",
        "_over_limit",
        "_cork",
        "_cork_size",
        "writable",
    )

    def __init__(
        self,
        transport: Any,
        on_writable: Callable[[bool], object],
        limit: int | None = None,
        on_over_limit: Callable[[int], object] | None = None,
        direct: bool = True,
    ) -> None:
        """``direct``: frames may go to the socket of a plain TCP transport."""
        self._transport = transport
        self._on_writable = on_writable
        self._limit = limit
        self._on_over_limit = on_over_limit
        self._pull = direct and isinstance(transport, tcp.Connection)
        """Plain TCP: the transport tells us only when its buffer is empty (a pull producer)."""
        self._tls_write = tls_writer(transport) if direct and not self._pull else None
        """Over Twisted's TLS: encrypts and sends a cork's frames now, after what Twisted holds."""
        self._socket: socket.socket | None = None
        self._backlog: deque[bytes] | None = None
        self._backlog_size = 0
        self._in_transport = 0
        """Plain TCP: bytes handed to the transport (not to the socket), held by it until it drains."""
        self._paused = False
        self._over_limit = False
        self._cork: list[bytes] | None = None
        self._cork_size = 0
        self.writable = True
        """Whether at most a high-water mark's worth waits to go out."""

    def attach(self, fresh: bool) -> None:
        """Take the transport's outgoing side.

        ``fresh``: nothing was written on this connection before (the upgrade
        is its first request), so frames may go to the socket from now on.
        """
        transport = self._transport
        if self._pull:
            transport.bufferSize = HIGH_WATER
            # Twisted's tcp.Connection sends at most SEND_LIMIT per write(2); a
            # class attribute that may be set per connection (not documented).
            transport.SEND_LIMIT = HIGH_WATER
            transport.registerProducer(self, False)
            if fresh:
                self._socket = transport.getHandle()
        else:
            transport.registerProducer(self, True)

    def after_handshake(self) -> None:
        """The 101 is written: a connection that answered HTTP before sends directly from now on.

        Earlier responses may have been in the transport's buffer, so the 101
        (and what ``onopen`` sent) went there too: direct sends wait for its drain.
        """
        transport = self._transport
        if self._pull and self._socket is None and transport.connected:
            self._socket = transport.getHandle()
            self._paused = True

    @property
    def direct(self) -> bool:
        """Whether frames go to the socket directly (plain TCP, once the socket is ours)."""
        return self._socket is not None

    @property
    def waiting(self) -> int:
        """Bytes of ours not out yet: the backlog, the cork and (plain TCP) what the transport holds."""
        return self._backlog_size + self._in_transport + self._cork_size

    @property
    def limit(self) -> int | None:
        """``max_send_buffer``: the bound on what may wait for a slow peer."""
        return self._limit

    @property
    def behind(self) -> bool:
        """Whether some of our data is not out yet (a ping may be waiting behind it)."""
        return bool(self._backlog) or self._paused

    # Writing.

    def write(self, data: bytes, more: bytes = b"") -> None:
        """Send ``data`` (and ``more`` after it: a large payload after its header, not joined)."""
        cork = self._cork
        size = len(data) + len(more)
        if cork is not None:
            cork.append(data)
            if more:
                cork.append(more)
            self._cork_size += size
            if self._cork_size >= HIGH_WATER:
                # Enough for one send; it also tells a sending loop if the peer is behind.
                self._uncork()
        elif self._paused or self._backlog:
            # (_uncork makes the same choice; inline here, where every uncorked frame passes)
            self._hold_back(data + more if more else data)
        else:
            self._send_out([data, more] if more else [data], size)

    def write_first(self, frame: bytes) -> bool:
        """Put a control frame ahead of the backlog (RFC 6455 5.4: between any two frames).

        Returns False when nothing waits, and the frame should be written as usual.
        """
        backlog = self._backlog
        if not backlog:
            return False
        backlog.appendleft(frame)
        self._backlog_size += len(frame)
        return True

    def cork(self) -> bool:
        """Hold what is written until ``release()``; False when already corked (or not direct, nor TLS)."""
        if (self._socket is None and self._tls_write is None) or self._cork is not None:
            return False
        self._cork = []
        return True

    @property
    def held(self) -> int:
        """Bytes held by the cork."""
        return self._cork_size

    def release(self) -> None:
        """Send what the cork holds, and stop corking."""
        self._uncork()
        self._cork = None

    def _uncork(self) -> None:
        cork = self._cork
        if not cork:
            return
        parts = cork[:]
        size = self._cork_size
        cork.clear()
        self._cork_size = 0
        if self._paused or self._backlog:
            self._hold_back(b"".join(parts))
        elif self._socket is None and self._tls_write is not None and not self._transport.disconnecting:
            # One SSL_write (16 KiB records) for all of them; the transport may pause us meanwhile.
            self._tls_write(parts[0] if len(parts) == 1 else b"".join(parts))
        else:
            self._send_out(parts, size)

    def _send_out(self, parts: list[bytes], size: int) -> None:
        sock = self._socket
        transport = self._transport
        if sock is None or transport.disconnecting:
            transport.writeSequence(parts)
            if self._pull and not transport.disconnecting:
                # Plain TCP before the socket is ours (the 101, and what onopen
                # sends, on a connection that answered HTTP before): the transport
                # holds it, in order; writable counts it until the transport drains.
                self._in_transport += size
                self._owing_more()
            return
        if size <= _JOIN_BELOW or len(parts) > _MAX_PARTS:
            parts = [b"".join(parts)] if len(parts) > 1 else parts
        try:
            # One part: send(2), which costs less than sendmsg(2); several:
            # gathered by the kernel, no copy to put headers and payloads together.
            sent = sock.send(parts[0]) if len(parts) == 1 else sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = -1  # the transport meets the error on its next write and closes
        if sent == size:
            return
        # The socket is full (or gone): the transport keeps the rest, and
        # frames wait in the backlog until it has drained.
        data = b"".join(parts)
        transport.write(data[sent:] if sent > 0 else data)
        self._paused = True
        self._in_transport += size - max(sent, 0)
        self._owing_more()

    def _hold_back(self, data: bytes) -> None:
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        backlog.append(data)
        self._backlog_size += len(data)
        self._owing_more()
        limit = self._limit
        # What waited before this frame is what the peer is behind by: one
        # message larger than the bound, sent while writable, is not a slow peer.
        if limit is not None and self._backlog_size - len(data) > limit and not self._over_limit:
            self._over_limit = True  # what is sent next (a close frame) lands here too
            if self._on_over_limit is not None:
                self._on_over_limit(self._backlog_size)

    def _owing_more(self) -> None:
        # More waits to go out: a writable connection may have stopped being one.
        if self.writable:
            self._update_writable()

    def _update_writable(self) -> None:
        # Over TLS the transport's own buffer counts (it pauses us above its
        # mark); on plain TCP the backlog and what the socket left with the transport.
        if self._pull:
            writable = self._backlog_size + self._in_transport <= HIGH_WATER
        else:
            writable = not self._paused
        if writable != self.writable:
            self.writable = writable
            self._on_writable(writable)

    # The transport's producer callbacks.

    def pauseProducing(self) -> None:
        """The transport's buffer went over its high-water mark."""
        self._paused = True
        self._update_writable()

    def resumeProducing(self) -> None:
        """The transport's buffer drained (emptied, for a pull producer)."""
        transport = self._transport
        if self._socket is not None and transport.disconnecting:
            # A pull producer would keep a closing transport from finishing.
            transport.unregisterProducer()
            return
        self._paused = False
        self._in_transport = 0
        backlog = self._backlog
        if backlog:
            if self._socket is not None:
                size = self._backlog_size
                self._backlog = None
                self._backlog_size = 0
                self._send_out(list(backlog), size)
            else:
                # Each write may pause us again, synchronously: then the rest waits.
                while backlog and not self._paused:
                    data = backlog.popleft()
                    self._backlog_size -= len(data)
                    transport.write(data)
            if not self._backlog:
                self._over_limit = False
        self._update_writable()

    def stopProducing(self) -> None:
        """The transport is gone: nothing waits any more."""
        self._backlog = None
        self._backlog_size = 0
        self._in_transport = 0
        self._paused = False
        self._update_writable()

    # Closing.

    def flush(self) -> None:
        """A clean close: what is held goes out before the transport closes.

        The socket takes it now if nothing is queued ahead of it; otherwise the
        transport, which writes its buffer out before it closes.
        """
        held = list(self._backlog or ()) + (self._cork or [])
        size = self._backlog_size + self._cork_size
        self.discard()
        if held:
            if self._paused:
                self._transport.writeSequence(held)
            else:
                self._send_out(held, size)

    def discard(self) -> None:
        """Forget what is held (the connection is being aborted)."""
        self._backlog = None
        self._backlog_size = 0
        if self._cork:
            self._cork.clear()
            self._cork_size = 0
