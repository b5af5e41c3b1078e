"""app.run() in a real process: it serves, and Ctrl-C closes open WebSockets with 1001 first."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .proc import Server, env, free_port


SERVER = textwrap.dedent(
    """
    import sys
    from crowtwist import Crow

    app = Crow()
    (app.route("/ws").websocket()
        .onmessage(lambda conn, data, is_binary: conn.send_text(data))
        .onclose(lambda conn, reason, code: print("onclose", code, reason, flush=True)))
    app.run(port=int(sys.argv[1]), host="127.0.0.1")
    """
)


@pytest.mark.fast_paths("close code")
def test_ctrl_c_closes_websockets_with_1001() -> None:
    """SIGINT makes app.run close every open WebSocket with 1001, run onclose, and exit 0."""
    port = free_port()
    with Server([sys.executable, "-c", SERVER, str(port)]) as server:
        server.wait_tcp(port)
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10, close_timeout=10) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            server.process.send_signal(signal.SIGINT)
            try:
                ws.recv(timeout=10)
                raise AssertionError("the server sent a message instead of closing")
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1001
        output = server.finish()
        assert server.process.returncode == 0, output
        assert "onclose 1001" in output


def test_port_in_use_is_one_line() -> None:
    """A port that is taken ends app.run with one line on stderr and a non-zero status."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-c", SERVER, str(port)], capture_output=True, text=True, env=env(), timeout=30
        )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("crowtwist: cannot listen on 127.0.0.1:") and "Address already in use" in last
    assert "Traceback" not in result.stderr
