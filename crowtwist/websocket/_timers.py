"""Connection timers (keepalive, close handshake) that are never early and cheap by the thousand.

autobahn batches its per-connection timers through txaio, which rounds each
deadline down to a whole second: a 0.5 s close timeout could fire at once,
and a keepalive timeout of 0.5 s closed healthy peers with 1011.  This keeps
the batching (thousands of idle connections share a few reactor calls, not
one ``DelayedCall`` each) but rounds every deadline up to the next bucket of
``resolution`` seconds, so a timer fires no earlier than asked and at most
``resolution`` later.  Sans-I/O: the clock and ``callLater`` are passed in.
"""

from __future__ import annotations

import math
from typing import Any, cast
from collections.abc import Callable


from .._log import log

__all__ = ["BucketTimer", "TimerCall", "reactor_later"]

_log = log


class TimerCall:
    """One scheduled call; ``cancel()`` may be called any number of times, also after it ran."""

    __slots__ = ("_func", "_args")

    def __init__(self, func: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._func: Callable[..., object] | None = func
        self._args = args

    def cancel(self) -> None:
        """Do not run it (a no-op once it has run)."""
        self._func = None
        self._args = ()

    def active(self) -> bool:
        """Whether it is still to run."""
        return self._func is not None

    def _fire(self) -> None:
        func, args = self._func, self._args
        if func is not None:
            self._func = None
            self._args = ()
            func(*args)


class BucketTimer:
    """``call_later`` with deadlines rounded up to buckets of ``resolution`` seconds."""

    __slots__ = ("_call_later", "_clock", "_resolution", "_buckets")

    def __init__(
        self,
        call_later: Callable[..., Any],
        clock: Callable[[], float],
        resolution: float = 0.02,
    ) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self._call_later = call_later
        self._clock = clock
        self._resolution = resolution
        self._buckets: dict[int, list[TimerCall]] = {}

    def call_later(self, delay: float, func: Callable[..., object], *args: Any) -> TimerCall:
        """Run ``func(*args)`` in ``delay`` seconds (up to ``resolution`` later), unless cancelled."""
        now = self._clock()
        bucket = math.ceil((now + max(delay, 0.0)) / self._resolution)
        call = TimerCall(func, args)
        calls = self._buckets.get(bucket)
        if calls is None:
            calls = self._buckets[bucket] = []
            # The bucket's end is never before now + delay.
            self._call_later(max(bucket * self._resolution - now, 0.0), self._fire, bucket)
        calls.append(call)
        return call

    def _fire(self, bucket: int) -> None:
        for call in self._buckets.pop(bucket, ()):
            try:
                call._fire()
            except Exception:
                # One connection's failing timer must not keep the others' from running.
                _log.failure("a connection timer raised")


def reactor_later(seconds: float, func: Callable[[], object]) -> Any:
    """``func`` in ``seconds`` on the global reactor (an ``IDelayedCall``), for timers that need no batching."""
    from twisted.internet import reactor

    return cast(Any, reactor).callLater(seconds, func)
