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

    __slots__ = ("_func", "_args", "_bucket")

    def __init__(self, func: Callable[..., object], args: tuple[Any, ...], bucket: _Bucket | None = None) -> None:
        self._func: Callable[..., object] | None = func
        self._args = args
        self._bucket = bucket

    def cancel(self) -> None:
        """Do not run it (a no-op once it has run)."""
        if self._func is None:
            return
        self._func = None
        self._args = ()
        bucket, self._bucket = self._bucket, None
        if bucket is not None:
            bucket.forget_one()

    def active(self) -> bool:
        """Whether it is still to run."""
        return self._func is not None

    def _fire(self) -> None:
        func, args = self._func, self._args
        if func is not None:
            self._func = None
            self._args = ()
            self._bucket = None
            func(*args)


class _Bucket:
    """The calls due at one deadline, and the one reactor call that runs them.

    When the last of them is cancelled the reactor call is cancelled too, so
    nothing is left pending once every connection has gone (trial checks).
    """

    __slots__ = ("calls", "live", "delayed", "owner", "key")

    def __init__(self, owner: BucketTimer, key: int) -> None:
        self.calls: list[TimerCall] = []
        self.live = 0
        self.delayed: Any = None
        self.owner = owner
        self.key = key

    def forget_one(self) -> None:
        self.live -= 1
        if self.live == 0:
            self.owner._buckets.pop(self.key, None)
            delayed = self.delayed
            if delayed is not None and delayed.active():
                delayed.cancel()


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
        self._buckets: dict[int, _Bucket] = {}

    def call_later(self, delay: float, func: Callable[..., object], *args: Any) -> TimerCall:
        """Run ``func(*args)`` in ``delay`` seconds (up to ``resolution`` later), unless cancelled."""
        now = self._clock()
        key = math.ceil((now + max(delay, 0.0)) / self._resolution)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self, key)
            # The bucket's end is never before now + delay.
            bucket.delayed = self._call_later(max(key * self._resolution - now, 0.0), self._fire, key)
        call = TimerCall(func, args, bucket)
        bucket.calls.append(call)
        bucket.live += 1
        return call

    def _fire(self, key: int) -> None:
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            return
        for call in bucket.calls:
            try:
                call._fire()
            except Exception:
                # One connection's failing timer must not keep the others' from running.
                _log.failure("a connection timer raised")


def reactor_later(seconds: float, func: Callable[[], object]) -> Any:
    """``func`` in ``seconds`` on the global reactor (an ``IDelayedCall``), for timers that need no batching."""
    from twisted.internet import reactor

    return cast(Any, reactor).callLater(seconds, func)
