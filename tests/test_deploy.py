"""docs/deploy.md, tested: the shipped nginx, HAProxy and systemd configs in front of a real ``twistd crow``.

The configs in examples/deploy/ are used as shipped, with only their ports, certificate paths
and proxy timeouts rewritten (``render``), so the files (and the doc, which must show them
verbatim) cannot drift from what was run. nginx and HAProxy run as child processes from temp
directories on random ports on 127.0.0.1; nothing needs root.
"""

from __future__ import annotations

import configparser
import csv
import datetime
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .clients import connect_autobahn, within
from .proc import BIN, ROOT, Server, env, free_port

DEPLOY = ROOT / "examples" / "deploy"
DOC = ROOT / "docs" / "deploy.md"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

PROXY_TIMEOUT = 2  # seconds, for the shipped 60 s: nginx's proxy_read_timeout, HAProxy's timeout tunnel
KEEPALIVE = 0.5  # --keepalive-interval of the backend, for crowtwist's default 20 s
ORIGIN = "https://chat.example"  # the backend's --allowed-origin

pytestmark = pytest.mark.skipif(
    not (os.access(NGINX, os.X_OK) and os.access(HAPROXY, os.X_OK)),
    reason="nginx and haproxy are installed by ci/system-packages (the README's test command runs it)",
)


def render(text: str, substitutions: list[tuple[str, str]]) -> str:
    """``text`` with each ``old`` replaced by ``new``; every ``old`` must be there (the doc's value)."""
    for old, new in substitutions:
        assert old in text, f"{old!r} is no longer in the shipped config; update tests/test_deploy.py"
        text = text.replace(old, new)
    return text


# -- the doc shows the files ---------------------------------------------------------------


SHOWN = re.compile(r"<!-- file: (\S+) -->\n```[a-z]*\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def test_doc_shows_every_shipped_file_verbatim() -> None:
    """Each config under examples/deploy/ appears in docs/deploy.md, byte for byte, under a file marker."""
    shown = {name: body for name, body in SHOWN.findall(DOC.read_text())}
    shipped = {f"examples/deploy/{path.name}" for path in DEPLOY.iterdir() if path.is_file()}
    assert set(shown) == shipped
    for name, body in shown.items():
        assert body == (ROOT / name).read_text(), f"docs/deploy.md's copy of {name} differs from the file"


# -- certificates, backends, proxies ---------------------------------------------------------


@dataclass
class Certs:
    key: Path
    cert: Path
    bundle: Path  # certificate then key, as HAProxy's crt wants
    context: ssl.SSLContext  # a client context that trusts only this certificate


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway self-signed certificate for 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("certs")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
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
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    (directory / "key.pem").write_bytes(key_pem)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "bundle.pem").write_bytes(cert_pem + key_pem)
    context = ssl.create_default_context(cafile=str(directory / "cert.pem"))
    return Certs(directory / "key.pem", directory / "cert.pem", directory / "bundle.pem", context)


def start_backend(*options: str) -> tuple[Server, int]:
    port = free_port()
    server = Server(
        [
            str(BIN / "twistd"), "-n", "--pidfile=", "crow", "--routes", "tests.deploy_app",
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--allowed-origin", ORIGIN, *options,
        ]
    )
    server.wait_tcp(port)
    return server, port


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    """``twistd crow`` serving examples.demo (plus tests.deploy_app's header routes), pinging every 0.5 s."""
    server, port = start_backend("--keepalive-interval", str(KEEPALIVE))
    with server:
        yield port
        server.stop()


@pytest.fixture(scope="module")
def silent_backend() -> Iterator[int]:
    """The same app with keepalive pings off."""
    server, port = start_backend("--keepalive-interval", "off")
    with server:
        yield port
        server.stop()


@dataclass
class Proxy:
    name: str
    server: Server
    http: int
    https: int
    directory: Path

    def url(self, path: str, scheme: str = "ws") -> str:
        port = self.https if scheme in ("wss", "https") else self.http
        return f"{scheme}://127.0.0.1:{port}{path}"


def start_nginx(directory: Path, backend: int, certs: Certs) -> Proxy:
    http, https = free_port(), free_port()
    site = render(
        (DEPLOY / "nginx.conf").read_text(),
        [
            ("listen 80;", f"listen 127.0.0.1:{http};"),
            ("listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;"),
            ("server 127.0.0.1:18080;", f"server 127.0.0.1:{backend};"),
            ("/etc/ssl/crowtwist/fullchain.pem", str(certs.cert)),
            ("/etc/ssl/crowtwist/privkey.pem", str(certs.key)),
            ("proxy_read_timeout 60s;", f"proxy_read_timeout {PROXY_TIMEOUT}s;"),
            ("proxy_send_timeout 60s;", f"proxy_send_timeout {PROXY_TIMEOUT}s;"),
        ],
    )
    (directory / "site.conf").write_text(site)
    # The main file a distribution ships, reduced to what the site needs, everything in `directory`.
    temp = "".join(
        f"    {kind}_temp_path {directory / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        ("user root root;\n" if os.geteuid() == 0 else "")
        + "worker_processes 1;\n"
        + "events { worker_connections 256; }\n"
        + f"http {{\n    access_log {directory / 'access.log'};\n{temp}    include {directory / 'site.conf'};\n}}\n"
    )
    server = Server(
        [
            NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"),
            "-g", f"daemon off; pid {directory / 'nginx.pid'}; error_log stderr notice;",
        ],
        cwd=directory,
    )
    return Proxy("nginx", server, http, https, directory)


def start_haproxy(directory: Path, backend: int, certs: Certs) -> Proxy:
    http, https = free_port(), free_port()
    config = render(
        (DEPLOY / "haproxy.cfg").read_text(),
        [
            ("bind :80\n", f"bind 127.0.0.1:{http}\n"),
            ("bind :443 ssl crt /etc/haproxy/certs/crowtwist.pem", f"bind 127.0.0.1:{https} ssl crt {certs.bundle}"),
            ("server crow1 127.0.0.1:18080", f"server crow1 127.0.0.1:{backend}"),
            ("timeout tunnel 60s", f"timeout tunnel {PROXY_TIMEOUT}s"),
        ],
    )
    (directory / "haproxy.cfg").write_text(config)
    # A second file adds a stats socket, for test_haproxy_health_check_passes_on_the_http_route.
    (directory / "stats.cfg").write_text(f"global\n    stats socket {directory / 'stats.sock'} mode 600 level user\n")
    server = Server(
        [HAPROXY, "-f", str(directory / "haproxy.cfg"), "-f", str(directory / "stats.cfg"), "-db"], cwd=directory
    )
    return Proxy("haproxy", server, http, https, directory)


STARTERS = {"nginx": start_nginx, "haproxy": start_haproxy}


def run_proxy(name: str, directory: Path, backend: int, certs: Certs) -> Iterator[Proxy]:
    proxy = STARTERS[name](directory, backend, certs)
    with proxy.server:
        proxy.server.wait_tcp(proxy.http)
        proxy.server.wait_tcp(proxy.https)
        yield proxy
        proxy.server.stop()


@pytest.fixture(scope="module", params=sorted(STARTERS))
def proxy(
    request: pytest.FixtureRequest, backend: int, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """nginx or HAProxy with the shipped config, in front of ``backend``."""
    yield from run_proxy(request.param, tmp_path_factory.mktemp(request.param), backend, certs)


@pytest.fixture(scope="module", params=sorted(STARTERS))
def silent_proxy(
    request: pytest.FixtureRequest, silent_backend: int, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """nginx or HAProxy with the shipped config, in front of ``silent_backend`` (no pings)."""
    yield from run_proxy(request.param, tmp_path_factory.mktemp(request.param), silent_backend, certs)


def ws(url: str, certs: Certs | None = None, **kwargs: object) -> ClientConnection:
    """The websockets library's client; its own pings off, so only crowtwist's keep a connection busy."""
    tls = None
    if certs is not None and url.startswith("wss:"):
        # TLS 1.2 for this client: over TLS 1.3 the websockets library's sync client (17.4)
        # now and then never sees the 101 (2 handshakes of 600 timed out through HAProxy),
        # where a plain ssl-module client got 800 of 800 through the same proxies, and
        # this client over TLS 1.2 1,200 of 1,200. The proxies' TLS, not crowtwist, is what
        # these tests try; get() (urllib) still speaks TLS 1.3 to them.
        tls = ssl.create_default_context(cafile=str(certs.cert))
        tls.maximum_version = ssl.TLSVersion.TLSv1_2
    return connect(  # type: ignore[arg-type]
        url, ssl=tls, open_timeout=10, close_timeout=10, ping_interval=None, max_size=4 << 20, **kwargs
    )


def get(url: str, certs: Certs) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10, context=certs.context if url.startswith("https:") else None) as r:
        return r.status, r.read()


# -- over each proxy -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_http_route_answers_through_proxy(proxy: Proxy, certs: Certs, scheme: str) -> None:
    """A plain HTTP route (examples.demo's /hello) answers through the proxy, over HTTP and over TLS."""
    assert get(proxy.url("/hello", scheme), certs) == (200, b"Hello from crowtwist\n")


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_websocket_echo_and_close_through_proxy(proxy: Proxy, certs: Certs, scheme: str) -> None:
    """Text and a 1 MiB binary message echo through the proxy (ws://, wss://); the close handshake carries 1000."""
    big = os.urandom(1 << 20)
    with ws(proxy.url("/echo", scheme), certs) as conn:
        assert "permessage-deflate" in (conn.response.headers.get("Sec-WebSocket-Extensions") or "")
        conn.send("through the proxy")
        assert conn.recv(timeout=10) == "through the proxy"
        conn.send(big)
        assert conn.recv(timeout=10) == big
        conn.close(1000, "done")
        received = conn.protocol.close_rcvd
        assert received is not None and received.code == 1000


@pytest_twisted.inlineCallbacks
def test_autobahn_client_echo_and_close_through_proxy(proxy: Proxy) -> Iterator[object]:
    """autobahn's client, too, echoes text and a 1 MiB binary message through the proxy and closes cleanly with 1000."""
    big = os.urandom(1 << 20)
    client = yield connect_autobahn(proxy.http, "/echo")
    client.sendMessage("autobahn".encode(), isBinary=False)
    assert (yield client.next_message()) == (b"autobahn", False)
    client.sendMessage(big, isBinary=True)
    assert (yield client.next_message()) == (big, True)
    client.sendClose(1000)
    was_clean, code, _ = yield within(client.closed_with)
    assert was_clean and code == 1000


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_forwarded_headers_reach_onaccept(proxy: Proxy, certs: Certs, scheme: str) -> None:
    """onaccept sees the client's Host and Origin once each, unchanged, X-Forwarded-For and -Proto, the proxy's IP."""
    port = proxy.https if scheme == "wss" else proxy.http
    with ws(proxy.url("/_headers/ws", scheme), certs, origin=ORIGIN) as conn:
        seen = json.loads(conn.recv(timeout=10))
    assert seen == {
        "host": [f"127.0.0.1:{port}"],
        "origin": [ORIGIN],
        "x-forwarded-for": ["127.0.0.1"],
        "x-forwarded-proto": ["https" if scheme == "wss" else "http"],
        "remote": "127.0.0.1",
    }


def test_forwarded_headers_reach_http_routes(proxy: Proxy, certs: Certs) -> None:
    """A plain HTTP route behind the proxy sees the same forwarded headers."""
    status, body = get(proxy.url("/_headers", "https"), certs)
    assert status == 200
    seen = json.loads(body)
    assert seen["host"] == [f"127.0.0.1:{proxy.https}"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"] and seen["x-forwarded-proto"] == ["https"]


def test_origin_allow_list_works_through_proxy(proxy: Proxy, certs: Certs) -> None:
    """--allowed-origin still refuses another page's Origin with 403 through the proxy: Origin is forwarded."""
    with pytest.raises(InvalidStatus) as refused:
        ws(proxy.url("/echo"), certs, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    with ws(proxy.url("/echo"), certs, origin=ORIGIN) as conn:
        conn.send("allowed")
        assert conn.recv(timeout=10) == "allowed"


def test_idle_websocket_outlives_proxy_timeout_with_keepalive(proxy: Proxy, certs: Certs) -> None:
    """With crowtwist's pings on, a WebSocket idle for 2.5 times the proxy's timeout stays open through it."""
    with ws(proxy.url("/echo"), certs) as conn:
        with pytest.raises(TimeoutError):
            conn.recv(timeout=2.5 * PROXY_TIMEOUT)  # idle: nothing but crowtwist's pings and our pongs
        conn.send("still here")
        assert conn.recv(timeout=10) == "still here"


def test_idle_websocket_is_cut_by_proxy_timeout_without_keepalive(silent_proxy: Proxy, certs: Certs) -> None:
    """The control for the test above: with pings off, the proxy cuts an idle WebSocket after its timeout."""
    with ws(silent_proxy.url("/echo"), certs) as conn:
        started = time.monotonic()
        with pytest.raises(ConnectionClosedError):
            conn.recv(timeout=5 * PROXY_TIMEOUT)
        assert time.monotonic() - started >= 0.8 * PROXY_TIMEOUT


@pytest.mark.parametrize("name", sorted(STARTERS))
def test_graceful_stop_reaches_clients_through_proxy(name: str, certs: Certs, tmp_path: Path) -> None:
    """SIGTERM's 1001 reaches a client through the proxy, twistd exits 0, then the proxy answers 502 or 503."""
    server, port = start_backend()
    with server:
        for proxy in run_proxy(name, tmp_path, port, certs):
            with ws(proxy.url("/echo", "wss"), certs) as conn:
                conn.send("before the stop")
                assert conn.recv(timeout=10) == "before the stop"
                server.process.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as closed:
                    conn.recv(timeout=10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            output = server.finish()
            assert server.process.returncode == 0, output
            with pytest.raises(urllib.error.HTTPError) as down:
                get(proxy.url("/hello", "http"), certs)
            assert down.value.code == {"nginx": 502, "haproxy": 503}[name]


def haproxy_stats(directory: Path) -> list[dict[str, str]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(directory / "stats.sock"))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return list(csv.DictReader(data.decode().lstrip("# ").splitlines()))


@pytest.mark.parametrize("proxy", ["haproxy"], indirect=True)
def test_haproxy_health_check_passes_on_the_http_route(proxy: Proxy) -> None:
    """HAProxy's configured health check (GET /hello, expect 200) reports the crowtwist server UP with L7OK."""
    deadline = time.monotonic() + 15
    row: dict[str, str] = {}
    while time.monotonic() < deadline:
        row = next(r for r in haproxy_stats(proxy.directory) if r["svname"] == "crow1")
        if row["check_status"] == "L7OK":
            break
        time.sleep(0.1)  # polling HAProxy's stats, bounded by the deadline
    assert row["check_status"] == "L7OK" and row["status"] == "UP" and row["check_code"] == "200", row


# -- systemd ---------------------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(DEPLOY / "crowtwist.service")
    return parser


def seconds(value: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value.strip())
    assert found, value
    return float(found.group(1)) * (60 if found.group(2) == "min" else 1)


def test_unit_file_settings() -> None:
    """The unit is Type=simple, restarts on failure, runs as its own user, hardened, and stops with SIGTERM in time."""
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "twistd" and argv[1:4] == ["-n", "--pidfile=", "crow"] and "--routes" in argv
    close_timeout = float(argv[argv.index("--close-timeout") + 1]) if "--close-timeout" in argv else 5.0
    assert seconds(service["TimeoutStopSec"]) > close_timeout
    assert service["Type"] == "simple" and service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root") and service["WorkingDirectory"].startswith("/")
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"


def test_unit_execstart_serves_and_stops_with_1001_and_status_0() -> None:
    """The unit's ExecStart (on a random port) serves; its KillSignal closes WebSockets with 1001 and it exits 0."""
    service = unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    port = free_port()
    argv = [str(BIN / "twistd")] + [
        arg.replace("tcp:18080:", f"tcp:{port}:") for arg in argv[1:]
    ]  # .venv's twistd for /srv/crowtwist/.venv's; this checkout is the WorkingDirectory
    assert f"tcp:{port}:interface=127.0.0.1" in argv
    with Server(argv, cwd=ROOT) as server:
        server.wait_tcp(port)
        with ws(f"ws://127.0.0.1:{port}/echo") as conn:
            conn.send("up")
            assert conn.recv(timeout=10) == "up"
            server.process.send_signal(getattr(signal, service["KillSignal"]))
            with pytest.raises(ConnectionClosed) as closed:
                conn.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        output = server.finish(seconds(service["TimeoutStopSec"]))
        assert server.process.returncode == 0, output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (with ExecStart pointing at this machine's twistd)."""
    shipped = (DEPLOY / "crowtwist.service").read_text()
    path = tmp_path / "crowtwist.service"
    path.write_text(render(shipped, [("/srv/crowtwist/.venv/bin/twistd", str(BIN / "twistd"))]))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60, env=env()
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "crowtwist.service" not in output, output
