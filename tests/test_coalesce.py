"""The coalescer: when a busy reactor turn's replies are held, and that they all go out at its end."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from crowtwist.websocket._coalesce import Coalescer

from .conftest import LogCapture


class Reader:
    def __init__(self, name: str, sent: list[str]) -> None:
        self.name = name
        self.sent = sent

    def release(self) -> None:
        self.sent.append(self.name)


def setup() -> tuple[Coalescer, list[float], Clock, list[str]]:
    now = [0.0]
    return Coalescer(busy_gap=100e-6, clock=lambda: now[0]), now, Clock(), []


def test_starts_answering_each_read_at_once() -> None:
    """A lone connection's reads, however close together, never wait for the end of the turn."""
    coalescer, now, _, _ = setup()
    reader = object()
    for _ in range(5):
        now[0] += 1e-6
        assert coalescer.read(reader) is False


def test_reads_of_different_connections_far_apart_stay_immediate() -> None:
    """Different connections reading further apart than the busy gap are answered at once."""
    coalescer, now, _, _ = setup()
    a, b = object(), object()
    assert coalescer.read(a) is False
    now[0] += 1e-3
    assert coalescer.read(b) is False


def test_busy_turn_holds_replies_and_flushes_them_in_order() -> None:
    """Two connections reading back to back turn holding on; one flush at the turn's end sends all, in order."""
    coalescer, now, clock, sent = setup()
    a, b, c = (Reader(n, sent) for n in "abc")
    assert coalescer.read(a) is False
    now[0] += 10e-6
    assert coalescer.read(b) is True
    coalescer.hold(b, clock.callLater)
    now[0] += 10e-6
    assert coalescer.read(c) is True
    coalescer.hold(c, clock.callLater)
    assert sent == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert sent == ["b", "c"] and clock.getDelayedCalls() == []
    assert coalescer.batching  # two were waiting: still busy


def test_quiet_turn_turns_holding_off() -> None:
    """A flush that finds a single connection waiting switches back to answering at once."""
    coalescer, now, clock, sent = setup()
    a, b = Reader("a", sent), Reader("b", sent)
    coalescer.read(a)
    now[0] += 10e-6
    coalescer.read(b)
    coalescer.hold(b, clock.callLater)
    clock.advance(0)
    assert sent == ["b"] and not coalescer.batching
    now[0] += 10e-6
    assert coalescer.read(b) is False


def test_one_failing_release_does_not_keep_the_others(logs: LogCapture) -> None:
    """If sending one connection's replies raises, it is logged and the next connection's still go out."""
    coalescer, now, clock, sent = setup()

    class Broken:
        def release(self) -> None:
            raise RuntimeError("boom")

    coalescer.batching = True
    coalescer.hold(Broken(), clock.callLater)
    coalescer.hold(Reader("ok", sent), clock.callLater)
    clock.advance(0)
    assert sent == ["ok"]
    assert len(logs.failures()) == 1
