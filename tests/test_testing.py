"""crowtwist.testing, its pytest plugin and docs/testing.md: the in-memory client against real apps and lying servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from collections.abc import Callable

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from crowtwist import CloseStatusCode, Crow, Response, testing
from crowtwist import _testing as T
from crowtwist.testing import (
    ClientResponse,
    CrowClient,
    ProtocolViolation,
    UpgradeRefused,
    WebSocketClosed,
)

pytest_plugins = ["crowtwist.pytest_plugin"]

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "testing.md"


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


# docs/testing.md: every example is run.

EXAMPLE = re.compile(r"(?:<!-- example: (\w+) -->\n)?```python\n(.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    return [(kind, code) for kind, code in EXAMPLE.findall(DOC.read_text())]


def test_every_python_block_of_the_doc_is_an_example() -> None:
    """Each Python block in docs/testing.md is marked as a pytest or trial example, so none goes unrun."""
    found = examples()
    assert found and all(kind in ("pytest", "trial") for kind, _ in found), [kind for kind, _ in found]
    kinds = {kind for kind, _ in found}
    assert kinds == {"pytest", "trial"}


def run_pytest(directory: Path, *args: str, extra_env: dict[str, str] | None = None) -> tuple[dict[str, str], str]:
    """Run pytest on ``directory`` in a child process; each test's outcome by name, and the output."""
    report = directory / "report.xml"
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *args, str(directory)],
        cwd=directory,
        env=dict(env(), **(extra_env or {})),
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcomes: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes[case.get("name", "")] = kinds[0] if kinds else "passed"
    return outcomes, process.stdout + process.stderr


def test_the_docs_pytest_examples_pass(tmp_path: Path) -> None:
    """Every pytest example of docs/testing.md passes, each as its own module, with the plugin loaded by -p."""
    expected = []
    for number, (kind, code) in enumerate(examples()):
        if kind == "pytest":
            (tmp_path / f"test_doc_{number}.py").write_text(code)
            expected += re.findall(r"^async def (test_\w+)|^def (test_\w+)", code, re.MULTILINE)
    outcomes, output = run_pytest(tmp_path, "-p", "crowtwist.pytest_plugin")
    names = sorted(a or b for a, b in expected)
    assert sorted(outcomes) == names, output
    assert set(outcomes.values()) == {"passed"}, output


def test_the_docs_trial_examples_pass(tmp_path: Path) -> None:
    """Every trial example of docs/testing.md passes under trial."""
    modules = []
    for number, (kind, code) in enumerate(examples()):
        if kind == "trial":
            (tmp_path / f"trial_doc_{number}.py").write_text(code)
            modules.append(f"trial_doc_{number}")
    process = subprocess.run(
        [sys.executable, "-m", "twisted.trial", "--temp-directory", str(tmp_path / "_trial_temp"), *modules],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = process.stdout + process.stderr
    # Trial fails a test that leaves a reactor call pending: the connections' timers cancel theirs.
    assert process.returncode == 0, output
    assert re.search(r"PASSED \(successes=\d+\)", output), output


PLUGIN_TEST = """
import pytest_twisted
from crowtwist import Crow

app = Crow()
app.route("/")(lambda: "hello")


@pytest_twisted.ensureDeferred
async def test_fixture(crow_client):
    client = crow_client(app)
    assert (await client.get("/")).text == "hello"
"""


@pytest.mark.parametrize("how", ["-p", "pytest_plugins", "entry point", "entry point and -p"])
def test_the_plugin_loads_every_way(tmp_path: Path, how: str) -> None:
    """The crow_client fixture is there whether the plugin comes by -p, pytest_plugins or the pytest11 entry point."""
    code = PLUGIN_TEST
    args: list[str] = []
    extra: dict[str, str] = {}
    if how == "pytest_plugins":
        code = 'pytest_plugins = ["crowtwist.pytest_plugin"]\n' + code
    if "-p" in how:
        args = ["-p", "crowtwist.pytest_plugin"]
    if how.startswith("entry point"):
        # What an installed crowtwist declares (setup.cfg), in a distribution of its own on the path.
        info = tmp_path / "site" / "crowtwist_plugin_probe-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: crowtwist-plugin-probe\nVersion: 1.0\n")
        entry = re.search(r"pytest11 =\n\s+(.+)\n", (ROOT / "setup.cfg").read_text())
        assert entry is not None
        (info / "entry_points.txt").write_text(f"[pytest11]\n{entry.group(1)}\n")
        extra["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env()["PYTHONPATH"]])
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_plugin.py").write_text(code)
    outcomes, output = run_pytest(tests, *args, extra_env=extra)
    assert outcomes == {"test_fixture": "passed"}, output


def test_the_fixture_without_pytest_twisted_says_so(tmp_path: Path) -> None:
    """Without pytest-twisted the plugin still loads, and the fixture fails the test with a message saying what to install."""
    (tmp_path / "test_plain.py").write_text(
        "def test_uses_it(crow_client):\n    pass\n\ndef test_does_not(): \n    pass\n"
    )
    outcomes, output = run_pytest(tmp_path, "-p", "no:twisted", "-p", "crowtwist.pytest_plugin")
    assert outcomes == {"test_uses_it": "error", "test_does_not": "passed"}, output
    assert "needs pytest-twisted" in output


def test_the_plugin_finds_pytest_twisted_only_when_active(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin takes pytest-twisted only when registered and importable."""
    from crowtwist.pytest_plugin import MISSING_PYTEST_TWISTED, _pytest_twisted

    class Manager:
        def __init__(self, has: bool) -> None:
            self.has = has

        def hasplugin(self, name: str) -> bool:
            return self.has

    class Config:
        def __init__(self, has: bool) -> None:
            self.pluginmanager = Manager(has)

    assert _pytest_twisted(Config(False)) is None  # type: ignore[arg-type]
    assert _pytest_twisted(Config(True)) is pytest_twisted  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "pytest_twisted", None)
    assert _pytest_twisted(Config(True)) is None  # type: ignore[arg-type]
    assert "pip install pytest-twisted" in MISSING_PYTEST_TWISTED


# Against real apps.


def chat_app() -> tuple[Crow, list[tuple[Any, ...]]]:
    app = Crow()
    events: list[tuple[Any, ...]] = []

    def message(conn: Any, data: Any, is_binary: bool) -> None:
        events.append(("message", data))
        if data == "ping me":
            conn.send_ping(b"are you there")
        elif data == "close":
            conn.close("done", 4001)
        elif is_binary:
            conn.send_binary(data)
        else:
            conn.send_text(data)

    (
        app.route("/chat/<int>")
        .websocket()
        .subprotocols(["b", "a"])
        .onaccept(lambda req: req.get_header_value("x-ok") != "no")
        .onopen(lambda conn: events.append(("open", conn.params, conn.get_remote_ip(), conn.get_subprotocol())))
        .onmessage(message)
        .onclose(lambda conn, reason, code: events.append(("close", code, reason)))
    )
    return app, events


@pytest_twisted.ensureDeferred
async def test_a_websocket_session_runs_the_real_handlers(crow_client: Callable[..., CrowClient]) -> None:
    """onaccept, onopen, onmessage and onclose run with the route's parameters, subprotocol, peer and close code."""
    app, events = chat_app()
    client = crow_client(app, peer="10.9.8.7")
    ws = await client.websocket("/chat/7", subprotocols=["a", "b"], headers=[("X-Ok", "yes")])
    assert ws.subprotocol == "b"
    assert ws.headers["upgrade"].lower() == "websocket"
    assert ws.is_open and client.websockets == [ws] and "open" in repr(ws)
    await ws.send_text("héllo")
    assert await ws.receive_text() == "héllo"
    await ws.send_binary(b"\x00\x01")
    assert await ws.receive_binary() == b"\x00\x01"
    await ws.send_json({"a": 1})
    assert await ws.receive_json() == {"a": 1}
    assert await ws.send_ping(b"p") == b"p"
    await ws.send_text("ping me")  # the app's ping is answered by the client
    await ws.close(1000, "bye")
    assert (ws.close_code, ws.close_reason) == (1000, "bye")
    assert not ws.is_open and "closed 1000" in repr(ws)
    assert events[0] == ("open", (7,), "10.9.8.7", "b")
    assert events[-1] == ("close", CloseStatusCode.NormalClosure, "bye")
    await ws.close()  # again: nothing more to do
    with pytest.raises(WebSocketClosed) as closed:
        ws.send_text("late")
    assert closed.value.code == 1000
    with pytest.raises(WebSocketClosed):
        await ws.receive()


@pytest_twisted.ensureDeferred
async def test_messages_wait_for_receive_and_the_close_follows(crow_client: Callable[..., CrowClient]) -> None:
    """Messages sent before the app's close are received in order, then receive() raises the app's close code."""
    app, events = chat_app()
    client = crow_client(app)
    ws = await client.websocket("/chat/1")
    ws.send_text("one")
    ws.send_binary(b"two")
    await ws.send_text("close")
    await ws.wait_closed()
    assert ws.pending == 2
    assert [await ws.receive(), await ws.receive()] == ["one", b"two"]
    with pytest.raises(WebSocketClosed) as closed:
        await ws.receive()
    assert (closed.value.code, closed.value.reason) == (4001, "done")
    with pytest.raises(WebSocketClosed):
        await ws.receive_text()  # (closed: the failure passes through)
    assert events[-1] == ("close", 4001, "")  # the peer's close frame: the client echoes the code alone


@pytest_twisted.ensureDeferred
async def test_receive_checks_the_kind_and_times_out(crow_client: Callable[..., CrowClient]) -> None:
    """receive_text and receive_binary refuse the other kind; receive() fails with TimeoutError when nothing comes."""
    app, _ = chat_app()
    client = crow_client(app, timeout=0.05)
    ws = await client.websocket("/chat/2")
    ws.send_binary(b"b")
    with pytest.raises(TypeError, match="expected a text message"):
        await ws.receive_text()
    ws.send_text("t")
    with pytest.raises(TypeError, match="expected a binary message"):
        await ws.receive_binary()
    with pytest.raises(TimeoutError, match="waited 0.05 s for a message on /chat/2"):
        await ws.receive()
    ws.send_text("after")
    assert await ws.receive(timeout=1) == "after"  # a timed-out wait took nothing


@pytest_twisted.ensureDeferred
async def test_a_dropped_connection_reaches_onclose_as_1006(crow_client: Callable[..., CrowClient]) -> None:
    """drop() ends the connection without a close frame: the app's onclose gets 1006, the client's code is 1006."""
    app, events = chat_app()
    ws = await crow_client(app).websocket("/chat/3")
    await ws.drop()
    assert ws.close_code == 1006
    assert events[-1] == ("close", CloseStatusCode.ClosedAbnormally, "uncleanly")
    await ws.drop()


@pytest_twisted.ensureDeferred
async def test_refusals_carry_status_headers_and_body(crow_client: Callable[..., CrowClient]) -> None:
    """A refused upgrade raises UpgradeRefused with the app's status, headers and body; a plain miss is one too."""
    app, _ = chat_app()
    app.route("/deny").websocket().onaccept(lambda req: Response(403, "not you", {"X-Why": "test"}))
    client = crow_client(app)
    with pytest.raises(UpgradeRefused) as refused:
        await client.websocket("/deny")
    assert (refused.value.status, refused.value.text, refused.value.headers["x-why"]) == (403, "not you", "test")
    assert "403 Forbidden: not you" in str(refused.value)
    with pytest.raises(UpgradeRefused) as refused:
        await client.websocket("/chat/1", headers={"X-Ok": "no"})
    assert refused.value.status == 400
    with pytest.raises(UpgradeRefused) as refused:
        await client.websocket("/nowhere")
    assert refused.value.status == 404
    with pytest.raises(UpgradeRefused) as refused:
        await client.websocket("/chat/1", headers={"Sec-WebSocket-Version": "8"})
    assert refused.value.status in (400, 426)


@pytest_twisted.ensureDeferred
async def test_enforce_ws_spec_apps_accept_the_clients_frames(crow_client: Callable[..., CrowClient]) -> None:
    """The client masks, so an app enforcing RFC 6455 serves it; an unmasked frame sent on purpose gets 1002."""
    app = Crow(enforce_ws_spec=True)
    app.route("/e").websocket().onmessage(lambda conn, data, is_binary: conn.send_text(data))
    client = crow_client(app)
    ws = await client.websocket("/e")
    await ws.send_text("masked")
    assert await ws.receive() == "masked"
    await ws.send_frame(0x1, b"bare", masked=False)
    await ws.wait_closed()
    assert ws.close_code == 1002


@pytest_twisted.ensureDeferred
async def test_a_full_queue_pauses_reading(crow_client: Callable[..., CrowClient]) -> None:
    """A handler that holds its messages fills the route's queue; reading pauses and resumes as over TCP, nothing is lost."""
    app = Crow()
    held: list[Deferred[None]] = []
    got: list[str] = []

    def slow(conn: Any, data: str, is_binary: bool) -> Deferred[None]:
        got.append(data)
        waiting: Deferred[None] = Deferred()
        held.append(waiting)
        return waiting

    app.route("/slow").websocket().max_queue(2).onmessage(slow)
    ws = await crow_client(app).websocket("/slow")
    for number in range(8):
        ws.send_text(str(number))
    while len(got) < 8:
        held.pop(0).callback(None) if held else None
        await task.deferLater(reactor, 0, lambda: None)
    assert got == [str(n) for n in range(8)]


@pytest_twisted.ensureDeferred
async def test_large_messages_go_both_ways(crow_client: Callable[..., CrowClient]) -> None:
    """Messages over the 64 KiB read size and high-water mark arrive whole, both ways."""
    app = Crow()
    app.route("/big").websocket().onmessage(lambda conn, data, is_binary: conn.send_binary(data * 3))
    ws = await crow_client(app).websocket("/big")
    payload = os.urandom(100_000)
    await ws.send_binary(payload)
    assert await ws.receive() == payload * 3


def http_app() -> Crow:
    app = Crow()
    app.route("/echo").methods("GET", "POST", "PUT", "PATCH", "DELETE")(
        lambda req: {
            "method": req.method,
            "url": req.raw_url,
            "body": req.body.decode(),
            "type": req.get_header_value("content-type"),
            "host": req.get_header_value("host"),
            "ip": req.remote_ip_address,
        }
    )

    @app.route("/chunks")
    def chunks(req: Any) -> object:
        raw = req.raw if hasattr(req, "raw") else req
        raw.write(b"abc")
        raw.write(b"def")
        raw.finish()
        return NOT_DONE_YET

    app.route("/latin")(lambda: Response(200, "é".encode("latin-1"), {"Content-Type": "text/plain; charset=latin-1"}))
    app.route("/odd")(lambda: Response(200, b"x", {"Content-Type": "text/plain; charset=nonesuch"}))
    app.route("/never")(lambda req, res: None)
    return app


@pytest_twisted.ensureDeferred
async def test_http_requests_send_what_they_are_given(crow_client: Callable[..., CrowClient]) -> None:
    """Methods, bodies (bytes, text, JSON, forms), queries and headers reach the handler as sent."""
    client = crow_client(http_app(), host="example.test", peer="::1")
    reply = await client.get("/echo", query={"q": ["1", "2"], "é": "x"})
    assert reply.json()["url"] == "/echo?q=1&q=2&%C3%A9=x"
    assert (reply.json()["host"], reply.json()["ip"]) == ("example.test", "::1")
    assert repr(reply).startswith("<ClientResponse 200 OK")
    reply = await client.post("/echo?a=1", query=[("b", 2)], json=[1])
    assert (reply.json()["url"], reply.json()["body"], reply.json()["type"]) == ("/echo?a=1&b=2", "[1]", "application/json")
    reply = await client.put("/echo", data={"k": "v w"})
    assert (reply.json()["body"], reply.json()["type"]) == ("k=v+w", "application/x-www-form-urlencoded")
    reply = await client.patch("/echo", body="tëxt", headers={"Content-Type": "text/plain", "Host": "other"})
    assert (reply.json()["body"], reply.json()["type"], reply.json()["host"]) == ("tëxt", "text/plain", "other")
    assert (await client.delete("/echo")).json()["method"] == "DELETE"
    assert (await client.post("/echo")).json()["body"] == ""
    head = await client.head("/echo")
    assert (head.status, head.body) == (200, b"")
    assert (await client.options("/echo")).status == 204
    assert (await client.get("/caf\u00e9#frag")).status == 404


@pytest_twisted.ensureDeferred
async def test_http_responses_are_read_whatever_their_framing(crow_client: Callable[..., CrowClient]) -> None:
    """A chunked body is joined; text follows the charset; json() names a body that is not JSON."""
    client = crow_client(http_app())
    chunked = await client.get("/chunks")
    assert chunked.body == b"abcdef"
    assert (await client.get("/latin")).text == "é"
    assert (await client.get("/odd")).text == "x"
    with pytest.raises(ValueError, match="not JSON"):
        chunked.json()


@pytest_twisted.ensureDeferred
async def test_a_request_that_times_out_leaves(crow_client: Callable[..., CrowClient]) -> None:
    """Past its timeout a request fails with TimeoutError and its connection is dropped."""
    client = crow_client(http_app())
    with pytest.raises(TimeoutError, match="the response to GET /never"):
        await client.get("/never", timeout=0.01)
    await task.deferLater(reactor, 0, lambda: None)
    assert not client._pipes


@pytest_twisted.ensureDeferred
async def test_close_ends_everything_and_the_client_opens_nothing_after() -> None:
    """close() closes open WebSockets with 1000 and drops pending requests; later requests are refused."""
    app, events = chat_app()
    async with testing.client(http_app()) as plain:
        pending = plain.get("/never", timeout=None)
    with pytest.raises(ConnectionError, match="before its response"):
        await pending
    client = CrowClient(app)
    ws = await client.websocket("/chat/5")
    await client.close()
    assert ws.close_code == 1000 and events[-1][:2] == ("close", CloseStatusCode.NormalClosure)
    with pytest.raises(RuntimeError, match="closed"):
        client.get("/")


def test_requests_are_checked_before_they_are_sent() -> None:
    """Malformed paths, headers, methods and bodies are refused with a clear error before anything is sent."""
    client = CrowClient(Crow())
    with pytest.raises(ValueError, match="starts with '/'"):
        client.get("relative")
    with pytest.raises(ValueError, match="no spaces"):
        client.get("/a b")
    with pytest.raises(ValueError, match="not a header name"):
        client.get("/", headers={"Bad Name": "x"})
    with pytest.raises(ValueError, match="one-line"):
        client.get("/", headers={"X": "a\r\nInjected: 1"})
    with pytest.raises(ValueError, match="not an HTTP method"):
        client.request("GE T", "/")
    with pytest.raises(TypeError, match="one of body, json and data"):
        client.post("/", body=b"x", json={})
    with pytest.raises(TypeError, match="subprotocols"):
        client.websocket("/", subprotocols="chat")
    assert not client._pipes


@pytest_twisted.ensureDeferred
async def test_sends_are_checked(crow_client: Callable[..., CrowClient]) -> None:
    """Wrong types, long pings and impossible close frames are refused; any two-byte code may be sent."""
    app, events = chat_app()
    ws = await crow_client(app).websocket("/chat/9")
    with pytest.raises(TypeError, match="send_binary sends bytes"):
        ws.send_text(b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="send_text sends str"):
        ws.send_binary("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 125"):
        ws.send_ping(bytes(126))
    with pytest.raises(ValueError, match="two bytes"):
        ws.close(70000)
    with pytest.raises(ValueError, match="needs a code"):
        ws.close(None, "why")
    with pytest.raises(ValueError, match="at most 125"):
        ws.close(1000, "x" * 124)
    await ws.close(1005)  # a code no endpoint may send: the app answers 1002
    assert ws.close_code == 1002


@pytest_twisted.ensureDeferred
async def test_a_close_without_a_code(crow_client: Callable[..., CrowClient]) -> None:
    """A close frame without a code reaches onclose as 1005, and the app's empty answer reads as 1005."""
    app, events = chat_app()
    ws = await crow_client(app).websocket("/chat/4")
    await ws.close(None)
    assert ws.close_code == 1005
    assert events[-1][1] == CloseStatusCode.NoStatusCodePresent


# Against servers that break the rules: a scripted peer in place of the app's site.


class Scripted(Protocol):
    """Answers the first request head with ``answer(key)``, then records what it reads."""

    def __init__(self, answer: Callable[[str], bytes]) -> None:
        self.answer: Callable[[str], bytes] | None = answer
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.answer is not None and b"\r\n\r\n" in self.data:
            answer, self.answer = self.answer, None
            key = re.search(rb"Sec-WebSocket-Key: (\S+)", self.data)
            out = answer(key.group(1).decode() if key else "")
            if out:
                assert self.transport is not None
                self.transport.write(out)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.reason = reason


class ScriptedSite:
    def __init__(self, answer: Callable[[str], bytes]) -> None:
        self.answer = answer
        self.protocols: list[Scripted] = []

    def buildProtocol(self, addr: object) -> Scripted:
        protocol = Scripted(self.answer)
        self.protocols.append(protocol)
        return protocol


def scripted(answer: Callable[[str], bytes], timeout: float = 1.0) -> tuple[CrowClient, ScriptedSite]:
    client = CrowClient(Crow(), timeout=timeout)
    site = ScriptedSite(answer)
    client.site = site  # type: ignore[assignment]
    return client, site


def upgraded(key: str, extra: bytes = b"", accept: str | None = None) -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + b"Sec-WebSocket-Accept: " + (accept or T.accept_key(key)).encode() + b"\r\n" + extra + b"\r\n"
    )


def frame(opcode: int, payload: bytes = b"", **options: Any) -> bytes:
    return T.encode_frame(opcode, payload, masked=options.pop("masked", False), **options)


@pytest.mark.parametrize(
    ("frames", "violation"),
    [
        (frame(0x1, b"x", masked=True), "masked frame"),
        (frame(0x1, b"x", rsv=4), "reserved bits"),
        (frame(0x9, b"x", fin=False), "control frame"),
        (frame(0x9, bytes(126)), "control frame"),
        (frame(0xB), "reserved opcode 0xb"),
        (frame(0x3), "reserved opcode 0x3"),
        (frame(0x0, b"x"), "no message to continue"),
        (frame(0x1, b"a", fin=False) + frame(0x2, b"b"), "inside a fragmented one"),
        (frame(0x1, b"\xff"), "invalid UTF-8"),
        (frame(0x8, b"\x03"), "one-byte payload"),
        (frame(0x8, b"\x03\xe8\xff"), "not UTF-8"),
        (frame(0x8, b"\x03\xee"), "close code 1006"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_server_breaking_rfc_6455_fails_the_connection(frames: bytes, violation: str) -> None:
    """Each frame a server must not send fails the connection, and receive() names it."""
    client, site = scripted(lambda key: upgraded(key) + frames)
    ws = await client.websocket("/")
    with pytest.raises(ProtocolViolation, match=violation):
        await ws.receive()
    assert ws.violation is not None and violation in ws.violation
    assert ws.close_code in (1006, 1002)
    sent = T.FrameReader().feed(site.protocols[0].data.partition(b"\r\n\r\n")[2])
    assert sent[-1][2] == 0x8 and sent[-1][3][:2] in (b"\x03\xea", b"\x03\xef")  # 1002 or 1007
    with pytest.raises(WebSocketClosed):
        ws.send_text("x")
    await client.close()


@pytest_twisted.ensureDeferred
async def test_fragments_pings_and_pongs_from_a_server() -> None:
    """Fragmented messages are joined, pings answered with pongs, an unasked pong ignored, frames after close dropped."""
    frames = (
        frame(0x1, b"he", fin=False)
        + frame(0x9, b"p")
        + frame(0x0, b"llo")
        + frame(0xA, b"unasked")
        + frame(0x8)
        + frame(0x1, b"late")
    )
    client, site = scripted(lambda key: upgraded(key) + frames)
    ws = await client.websocket("/")
    assert await ws.receive() == "hello"
    await ws.wait_closed()
    assert ws.close_code == 1005 and ws.pending == 0
    sent = T.FrameReader().feed(site.protocols[0].data.partition(b"\r\n\r\n")[2])
    assert [(opcode, payload) for _, _, opcode, payload in sent] == [(0xA, b"p"), (0x8, b"")]
    await client.close()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (lambda key: upgraded(key, accept="wrong"), "Sec-WebSocket-Accept"),
        (lambda key: upgraded(key).replace(b"Upgrade: websocket\r\n", b""), "without Upgrade"),
        (lambda key: upgraded(key, b"Sec-WebSocket-Protocol: z\r\n"), "not offered: 'z'"),
        (lambda key: upgraded(key, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"), "extension"),
        (lambda key: b"HTTP/2 200 OK\r\n\r\n", "status line"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_upgrade_answer_is_a_violation(answer: Callable[[str], bytes], error: str) -> None:
    """A 101 that RFC 6455 would not accept, or no HTTP at all, fails the upgrade with ProtocolViolation."""
    client, site = scripted(answer)
    with pytest.raises(ProtocolViolation, match=error):
        await client.websocket("/", subprotocols=["y"])
    await client.close()
    assert site.protocols[0].reason is not None


@pytest_twisted.ensureDeferred
async def test_a_server_that_closes_or_says_nothing() -> None:
    """A server that closes before answering is a ConnectionError; one answering to the close is a refusal; one silent times out."""
    client, _ = scripted(lambda key: b"")
    opening = client.websocket("/", timeout=0.05)
    with pytest.raises(TimeoutError, match="the answer to the upgrade to /"):
        await opening

    def refuse_then_close(key: str) -> bytes:
        return b"HTTP/1.1 403 Forbidden\r\n\r\nno"

    client, site = scripted(refuse_then_close)
    opening = client.websocket("/")
    await task.deferLater(reactor, 0, lambda: None)
    assert site.protocols[0].transport is not None
    site.protocols[0].transport.loseConnection()
    with pytest.raises(UpgradeRefused) as refused:
        await opening
    assert (refused.value.status, refused.value.body) == (403, b"no")

    client, site = scripted(lambda key: b"HTTP/1.1 403 Forb")
    opening = client.websocket("/")
    await task.deferLater(reactor, 0, lambda: None)
    site.protocols[0].transport.loseConnection()  # type: ignore[union-attr]
    with pytest.raises(ConnectionError, match="before it answered"):
        await opening


@pytest_twisted.ensureDeferred
async def test_a_server_that_ignores_the_close_is_dropped() -> None:
    """close() waits at most the timeout for the app's answer; client.close() then drops the connection."""
    client, site = scripted(lambda key: upgraded(key), timeout=0.05)
    ws = await client.websocket("/")
    with pytest.raises(TimeoutError, match="the close of /"):
        await ws.close()
    with pytest.raises(RuntimeError, match="not open yet"):
        ClientWebSocket_not_open(client).send_text("x")
    await client.close()
    assert ws.close_code == 1006
    assert site.protocols[0].reason is not None and site.protocols[0].reason.check(ConnectionLost)


def ClientWebSocket_not_open(client: CrowClient) -> testing.ClientWebSocket:
    return testing.ClientWebSocket(client, "/", (), None)


@pytest_twisted.ensureDeferred
async def test_broken_http_responses() -> None:
    """A malformed response is a ProtocolViolation; one cut short is a ConnectionError; one read to the close is whole."""
    client, _ = scripted(lambda key: b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    with pytest.raises(ProtocolViolation, match="Content-Length"):
        await client.get("/")
    client, _ = scripted(lambda key: b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    pending = client.get("/")
    await task.deferLater(reactor, 0, lambda: None)
    await client.close()
    with pytest.raises(ConnectionError):
        await pending
    client, site = scripted(lambda key: b"HTTP/1.1 200 OK\r\n\r\nto the end")
    pending = client.get("/")
    await task.deferLater(reactor, 0, lambda: None)
    site.protocols[0].transport.loseConnection()  # type: ignore[union-attr]
    assert (await pending).body == b"to the end"


# The pieces, by plain calls.


def test_the_response_reader_follows_rfc_9112() -> None:
    """Interim responses are skipped; chunked bodies with extensions and trailers are joined; bad framing is named."""
    reader = T.ResponseReader()
    assert not reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nab")
    assert not reader.feed(b"c\r\n0\r\nTrailer: t\r\n")
    assert reader.feed(b"\r\nextra")
    assert (reader.status, reader.body, reader.rest, reader.header("TRANSFER-ENCODING")) == (200, b"abc", b"extra", "chunked")
    assert reader.feed(b"more") and reader.rest == b"extramore"
    assert reader.header("absent") is None
    for head, why in [
        (b"HTTP/1.1 200 OK\r\nBad\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n", "CRLF"),
    ]:
        broken = T.ResponseReader()
        assert broken.feed(head) and broken.error is not None and why in broken.error
        assert broken.finish()
    gzip_then_close = T.ResponseReader()
    assert not gzip_then_close.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw")
    assert gzip_then_close.finish() and gzip_then_close.body == b"raw"
    cut = T.ResponseReader()
    assert not cut.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab") and not cut.finish()
    assert T.ResponseReader(head_only=True).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert T.ResponseReader().feed(b"HTTP/1.1 304 Not Modified\r\n\r\n")


def test_frames_of_every_length_round_trip() -> None:
    """Frames of 0, 125, 126, 65535 and 65536 bytes are written and read back, masked or not, split anywhere."""
    for length in (0, 125, 126, 65535, 65536):
        payload = os.urandom(length)
        for masked in (True, False):
            data = T.encode_frame(0x2, payload, masked=masked)
            reader = T.FrameReader()
            parts = [data[:1], data[1:3], data[3:9], data[9:]]
            assert [frame for part in parts for frame in reader.feed(part)] == [(True, 0, 0x2, payload)]
            assert reader.masked is masked


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.reason = reason


def pipe() -> tuple[T.Pipe, Recorder, Recorder, task.Clock]:
    clock = task.Clock()
    joined = T.Pipe(T.address("10.0.0.1", 1), T.address("10.0.0.2", 2), clock.callLater)
    client, server = Recorder(), Recorder()
    joined.connect(client, server)
    return joined, client, server, clock


def test_the_pipe_moves_bytes_in_reactor_turns_in_reads_of_64_kib() -> None:
    """Nothing moves inside a write; a turn delivers in reads of at most 64 KiB, held while the reader is paused."""
    joined, client, server, clock = pipe()
    joined.client.write(b"x" * (T.READ_SIZE + 1))
    assert server.data == []
    joined.server.pauseProducing()
    clock.advance(0)
    assert server.data == []
    joined.server.resumeProducing()
    joined.server.resumeProducing()
    clock.advance(0)
    assert [len(chunk) for chunk in server.data] == [T.READ_SIZE, 1]
    assert joined.client.getPeer().host == "10.0.0.2" and joined.client.getHost().host == "10.0.0.1"
    assert isinstance(T.address("::1", 1), type(T.address("fe80::1", 2)))
    joined.client.setTcpNoDelay(True)
    joined.client.setTcpKeepAlive(True)
    with pytest.raises(TypeError):
        joined.client.write("text")  # type: ignore[arg-type]
    joined.client.write(b"")
    joined.client.writeSequence([b"a", b"b"])
    clock.advance(0)
    assert server.data[-1] == b"ab"


def test_the_pipe_pauses_a_writer_over_the_high_water_mark() -> None:
    """A push producer is paused while more than 64 KiB of its data is unread, and resumed once it is read."""
    joined, client, server, clock = pipe()
    calls: list[str] = []

    class Producer:
        def pauseProducing(self) -> None:
            calls.append("pause")

        def resumeProducing(self) -> None:
            calls.append("resume")

        def stopProducing(self) -> None:
            calls.append("stop")

    joined.server.registerProducer(Producer(), True)
    joined.server.write(b"y" * (T.HIGH_WATER + 1))
    flushed = joined.server.when_flushed()
    assert calls == ["pause"] and not flushed.called
    clock.advance(0)
    assert calls == ["pause", "resume"] and flushed.called
    assert joined.server.when_flushed().called
    joined.server.stopProducing()  # (a lose, as TCP's stopProducing is)
    clock.advance(0)
    assert calls == ["pause", "resume", "stop"]
    assert server.reason is not None and server.reason.check(ConnectionDone)
    joined.server.write(b"after")  # dropped, as after a close
    joined.server.unregisterProducer()
    assert joined.server.when_flushed().called


def test_the_pipe_asks_a_pull_producer_for_more_while_there_is_room() -> None:
    """A pull producer is asked for data each time what it wrote has been read, until it unregisters."""
    joined, client, server, clock = pipe()
    chunks = [b"1", b"2", b"3"]

    class Pull:
        def resumeProducing(self) -> None:
            if chunks:
                joined.server.write(chunks.pop(0))
            else:
                joined.server.unregisterProducer()

        def stopProducing(self) -> None:
            pass

    joined.server.registerProducer(Pull(), False)
    clock.advance(0)
    assert b"".join(client.data) == b"123"


def test_an_abort_loses_what_was_unread_and_is_a_reset_for_the_peer() -> None:
    """An abort drops unread data: the aborting side sees ConnectionAborted, the other ConnectionLost, the server first."""
    joined, client, server, clock = pipe()
    joined.client.write(b"never read")
    joined.client.abortConnection()
    joined.client.abortConnection()
    order: list[str] = []
    server.connectionLost = lambda reason: order.append("server")  # type: ignore[method-assign]
    clock.advance(0)
    assert server.data == [] and order == ["server"]
    assert client.reason is not None and client.reason.check(ConnectionAborted)
    joined.schedule()
    joined.cancel()
    assert clock.getDelayedCalls() == []


def test_a_close_waits_for_what_was_written() -> None:
    """loseConnection closes after the other end has read what was written, even when it was paused."""
    joined, client, server, clock = pipe()
    joined.server.pauseProducing()
    joined.client.write(b"last words")
    joined.client.loseConnection()
    joined.client.loseConnection()
    clock.advance(0)
    assert server.reason is None
    joined.server.resumeProducing()
    clock.advance(0)
    assert server.data == [b"last words"] and server.reason is not None and server.reason.check(ConnectionDone)
    joined.pump()  # nothing more: a second pump is a no-op
    joined.client.resumeProducing()


def test_a_pump_inside_a_pump_waits_for_the_outer_one() -> None:
    """A write made while bytes are being handed over is moved by the same pump, not a nested one."""
    joined, client, server, clock = pipe()

    class Replier(Recorder):
        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            joined.pump()  # re-entered: returns at once
            joined.server.write(b"reply")

    replier = Replier()
    joined.server.protocol = replier
    joined.client.write(b"ask")
    clock.advance(0)
    assert replier.data == [b"ask"] and client.data == [b"reply"]


def test_client_response_reads_its_body() -> None:
    """text uses the charset, json() parses or names the body."""
    from crowtwist._request import Headers

    response = ClientResponse(200, "OK", Headers.of_pairs([("Content-Type", 'text/plain; charset="utf-8"')]), b"[1]")
    assert (response.text, response.json()) == ("[1]", [1])


def test_the_pipe_fires_at_once_when_idle_and_forgets_a_cancelled_turn() -> None:
    """after() calls at once outside a pump; cancel() drops a scheduled turn."""
    joined, client, server, clock = pipe()
    called: list[int] = []
    joined.after(called.append, 1)
    assert called == [1]
    joined.client.write(b"x")
    joined.cancel()
    assert clock.getDelayedCalls() == [] and server.data == []


@pytest_twisted.ensureDeferred
async def test_waits_in_progress_end_with_the_connection(crow_client: Callable[..., CrowClient]) -> None:
    """A receive() and a ping waiting when the connection drops fail with WebSocketClosed (1006)."""
    app, _ = chat_app()
    ws = await crow_client(app).websocket("/chat/6")
    receiving = ws.receive()
    pinging = ws.send_ping(b"x")
    await ws.drop()
    for waiting in (receiving, pinging):
        with pytest.raises(WebSocketClosed) as closed:
            await waiting
        assert closed.value.code == 1006


@pytest_twisted.ensureDeferred
async def test_client_close_drops_a_websocket_whose_server_does_not_answer() -> None:
    """client.close() gives each WebSocket the timeout to close, then drops it."""
    client, site = scripted(lambda key: upgraded(key), timeout=0.05)
    ws = await client.websocket("/")
    await client.close()
    assert ws.close_code == 1006
    assert site.protocols[0].reason is not None


def test_text_finds_the_charset_among_parameters() -> None:
    """Only the charset parameter names the encoding; an empty one means UTF-8."""
    from crowtwist._request import Headers

    latin = Headers.of_pairs([("Content-Type", "text/plain; format=flowed; charset=latin-1")])
    assert ClientResponse(200, "OK", latin, "é".encode("latin-1")).text == "é"
    empty = Headers.of_pairs([("Content-Type", "text/plain; charset=")])
    assert ClientResponse(200, "OK", empty, "é".encode()).text == "é"


# The project's own behaviours, through the client.


@pytest_twisted.ensureDeferred
async def test_a_long_poll_is_cancelled_when_its_client_leaves(crow_client: Callable[..., CrowClient]) -> None:
    """An async handler still waiting when its client disconnects is cancelled (README, "HTTP routes")."""
    app = Crow()
    cancelled: list[bool] = []

    @app.route("/wait")
    async def wait() -> str:
        await Deferred(lambda d: cancelled.append(True))
        return "never"

    client = crow_client(app)
    with pytest.raises(TimeoutError):
        await client.get("/wait", timeout=0.01)
    await task.deferLater(reactor, 0, lambda: None)
    assert cancelled == [True]


@pytest_twisted.ensureDeferred
async def test_rooms_reach_every_member(crow_client: Callable[..., CrowClient]) -> None:
    """app.publish reaches every connection in the room, the sender too, and no one outside it."""
    app = Crow()
    chat = app.route("/room/<string>").websocket()
    chat.onopen(lambda conn: conn.join(conn.params[0]))
    chat.onmessage(lambda conn, data, is_binary: app.publish(conn.params[0], data))
    client = crow_client(app)
    alice, bob, carol = [await client.websocket(path) for path in ("/room/a", "/room/a", "/room/b")]
    await alice.send_text("hi all")
    assert [await alice.receive(), await bob.receive()] == ["hi all", "hi all"]
    await carol.send_ping()
    assert carol.pending == 0


@pytest_twisted.ensureDeferred
async def test_a_deferred_onaccept_decides_later(crow_client: Callable[..., CrowClient]) -> None:
    """An onaccept answering through a Deferred holds the upgrade until it fires; its userdata reaches onopen."""
    app = Crow()
    decisions: list[tuple[Deferred[bool], Any]] = []

    def onaccept(req: Any) -> Deferred[bool]:
        decision: Deferred[bool] = Deferred()
        decisions.append((decision, req))
        return decision

    app.route("/later").websocket().onaccept(onaccept).onopen(lambda conn: conn.send_text(str(conn.userdata)))
    client = crow_client(app)
    opening = client.websocket("/later")
    while not decisions:
        await task.deferLater(reactor, 0, lambda: None)
    assert not opening.called
    decision, req = decisions[0]
    req.userdata = "checked"
    decision.callback(True)
    ws = await opening
    assert await ws.receive() == "checked"
