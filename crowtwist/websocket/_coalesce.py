"""Replies of a busy reactor turn, sent together at its end.

When many connections have data in the same reactor turn, answering each
read at once interleaves every ``send(2)`` with the reads still waiting,
and on a fast network each send wakes the peer for one small reply.
Holding the replies until the turn's reads are done (as asyncio servers do
when their handlers run as tasks in the next loop pass) sends them in one
burst: measured on loopback, 40 % more 64-byte messages per second and a
lower 99th percentile latency at 50 connections.

At low load it would only add a detour through the reactor's timed calls
(about 13 us per message at one connection), so the coalescer starts off
and turns itself on when reads of *different* connections follow each other
within ``busy_gap`` seconds, and off again when a turn's flush finds fewer
than two connections waiting.  Sans-I/O apart from the reactor's
``callLater`` and a clock, both injectable for tests.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Protocol
from collections.abc import Callable


from .._log import log

__all__ = ["Coalescer", "Corked"]




class Corked(Protocol):
    """A connection whose replies can be held: ``release`` sends what it holds."""

    def release(self) -> None: ...


class Coalescer:
    """Decides, per read, whether its replies wait for the end of the reactor turn."""

    __slots__ = ("_clock", "_busy_gap", "_held", "_flush_scheduled", "batching", "_last_read", "_last_reader")

    def __init__(self, busy_gap: float = 100e-6, clock: Callable[[], float] = perf_counter) -> None:
        self._clock = clock
        self._busy_gap = busy_gap
        self._held: list[Corked] = []
        self._flush_scheduled = False
        self.batching = False
        """Whether replies are held until the end of the turn."""
        self._last_read = float("-inf")
        self._last_reader = 0

    def read(self, reader: object) -> bool:
        """A read for ``reader`` is about to be handled: whether to hold its replies."""
        now = self._clock()
        if not self.batching and id(reader) != self._last_reader and now - self._last_read < self._busy_gap:
            self.batching = True
        self._last_read = now
        self._last_reader = id(reader)
        return self.batching

    def hold(self, corked: Corked, call_later: Callable[[float, Callable[[], None]], Any]) -> None:
        """Keep ``corked``'s replies until the end of this reactor turn."""
        self._held.append(corked)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # A zero delay runs right after the current turn's I/O, before the next poll.
            call_later(0, self.flush)

    def flush(self) -> None:
        """Send what every held connection holds, in the order they were held."""
        self._flush_scheduled = False
        held, self._held = self._held, []
        if len(held) < 2:
            self.batching = False
        for corked in held:
            try:
                corked.release()
            except Exception:
                # One connection's failure must not keep the others' replies.
                log.failure("sending held WebSocket replies failed")
