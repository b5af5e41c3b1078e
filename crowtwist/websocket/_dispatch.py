"""One connection's events, handled one at a time in arrival order, behind a bounded queue.

This is the sans-I/O heart of the WebSocket side: it runs handler calls and,
when one returns something still to come (a Deferred or a coroutine), holds
every later event back until it is done.  The connection keeps reading from
its socket meanwhile, so control frames, the peer's close and EOF are handled
whatever the application is doing; only the messages wait here.  The queue is
bounded by a count and a byte size (``max_messages``, ``max_bytes``): when it
is full, reading pauses, and it resumes once the queue is down to a quarter of
both (the hysteresis websockets uses), so a slow handler costs bounded memory
and a fast one costs no pause at all.

It talks to the outside through three callables, so it is tested without a
reactor or a socket:

* ``pause()`` / ``resume()``: stop and restart reading from the peer;
* ``failed(failure, event)``: a handler raised (or its Deferred failed).

After a failure, events not yet run are dropped, except the ones pushed as
``essential`` (``onerror`` and ``onclose``), which always run.  ``close()``
(the connection is gone) cancels the pending handler and drops the queued
messages, so ``onclose`` runs next.
"""

from __future__ import annotations

from collections import deque
from typing import Any
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from .._handlers import Handler, as_deferred

__all__ = ["DEFAULT_MAX_QUEUE", "DEFAULT_MAX_QUEUE_BYTES", "EventQueue"]

DEFAULT_MAX_QUEUE = 16
"""Messages that may wait behind a pending handler before reading pauses (websockets' default)."""
DEFAULT_MAX_QUEUE_BYTES = 1024 * 1024
"""Bytes of messages that may wait behind a pending handler before reading pauses."""

# handler, its arguments, essential, and its size against the byte bound (0 but
# for messages).  Every inessential event counts against the message bound.
_Event = tuple[Handler, tuple[Any, ...], bool, int]


class EventQueue:
    """Serialises handler calls for one connection; pauses reading only while its queue is full."""

    __slots__ = (
        "_queue", "_running", "_waiting", "paused", "_failed", "_closed", "_closing", "_pending",
        "_pause", "_resume", "_on_failure", "_count", "_bytes", "max_messages", "max_bytes",
    )

    def __init__(
        self,
        pause: Callable[[], object],
        resume: Callable[[], object],
        failed: Callable[[Failure, str], object],
        max_messages: int | None = DEFAULT_MAX_QUEUE,
        max_bytes: int | None = DEFAULT_MAX_QUEUE_BYTES,
    ) -> None:
        # Created when an event has to wait: most connections never need one.
        self._queue: deque[_Event] | None = None
        self._running = False
        self._waiting = False
        self.paused = False
        """Whether reading is paused because the queue is full (read it; do not set it)."""
        self._failed = False
        self._closed = False
        self._closing = False
        self._pending: Deferred[Any] | None = None
        self._pause = pause
        self._resume = resume
        self._on_failure = failed
        # Messages waiting, and their bytes.
        self._count = 0
        self._bytes = 0
        self.max_messages = max_messages
        """Messages that may wait before reading pauses; ``None``: no bound."""
        self.max_bytes = max_bytes
        """Bytes of waiting messages before reading pauses; ``None``: no bound."""

    @property
    def busy(self) -> bool:
        """Whether a handler's result is still pending."""
        return self._waiting

    @property
    def has_failed(self) -> bool:
        """Whether a handler raised on this connection."""
        return self._failed

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages waiting for their turn."""
        return self._bytes

    def __len__(self) -> int:
        """Events waiting for their turn."""
        return len(self._queue) if self._queue else 0

    def push(self, handler: Handler | None, *args: Any, essential: bool = False) -> None:
        """Run ``handler(*args)`` now, or after the events before it."""
        self._push(handler, args, essential, 0)

    def push_message(self, handler: Handler | None, size: int, *args: Any) -> None:
        """Like ``push``, for a message of ``size`` bytes: it counts against the queue's bounds."""
        if self._running or self._waiting or self._queue or self._failed or self._closed or handler is None:
            self._push(handler, args, False, size)
            return
        # The common case (nothing ahead of it), inline: this repeats the end of
        # _push on purpose, as one call fewer per message is ~20 ns, 4 % of
        # parsing and dispatching a small frame (measured in memory).
        self._running = True
        try:
            self._run(handler, args)
        finally:
            self._running = False
        if self._queue and not self._waiting:
            self._drain()

    def _push(self, handler: Handler | None, args: tuple[Any, ...], essential: bool, size: int) -> None:
        if handler is None or ((self._failed or self._closed) and not essential):
            return
        if self._running or self._waiting or self._queue:
            if self._closing and not essential and self._full():
                return  # closing: reading must go on, so what the full queue cannot take is dropped
            self._waiting_room().append((handler, args, essential, size))
            if not essential:
                self._count += 1
                self._bytes += size
                if not self.paused and not self._closing and self._full():
                    self.paused = True
                    self._pause()
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
        self._waiting_room().appendleft((handler, args, True, 0))
        if not (self._running or self._waiting):
            self._drain()

    def closing(self) -> None:
        """The close handshake has begun: reading must not pause again (the peer's close frame
        has to be heard), so messages that find the queue full from now on are dropped."""
        self._closing = True
        if self.paused:
            self._resume_reading()

    def drop_messages(self) -> None:
        """Drop the messages not yet handled (the connection failed); essential events still run."""
        self._drop_inessential()

    def close(self) -> None:
        """The connection is gone: cancel the pending handler and drop the waiting messages.

        Essential events already queued, and those pushed after, still run.
        """
        self._closed = True
        self._drop_inessential()
        pending = self._pending
        if pending is not None and self._waiting:
            pending.cancel()

    def _full(self) -> bool:
        return (self.max_messages is not None and self._count >= self.max_messages) or (
            self.max_bytes is not None and self._bytes >= self.max_bytes
        )

    def _low(self) -> bool:
        return (self.max_messages is None or self._count <= self.max_messages // 4) and (
            self.max_bytes is None or self._bytes <= self.max_bytes // 4
        )

    def _waiting_room(self) -> deque[_Event]:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        return queue

    def _drain(self) -> None:
        self._running = True
        try:
            # Re-read each turn: a failure or a close leaves only the essential events.
            while self._queue and not self._waiting:
                handler, args, essential, size = self._queue.popleft()
                if not essential:
                    self._count -= 1
                    self._bytes -= size
                    if self.paused and self._low():
                        self._resume_reading()
                self._run(handler, args)
        finally:
            self._running = False

    def _resume_reading(self) -> None:
        self.paused = False
        if not self._closed:
            self._resume()

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

    def _settled(self, _: object) -> None:
        self._waiting = False
        self._pending = None
        if self._running:
            # Fired synchronously inside _drain's addCallbacks: its loop goes on.
            return
        self._drain()

    def _errored(self, failure: Failure, event: str) -> None:
        self._fail(failure, event)
        self._settled(None)

    def _fail(self, failure: Failure, event: str) -> None:
        if not self._failed:
            self._failed = True
            self._drop_inessential()
        self._on_failure(failure, event)

    def _drop_inessential(self) -> None:
        if self._queue:
            self._queue = deque(e for e in self._queue if e[2])
        self._count = 0
        self._bytes = 0
        if self.paused:
            # Nothing waits now: read on, so the peer's close is heard.
            self._resume_reading()
