from __future__ import annotations

from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import LogLevel, globalLogPublisher

from crowtwist import Crow


class LogCapture:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def at(self, level: LogLevel) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_level") is level]

    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "log_failure" in e]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        yield capture
    finally:
        globalLogPublisher.removeObserver(capture)


@pytest.fixture
def site_port() -> Iterator[Any]:
    """Serve app.site() (the deadline-keeping Site) on a random 127.0.0.1 port."""
    ports: list[Any] = []

    def start(app: Crow) -> int:
        port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
        ports.append(port)
        return int(port.getHost().port)

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


# Tests that check what only crowtwist's autobahn fast paths give, marked
# ``@pytest.mark.fast_paths(GIVE_UP)``, are skipped when those paths are off
# (``_autobahn.FAST`` is false: the guard failed, or CROWTWIST_PUBLIC_PATHS said
# so).  Each skip names one of these, which crowtwist/websocket/_public.py's
# docstring lists as what the public paths give up.
GIVE_UPS = {
    "close code": "autobahn's documented sendClose takes 1000 and 3000-4999 only; other codes go out as 1000,"
    " with the code at the start of the reason",
    "1014": "autobahn's sendClose refuses 1014, and autobahn fails a peer's close frame with 1014 as a protocol"
    " error (1002)",
    "compression": "permessage-deflate is declined",
    "queue bound": "autobahn handles the whole read it is in before reading pauses, so the queue may pass its"
    " bound by one read",
    "direct writes": "frames go through the transport, not to the socket directly, and replies are not gathered"
    " into one send",
    "fast path": "checks FastProtocol's state or crowtwist's own frame parser, which the public paths do not use",
    "failing": "autobahn goes on parsing what a failed peer sends and closes only after the close timeout, so a"
    " peer that keeps sending may get a reset instead of the replies and close frame before it",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from crowtwist.websocket._autobahn import FAST

    for item in items:
        mark = item.get_closest_marker("fast_paths")
        if mark is None:
            continue
        if len(mark.args) != 1 or mark.args[0] not in GIVE_UPS:
            raise pytest.UsageError(f"{item.nodeid}: fast_paths takes one of {sorted(GIVE_UPS)}, not {mark.args}")
        if not FAST:
            item.add_marker(pytest.mark.skip(reason=f"autobahn's public paths: {GIVE_UPS[mark.args[0]]}"))
