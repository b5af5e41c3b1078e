"""Static files: resolve keeps every path inside its directory; serve_file over real HTTP (types, ranges, 304, HEAD,
gzip streaming, memory, clients that leave)."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import stat
import tracemalloc
from email.utils import formatdate
from pathlib import Path
from random import Random
from typing import Any
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.client import Agent, ContentDecoderAgent, GzipDecoder
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyChannel

from crowtwist._http import write_response
from crowtwist._response import Response
from crowtwist._static import content_type, resolve, serve_file

from .conftest import LogCapture
from .test_compress import Body, Loopback, fetch

MiB = 1 << 20


# resolve, with plain calls


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static directory with files, hidden files and symlinks in and out, next to a secret outside it."""
    top = tmp_path_factory.mktemp("tree")
    (top / "secret.txt").write_text("secret")
    (top / "root-sibling").mkdir()
    (top / "root-sibling" / "x.txt").write_text("sibling")
    root = top / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.txt").write_text("b")
    (root / "sub" / "deeper" / "c.txt").write_text("c")
    (root / ".env").write_text("hidden")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("hidden")
    (root / "link-in").symlink_to("sub/b.txt")
    (root / "sub" / "up").symlink_to("..")
    (root / "link-out").symlink_to("../secret.txt")
    (root / "link-abs-out").symlink_to(top / "secret.txt")
    (root / "link-dir-out").symlink_to("..")
    (root / "link-sibling").symlink_to("../root-sibling")
    (root / "link-hidden").symlink_to(".env")
    (root / "loop").symlink_to("loop")
    (root / "dangling").symlink_to("nowhere")
    os.mkfifo(root / "fifo")
    return root


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        ("a.txt", "a.txt"),
        ("sub/b.txt", "sub/b.txt"),
        ("sub/deeper/c.txt", "sub/deeper/c.txt"),
        ("link-in", "sub/b.txt"),  # a symlink inside: followed, the real path returned
        ("sub/up/a.txt", "a.txt"),
        ("sub/up/sub/up/sub/b.txt", "sub/b.txt"),
        ("", None),
        ("sub", None),  # a directory: no listings
        ("sub/", None),
        ("/a.txt", None),
        ("a.txt/", None),
        ("sub//b.txt", None),
        ("./a.txt", None),
        ("sub/./b.txt", None),
        ("../secret.txt", None),
        ("sub/../a.txt", None),
        ("sub/../../secret.txt", None),
        ("a/../../x", None),
        ("..", None),
        ("..\\secret.txt", None),
        ("sub\\b.txt", None),
        ("a.txt\0", None),
        ("a.txt\0.png", None),
        (".env", None),
        (".git/config", None),
        ("link-hidden", None),  # inside, but to a hidden file
        ("link-out", None),
        ("link-abs-out", None),
        ("link-dir-out/secret.txt", None),
        ("link-sibling/x.txt", None),  # outside, though its path starts like root's
        ("loop", None),
        ("dangling", None),
        ("fifo", None),
        ("missing.txt", None),
        ("a.txt/nothing", None),
        ("/etc/passwd", None),
        ("//etc/passwd", None),
    ],
)
def test_resolve(tree: Path, partial: str, expected: str | None) -> None:
    """Files inside resolve to their real path; escapes, hidden files, directories and non-files to None."""
    found = resolve(tree, partial)
    assert found == (None if expected is None else (tree / expected).resolve())


def test_resolve_directory_forms(tree: Path) -> None:
    """The directory may be a str, a path, relative; a missing one or a file finds nothing."""
    assert resolve(str(tree), "a.txt") == (tree / "a.txt").resolve()
    assert resolve(os.path.relpath(tree), "a.txt") == (tree / "a.txt").resolve()
    assert resolve(tree / "missing", "a.txt") is None
    assert resolve(tree / "a.txt", "a.txt") is None


def inside(tree: Path, found: Path | None) -> bool:
    if found is None:
        return True
    real = tree.resolve()
    relative = found.relative_to(real)  # raises if outside
    return found.is_file() and not any(part.startswith(".") for part in relative.parts)


SEGMENTS = st.sampled_from(
    ["..", ".", "", "a.txt", "sub", "b.txt", "up", "deeper", "c.txt", "link-in", "link-out", "link-abs-out",
     "link-dir-out", "link-sibling", "x.txt", "secret.txt", "root", "root-sibling", ".env", ".git", "config",
     "link-hidden", "loop", "fifo", "etc", "passwd", "..\\..", "\\", "\0", "C:", "%2e%2e", "...", "....", " .."]
)


@settings(max_examples=1000)
@given(st.lists(SEGMENTS, max_size=8), st.sampled_from(["", "/", "//", "./", "../"]))
def test_resolve_never_escapes(tree: Path, segments: list[str], prefix: str) -> None:
    """Generated traversal attempts: whatever resolves is a regular, not hidden file inside the directory."""
    assert inside(tree, resolve(tree, prefix + "/".join(segments)))


@given(st.text())
def test_resolve_any_text(tree: Path, partial: str) -> None:
    """Any text at all (surrogates, NULs, control characters): None or a file inside, never an exception."""
    assert inside(tree, resolve(tree, partial))


def test_content_type() -> None:
    """Types come from the extension; text says UTF-8; archives are types, not encodings; unknown is a download."""
    assert content_type("x/index.html") == "text/html; charset=utf-8"
    assert content_type("app.JS") == "text/javascript; charset=utf-8"
    assert content_type(Path("data.json")) == "application/json"
    assert content_type("logo.png") == "image/png"
    assert content_type("a.tar.gz") == "application/gzip"
    assert content_type("README") == "application/octet-stream"
    assert content_type("x.unknownext") == "application/octet-stream"


# serve_file over real HTTP


class Static(Resource):
    """What the lead's routes do: /static/<path> through resolve, and a handler's set_static_file_info.

    /static/<path> and /plain/<path> (compress=False): ``<path>`` percent-decoded as a whole, so ``%2f`` is a
    ``/`` (the attacker's best case).  /direct/<name>: serve_file on a path the test chose, unchecked.
    """

    isLeaf = True

    def __init__(self, root: Path, direct: dict[str, Path]) -> None:
        super().__init__()
        self.root = root
        self.direct = direct
        self.finished: list[Deferred[None]] = []

    def render(self, request: Request) -> bytes | int:
        self.finished.append(request.notifyFinish())
        prefix, _, rest = request.path.decode("latin-1").removeprefix("/").partition("/")
        if prefix == "direct":
            return serve_file(request, self.direct[rest])
        found = resolve(self.root, unquote(rest, errors="surrogateescape"))
        if found is None:
            result = write_response(request, Response(404, "404 Not Found\n"))
            return result
        return serve_file(request, found, compress=prefix == "static")


BLOCK = Random(15).randbytes(MiB)
TEXT_BLOCK = Random(16).randbytes(MiB // 2).hex().encode()  # compresses to about half


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static")
    (root / "index.html").write_bytes(b"<!doctype html><title>x</title>" * 100)
    (root / "style.css").write_text("body { color: red }\n")
    (root / "app.js").write_text("console.log('x')\n" * 200)
    (root / "data.json").write_text('{"a": 1}')
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(3000))
    (root / "archive.tar.gz").write_bytes(gzip.compress(b"tar" * 1000))
    (root / "noext").write_bytes(b"\x00\x01")
    (root / "small.txt").write_text("short\n")
    (root / "digits.txt").write_bytes(b"0123456789" * 500)
    (root / "empty.txt").write_bytes(b"")
    (root / "sub").mkdir()
    with open(root / "big.bin", "wb") as f:
        for _ in range(50):
            f.write(BLOCK)
    with open(root / "big.txt", "wb") as f:
        for _ in range(20):
            f.write(TEXT_BLOCK)
    outside = root.parent / (root.name + "-secret.txt")
    outside.write_text("root:x:0:0")
    (root / "escape").symlink_to(outside)
    return root


@pytest.fixture
def server(files: Path) -> Iterator[tuple[int, Static]]:
    direct = {
        "missing": files / "nothing-here",
        "directory": files / "sub",
        "fifo": files.parent / "static-fifo",
        "nul": Path("bad\0name"),
        "locked": files.parent / "locked.txt",
        "digits": files / "digits.txt",
    }
    if not direct["fifo"].exists():
        os.mkfifo(direct["fifo"])
    direct["locked"].write_text("no")
    direct["locked"].chmod(0)
    resource = Static(files, direct)
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    yield port.getHost().port, resource
    pytest_twisted.blockon(port.stopListening())


def within(d: Deferred[Any], seconds: float = 30) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Deferred[Any]:
    """http.client in a thread: (status, headers, body as sent)."""
    return within(deferToThread(fetch, port, method, path, headers or {}))


def raw(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is on a socket; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest_twisted.inlineCallbacks
def test_content_types(server: tuple[int, Static]) -> Iterator[Deferred[Any]]:
    """Each file is served whole with the type its extension says and its length."""
    port, _ = server
    expected = {
        "index.html": "text/html; charset=utf-8",
        "style.css": "text/css; charset=utf-8",
        "app.js": "text/javascript; charset=utf-8",
        "data.json": "application/json",
        "logo.png": "image/png",
        "archive.tar.gz": "application/gzip",
        "noext": "application/octet-stream",
        "empty.txt": "text/plain; charset=utf-8",
    }
    for name, kind in expected.items():
        status, headers, body = yield get(port, f"/plain/{name}")
        data = (server_root(server) / name).read_bytes()
        assert (status, headers["content-type"], body) == (200, kind, data), name
        assert headers["content-length"] == str(len(data)) and "content-encoding" not in headers
        assert headers["accept-ranges"] == "bytes" and headers["server"] == "crowtwist" and "last-modified" in headers


def server_root(server: tuple[int, Static]) -> Path:
    return server[1].root


@pytest_twisted.inlineCallbacks
def test_ranges(server: tuple[int, Static]) -> Iterator[Deferred[Any]]:
    """One range: 206 with its bytes; past the end: 416; several, or a stale If-Range: the whole file, 200."""
    port, _ = server
    digits = (server_root(server) / "digits.txt").read_bytes()
    size = len(digits)
    for spec, start, end in [("10-19", 10, 19), ("-5", size - 5, size - 1), (f"{size - 3}-", size - 3, size - 1),
                             (f"0-{size * 2}", 0, size - 1)]:
        for prefix in ("plain", "static"):  # a client that takes gzip still gets the plain bytes it asked for
            status, headers, body = yield get(port, f"/{prefix}/digits.txt", {"Range": f"bytes={spec}",
                                                                              "Accept-Encoding": "gzip"})
            assert status == 206 and body == digits[start:end + 1], spec
            assert headers["content-range"] == f"bytes {start}-{end}/{size}" and "content-encoding" not in headers
    status, headers, body = yield get(port, "/plain/digits.txt", {"Range": f"bytes={size}-"})
    assert (status, headers["content-range"], body) == (416, f"bytes */{size}", b"")
    status, headers, body = yield get(port, "/plain/empty.txt", {"Range": "bytes=0-"})
    assert status == 416
    # twisted.web's File answers several unsatisfiable ranges with a 500; several ranges get the whole file here.
    for spec in (f"{size}-,{size + 10}-", "0-1,3-4", "0-,0-,0-,0-"):
        status, headers, body = yield get(port, "/plain/digits.txt", {"Range": f"bytes={spec}"})
        assert (status, body) == (200, digits), spec
    for spec in ("bytes=5-3", "items=0-1", "bytes=x-y", "bytes"):  # malformed: ignored
        status, headers, body = yield get(port, "/plain/digits.txt", {"Range": spec})
        assert (status, body) == (200, digits), spec
    status, headers, _ = yield get(port, "/plain/digits.txt")
    modified = headers["last-modified"]
    status, _, body = yield get(port, "/plain/digits.txt", {"Range": "bytes=0-1", "If-Range": modified})
    assert (status, body) == (206, b"01")
    for stale in (formatdate(0, usegmt=True), '"an-etag"', "junk"):
        status, _, body = yield get(port, "/plain/digits.txt", {"Range": "bytes=0-1", "If-Range": stale})
        assert (status, body) == (200, digits), stale
    two_lines = b"GET /plain/digits.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1\r\nRange: bytes=%d-\r\n" % size
    answer = yield within(deferToThread(raw, port, two_lines + b"Connection: close\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n" + digits)
    status, headers, body = yield get(port, "/plain/digits.txt", {"Range": "bytes=0-1"}, method="POST")
    assert (status, body) == (200, digits)  # ranges are for GET


@pytest_twisted.inlineCallbacks
def test_if_modified_since(server: tuple[int, Static]) -> Iterator[Deferred[Any]]:
    """A client whose copy is current gets 304 with no body and no false Content-Length; Vary for gzip types."""
    port, _ = server
    for prefix in ("plain", "static"):
        status, headers, _ = yield get(port, f"/{prefix}/digits.txt")
        modified = headers["last-modified"]
        for method in ("GET", "HEAD"):
            status, headers, body = yield get(port, f"/{prefix}/digits.txt", {"If-Modified-Since": modified}, method)
            assert (status, body) == (304, b"") and "content-length" not in headers
            assert headers.get("vary") == ("Accept-Encoding" if prefix == "static" else None)
        status, _, body = yield get(port, f"/{prefix}/digits.txt", {"If-Modified-Since": formatdate(0, usegmt=True)})
        assert status == 200 and len(body) > 0
    for extra in ({"If-None-Match": '"x"'}, {"If-Modified-Since": "not a date"}):
        status, _, body = yield get(port, "/plain/digits.txt", {"If-Modified-Since": modified, **extra})
        assert status == 200 and len(body) == 5000
    status, _, body = yield get(port, "/plain/digits.txt", {"If-Modified-Since": modified}, "POST")
    assert status == 200 and len(body) == 5000  # conditions are for GET and HEAD


@pytest_twisted.inlineCallbacks
def test_head(server: tuple[int, Static]) -> Iterator[Deferred[Any]]:
    """HEAD gets GET's headers without a body: the length for plain files, the gzip headers for compressed ones."""
    port, _ = server
    _, got, _ = yield get(port, "/plain/index.html")
    _, head, body = yield get(port, "/plain/index.html", method="HEAD")
    assert body == b"" and head["content-length"] == got["content-length"]
    assert head["content-type"] == got["content-type"] and head["last-modified"] == got["last-modified"]
    gz = {"Accept-Encoding": "gzip"}
    _, got, _ = yield get(port, "/static/index.html", gz)
    _, head, body = yield get(port, "/static/index.html", gz, "HEAD")
    assert body == b"" and "content-length" not in head
    for name in ("content-type", "content-encoding", "vary", "last-modified", "accept-ranges"):
        assert head[name] == got[name], name


@pytest_twisted.inlineCallbacks
def test_gzip(server: tuple[int, Static]) -> Iterator[Deferred[Any]]:
    """A compressible file to a client that takes gzip: chunked gzip bytes that decode to the file, Vary set."""
    port, _ = server
    index = (server_root(server) / "index.html").read_bytes()
    status, headers, body = yield get(port, "/static/index.html", {"Accept-Encoding": "gzip"})
    assert status == 200 and gzip.decompress(body) == index and len(body) < len(index)
    assert headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    answer = yield within(deferToThread(raw, port, b"GET /static/index.html HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nContent-Encoding: gzip\r\n" in head and gzip.decompress(body) == index  # HTTP/1.0: ends at close
    status, headers, body = yield get(port, "/static/index.html", {"Accept-Encoding": "br, gzip;q=0"})
    assert body == index and "content-encoding" not in headers and headers["vary"] == "Accept-Encoding"
    for name in ("logo.png", "small.txt", "archive.tar.gz"):  # not compressible, or too small
        status, headers, body = yield get(port, f"/static/{name}", {"Accept-Encoding": "gzip"})
        assert body == (server_root(server) / name).read_bytes() and "content-encoding" not in headers, name
        assert "vary" not in headers, name
    status, headers, body = yield get(port, "/plain/index.html", {"Accept-Encoding": "gzip"})
    assert body == index and "vary" not in headers and "content-encoding" not in headers


@pytest_twisted.inlineCallbacks
def test_gzip_agent(server: tuple[int, Static]) -> Iterator[Deferred[Any]]:
    """Twisted's gzip-decoding Agent reads a 20 MiB text file, streamed compressed, back to the original."""
    port, _ = server
    agent = ContentDecoderAgent(Agent.usingEndpointFactory(reactor, Loopback()), [(b"gzip", GzipDecoder)])
    response = yield within(agent.request(b"GET", f"http://127.0.0.1:{port}/static/big.txt".encode()))
    assert response.headers.getRawHeaders(b"content-encoding") is None  # the decoder took it off
    received = Body()
    response.deliverBody(received)
    body = yield within(received.done)
    assert body == TEXT_BLOCK * 20


@pytest_twisted.inlineCallbacks
def test_traversal_over_the_wire(server: tuple[int, Static], logs: LogCapture) -> Iterator[Deferred[Any]]:
    """Traversal attempts sent raw on a socket get 404 and nothing from outside the directory."""
    port, _ = server
    attempts = [
        b"/static/..%2f..%2fetc/passwd",
        b"/static/..%2F" + os.path.basename(server_root(server)).encode() + b"-secret.txt",
        b"/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        b"/static/../../../../etc/passwd",
        b"/static/%2fetc%2fpasswd",
        b"/static//etc/passwd",
        b"/static/..%5c..%5cetc%5cpasswd",
        b"/static/index.html%00.png",
        b"/static/escape",
        b"/static/sub",
        b"/static/sub/",
        b"/static/",
        b"/static/%ff%fe",
        b"/static/..%c0%af..%c0%afetc/passwd",
    ]
    for path in attempts:
        answer = yield within(deferToThread(raw, port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 "), path
        assert body == b"404 Not Found\n", path
    assert not logs.failures()


@pytest_twisted.inlineCallbacks
def test_not_a_file(server: tuple[int, Static], logs: LogCapture) -> Iterator[Deferred[Any]]:
    """serve_file on a missing path, a directory, a FIFO (without blocking), a bad name, an unreadable file: 404."""
    port, _ = server
    names = ["missing", "directory", "fifo", "nul"]
    if os.geteuid() != 0:  # root reads any file
        names.append("locked")
    for name in names:
        status, headers, body = yield get(port, f"/direct/{name}")
        assert (status, body, headers["content-type"]) == (404, b"404 Not Found\n", "text/plain; charset=utf-8"), name
    status, _, body = yield get(port, "/direct/digits")
    assert status == 200 and body == b"0123456789" * 500
    assert not logs.failures()


class Counter(Protocol):
    """Counts and hashes a response body without keeping it."""

    def __init__(self) -> None:
        self.size = 0
        self.digest = hashlib.sha256()
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        self.digest.update(data)

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(None)


@pytest.mark.parametrize(
    ("path", "compressed", "expected"),
    [("/static/big.bin", False, BLOCK * 50), ("/static/big.txt", True, TEXT_BLOCK * 20)],
    ids=["50MiB-plain", "20MiB-gzip"],
)
@pytest_twisted.inlineCallbacks
def test_memory_stays_bounded(
    server: tuple[int, Static], path: str, compressed: bool, expected: bytes
) -> Iterator[Deferred[Any]]:
    """A big file is streamed: the process's traced memory peak stays far below the file's size."""
    port, _ = server
    size, digest = len(expected), hashlib.sha256(expected).hexdigest()
    del expected
    agent = Agent.usingEndpointFactory(reactor, Loopback())
    if compressed:
        agent = ContentDecoderAgent(agent, [(b"gzip", GzipDecoder)])
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        response = yield within(agent.request(b"GET", f"http://127.0.0.1:{port}{path}".encode()), 120)
        counter = Counter()
        response.deliverBody(counter)
        yield within(counter.done, 120)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert (counter.size, counter.digest.hexdigest()) == (size, digest)
    print(f"peak {peak / MiB:.2f} MiB for {size / MiB:.0f} MiB")
    assert peak < 4 * MiB, f"peak {peak / MiB:.1f} MiB for a {size / MiB:.0f} MiB file"


def open_paths() -> set[str]:
    """What this process has open, by path."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return found


class Leaver(Protocol):
    """Asks for a file and drops the connection at the first bytes of the answer."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = 0
        self.open_then: set[str] = set()
        self.gone: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.open_then = open_paths()
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure) -> None:
        self.gone.callback(None)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to list open files")
@pytest.mark.parametrize("accept", [b"identity", b"gzip"])
@pytest_twisted.inlineCallbacks
def test_client_leaves_midway(server: tuple[int, Static], logs: LogCapture, accept: bytes) -> Iterator[Deferred[Any]]:
    """A client that goes away mid-file: the server stops, closes the file, logs no error."""
    port, resource = server
    name = "big.bin" if accept == b"identity" else "big.txt"
    path = str((server_root(server) / name).resolve())
    leaver = Leaver(b"GET /static/" + name.encode() + b" HTTP/1.1\r\nHost: x\r\nAccept-Encoding: " + accept + b"\r\n\r\n")
    yield within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), leaver))
    yield within(leaver.gone)
    outcome = yield within(resource.finished[-1].addCallbacks(lambda _: "finished", lambda f: f.type.__name__))
    assert outcome in ("ConnectionLost", "ConnectionDone") and leaver.received > 0
    assert path in leaver.open_then and path not in open_paths()
    assert not logs.failures() and not logs.at(LogLevel.error) and not logs.at(LogLevel.critical)


def test_client_gone_before_the_answer(tmp_path: Path) -> None:
    """A request whose client has left already (a late handler) gets nothing, and no file is opened."""
    request = Request(DummyChannel())
    request.method = b"GET"
    request.channel = None
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    assert serve_file(request, kept) == NOT_DONE_YET and str(kept) not in open_paths()


def test_fifo_does_not_block(tmp_path: Path) -> None:
    """serve_file opens a FIFO without waiting for a writer, and refuses it."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    answers: list[bytes | int] = []
    request = Request(DummyChannel())
    request.method = b"GET"
    answers.append(serve_file(request, fifo))
    assert answers == [b"404 Not Found\n"] and request.code == 404
