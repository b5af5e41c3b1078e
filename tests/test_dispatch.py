"""The per-connection event queue, driven by plain calls: no reactor, no socket."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from crowtwist._handlers import Handler
from crowtwist.websocket.dispatch import EventQueue


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


def test_pending_deferred_holds_back_later_events_and_pauses_reading() -> None:
    """An unfinished handler holds back the next event and stops reading until it is done."""
    r = Recorder()
    gate: Deferred[None] = Deferred()
    slow = r.handler(lambda x: (r.log.append(("slow", x)), gate)[1])
    fast = r.handler(lambda x: r.log.append(("fast", x)))
    r.queue.push(slow, 1)
    r.queue.push(fast, 2)
    r.queue.push(fast, 3)
    assert r.log == [("slow", 1), "pause"]
    assert r.queue.busy and len(r.queue) == 2
    gate.callback(None)
    assert r.log == [("slow", 1), "pause", "resume", ("fast", 2), ("fast", 3)]
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
    assert r.log == [("start", 0), "pause"]
    gates[0].callback(None)
    assert r.log[-4:] == [("end", 0), "resume", ("start", 1), "pause"]
    gates[1].callback(None)
    assert r.log[-2:] == [("end", 1), "resume"]


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
    assert r.log == ["pause", "resume"]


def test_push_first_jumps_the_queue() -> None:
    """An essential event pushed first runs before events already waiting."""
    r = Recorder()
    gate: Deferred[None] = Deferred()
    r.queue.push(r.handler(lambda: gate, n=0))
    r.queue.push(r.handler(lambda: r.log.append("second"), n=0))
    r.queue.push_first(r.handler(lambda: r.log.append("first"), "onerror", 0))
    gate.callback(None)
    assert r.log == ["pause", "resume", "first", "second"]


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
