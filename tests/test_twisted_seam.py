"""The Twisted seam (``crowtwist/_twisted.py``): its import-time guard, each private name's public
fallback, and the HTTP, site, upgrade and handshake tests passing on the public paths alone.

The fallbacks are checked two ways: in this process, against Twisted's own bookkeeping (the
public channel bookkeeping must agree with the private counters line by line, on every kind of
head), and in a child pytest with ``CROWTWIST_PUBLIC_PATHS=twisted``, where ``DeadlineChannel``
runs on them for real.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, cast
from collections.abc import Callable, Iterator

import pytest
import pytest_twisted
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import CannotListenError, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from crowtwist import Crow
from crowtwist import _twisted
from crowtwist._site import CrowSite, DeadlineChannel

from .clients import within
from .conftest import LogCapture

ROOT = Path(__file__).resolve().parent.parent
FORCED = _twisted.forced(os.environ)


# The guard.


def test_this_twisted_has_every_name_the_fast_paths_use() -> None:
    """On the Twisted installed (26.4.0 to 26.10.0), nothing is missing: the fast paths run unless forced off."""
    assert _twisted.missing_names() == []
    assert _twisted.MISSING == ()
    assert _twisted.PUBLIC is FORCED
    assert issubclass(DeadlineChannel, _twisted._PublicHead if FORCED else _twisted._PrivateHead)


_NOTHING = object()


def _renamed(name: str, default: object = _NOTHING) -> Callable[[pytest.MonkeyPatch], None]:
    """A Twisted that keeps ``name``'s state under another name: its parser works, ``name`` is never there."""
    hidden = "_elsewhere" + name

    def apply(monkeypatch: pytest.MonkeyPatch) -> None:
        if name in vars(HTTPChannel):
            monkeypatch.delattr(HTTPChannel, name)
        for method in ("__init__", "lineReceived", "headerReceived", "allContentReceived"):
            original = getattr(HTTPChannel, method)

            def wrapped(self: Any, *args: Any, _original: Any = original) -> Any:
                state = vars(self)
                outermost = name not in state
                if outermost:
                    if hidden in state:
                        state[name] = state.pop(hidden)
                    elif default is not _NOTHING:
                        state[name] = default
                try:
                    return _original(self, *args)
                finally:
                    if outermost and name in state:
                        state[hidden] = state.pop(name)

            monkeypatch.setattr(HTTPChannel, method, wrapped)

    return apply


def _without_class_attribute(owner: type, name: str) -> Callable[[pytest.MonkeyPatch], None]:
    return lambda monkeypatch: monkeypatch.delattr(owner, name)


def _write_counted_elsewhere(self: Any, data: bytes) -> None:
    """A FileDescriptor.write that keeps its count of unsent bytes under another name."""
    if data and self.connected:
        self._tempDataBuffer.append(data)
        self._unsent = getattr(self, "_unsent", 0) + len(data)
        self.startWriting()


CHANGES: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "HTTPChannel._HTTPChannel__first_line": _renamed("_HTTPChannel__first_line", 1),
    "HTTPChannel._receivedHeaderSize": _renamed("_receivedHeaderSize", 0),
    "HTTPChannel._receivedHeaderCount": _renamed("_receivedHeaderCount", 0),
    "HTTPChannel._command": _renamed("_command"),
    "HTTPChannel._version": _renamed("_version"),
    "HTTPChannel._handlingRequest": _renamed("_handlingRequest"),
    "HTTPChannel._respondToBadRequestAndDisconnect(self)": lambda monkeypatch: monkeypatch.setattr(
        HTTPChannel, "_respondToBadRequestAndDisconnect", lambda self, why: None
    ),
    "StreamServerEndpointService._raiseSynchronously": _without_class_attribute(
        StreamServerEndpointService, "_raiseSynchronously"
    ),
    "ReactorBase._exitSignal": _without_class_attribute(ReactorBase, "_exitSignal"),
    "FileDescriptor._tempDataLen": lambda monkeypatch: monkeypatch.setattr(
        FileDescriptor, "write", _write_counted_elsewhere
    ),
}


def test_every_name_is_changed_somewhere_below() -> None:
    assert set(CHANGES) == set(_twisted.NAMES)


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_missing_or_changed_name_takes_the_public_paths_with_one_warning(
    name: str, monkeypatch: pytest.MonkeyPatch, logs: LogCapture
) -> None:
    """The guard finds each name gone (or no longer moving as the fast path reads it), and the switch
    to the public paths is one warning in the crowtwist namespace that names it."""
    CHANGES[name](monkeypatch)
    missing = _twisted.missing_names()
    assert missing == [name]
    assert _twisted.choose_paths({}, missing) is True
    warnings = [e for e in logs.events if e.get("log_namespace") == "crowtwist"]
    assert len(warnings) == 1 and warnings[0]["log_level"] is LogLevel.warn
    assert name in formatEvent(warnings[0]) and "public paths" in formatEvent(warnings[0])


def test_a_name_that_no_longer_moves_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Still there, but no longer what the fast path reads (Twisted counts elsewhere): caught too."""
    original = HTTPChannel.lineReceived

    def counting_elsewhere(self: Any, line: bytes) -> None:
        before = self._receivedHeaderSize
        original(self, line)
        self._receivedHeaderSize = before

    monkeypatch.setattr(HTTPChannel, "lineReceived", counting_elsewhere)
    assert _twisted.missing_names() == ["HTTPChannel._receivedHeaderSize"]


def test_a_parser_too_different_to_probe_counts_as_every_channel_name_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, line: bytes) -> None:
        raise AttributeError("_somethingElse")

    monkeypatch.setattr(HTTPChannel, "lineReceived", broken)
    missing = _twisted.missing_names()
    assert "HTTPChannel._receivedHeaderSize" in missing and "HTTPChannel._command" in missing
    assert "ReactorBase._exitSignal" not in missing


@pytest.mark.parametrize(
    "value, forced",
    [
        (None, False),
        ("", False),
        ("autobahn", False),
        ("twisted", True),
        ("all", True),
        (" Autobahn , TWISTED ", True),
        ("twistedx", False),
    ],
)
def test_the_environment_forces_the_public_paths_with_the_same_warning(
    value: str | None, forced: bool, logs: LogCapture
) -> None:
    """CROWTWIST_PUBLIC_PATHS=twisted (or all) acts as if every name were missing; autobahn is another seam's."""
    environ = {} if value is None else {_twisted.ENVIRONMENT: value}
    assert _twisted.choose_paths(environ, []) is forced
    warnings = [e for e in logs.events if e.get("log_namespace") == "crowtwist"]
    assert len(warnings) == (1 if forced else 0)
    if forced:
        text = formatEvent(warnings[0])
        assert warnings[0]["log_level"] is LogLevel.warn and "public paths" in text
        assert all(name in text for name in _twisted.NAMES)


def _child(code: str, **environ: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop(_twisted.ENVIRONMENT, None)
    env.update(environ)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


# Imports crowtwist, then serves heads over the limits from memory: the public bookkeeping must
# still tell a long request line (414) from a long header section (431) and count fields.
_IMPORT_AND_SERVE = """
import json, sys
from twisted.logger import formatEvent, globalLogPublisher
events = []
globalLogPublisher.addObserver(events.append)
{before}
import crowtwist
from crowtwist import _twisted
from crowtwist._site import DeadlineChannel
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

app = crowtwist.Crow()
app.route("/")(lambda request: "ok\\n")

def status(data):
    site = app.site()
    site.reactor = Clock()
    transport = StringTransport()
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport.value().split(b" ", 2)[1].decode()

print(json.dumps({{
    "public": _twisted.PUBLIC,
    "base": DeadlineChannel.__mro__[1].__name__,
    "warnings": [
        formatEvent(e) for e in events if e.get("log_namespace") == "crowtwist" and e.get("seam") != "autobahn"
    ],
    "statuses": [
        status(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"),
        status(b"GET /" + b"q" * 20000 + b" HTTP/1.1\\r\\n"),
        status(b"GET / HTTP/1.1\\r\\n" + b"X-A: " + b"a" * 9000 + b"\\r\\nX-B: " + b"b" * 9000 + b"\\r\\n"),
        status(b"GET / HTTP/1.1\\r\\n" + b"".join(b"X-%d: a\\r\\n" % i for i in range(600))),
    ],
}}))
"""


@pytest.mark.parametrize(
    "before, environ, public",
    [
        ("", {}, False),
        ("", {"CROWTWIST_PUBLIC_PATHS": "twisted"}, True),
        ("", {"CROWTWIST_PUBLIC_PATHS": "autobahn"}, False),
        ("from twisted.internet.base import ReactorBase; del ReactorBase._exitSignal", {}, True),
    ],
    ids=["fast", "forced", "other-seam-forced", "a-name-missing"],
)
def test_the_guard_runs_at_import(before: str, environ: dict[str, str], public: bool) -> None:
    """At import: the fast paths, or (a name missing, or forced) one warning and the public ones, which
    still answer 414, 431 (size) and 431 (count) as the fast paths do."""
    found = _child(_IMPORT_AND_SERVE.format(before=before), **environ)
    assert found["public"] is public
    assert found["base"] == ("_PublicHead" if public else "_PrivateHead")
    assert len(found["warnings"]) == (1 if public else 0)
    if before:
        assert "ReactorBase._exitSignal" in found["warnings"][0]
        assert "HTTPChannel" not in found["warnings"][0]
    assert found["statuses"] == ["200", "414", "431", "431"]


# The channel's bookkeeping: the public one agrees with Twisted's, line by line.


class Checked(_twisted._PublicHead):
    """The public bookkeeping, checked against Twisted's private counters before and after every step."""

    checks = 0

    def agree(self) -> None:
        private: Any = self
        assert self.still_reading_request_line() == bool(private._HTTPChannel__first_line)
        assert self.header_bytes_so_far() == private._receivedHeaderSize
        assert self.header_fields_so_far() == private._receivedHeaderCount
        assert self.handling_request() == private._handlingRequest
        if "_command" in vars(self):
            assert self.head_method_and_version() == (private._command, private._version)
        self.checks += 1

    def dataReceived(self, data: bytes) -> None:
        self.agree()
        super().dataReceived(data)
        self.agree()

    def lineReceived(self, line: bytes) -> None:
        self.agree()
        super().lineReceived(line)
        self.agree()

    def headerReceived(self, line: bytes) -> bool:
        self.agree()
        ok = super().headerReceived(line)
        self.agree()
        return ok

    def allHeadersReceived(self) -> None:
        self.agree()
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self.agree()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self.agree()
        super().requestDone(request)
        self.agree()


class Answers(Resource):
    """Answers at once, except /later, which waits to be finished."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        request.content.read()
        if request.path == b"/later":
            self.waiting.append(request)
            return NOT_DONE_YET
        return b"ok"


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "reads",
    [
        pytest.param([GET, GET], id="kept-alive"),
        pytest.param([GET * 3], id="pipelined-in-one-read"),
        pytest.param([b"\r\n" + GET], id="forgiven-blank-line"),
        pytest.param([b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n  b\r\n\tc\r\nX-B: d\r\n\r\n"], id="folded"),
        pytest.param([b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab", b"cde" + GET], id="body"),
        pytest.param(
            [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" + GET],
            id="chunked",
        ),
        pytest.param([b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n" + GET, b"GET / HTT"], id="pipelined-behind-a-wait"),
        pytest.param([b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", GET], id="http-1.0"),
        pytest.param([b"GET / HTTP/1.1\r\nConnection: close\r\nHost: x\r\n\r\n", GET], id="connection-close"),
        pytest.param([bytes([b]) for b in GET + GET], id="byte-by-byte"),
    ],
)
def test_public_bookkeeping_agrees_with_twisteds(reads: list[bytes]) -> None:
    """Request line or not, head bytes, header fields, method and version, and a request in hand: the
    public paths' own bookkeeping says what Twisted's private counters say, at every step."""
    resource = Answers()
    site = Site(resource)
    site.protocol = Checked  # type: ignore[assignment]
    site.reactor = Clock()  # type: ignore[assignment]
    transport = StringTransport()
    channel = cast(Checked, site.buildProtocol(None))
    channel.makeConnection(transport)
    for data in reads:
        channel.dataReceived(data)
    for request in resource.waiting:
        request.write(b"late")
        request.finish()
    assert channel.checks > 10
    assert b"HTTP/1.1 200 OK" in transport.value() or b"HTTP/1.0 200 OK" in transport.value()


def _deadlines(clock: Clock) -> int:
    return sum(1 for call in clock.getDelayedCalls() if getattr(call.func, "__name__", "") == "_expired")


def _later_site() -> tuple[list[Deferred[str]], Clock, StringTransport, Any]:
    """A channel of a CrowSite (5 s head deadline) whose /later answers when the test says."""
    later: list[Deferred[str]] = []
    app = Crow()
    app.route("/later")(lambda request: later.append(Deferred()) or later[-1])
    clock = Clock()
    site = CrowSite(app.resource(), handshake_timeout=5, reactor=clock)
    transport = StringTransport()
    channel = site.buildProtocol(None)
    channel.makeConnection(transport)
    return later, clock, transport, channel


def test_no_head_deadline_while_a_request_is_answered_then_one_for_the_next_head() -> None:
    """Bytes of a next request, sent while the first waits for its answer, start no deadline (they are
    buffered); once the first is answered, the next head is under one, and cut at it."""
    later, clock, transport, channel = _later_site()
    channel.dataReceived(b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n")
    channel.dataReceived(b"GET /later HTTP/1.1\r\n")
    assert _deadlines(clock) == 0 and len(later) == 1
    clock.advance(10)
    assert not transport.disconnecting
    later[0].callback("done")
    assert b"200 OK" in transport.value() and _deadlines(clock) == 1
    clock.advance(6)
    assert transport.disconnecting


def test_a_closing_connection_gets_no_new_head_deadline() -> None:
    """After the answer to a Connection: close request, what the client still sends starts no deadline."""
    later, clock, transport, channel = _later_site()
    channel.dataReceived(b"GET /later HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    later[0].callback("done")
    assert b"200 OK" in transport.value() and transport.disconnecting
    channel.dataReceived(b"GET /later HTTP/1.1\r\n")
    assert _deadlines(clock) == 0


@pytest.mark.skipif(not _twisted.PUBLIC, reason="what the public paths answer instead of the fast path's 400")
def test_on_the_public_paths_a_malformed_head_gets_twisteds_own_400() -> None:
    """There is no public way to take twisted.web's answer to a malformed head over: it stays an empty 400."""
    app = Crow()
    app.route("/")(lambda request: "ok")
    transport = StringTransport()
    channel = app.site().buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n")
    assert transport.value() == b"HTTP/1.1 400 Bad Request\r\n\r\n" and transport.disconnecting


# Listening: both implementations of listening_service.

LISTENERS = {
    "private": _twisted._private_listening_service,
    "public": _twisted._public_listening_service,
}


@pytest.mark.parametrize("start", ["privilegedStartService", "startService"])
@pytest.mark.parametrize("kind", sorted(LISTENERS))
def test_a_port_that_cannot_be_had_raises_from_start(kind: str, start: str) -> None:
    """The port is taken: starting the service raises CannotListenError, where the caller can report it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = LISTENERS[kind](TCP4ServerEndpoint(reactor, port, interface="127.0.0.1"), Factory())
        with pytest.raises(CannotListenError):
            getattr(service, start)()


@pytest.mark.parametrize("kind", sorted(LISTENERS))
@pytest_twisted.inlineCallbacks
def test_the_service_listens_while_running(kind: str) -> Iterator[Any]:
    """Started, it accepts connections; stopped, its port is closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    accepted: Deferred[None] = Deferred()

    class Greeter(Protocol):
        def connectionMade(self) -> None:
            if not accepted.called:
                accepted.callback(None)

    service: Service = LISTENERS[kind](TCP4ServerEndpoint(reactor, port, interface="127.0.0.1"), Factory.forProtocol(Greeter))
    service.privilegedStartService()
    service.startService()
    assert service.running
    client = yield within(TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Protocol)))
    yield within(accepted)
    client.transport.loseConnection()
    yield within(cast(Deferred[None], service.stopService()))
    assert not service.running
    with pytest.raises(ConnectionRefusedError):
        yield within(TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Protocol)))


class NeverListening:
    """An endpoint whose listen never completes until cancelled."""

    def __init__(self) -> None:
        self.cancelled = False

    def listen(self, factory: Any) -> Deferred[Any]:
        return Deferred(lambda d: setattr(self, "cancelled", True))


@pytest.mark.parametrize("kind", sorted(LISTENERS))
def test_stopping_before_the_port_is_had_cancels_the_listen_quietly(kind: str, logs: LogCapture) -> None:
    endpoint = NeverListening()
    service = LISTENERS[kind](cast(Any, endpoint), Factory())
    service.startService()
    stopped = cast(Deferred[None], service.stopService())
    assert endpoint.cancelled and stopped.called and not logs.failures()


@pytest.mark.parametrize("kind", sorted(LISTENERS))
def test_a_listen_failing_later_is_logged(kind: str, logs: LogCapture) -> None:
    """A listen that fails after start (not at once) cannot raise from start: it is logged."""
    waiting: Deferred[Any] = Deferred()

    class Later:
        def listen(self, factory: Any) -> Deferred[Any]:
            return waiting

    service = LISTENERS[kind](cast(Any, Later()), Factory())
    service.startService()
    waiting.errback(CannotListenError("127.0.0.1", 1, OSError("in use")))
    # Twisted's service logs through twisted.python.log (a "failure" key), ours through twisted.logger.
    logged = [e for e in logs.events if "log_failure" in e or "failure" in e]
    assert len(logged) == 1 and "CannotListenError" in repr(logged[0].get("log_failure") or logged[0].get("failure"))


# twistd's exit status.


class SignalledReactor:
    _exitSignal: int | None = 15


def test_forgetting_the_exit_signal() -> None:
    """The fast path clears the signal twistd would re-raise; the public path cannot, and leaves it."""
    fast, public = SignalledReactor(), SignalledReactor()
    _twisted._private_forget_exit_signal(fast)
    _twisted._public_forget_exit_signal(public)
    assert fast._exitSignal is None and public._exitSignal == 15
    _twisted._private_forget_exit_signal(object())  # a reactor without one: nothing to do
    assert _twisted.forget_exit_signal is (
        _twisted._public_forget_exit_signal if _twisted.PUBLIC else _twisted._private_forget_exit_signal
    )


# Closing a TCP connection with nothing left to send.


class _Closer(Protocol):
    """Answers its first read with ``reply`` (``buffered``: through the transport's own buffer), then closes at once."""

    def __init__(self, reply: bytes, buffered: bool, outcome: Deferred[tuple[bool, bool, bool]]) -> None:
        self.reply = reply
        self.buffered = buffered
        self.outcome = outcome
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        transport: Any = self.transport
        if self.buffered:
            transport.write(self.reply)
        else:
            transport.getHandle().send(self.reply)
        closed = _twisted.close_at_once(transport)
        # What Twisted's own close leaves: the transport disconnected, the protocol told, before the return.
        self.outcome.callback((closed, self.lost, bool(transport.connected)))
        if not closed:
            transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


def _read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


@pytest.mark.parametrize("buffered", [False, True], ids=["sent", "in-the-transport"])
@pytest_twisted.inlineCallbacks
def test_close_at_once_closes_a_tcp_connection_with_nothing_left_to_send(buffered: bool) -> Iterator[Any]:
    """With the reply sent already, the connection closes inside the call (connectionLost has run, the
    peer gets the reply and then EOF); with bytes still in Twisted's buffer it does nothing, and
    loseConnection delivers them.  On the public paths it never closes."""
    outcome: Deferred[tuple[bool, bool, bool]] = Deferred()
    port = reactor.listenTCP(  # type: ignore[attr-defined]
        0, Factory.forProtocol(lambda: _Closer(b"bye", buffered, outcome)), interface="127.0.0.1"
    )
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.sendall(b"hi")
        closed, lost, connected = yield within(outcome)
        received = yield within(cast(Deferred[bytes], deferToThreadRead(client)))
        client.close()
    finally:
        yield port.stopListening()
    at_once = not buffered and not _twisted.PUBLIC
    assert (closed, lost, connected) == ((True, True, False) if at_once else (False, False, True))
    assert received == b"bye"


def deferToThreadRead(sock: socket.socket) -> Deferred[bytes]:
    from twisted.internet.threads import deferToThread

    return deferToThread(_read_to_eof, sock)


def test_close_at_once_leaves_other_transports_alone() -> None:
    transport = StringTransport()
    assert _twisted._private_close_at_once(transport) is False
    assert _twisted._public_close_at_once(transport) is False
    assert not transport.disconnecting
    assert _twisted.close_at_once is (
        _twisted._public_close_at_once if _twisted.PUBLIC else _twisted._private_close_at_once
    )


# The suites that touch the seam, on the public paths only.

# Tests that check what only the fast paths give (kept few; each says why when skipped).
EXPECTED_SKIPS = {
    "tests.test_handshake_strict::test_heads_over_the_limits_get_an_answer[fast-space-before-colon]",
    "tests.test_handshake_strict::test_heads_over_the_limits_get_an_answer[twisted.web-space-before-colon]",
}
SUITES = [
    "tests/test_http.py",
    "tests/test_upgrade.py",
    "tests/test_handshake_strict.py",
    "tests/test_fast_path.py",
    "tests/test_robustness.py",
    "tests/test_edges.py",
    "tests/test_route_agreement.py",
    "tests/test_limits.py",
    "tests/test_websocket_memory.py",
    "tests/test_pending_accept.py",
    "tests/test_peer_host.py",
    "tests/test_twisted_seam.py",
]
# The WebSocket keepalive timing tests (about 30 s) run the protocol's timers after the take-over,
# which no public path changes; everything else in these files runs.
NOT_HERE = "not keepalive and not slow_handler_is_not_a_dead_peer and not late_pong and not on_the_public_paths_only"


@pytest.mark.skipif(FORCED, reason="this test starts the public-paths run; it is not part of it")
def test_on_the_public_paths_only(tmp_path: Path) -> None:
    """With CROWTWIST_PUBLIC_PATHS=twisted, the HTTP, site, upgrade and handshake tests pass, but for
    the few that check a fast-path-only detail."""
    report = tmp_path / "report.xml"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CROWTWIST_PUBLIC_PATHS="twisted")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "-k", NOT_HERE, *SUITES],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    ran, skipped = 0, set()
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("skipped") is not None:
            skipped.add(name)
        else:
            ran += 1
    assert skipped == EXPECTED_SKIPS
    assert ran > 400
