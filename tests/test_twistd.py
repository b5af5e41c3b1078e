"""``twistd crow`` end to end: the real twistd executable, real sockets on 127.0.0.1."""

from __future__ import annotations

import datetime
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from . import frames as F
from .proc import BIN, ROOT, Server, env, free_port, twistd


def echo_round_trip(url: str, **kwargs: object) -> None:
    with connect(url, open_timeout=10, **kwargs) as ws:  # type: ignore[arg-type]
        ws.send("round trip")
        assert ws.recv(timeout=10) == "round trip"
        ws.send(b"\x00bin")
        assert ws.recv(timeout=10) == b"\x00bin"


def raw_exchange(sock: socket.socket, path: str, frame: bytes) -> list[F.Frame]:
    """Upgrade ``sock`` by hand, send one raw frame, and return the first frames that come back."""
    sock.sendall(F.handshake(path))
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(frame)
    frames: list[F.Frame] = []
    while not frames:
        rest += sock.recv(4096)
        frames, rest = F.decode_all(rest)
    return frames


def test_plugin_import_is_light() -> None:
    """Importing the plugin imports neither the reactor nor crowtwist itself."""
    code = (
        "import sys, twisted.plugins.crowtwist_plugin as p;"
        "print('twisted.internet.reactor' in sys.modules, 'crowtwist._app' in sys.modules, p.crow.tapname)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=60)
    assert result.stdout.split() == ["False", "False", "crow"], result.stderr


def test_help_lists_plugin_and_documents_options() -> None:
    """twistd --help lists crow; twistd crow --help documents every option."""
    listing = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True, env=env(), timeout=60)
    assert "crow " in listing.stdout
    result = subprocess.run(twistd("--help"), capture_output=True, text=True, env=env(), timeout=60)
    for option in (
        "--routes",
        "--listen",
        "--port",
        "--enforce-ws-spec",
        "--max-payload",
        "--keepalive-interval",
        "--keepalive-timeout",
        "--close-timeout",
        "--no-compression",
    ):
        assert option in result.stdout, option


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    """A folder of route modules, good and bad, used as the current directory."""
    (tmp_path / "goodmod.py").write_text(
        textwrap.dedent(
            """
            import os
            from crowtwist import Crow

            def make():
                app = Crow()
                log = os.environ.get("ONCLOSE_LOG")

                def closed(conn, reason, code):
                    if log:
                        with open(log, "a") as f:
                            f.write(f"{code} {reason}\\n")

                (app.route("/ws").websocket()
                    .onmessage(lambda conn, data, is_binary: conn.send_binary(data) if is_binary else conn.send_text(data))
                    .onclose(closed))
                return app

            app = make()
            number = 42
            """
        )
    )
    (tmp_path / "brokenmod.py").write_text("import nonexistent_dependency_xyz\n")
    (tmp_path / "raisingmod.py").write_text("raise RuntimeError('config missing')\n")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--routes", "nosuchmod"], "cannot import 'nosuchmod': no such module"),
        (["--routes", "brokenmod"], "No module named 'nonexistent_dependency_xyz'"),
        (["--routes", "raisingmod"], "RuntimeError: config missing"),
        (["--routes", "goodmod:nothing"], "has no attribute 'nothing'"),
        (["--routes", "goodmod:number"], "goodmod:number is a int, not a Crow app"),
        (["--routes", "goodmod", "--listen", "tcp:notaport"], "bad --listen endpoint"),
        (["--routes", "goodmod", "--listen", "bogus:1"], "bad --listen endpoint"),
        (["--routes", "goodmod", "--port", "abc"], "--port takes a number"),
        (["--routes", "goodmod", "--max-payload", "-5"], "--max-payload must be positive"),
        ([], "--routes MODULE is required"),
        (["--routes", "goodmod", "--bogus"], "option --bogus not recognized (see twistd crow --help)"),
        (["goodmod", "--listen"], "option --listen requires argument"),
        (["--routes", "goodmod", "--log-level", "loud"], "--log-level is debug, info, warn or error, not 'loud'"),
        (["--routes", "goodmod.py"], "cannot import 'goodmod.py': no such module; try --routes goodmod"),
        (["--routes", "goodmod", "--listen", "ssl:8443:privateKey=missing.pem"], "No such file or directory"),
    ],
)
def test_bad_input_is_one_line(modules: Path, args: list[str], message: str) -> None:
    """Bad input ends twistd crow with one clear line and a non-zero status, no traceback."""
    result = subprocess.run(twistd(*args), cwd=modules, capture_output=True, text=True, env=env(), timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "twistd crow:" in line]
    assert len(lines) == 1 and message in lines[0], output


def test_port_in_use_is_one_line(modules: Path) -> None:
    """A port already taken is one line and exit status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            twistd("--routes", "goodmod", "--listen", f"tcp:{port}:interface=127.0.0.1"),
            cwd=modules,
            capture_output=True,
            text=True,
            env=env(),
            timeout=60,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    # Found before twistd logs that it starts up: that line is all there is.
    assert output == f"twistd crow: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use\n"


@pytest.mark.fast_paths("close code")
def test_serves_and_sigterm_closes_with_1001(modules: Path, tmp_path: Path) -> None:
    """twistd crow serves a module's app; SIGTERM sends 1001, runs every onclose, exits 0."""
    port = free_port()
    onclose_log = tmp_path / "onclose.log"
    with Server(
        twistd("--routes", "goodmod:make", "--listen", f"tcp:{port}:interface=127.0.0.1"),
        cwd=modules,
        environ=env(ONCLOSE_LOG=str(onclose_log)),
    ) as server:
        server.wait_tcp(port)
        echo_round_trip(f"ws://127.0.0.1:{port}/ws")
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as a, connect(
            f"ws://127.0.0.1:{port}/ws", open_timeout=10
        ) as b:
            server.process.send_signal(signal.SIGTERM)
            for ws in (a, b):
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        output = server.finish()
        assert server.process.returncode == 0, output
    assert onclose_log.read_text().splitlines().count("1001 going away") == 2


def test_asyncio_reactor(modules: Path) -> None:
    """twistd -r asyncio -n crow serves the echo example."""
    port = free_port()
    with Server(
        twistd("--routes", "examples.echo", "--listen", f"tcp:{port}:interface=127.0.0.1", reactor="asyncio"),
    ) as server:
        server.wait_tcp(port)
        echo_round_trip(f"ws://127.0.0.1:{port}/echo")
        output = server.stop()
    assert "AsyncioSelectorReactor" in output
    assert server.process.returncode == 0


def test_unix_socket(tmp_path: Path) -> None:
    """--listen unix:PATH serves WebSockets over a UNIX socket."""
    path = tmp_path / "crow.sock"
    with Server(twistd("--routes", "examples.echo", "--listen", f"unix:{path}")) as server:
        server.wait_unix(path)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            frames = raw_exchange(sock, "/echo", F.encode(F.TEXT, b"over unix"))
            assert frames[0].payload == b"over unix"
        server.stop()


def test_command_line_overrides_module_settings(tmp_path: Path) -> None:
    """--max-payload, --enforce-ws-spec and --no-compression override what the module set."""
    (tmp_path / "strictmod.py").write_text(
        textwrap.dedent(
            """
            from crowtwist import Crow
            app = Crow(enforce_ws_spec=False).websocket_max_payload(1 << 20)
            app.route("/ws").websocket().onmessage(lambda conn, data, is_binary: conn.send_text(str(data)))
            """
        )
    )
    port = free_port()
    with Server(
        twistd(
            "--routes", "strictmod", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--max-payload", "10", "--enforce-ws-spec", "--no-compression",
        ),
        cwd=tmp_path,
    ) as server:
        server.wait_tcp(port)
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            ws.send("x" * 10)
            assert ws.recv(timeout=10) == "x" * 10
            ws.send("x" * 11)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            frames = raw_exchange(sock, "/ws", F.encode(F.TEXT, b"bare", mask=False))
            assert frames[0].close_code == 1002
        server.stop()


def test_keepalive_drops_a_silent_peer(modules: Path) -> None:
    """With --keepalive-interval/--keepalive-timeout, a peer that never answers pings is dropped."""
    port = free_port()
    with Server(
        twistd(
            "--routes", "goodmod", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--keepalive-interval", "0.2", "--keepalive-timeout", "0.3",
        ),
        cwd=modules,
    ) as server:
        server.wait_tcp(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(F.handshake("/ws"))
            data = b""
            while True:
                try:
                    chunk = sock.recv(4096)
                except ConnectionResetError:
                    break  # autobahn aborts the connection: a reset is the drop
                if not chunk:
                    break
                data += chunk
            rest = data.partition(b"\r\n\r\n")[2]
            frames, _ = F.decode_all(rest)
            assert any(f.opcode == F.PING for f in frames)
        server.stop()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.mark.fast_paths("close code")
def test_tls_round_trip_and_graceful_stop(modules: Path, tmp_path: Path) -> None:
    """wss:// through --listen ssl:... round-trips, and SIGTERM still delivers 1001 over TLS."""
    key, cert = make_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    port = free_port()
    with Server(
        twistd(
            "--routes", "goodmod", "--listen",
            f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1",
        ),
        cwd=modules,
    ) as server:
        server.wait_tcp(port)
        echo_round_trip(f"wss://127.0.0.1:{port}/ws", ssl=context)
        with connect(f"wss://127.0.0.1:{port}/ws", ssl=context, open_timeout=10) as ws:
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        output = server.finish()
        assert server.process.returncode == 0
    assert f"serving https://127.0.0.1:{port}/" in output


@pytest.mark.fast_paths("close code")
def test_tac_example(tmp_path: Path) -> None:
    """examples/service.tac runs the app as a service and mounted in another site, beside a TimerService."""
    crow_port, site_port = free_port(), free_port()
    with Server(
        [str(BIN / "twistd"), "-n", "--pidfile=", "-y", str(ROOT / "examples" / "service.tac")],
        environ=env(CROW_PORT=str(crow_port), SITE_PORT=str(site_port)),
    ) as server:
        server.wait_tcp(crow_port)
        server.wait_tcp(site_port)
        echo_round_trip(f"ws://127.0.0.1:{crow_port}/echo")
        with connect(f"ws://127.0.0.1:{site_port}/crow/echo", open_timeout=10) as ws:
            ws.send("mounted")
            assert ws.recv(timeout=10) == "mounted"
            import urllib.request

            status = urllib.request.urlopen(f"http://127.0.0.1:{site_port}/status", timeout=10).read()
            assert status == b"1 WebSocket(s) open\n"
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        output = server.finish()
        # twistd -y re-raises the signal at exit (its default); only `twistd crow` turns a
        # completed graceful stop into status 0.
        assert server.process.returncode == -signal.SIGTERM, output
        assert "Traceback" not in output
