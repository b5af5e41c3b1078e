"""Outgoing over TLS, end to end: a server in a child process, ``websockets``' client over wss://.

A read's replies are corked and encrypted at once (``_twisted.tls_writer``);
these check what a peer sees: many small messages in flight come back in
order, a 1 MiB message whole, a reader that stops reading is held to
``max_send_buffer`` (closed with 1008), and a clean close.  The fallback
(``CROWTWIST_PUBLIC_PATHS=twisted``: no writer, Twisted's own buffered
writes) is run through the same checks.
"""

from __future__ import annotations

import os
import queue
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from crowtwist import _twisted

from .test_twistd import make_certificate

ROOT = Path(__file__).resolve().parent.parent

SEND_BOUND = 512 * 1024
FLOOD = 192  # 48 MiB of 256 KiB messages: past every buffer on the way, and the bound

SERVER = textwrap.dedent(
    f"""
    import sys
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from crowtwist import Crow
    from crowtwist import _twisted
    from crowtwist.websocket import _protocol

    app = Crow()
    # (the test's reader resumes only when told the flood is over: no timer may end it first)
    app.websocket_limits(max_send_buffer={SEND_BOUND}, keepalive_interval=None, close_timeout=120)
    opened = []

    def on_open(conn):
        opened.append(conn)

    def on_message(conn, data, is_binary):
        conn.send_binary(data) if is_binary else conn.send_text(data)

    def on_close(conn, reason, code):
        print("CLOSED", int(code), flush=True)

    app.route("/echo").websocket().onopen(on_open).onmessage(on_message).onclose(on_close)

    def flood(conn):
        for i in range({FLOOD}):
            conn.send_binary(i.to_bytes(4, "big") + bytes(256 * 1024))
        print("FLOODED", conn.writable, flush=True)

    app.route("/flood").websocket().onopen(flood).onclose(on_close)
    tls = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={{sys.argv[1]}}:certKey={{sys.argv[2]}}")

    def listening(port):
        # (whether the private writer is in use: forced off, or its guard found Twisted's names changed)
        print("PORT", port.getHost().port, "WRITER", not _twisted.PUBLIC and _twisted._tls_names_present(), flush=True)

    tls.listen(app.site()).addCallback(listening)
    reactor.run()
    """
)


class Child:
    """The server process and the lines it prints."""

    def __init__(self, directory: Path, public: bool) -> None:
        key, cert = make_certificate(directory)
        self.context = ssl.create_default_context(cafile=str(cert))
        script = directory / "tls_server.py"
        script.write_text(SERVER)
        environ = dict(os.environ, PYTHONPATH=str(ROOT))
        environ.pop(_twisted.ENVIRONMENT, None)
        if public:
            environ[_twisted.ENVIRONMENT] = "twisted"
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(key), str(cert)],
            cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str) -> list[str]:
        while True:
            line = self.lines.get(timeout=30)
            assert line is not None, "the server ended:\n" + "".join(self.output)
            if line.startswith(prefix):
                return line.split()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture(params=[False, True], ids=["writer", "public-fallback"])
def server(request: Any, tmp_path: Path) -> Iterator[tuple[Child, int]]:
    child = Child(tmp_path, public=request.param)
    try:
        _, port, _, writer = child.wait_for("PORT")
        assert writer == str(not request.param)
        yield child, int(port)
    finally:
        child.stop()


def test_many_small_messages_in_flight_come_back_in_order(server: tuple[Child, int]) -> None:
    child, port = server
    with connect(f"wss://127.0.0.1:{port}/echo", ssl=child.context, open_timeout=10, max_size=None,
                 max_queue=None, compression=None) as ws:
        # Bursts larger than a TLS record and than the coalescer's hold, text and binary mixed.
        for burst in range(5):
            sent: list[str | bytes] = [
                f"{burst}:{i}:" + "x" * (i % 70) if i % 3 else bytes([burst, i % 256]) * (i % 50 + 1)
                for i in range(400)
            ]
            for message in sent:
                ws.send(message)
            assert [ws.recv(timeout=10) for _ in sent] == sent
        ws.close()
    assert child.wait_for("CLOSED")[1] == "1000"


def test_a_1_mib_message_comes_back_whole(server: tuple[Child, int]) -> None:
    child, port = server
    big_text = "é" * (512 * 1024)  # 1 MiB of UTF-8
    big_binary = os.urandom(1024 * 1024)
    with connect(f"wss://127.0.0.1:{port}/echo", ssl=child.context, open_timeout=10, max_size=None,
                 compression=None) as ws:
        for message in (big_text, b"small", big_binary, "after"):
            ws.send(message)
        assert ws.recv(timeout=10) == big_text
        assert ws.recv(timeout=10) == b"small"
        assert ws.recv(timeout=10) == big_binary
        assert ws.recv(timeout=10) == "after"
        ws.close(4001, "done")
    assert child.wait_for("CLOSED")[1] == "4001"


def test_a_reader_that_stops_reading_is_held_to_max_send_buffer(server: tuple[Child, int]) -> None:
    child, port = server
    # max_queue=2: the client stops reading after two messages until recv() is called.
    with connect(f"wss://127.0.0.1:{port}/flood", ssl=child.context, open_timeout=10, max_size=None,
                 max_queue=2, compression=None, close_timeout=10) as ws:
        assert child.wait_for("FLOODED")[1] == "False"  # over the bound: no longer writable
        received = []
        with pytest.raises(ConnectionClosed) as raised:
            while True:
                message = ws.recv(timeout=30)  # (a loaded machine: the bound, not the clock, ends this)
                assert isinstance(message, bytes) and len(message) == 4 + 256 * 1024
                received.append(int.from_bytes(message[:4], "big"))
        assert raised.value.rcvd is not None and raised.value.rcvd.code == 1008
    assert child.wait_for("CLOSED")[1] == "1008"
    # In order, and the rest was not kept for a peer that does not read.
    assert received == list(range(len(received)))
    assert 0 < len(received) < FLOOD


def test_the_fallback_is_taken_when_forced_or_when_the_aggregator_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.protocol import Protocol
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    class Transport(TLSMemoryBIOProtocol):
        def __init__(self) -> None:
            self.wrappedProtocol = Protocol()
            self.flushed = 0
            outer = self

            class Aggregator:
                def flush(self) -> None:
                    outer.flushed += 1

            self._aggregator = Aggregator()

    transport = Transport()
    # Each check below starts from an unchecked guard, whatever ran before in this process.
    monkeypatch.setattr(_twisted, "PUBLIC", False)
    monkeypatch.setattr(_twisted, "_tls_checked", [])
    written: list[bytes] = []
    monkeypatch.setattr(TLSMemoryBIOProtocol, "write", lambda self, data: written.append(data))
    writer = _twisted.tls_writer(transport)
    assert writer is not None, (_twisted._tls_checked, vars(transport))
    writer(b"frames")
    # What Twisted held goes first, then ours, through TLSMemoryBIOProtocol's public write.
    assert (transport.flushed, written) == (1, [b"frames"])
    assert _twisted.tls_writer(Protocol()) is None  # not a TLS transport
    del transport._aggregator
    assert _twisted.tls_writer(transport) is None  # no aggregator: Twisted's write as usual
    monkeypatch.setattr(_twisted, "PUBLIC", True)
    assert _twisted.tls_writer(Transport()) is None
    monkeypatch.setattr(_twisted, "PUBLIC", False)
    monkeypatch.setattr(_twisted, "_tls_checked", [False])  # the guard found the names changed
    assert _twisted.tls_writer(Transport()) is None


def test_the_guard_knows_the_aggregator_whether_annotated_or_only_assigned() -> None:
    """Twisted 26.10 annotates and assigns ``_aggregator``, 26.4 only assigns it in ``__init__``: both count; an annotation alone does not."""

    class AnnotatedAndAssigned:  # Twisted 26.10
        _aggregator: object

        def __init__(self) -> None:
            self._aggregator = object()

    class Assigned:  # Twisted 26.4
        def __init__(self) -> None:
            self._aggregator = object()

    class AnnotatedOnly:  # no instance would have one
        _aggregator: object

    class Neither:
        def __init__(self) -> None:
            self.other = object()

    assert _twisted._sets_aggregator(AnnotatedAndAssigned)
    assert _twisted._sets_aggregator(Assigned)
    assert not _twisted._sets_aggregator(AnnotatedOnly)
    assert not _twisted._sets_aggregator(Neither)
    assert not _twisted._sets_aggregator(type("Bare", (), {}))
