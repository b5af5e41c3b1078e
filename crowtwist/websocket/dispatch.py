"""One connection's events, handled one at a time in arrival order.

This is the sans-I/O heart of the WebSocket side: it runs handler calls and,
when one returns something still to come (a Deferred or a coroutine), holds
every later event back until it is done.  It talks to the outside through
three callables, so it is tested without a reactor or a socket:

* ``pause()`` / ``resume()``: stop and restart reading from the peer while a
  handler is pending, so a slow handler costs bounded memory;
* ``failed(failure, event)``: a handler raised (or its Deferred failed).

After a failure, events not yet run are dropped, except the ones pushed as
``essential`` (``onerror`` and ``onclose``), which always run.
"""

from __future__ import annotations

from collections import deque
from typing import Any
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from .._handlers import Handler, as_deferred

__all__ = ["EventQueue"]

_Event = tuple[Handler, tuple[Any, ...], bool]


class EventQueue:
    """Serialises handler calls for one connection."""

    __slots__ = (
        "_queue", "_running", "_waiting", "_paused", "_failed", "_pending", "_pause", "_resume", "_on_failure",
    )

    def __init__(
        self,
        pause: Callable[[], object],
        resume: Callable[[], object],
        failed: Callable[[Failure, str], object],
    ) -> None:
        # Created when an event has to wait: most connections never need one.
        self._queue: deque[_Event] | None = None
        self._running = False
        self._waiting = False
        self._paused = False
        self._failed = False
        self._pending: Deferred[Any] | None = None
        self._pause = pause
        self._resume = resume
        self._on_failure = failed

    @property
    def busy(self) -> bool:
        """Whether a handler's result is still pending."""
        return self._waiting

    @property
    def has_failed(self) -> bool:
        """Whether a handler raised on this connection."""
        return self._failed

    def __len__(self) -> int:
        """Events waiting for their turn."""
        return len(self._queue) if self._queue else 0

    def push(self, handler: Handler | None, *args: Any, essential: bool = False) -> None:
        """Run ``handler(*args)`` now, or after the events before it."""
        if handler is None or (self._failed and not essential):
            return
        if self._running or self._waiting or self._queue:
            self._waiting_room().append((handler, args, essential))
            return
        # The common case, inline: nothing ahead of this event.
        self._running = True
        try:
            self._run(handler, args)
        finally:
            self._running = False
        if self._queue and not self._waiting:
            self._drain()

    def push_first(self, handler: Handler | None, *args: Any) -> None:
        """Run an essential ``handler(*args)`` before anything else that is queued."""
        if handler is None:
            return
        self._waiting_room().appendleft((handler, args, True))
        if not (self._running or self._waiting):
            self._drain()

    def _waiting_room(self) -> deque[_Event]:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        return queue

    def _drain(self) -> None:
        self._running = True
        try:
            # Re-read each turn: a failure replaces the queue with its essential events.
            while self._queue and not self._waiting:
                handler, args, essential = self._queue.popleft()
                if self._failed and not essential:
                    continue
                self._run(handler, args)
        finally:
            self._running = False

    def _run(self, handler: Handler, args: tuple[Any, ...]) -> None:
        try:
            result = handler.call(*args)
        except Exception:
            self._fail(Failure(), handler.event)
            return
        if result is None:
            return
        pending = as_deferred(result)
        if pending is None:
            return
        self._waiting = True
        self._pending = pending
        pending.addCallbacks(self._settled, self._errored, errbackArgs=(handler.event,))
        if self._waiting and not self._paused:
            # Still pending after addCallbacks: a real wait, so stop reading.
            self._paused = True
            self._pause()

    def cancel_pending(self) -> None:
        """Cancel the handler result being waited for, if any (its connection is gone)."""
        pending = self._pending
        if pending is not None and self._waiting:
            pending.cancel()

    def _settled(self, _: object) -> None:
        self._waiting = False
        self._pending = None
        if self._running:
            # Fired synchronously inside _drain's addCallbacks: its loop goes on.
            return
        if self._paused:
            self._paused = False
            self._resume()
        self._drain()

    def _errored(self, failure: Failure, event: str) -> None:
        self._fail(failure, event)
        self._settled(None)

    def _fail(self, failure: Failure, event: str) -> None:
        if not self._failed:
            self._failed = True
            if self._queue:
                self._queue = deque(e for e in self._queue if e[2])
        self._on_failure(failure, event)
