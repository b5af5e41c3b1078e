"""The per-connection event queue, driven by plain calls: no reactor, no socket."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure

from crowtwist._handlers import Handler
from crowtwist.websocket._dispatch import EventQueue


class Recorder:
    def __init__(self) -> None:
        self.log: list[Any] = []
        self.failures: list[tuple[str, Failure]] = []
        self.queue = EventQueue(
            lambda: self.log.append("pause"),
            lambda: self.log.append("resume"),
            lambda failure, event: self.failures.append((event, failure)),
        )

    def handler(self, func: Any, event: str = "onmessage", n: int = 1) -> Handler:
        return Handler(func, event, n, n)


def test_sync_handlers_run_at_once_in_order() -> None:
    """Synchronous handlers run as they are pushed, without pausing the reader."""
    r = Recorder()
    h = r.handler(lambda x: r.log.append(x))
    for i in range(3):
        r.queue.push(h, i)
    assert r.log == [0, 1, 2]


def test_pending_deferred_holds_back_later_events_without_pausing() -> None:
    """An unfinished handler holds back the next events; reading goes on while the queue has room."""
    r = Recorder()
    gate: Deferred[None] = Deferred()
    slow = r.handler(lambda x: (r.log.append(("slow", x)), gate)[1])
    fast = r.handler(lambda x: r.log.append(("fast", x)))
    r.queue.push(slow, 1)
    r.queue.push(fast, 2)
    r.queue.push(fast, 3)
    assert r.log == [("slow", 1)]
    assert r.queue.busy and len(r.queue) == 2 and not r.queue.paused
    gate.callback(None)
    assert r.log == [("slow", 1), ("fast", 2), ("fast", 3)]
    assert not r.queue.busy


def test_already_fired_deferred_does_not_pause() -> None:
    """A Deferred that has already fired is not a wait."""
    r = Recorder()
    h = r.handler(lambda x: (r.log.append(x), succeed(None))[1])
    r.queue.push(h, 1)
    r.queue.push(h, 2)
    assert r.log == [1, 2]


def test_coroutine_handlers_are_awaited_in_order() -> None:
    """async def handlers are awaited one at a time."""
    r = Recorder()
    gates = [Deferred[None](), Deferred[None]()]

    async def handler(i: int) -> None:
        r.log.append(("start", i))
        await gates[i]
        r.log.append(("end", i))

    h = r.handler(handler)
    r.queue.push(h, 0)
    r.queue.push(h, 1)
    assert r.log == [("start", 0)]
    gates[0].callback(None)
    assert r.log == [("start", 0), ("end", 0), ("start", 1)]
    gates[1].callback(None)
    assert r.log[-1] == ("end", 1)


def test_failure_drops_the_rest_but_runs_essentials() -> None:
    """After a handler raises, queued messages are dropped while onerror and onclose still run."""
    r = Recorder()
    gate: Deferred[None] = Deferred()
    r.queue.push(r.handler(lambda: gate, n=0))
    r.queue.push(r.handler(lambda: 1 / 0, n=0))
    r.queue.push(r.handler(lambda: r.log.append("dropped"), n=0))
    r.queue.push(r.handler(lambda: r.log.append("close"), "onclose", 0), essential=True)
    gate.callback(None)
    assert [event for event, _ in r.failures] == ["onmessage"]
    assert r.failures[0][1].check(ZeroDivisionError)
    assert "dropped" not in r.log and "close" in r.log
    assert r.queue.has_failed
    r.queue.push(r.handler(lambda: r.log.append("later"), n=0))
    assert "later" not in r.log


def test_failed_deferred_is_a_failure() -> None:
    """A Deferred that fails counts as a handler that raised."""
    r = Recorder()
    gate: Deferred[None] = Deferred()
    r.queue.push(r.handler(lambda: gate, n=0))
    gate.errback(RuntimeError("boom"))
    assert r.failures[0][1].check(RuntimeError)
    assert r.log == []


def test_push_first_jumps_the_queue() -> None:
    """An essential event pushed first runs before events already waiting."""
    r = Recorder()
    gate: Deferred[None] = Deferred()
    r.queue.push(r.handler(lambda: gate, n=0))
    r.queue.push(r.handler(lambda: r.log.append("second"), n=0))
    r.queue.push_first(r.handler(lambda: r.log.append("first"), "onerror", 0))
    gate.callback(None)
    assert r.log == ["first", "second"]


def test_handler_arity_read_once() -> None:
    """Both generations of Crow's signatures are accepted and called with what they take."""
    calls: list[tuple[Any, ...]] = []
    old = Handler(lambda conn: calls.append((conn,)), "onerror", 1, 2)
    new = Handler(lambda conn, message: calls.append((conn, message)), "onerror", 1, 2)
    variadic = Handler(lambda *args: calls.append(args), "onclose", 2, 3)
    old("c", "m")
    new("c", "m")
    variadic("c", "r", 1000)
    assert calls == [("c",), ("c", "m"), ("c", "r", 1000)]


def test_handler_with_wrong_arity_is_refused_at_registration() -> None:
    """A handler that cannot take the event's arguments is refused with the event's name."""
    with pytest.raises(TypeError, match="onmessage handler .* takes 1 positional argument"):
        Handler(lambda conn: None, "onmessage", 3, 3)
    with pytest.raises(TypeError, match="must be callable"):
        Handler(42, "onopen", 1, 1)  # type: ignore[arg-type]


def test_full_queue_pauses_reading_and_a_quarter_resumes_it() -> None:
    """Reading pauses when max_messages wait, and resumes once a quarter of them are left."""
    r = Recorder()
    r.queue.max_messages = 8
    gates = [Deferred[None]() for _ in range(20)]
    h = r.handler(lambda i: (r.log.append(i), gates[i])[1])
    for i in range(9):
        r.queue.push_message(h, 10, i)
    # 0 runs, 1..8 wait: the eighth fills the queue.
    assert r.log == [0, "pause"] and r.queue.paused and len(r.queue) == 8
    for i in range(6):
        gates[i].callback(None)
    # Six left the queue (2 waiting now): resumed when it was down to 8 // 4.
    assert r.log == [0, "pause", 1, 2, 3, 4, 5, "resume", 6] and not r.queue.paused


def test_byte_bound_pauses_reading() -> None:
    """Reading pauses when the waiting messages reach max_bytes, however few they are."""
    r = Recorder()
    r.queue.max_bytes = 1000
    gate: Deferred[None] = Deferred()
    h = r.handler(lambda i: gate if i == 0 else r.log.append(i))
    r.queue.push_message(h, 10, 0)
    r.queue.push_message(h, 600, 1)
    assert r.log == []
    r.queue.push_message(h, 400, 2)
    assert r.log == ["pause"] and r.queue.queued_bytes == 1000
    gate.callback(None)
    assert r.log == ["pause", 1, "resume", 2] and r.queue.queued_bytes == 0


def test_no_bounds_never_pause() -> None:
    """With both bounds lifted, messages wait without pausing the reader."""
    r = Recorder()
    r.queue.max_messages = r.queue.max_bytes = None
    gate: Deferred[None] = Deferred()
    h = r.handler(lambda i: gate if i == 0 else None)
    for i in range(1000):
        r.queue.push_message(h, 10_000, i)
    assert "pause" not in r.log and len(r.queue) == 999


def test_close_cancels_the_pending_handler_and_drops_messages() -> None:
    """close() cancels the pending Deferred, drops waiting messages, and essentials still run."""
    r = Recorder()
    r.queue.max_messages = 2
    cancelled: list[bool] = []
    gate: Deferred[None] = Deferred(lambda d: cancelled.append(True))
    h = r.handler(lambda i: (r.log.append(i), gate if i == 0 else None)[1])
    for i in range(3):
        r.queue.push_message(h, 1, i)
    assert r.log == [0, "pause"]
    r.queue.close()
    assert cancelled == [True]
    r.queue.push(r.handler(lambda: r.log.append("close"), "onclose", 0), essential=True)
    r.queue.push_message(h, 1, 7)
    # No resume: the connection is gone.  Messages 1, 2 and 7 never run.
    assert r.log == [0, "pause", "close"]
    assert [event for event, _ in r.failures] == ["onmessage"]


def test_close_cancels_a_coroutine() -> None:
    """A pending async handler is cancelled (CancelledError inside it) when the connection closes."""
    r = Recorder()
    never: Deferred[None] = Deferred()

    async def handler() -> None:
        try:
            await never
        except CancelledError:
            r.log.append("cancelled")
            raise

    r.queue.push(r.handler(handler, n=0))
    r.queue.close()
    assert r.log == ["cancelled"]


@settings(max_examples=200, deadline=None)
@given(
    bound=st.integers(1, 6),
    byte_bound=st.integers(1, 200),
    steps=st.lists(st.one_of(st.integers(0, 80), st.just(-1)), max_size=60),
)
def test_queue_invariants(bound: int, byte_bound: int, steps: list[int]) -> None:
    """Any mix of message arrivals (sizes) and handler completions (-1): order is kept, each
    message runs once, reading is paused exactly while the queue is over its low mark after
    having been full, and pauses and resumes alternate."""
    r = Recorder()
    r.queue.max_messages = bound
    r.queue.max_bytes = byte_bound
    gates: list[Deferred[None]] = []
    ran: list[int] = []

    def handler(i: int) -> Deferred[None]:
        ran.append(i)
        gate: Deferred[None] = Deferred()
        gates.append(gate)
        return gate

    h = r.handler(handler)
    sent = 0
    for step in steps:
        if step >= 0:
            r.queue.push_message(h, step, sent)
            sent += 1
        elif gates and not gates[-1].called:
            gates[-1].callback(None)
        assert r.queue.paused == (r.log.count("pause") > r.log.count("resume"))
        if r.queue.paused:
            assert len(r.queue) > bound // 4 or r.queue.queued_bytes > byte_bound // 4
        else:
            assert len(r.queue) < bound and r.queue.queued_bytes < byte_bound or not r.log
    while gates and not gates[-1].called:
        gates[-1].callback(None)
    assert ran == list(range(sent))
    assert not r.queue.paused and len(r.queue) == 0 and r.queue.queued_bytes == 0
    flips = [e for e in r.log if e in ("pause", "resume")]
    assert flips == ["pause", "resume"] * (len(flips) // 2)


def test_closing_resumes_reading_and_never_pauses_again() -> None:
    """Once the close handshake has begun, a full queue resumes reading and drops what it cannot take."""
    r = Recorder()
    r.queue.max_messages = 2
    gate: Deferred[None] = Deferred()
    h = r.handler(lambda i: (r.log.append(i), gate if i == 0 else None)[1])
    for i in range(3):
        r.queue.push_message(h, 1, i)
    assert r.log == [0, "pause"]
    r.queue.closing()
    assert r.log == [0, "pause", "resume"]
    for i in range(3, 10):
        r.queue.push_message(h, 1, i)  # the queue is full: dropped, and no pause
    gate.callback(None)
    assert r.log == [0, "pause", "resume", 1, 2]
