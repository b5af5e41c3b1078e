"""autobahn's public paths (``crowtwist/websocket/_public.py``): the guard in ``_autobahn`` that
chooses them, and crowtwist served on them alone.

The guard is checked in this process, against an autobahn changed by monkeypatching.  The
public paths are checked in children started with ``CROWTWIST_PUBLIC_PATHS=autobahn``: the
WebSocket test files (but for the tests marked ``fast_paths``, each naming what the public
paths give up; tests/conftest.py), the quick Autobahn|Testsuite subset in both masking modes,
and a plain script serving an echo over ws:// and wss://.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from crowtwist import Crow
from crowtwist.websocket import _autobahn, _factory, _protocol
from crowtwist.websocket._autobahn import _guard

from . import frames as F
from .memory import MemoryClient
from .test_twistd import make_certificate

ROOT = Path(__file__).resolve().parent.parent
FORCED = _autobahn.is_forced_public("autobahn")
NOT_TWICE = "this test starts a public-paths run; it is not part of one"


# The guard.


@pytest.fixture
def unforced(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The guard as it judges autobahn itself: CROWTWIST_PUBLIC_PATHS unset."""
    monkeypatch.delenv("CROWTWIST_PUBLIC_PATHS", raising=False)
    return monkeypatch


def test_the_installed_autobahn_passes_the_guard(unforced: pytest.MonkeyPatch) -> None:
    """On the autobahn installed, the guard finds nothing amiss: the fast paths run unless forced off."""
    assert _autobahn.problems() == []
    assert _autobahn.FAST is (not FORCED) and bool(_autobahn.PROBLEMS) is FORCED


@pytest.mark.parametrize("value", ["autobahn", "all", "twisted, autobahn", " autobahn "])
def test_the_environment_forces_the_public_paths(unforced: pytest.MonkeyPatch, value: str) -> None:
    """CROWTWIST_PUBLIC_PATHS naming autobahn (or all), alone or in a list, forces the public paths."""
    unforced.setenv("CROWTWIST_PUBLIC_PATHS", value)
    assert _autobahn.problems() == ["forced by CROWTWIST_PUBLIC_PATHS"]


@pytest.mark.parametrize("value", ["", "twisted", "autobahnx"])
def test_other_values_force_nothing(unforced: pytest.MonkeyPatch, value: str) -> None:
    """A CROWTWIST_PUBLIC_PATHS that names neither autobahn nor all leaves the guard to judge autobahn."""
    unforced.setenv("CROWTWIST_PUBLIC_PATHS", value)
    assert _autobahn.problems() == []


def _hide(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    for cls in WebSocketServerProtocol.__mro__:
        if name in vars(cls):
            monkeypatch.delattr(cls, name)


@pytest.mark.parametrize("name", [name for _, name, _ in _guard._REQUIRED])
def test_a_missing_name_is_found(unforced: pytest.MonkeyPatch, name: str) -> None:
    """Each name the fast paths call or override, gone from autobahn, is reported missing."""
    _hide(unforced, name)
    assert _autobahn.problems() == [f"WebSocketServerProtocol.{name} is missing"]


def _send_close_frame(
    self: Any, code: Any = None, reasonUtf8: Any = None, isReply: bool = False, sync: bool = False
) -> None:
    """sendCloseFrame as a release with one more parameter would have it."""


def test_a_changed_signature_is_found(unforced: pytest.MonkeyPatch) -> None:
    """A method the fast paths call that takes other parameters is reported."""
    unforced.setattr(autobahn_protocol.WebSocketProtocol, "sendCloseFrame", _send_close_frame)
    assert _autobahn.problems() == ["WebSocketServerProtocol.sendCloseFrame takes other parameters"]


def _connection_made(self: Any) -> None:
    """autobahn's connection set-up as a release that starts connections with a new flag would have it."""
    self.trafficStats = None
    self.brandNewFlag = False


def _succeed_handshake(self: Any, res: Any) -> None:
    """succeedHandshake as a release that keeps a new piece of state would have it."""
    self.state = 3
    self.handshakeExtras = {}


def _send_auto_ping(self: Any) -> None:
    """_sendAutoPing as a release with its own timer would have it."""
    self.autoPingTimeoutCall = None


@pytest.mark.parametrize(
    "owner, name, replacement, problem",
    [
        (autobahn_protocol.WebSocketProtocol, "_connectionMade", _connection_made, "_connectionMade sets ['brandNewFlag']"),
        (autobahn_protocol.WebSocketServerProtocol, "succeedHandshake", _succeed_handshake,
         "succeedHandshake sets ['handshakeExtras']"),
        (autobahn_protocol.WebSocketProtocol, "_sendAutoPing", _send_auto_ping,
         "timers no longer go through factory._batched_timer"),
    ],
    ids=["connectionMade", "succeedHandshake", "sendAutoPing"],
)
def test_new_state_in_copied_code_is_found(
    unforced: pytest.MonkeyPatch, owner: type, name: str, replacement: Any, problem: str
) -> None:
    """A new ``self.x =`` in code the fast paths copy (or a timer not on the batched one) is reported."""
    unforced.setattr(owner, name, replacement)
    assert _autobahn.problems() == [problem]


# In this process, with the factory told to build public-path connections.


@pytest.fixture
def public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule factories built from now on serve their connections on the public paths."""
    monkeypatch.setattr(_protocol, "FAST", False)
    monkeypatch.setattr(_factory, "FAST", False)


@pytest.mark.parametrize("code, sent", [(1000, (1000, "bye")), (4000, (4000, "bye")), (1001, (1000, "1001 bye"))])
def test_a_code_sendclose_refuses_goes_in_the_reason(public: None, code: int, sent: tuple[int, str]) -> None:
    """conn.close with a code autobahn's sendClose refuses sends 1000 with the code in the reason; others as asked."""
    app = Crow()
    closes: list[tuple[int, str]] = []
    (
        app.route("/ws").websocket()
        .onopen(lambda conn: conn.close("bye", code))
        .onclose(lambda conn, reason, code: closes.append((code, reason)))
    )
    client = MemoryClient(app, "/ws")
    assert isinstance(client.protocol, _protocol.PublicCrowProtocol)
    frame = client.close_frame()
    assert frame is not None and (frame.close_code, frame.close_reason) == sent
    client.send_close(*sent)
    client.drop(clean=True)
    assert closes == [sent]


def test_a_message_over_max_payload_is_sent(public: None) -> None:
    """A message larger than the route's max_payload goes out (as two frames), though autobahn's sendMessage refuses it."""
    app = Crow()
    app.route("/ws").websocket().max_payload(1000).onopen(lambda conn: conn.send_binary(b"x" * 5000))
    client = MemoryClient(app, "/ws")
    frames = client.received()
    assert [(f.opcode, f.fin, len(f.payload)) for f in frames] == [(F.BINARY, False, 5000), (0, True, 0)]


# A child interpreter on the public paths, serving an echo.

ECHO_SERVER = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)

    from crowtwist import Crow
    from crowtwist.websocket import _autobahn

    app = Crow(enforce_ws_spec=True)
    (app.route("/echo").websocket()
        .onmessage(lambda conn, data, is_binary: conn.send_binary(data) if is_binary else conn.send_text(data))
        .onerror(lambda conn, message: print("ERROR", message, flush=True))
        .onclose(lambda conn, reason, code: print("CLOSED", code, reason, flush=True)))
    site = app.site()
    tcp = reactor.listenTCP(0, site, interface="127.0.0.1")
    tls = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={sys.argv[1]}:certKey={sys.argv[2]}")

    def listening(port):
        print("PORTS", tcp.getHost().port, port.getHost().port, "FAST", _autobahn.FAST, flush=True)

    tls.listen(site).addCallback(listening)
    reactor.run()
    """
)


def test_a_forced_child_warns_once_and_serves_an_echo(tmp_path: Path) -> None:
    """A child forced onto the public paths logs one warning line, echoes over ws:// and wss://, and fails bad UTF-8 with 1007."""
    key, cert = make_certificate(tmp_path)
    script = tmp_path / "echo_server.py"
    script.write_text(ECHO_SERVER)
    environ = dict(os.environ, PYTHONPATH=str(ROOT), CROWTWIST_PUBLIC_PATHS="autobahn")
    child = subprocess.Popen(
        [sys.executable, str(script), str(key), str(cert)],
        cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    def next_line() -> str:
        line = lines.get(timeout=30)
        assert line is not None, "the child ended:\n" + "".join(output)
        return line

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        line = next_line()
        while not line.startswith("PORTS "):
            line = next_line()
        _, tcp_port, tls_port, _, fast = line.split()
        assert fast == "False"
        big = "é" * 150_000
        with connect(f"ws://127.0.0.1:{tcp_port}/echo", open_timeout=10, close_timeout=10) as ws:
            for message in ("hello", b"\x00\xff", big):
                ws.send(message)
                assert ws.recv(timeout=10) == message
            assert ws.ping(b"are you there").wait(timeout=10)
            ws.close(4001, "bye")
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None and (rcvd.code, rcvd.reason) == (4001, "bye")
        context = ssl.create_default_context(cafile=str(cert))
        with connect(f"wss://127.0.0.1:{tls_port}/echo", ssl=context, open_timeout=10) as ws:
            ws.send("over TLS")
            assert ws.recv(timeout=10) == "over TLS"
        while sum(line.startswith("CLOSED ") for line in output) < 2:
            next_line()
        # Serving went without a word: the guard's line is the only warning.
        warnings = [line for line in output if re.search(r"#(warn|error|critical)\]", line)]
        assert len(warnings) == 1, "".join(output)
        assert "forced by CROWTWIST_PUBLIC_PATHS; crowtwist runs on autobahn's public paths" in warnings[0]
        with connect(f"ws://127.0.0.1:{tcp_port}/echo", open_timeout=10) as ws:
            ws.send("last")
            assert ws.recv(timeout=10) == "last"
            with pytest.raises(ConnectionClosed):
                ws.send(b"\xff" * 3, text=True)  # not UTF-8: the server fails the connection with 1007
                ws.recv(timeout=10)
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None and rcvd.code == 1007
        while sum(line.startswith("CLOSED ") for line in output) < 3:
            next_line()
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        reader.join(timeout=10)
    text = "".join(output)
    assert sum("crowtwist#warn]" in line for line in output) == 1, text
    assert not re.search(r"#(error|critical)\]", text), text
    closes = sorted(line.split(" ", 2)[1] for line in output if line.startswith("CLOSED "))
    assert closes == ["1000", "1007", "4001"], text
    assert sum(line.startswith("ERROR ") for line in output) == 1, text


# The test suites, on the public paths only.

SUITES = [
    "tests/test_broadcast.py",
    "tests/test_compression.py",
    "tests/test_crow_parity.py",
    "tests/test_edges.py",
    "tests/test_end_to_end.py",
    "tests/test_examples.py",
    "tests/test_fast_path.py",
    "tests/test_fuzz.py",
    "tests/test_handshake_strict.py",
    "tests/test_limits.py",
    "tests/test_pending_accept.py",
    "tests/test_robustness.py",
    "tests/test_route_agreement.py",
    "tests/test_run.py",
    "tests/test_twistd.py",
    "tests/test_upgrade.py",
    "tests/test_websocket_memory.py",
]
# Every one marked fast_paths, each with what the public paths give up (tests/conftest.py's GIVE_UPS).
EXPECTED_SKIPS = {
    "tests.test_examples::test_chat_example_refuses_what_it_should_not_trust[twisted.web]",
    "tests.test_examples::test_chat_example_refuses_what_it_should_not_trust[crow-site]",
    "tests.test_examples::test_chat_example_validates_names[twisted.web--a name may not be empty]",
    "tests.test_examples::test_chat_example_validates_names[twisted.web-?name=%20%20-a name may not be empty]",
    "tests.test_examples::test_chat_example_validates_names[twisted.web-?name=nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn-at most 32 characters]",
    "tests.test_examples::test_chat_example_validates_names[twisted.web-?name=a%E2%80%AEb-U+202E]",
    "tests.test_examples::test_chat_example_validates_names[twisted.web-?name=a%0Ab-None]",
    "tests.test_examples::test_chat_example_validates_names[twisted.web-?name=a%00b-U+0000]",
    "tests.test_examples::test_chat_example_validates_names[twisted.web-?name=a%2Fb-'/']",
    "tests.test_examples::test_chat_example_validates_names[crow-site--a name may not be empty]",
    "tests.test_examples::test_chat_example_validates_names[crow-site-?name=%20%20-a name may not be empty]",
    "tests.test_examples::test_chat_example_validates_names[crow-site-?name=nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn-at most 32 characters]",
    "tests.test_examples::test_chat_example_validates_names[crow-site-?name=a%E2%80%AEb-U+202E]",
    "tests.test_examples::test_chat_example_validates_names[crow-site-?name=a%0Ab-None]",
    "tests.test_examples::test_chat_example_validates_names[crow-site-?name=a%00b-U+0000]",
    "tests.test_examples::test_chat_example_validates_names[crow-site-?name=a%2Fb-'/']",
    "tests.test_broadcast::test_a_compressed_connection_gets_broadcasts_through_its_own_deflate",
    "tests.test_robustness::test_a_failed_connection_delivers_its_replies_and_close_frame[crow-site-bad-utf8-1007]",
    "tests.test_robustness::test_a_failed_connection_delivers_its_replies_and_close_frame[crow-site-rsv-bit-1002]",
    "tests.test_robustness::test_a_failed_connection_delivers_its_replies_and_close_frame[crow-site-too-big-1009]",
    "tests.test_robustness::test_a_failed_connection_delivers_its_replies_and_close_frame[twisted.web-bad-utf8-1007]",
    "tests.test_robustness::test_a_failed_connection_delivers_its_replies_and_close_frame[twisted.web-rsv-bit-1002]",
    "tests.test_robustness::test_a_failed_connection_delivers_its_replies_and_close_frame[twisted.web-too-big-1009]",
    "tests.test_compression::test_deflate_parameters[crow-site-offer0-expected0]",
    "tests.test_compression::test_deflate_parameters[crow-site-offer1-expected1]",
    "tests.test_compression::test_deflate_parameters[crow-site-offer2-expected2]",
    "tests.test_compression::test_deflate_parameters[crow-site-offer3-expected3]",
    "tests.test_compression::test_deflate_parameters[crow-site-offer4-expected4]",
    "tests.test_compression::test_deflate_parameters[crow-site-offer5-expected5]",
    "tests.test_compression::test_deflate_parameters[twisted.web-offer0-expected0]",
    "tests.test_compression::test_deflate_parameters[twisted.web-offer1-expected1]",
    "tests.test_compression::test_deflate_parameters[twisted.web-offer2-expected2]",
    "tests.test_compression::test_deflate_parameters[twisted.web-offer3-expected3]",
    "tests.test_compression::test_deflate_parameters[twisted.web-offer4-expected4]",
    "tests.test_compression::test_deflate_parameters[twisted.web-offer5-expected5]",
    "tests.test_end_to_end::test_replies_held_in_busy_turns_all_arrive_in_order[crow-site]",
    "tests.test_end_to_end::test_replies_held_in_busy_turns_all_arrive_in_order[twisted.web]",
    "tests.test_end_to_end::test_slow_reader_backpressure[crow-site]",
    "tests.test_end_to_end::test_slow_reader_backpressure[twisted.web]",
    "tests.test_end_to_end::test_tcp_drop_is_1006_and_others_carry_on[crow-site]",
    "tests.test_end_to_end::test_tcp_drop_is_1006_and_others_carry_on[twisted.web]",
    "tests.test_end_to_end::test_websockets_client_subprotocol_and_compression[crow-site]",
    "tests.test_end_to_end::test_websockets_client_subprotocol_and_compression[twisted.web]",
    "tests.test_fast_path::test_compressed_connections_take_crowtwists_parser",
    "tests.test_fast_path::test_peer_is_named_as_autobahns_peer2str_names_it[IPv4]",
    "tests.test_fast_path::test_peer_is_named_as_autobahns_peer2str_names_it[IPv6]",
    "tests.test_fast_path::test_close_frame_sent_is_autobahns[1000-3-reply]",
    "tests.test_fast_path::test_close_frame_sent_is_autobahns[None-0-reply]",
    "tests.test_fast_path::test_close_frame_sent_is_autobahns[1001-0-ours]",
    "tests.test_fast_path::test_close_frame_sent_is_autobahns[4000-122-ours]",
    "tests.test_fast_path::test_close_frame_sent_is_autobahns[None-1-reply]",
    "tests.test_fast_path::test_connections_start_with_autobahns_state",
    "tests.test_fast_path::test_large_frames_stay_on_the_fast_path[C]",
    "tests.test_fast_path::test_large_frames_stay_on_the_fast_path[python]",
    "tests.test_fast_path::test_plain_101_is_autobahns[20.0]",
    "tests.test_fast_path::test_plain_101_is_autobahns[None]",
    "tests.test_handshake_strict::test_deflate_fallback_offer_with_websockets_client[fast]",
    "tests.test_handshake_strict::test_deflate_fallback_offer_with_websockets_client[twisted.web]",
    "tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[fast-, permessage-deflate ,-101-permessage-deflate]",
    "tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[fast-permessage-deflate; mystery,"
    " permessage-deflate; server_max_window_bits=12-101-server_max_window_bits=12]",
    'tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[fast-permessage-deflate;'
    ' server_max_window_bits="11"-101-server_max_window_bits=11]',
    "tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[fast-permessage-deflate;"
    " server_max_window_bits=8, permessage-deflate-101-permessage-deflate]",
    "tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[fast-x-webkit-deflate-frame,"
    " permessage-deflate-101-permessage-deflate]",
    "tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[twisted.web-, permessage-deflate"
    " ,-101-permessage-deflate]",
    "tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[twisted.web-permessage-deflate;"
    " mystery, permessage-deflate; server_max_window_bits=12-101-server_max_window_bits=12]",
    'tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[twisted.web-permessage-deflate;'
    ' server_max_window_bits="11"-101-server_max_window_bits=11]',
    "tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[twisted.web-permessage-deflate;"
    " server_max_window_bits=8, permessage-deflate-101-permessage-deflate]",
    "tests.test_handshake_strict::test_deflate_offers_we_cannot_take_are_declined[twisted.web-x-webkit-deflate-frame,"
    " permessage-deflate-101-permessage-deflate]",
    "tests.test_handshake_strict::test_stopping_refuses_pending_and_later_upgrades[fast-Upgrade]",
    "tests.test_handshake_strict::test_stopping_refuses_pending_and_later_upgrades[fast-close, Upgrade]",
    "tests.test_handshake_strict::test_stopping_refuses_pending_and_later_upgrades[twisted.web-Upgrade]",
    "tests.test_handshake_strict::test_stopping_refuses_pending_and_later_upgrades[twisted.web-close, Upgrade]",
    "tests.test_handshake_strict::test_well_formed_offers_never_fail_the_handshake",
    "tests.test_limits::test_backlog_over_the_bound_closes_after_what_was_sent",
    "tests.test_limits::test_keepalive_timeout_closes_with_1011",
    "tests.test_limits::test_send_buffer_bound[close]",
    "tests.test_robustness::test_a_full_queue_pauses_reading[crow-site]",
    "tests.test_robustness::test_a_full_queue_pauses_reading[twisted.web]",
    "tests.test_robustness::test_compressed_flood_stays_within_the_queue_bound[crow-site]",
    "tests.test_robustness::test_compressed_flood_stays_within_the_queue_bound[twisted.web]",
    "tests.test_robustness::test_deflate_message_over_max_payload_completes_the_close[crow-site]",
    "tests.test_robustness::test_deflate_message_over_max_payload_completes_the_close[twisted.web]",
    "tests.test_robustness::test_keepalive_spares_a_peer_whose_queue_keeps_refilling[crow-site]",
    "tests.test_robustness::test_keepalive_spares_a_peer_whose_queue_keeps_refilling[twisted.web]",
    "tests.test_robustness::test_keepalive_still_closes_a_silent_peer[crow-site]",
    "tests.test_robustness::test_keepalive_still_closes_a_silent_peer[twisted.web]",
    "tests.test_robustness::test_late_pong_does_not_cut_the_close_handshake_short[crow-site]",
    "tests.test_robustness::test_late_pong_does_not_cut_the_close_handshake_short[twisted.web]",
    "tests.test_robustness::test_registered_codes_are_valid_both_ways[crow-site-1012]",
    "tests.test_robustness::test_registered_codes_are_valid_both_ways[crow-site-1013]",
    "tests.test_robustness::test_registered_codes_are_valid_both_ways[crow-site-1014]",
    "tests.test_robustness::test_registered_codes_are_valid_both_ways[twisted.web-1012]",
    "tests.test_robustness::test_registered_codes_are_valid_both_ways[twisted.web-1013]",
    "tests.test_robustness::test_registered_codes_are_valid_both_ways[twisted.web-1014]",
    "tests.test_robustness::test_stopping_hears_the_close_of_a_connection_whose_queue_is_full[crow-site]",
    "tests.test_robustness::test_stopping_hears_the_close_of_a_connection_whose_queue_is_full[twisted.web]",
    "tests.test_run::test_ctrl_c_closes_websockets_with_1001",
    "tests.test_twistd::test_serves_and_sigterm_closes_with_1001",
    "tests.test_twistd::test_tac_example",
    "tests.test_twistd::test_tls_round_trip_and_graceful_stop",
    "tests.test_websocket_memory::test_compression_can_be_declined[crow-site]",
    "tests.test_websocket_memory::test_compression_can_be_declined[twisted.web]",
    "tests.test_websocket_memory::test_handler_that_raises[crow-site]",
    "tests.test_websocket_memory::test_handler_that_raises[twisted.web]",
}


def _child_pytest(tmp_path: Path, *args: str, **environ: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    report = tmp_path / "report.xml"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CROWTWIST_PUBLIC_PATHS="autobahn", **environ)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    return result, report


@pytest.mark.skipif(FORCED, reason=NOT_TWICE)
def test_websocket_suites_pass_on_the_public_paths_only(tmp_path: Path) -> None:
    """With CROWTWIST_PUBLIC_PATHS=autobahn the WebSocket test files pass, but for the tests marked fast_paths."""
    _, report = _child_pytest(tmp_path, *SUITES)
    ran, skipped = 0, set()
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        skip = case.find("skipped")
        if skip is None:
            ran += 1
            continue
        skipped.add(name)
        assert (skip.get("message") or "").startswith("autobahn's public paths: "), name
    assert skipped == EXPECTED_SKIPS
    assert ran > 450


@pytest.mark.skipif(FORCED, reason=NOT_TWICE)
def test_conformance_subset_on_the_public_paths(tmp_path: Path) -> None:
    """The quick Autobahn|Testsuite subset passes in both masking modes with CROWTWIST_PUBLIC_PATHS=autobahn."""
    summaries = tmp_path / "summaries"
    _, report = _child_pytest(
        tmp_path, "tests/test_conformance.py", CROWTWIST_CONFORMANCE="quick", CROWTWIST_CONFORMANCE_REPORT=str(summaries)
    )
    cases = list(ET.parse(report).getroot().iter("testcase"))
    assert len(cases) == 1 and cases[0].find("skipped") is None
    for mode in ("lenient", "enforce"):
        last = (summaries / f"{mode}.txt").read_text().splitlines()[-2]
        counts = re.fullmatch(r"(\d+) passed, 0 failed", last)
        assert counts is not None and int(counts.group(1)) >= 301, last
