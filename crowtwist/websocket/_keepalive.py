"""``Keepalive``: pings on a timer, and a close when the pong is late (the public paths' own).

The fast paths keep autobahn's keepalive (with crowtwist's timers and rules,
``_autobahn._closing``); on autobahn's public paths its timers are off, and
this does the same with ``sendPing`` and ``onPong``: a ping every
``interval`` seconds, judged ``timeout`` seconds later, any traffic counting
as an answer, more time while our own data is not out, none while reading
is paused or the connection is closing.
"""

from __future__ import annotations

import os
from typing import cast
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall

from ._timers import reactor_later

__all__ = ["Keepalive"]


class Keepalive:
    """One connection's keepalive: ``schedule``, ``pong``, ``heard``, ``suspend``."""

    __slots__ = ("_interval", "_timeout", "_ping", "_open", "_behind", "_late", "_payload", "_ping_call", "_pong_call")

    def __init__(
        self,
        interval: float | None,
        timeout: float | None,
        ping: Callable[[bytes], object],
        is_open: Callable[[], bool],
        behind: Callable[[], bool],
        late: Callable[[], object],
    ) -> None:
        self._interval = interval
        self._timeout = timeout
        self._ping = ping
        self._open = is_open
        self._behind = behind
        self._late = late
        self._payload: bytes | None = None
        self._ping_call: IDelayedCall | None = None
        """Sends the next ping."""
        self._pong_call: IDelayedCall | None = None
        """Judges the peer when the ping's pong is late."""

    def schedule(self) -> None:
        """The next ping (unless one is due already, or awaits its pong)."""
        if self._interval and self._open() and self._ping_call is None and self._pong_call is None:
            self._ping_call = reactor_later(self._interval, self._send)

    def _send(self) -> None:
        self._ping_call = None
        if not self._open():
            return
        self._payload = payload = os.urandom(12)
        self._ping(payload)
        if self._timeout:
            self._pong_call = reactor_later(self._timeout, self._judge)

    def _judge(self) -> None:
        self._pong_call = None
        if not self._open():
            return
        if self._behind():
            # Our own data is not all out, and the ping may be behind some of it:
            # the peer is judged once it had the chance to answer.
            self._pong_call = reactor_later(cast(float, self._timeout), self._judge)
            return
        self._payload = None
        self._late()

    def pong(self, payload: bytes) -> None:
        """A pong: the awaited one ends the wait."""
        if self._payload is not None and payload == self._payload:
            self.heard()

    def heard(self) -> None:
        """The peer sent something: it is there, as a pong would show."""
        call = self._pong_call
        if call is not None:
            self._pong_call = None
            call.cancel()
        if self._payload is not None or call is not None:
            self._payload = None
            self.schedule()

    def suspend(self) -> None:
        """Stop judging the peer (we are not reading, or we are closing)."""
        for call in (self._ping_call, self._pong_call):
            if call is not None:
                call.cancel()
        self._ping_call = self._pong_call = None
        self._payload = None
