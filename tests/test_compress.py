"""gzip for responses: Accept-Encoding as RFC 9110 reads it, compressible types, compress_body, GzipStream."""

from __future__ import annotations

import gzip
import http.client
import zlib
from random import Random
from typing import Any
from collections.abc import Iterator

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, ContentDecoderAgent, GzipDecoder, ResponseDone
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyChannel

from crowtwist._compress import (
    MIN_SIZE,
    GzipStream,
    accepts_gzip,
    add_vary,
    compress_body,
    compressible,
)

from .conftest import LogCapture

TEXT = ("The quick brown fox jumps over the lazy dog. " * 100).encode()
assert len(TEXT) >= MIN_SIZE


# accepts_gzip


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        (b"", False),
        ("gzip", True),
        (b"gzip", True),
        ("x-gzip", True),
        ("GZip", True),
        ("compress, gzip", True),  # RFC 9110 section 12.5.3's examples
        ("*", True),
        ("compress;q=0.5, gzip;q=1.0", True),
        ("gzip;q=1.0, identity; q=0.5, *;q=0", True),
        ("gzip;q=0", False),
        ("gzip;Q=0", False),
        ("gzip;q=0.000", False),
        ("gzip;q=0.001", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),  # the named coding wins over *
        ("gzip;q=0, *", False),
        ("identity;q=0, *;q=0.1", True),
        ("br, deflate", False),
        ("identity", False),
        ("gzipped, xgzip, gzip2", False),  # aiohttp's substring test would say yes
        ("gzip;q=1.5", False),  # not a qvalue: the element is ignored
        ("gzip;q=abc, *", True),
        ('gzip;q="0"', False),
        ("gzip;q=", False),
        ("gzip;level=9", True),  # no such parameter: ignored
        ("\tgzip\t;\tq=0.5\t", True),
        (",,, ,gzip,,", True),
        ("gzip;q=0, x-gzip;q=0.5", True),  # the same coding twice: the higher weight
        (";;;=,==", False),
    ],
)
def test_accepts_gzip_examples(header: str | bytes | None, expected: bool) -> None:
    """Accept-Encoding values from RFC 9110 and from unlucky or hostile clients give the RFC's answer."""
    assert accepts_gzip(header) is expected


CODINGS = ["gzip", "x-gzip", "*", "identity", "br", "deflate", "compress", "gzipped", "xgzip", "zstd"]
VALID_Q = ["0", "0.", "0.0", "0.5", "0.001", "0.999", "1", "1.", "1.0", "1.000"]
INVALID_Q = ["", "2", "-1", "1.5", "abc", "0x1", '"1"', "1e0", "nan", "inf", ".5"]
OWS = st.sampled_from(["", " ", "\t", "  "])


@st.composite
def elements(draw: st.DrawFn) -> tuple[str, str, float | None]:
    """One Accept-Encoding element: its text, its coding, and its weight (None: malformed)."""
    coding = draw(st.sampled_from(CODINGS))
    spelled = "".join(c.upper() if draw(st.booleans()) else c for c in coding)
    text = draw(OWS) + spelled + draw(OWS)
    weight: float | None = 1.0
    if draw(st.booleans()):
        valid = draw(st.booleans())
        value = draw(st.sampled_from(VALID_Q if valid else INVALID_Q))
        q = draw(st.sampled_from(["q", "Q"]))
        text += ";" + draw(OWS) + q + "=" + value
        weight = float(value) if valid else None
    if draw(st.booleans()):
        text += ";" + draw(st.sampled_from(["level=9", "foo", "a=b=c", ""]))
    return text, coding, weight


@settings(max_examples=500)
@given(st.lists(elements(), max_size=6), st.lists(OWS, min_size=7, max_size=7))
def test_accepts_gzip_follows_the_rfc(parts: list[tuple[str, str, float | None]], spaces: list[str]) -> None:
    """For any list of codings, weights, case and whitespace: gzip/x-gzip's best weight decides, else *'s."""
    header = ",".join(space + text for space, (text, _, _) in zip(spaces, parts))
    named = [w for _, c, w in parts if c in ("gzip", "x-gzip") and w is not None]
    star = [w for _, c, w in parts if c == "*" and w is not None]
    expected = max(named) > 0 if named else bool(star) and max(star) > 0
    assert accepts_gzip(header) is expected
    assert accepts_gzip(header.encode("latin-1")) is expected


@given(st.text(st.characters(codec="latin-1")))
def test_accepts_gzip_never_fails(header: str) -> None:
    """Any header value at all gets an answer, never an exception; a refusal of gzip stays a refusal."""
    assert isinstance(accepts_gzip(header), bool)
    assert accepts_gzip(header.replace(",", "") + ", gzip;q=0, x-gzip;q=0") is False


# compressible


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "text/plain; charset=utf-8",
        "TEXT/CSS",
        "text/javascript",
        "application/json",
        "Application/JSON ; charset=utf-8",
        "application/javascript",
        "application/xml",
        "application/problem+json",
        "application/atom+xml",
        "image/svg+xml",
        "application/wasm",
        "font/ttf",
        "image/x-icon",
        "image/vnd.microsoft.icon",
    ],
)
def test_compressible_types(content_type: str) -> None:
    """Text, JSON, JavaScript, XML, +json/+xml, SVG, WebAssembly, TrueType and icons are compressed."""
    assert compressible(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "image/png",
        "image/jpeg",
        "image/webp",
        "video/mp4",
        "audio/mpeg",
        "application/zip",
        "application/gzip",
        "application/pdf",
        "font/woff2",
        "font/woff",
        "application/octet-stream",
        "text/event-stream",
        "application/json-seq-not",
        ";",
    ],
)
def test_incompressible_types(content_type: str | None) -> None:
    """Compressed formats, unknown binary, no type, and server-sent events are not compressed."""
    assert not compressible(content_type)


# GzipStream


@settings(max_examples=100)
@given(st.lists(st.tuples(st.binary(max_size=3000), st.booleans()), max_size=12))
def test_gzip_stream_round_trip_and_flush(pieces: list[tuple[bytes, bool]]) -> None:
    """Fed piece by piece with flushes between, the stream decodes to the input; after a flush all so far decodes."""
    stream = GzipStream()
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    sent = bytearray()
    decoded = bytearray()
    expected = bytearray()
    for data, flush in pieces:
        out = stream.compress(data)
        expected += data
        if flush:
            out += stream.flush()
        sent += out
        decoded += decoder.decompress(out)
        if flush:
            assert decoded == expected
    sent += stream.finish()
    assert stream.finished
    assert gzip.decompress(bytes(sent)) == bytes(expected)


def test_gzip_stream_after_finish() -> None:
    """A finished stream refuses more data, and finishing again gives nothing."""
    stream = GzipStream(1)
    body = stream.compress(b"abc") + stream.finish()
    assert gzip.decompress(body) == b"abc"
    assert stream.finish() == b""
    with pytest.raises(ValueError):
        stream.compress(b"more")
    with pytest.raises(ValueError):
        stream.flush()


# compress_body, with plain calls


def request(
    method: bytes = b"GET",
    accept: bytes | None = b"gzip",
    code: int = 200,
    headers: dict[bytes, list[bytes]] | None = None,
) -> Request:
    """A twisted.web Request with its response's code and headers set, as a handler's are before the body."""
    req = Request(DummyChannel())
    req.method = method
    if accept is not None:
        req.requestHeaders.setRawHeaders(b"accept-encoding", [accept])
    req.setResponseCode(code)
    for name, values in (headers or {}).items():
        req.responseHeaders.setRawHeaders(name, values)
    return req


def test_compress_body_compresses() -> None:
    """A long text body to a client that takes gzip: gzip bytes, Content-Encoding and Vary set."""
    req = request()
    out = compress_body(req, TEXT, "text/plain")
    assert gzip.decompress(out) == TEXT and len(out) < len(TEXT)
    assert req.responseHeaders.getRawHeaders(b"content-encoding") == [b"gzip"]
    assert req.responseHeaders.getRawHeaders(b"vary") == [b"Accept-Encoding"]


def test_compress_body_head_as_get() -> None:
    """HEAD is answered with the headers its GET would get: compressed, so the same Content-Encoding."""
    get, head = request(), request(b"HEAD")
    assert compress_body(head, TEXT, "text/plain") == compress_body(get, TEXT, "text/plain")
    assert list(head.responseHeaders.getAllRawHeaders()) == list(get.responseHeaders.getAllRawHeaders())


@pytest.mark.parametrize("accept", [None, b"", b"identity", b"gzip;q=0", b"br"])
def test_compress_body_client_without_gzip(accept: bytes | None) -> None:
    """A client that does not take gzip gets the body as it is, yet Vary says the answer depended on it."""
    req = request(accept=accept)
    assert compress_body(req, TEXT, "text/html") is TEXT
    assert not req.responseHeaders.hasHeader(b"content-encoding")
    assert req.responseHeaders.getRawHeaders(b"vary") == [b"Accept-Encoding"]


@pytest.mark.parametrize(
    ("code", "body", "content_type"),
    [
        (101, TEXT, "text/plain"),
        (204, TEXT, "text/plain"),
        (304, TEXT, "text/plain"),
        (200, TEXT[: MIN_SIZE - 1], "text/plain"),
        (200, TEXT, "image/png"),
        (200, TEXT, None),
    ],
)
def test_compress_body_leaves_alone(code: int, body: bytes, content_type: str | None) -> None:
    """No-body codes, short bodies, incompressible or unknown types: untouched, no header added."""
    req = request(code=code)
    assert compress_body(req, body, content_type) is body
    assert not req.responseHeaders.hasHeader(b"content-encoding")
    assert not req.responseHeaders.hasHeader(b"vary")


def test_compress_body_reads_the_content_type_header() -> None:
    """Without a content_type argument, the response's Content-Type header decides."""
    req = request(headers={b"content-type": [b"application/json"]})
    assert gzip.decompress(compress_body(req, TEXT, None)) == TEXT
    req = request(headers={b"content-type": [b"image/jpeg"]})
    assert compress_body(req, TEXT, None) is TEXT


def test_compress_body_existing_encoding() -> None:
    """A body encoded already is not encoded again; Content-Encoding: identity opts out and is removed."""
    req = request(headers={b"content-encoding": [b"br"]})
    assert compress_body(req, TEXT, "text/plain") is TEXT
    assert req.responseHeaders.getRawHeaders(b"content-encoding") == [b"br"]
    req = request(headers={b"content-encoding": [b" Identity "]})
    assert compress_body(req, TEXT, "text/plain") is TEXT
    assert not req.responseHeaders.hasHeader(b"content-encoding")
    assert not req.responseHeaders.hasHeader(b"vary")


def test_compress_body_partial_content() -> None:
    """A response with Content-Range carries a byte range of the plain body: not compressed."""
    req = request(code=206, headers={b"content-range": [b"bytes 0-99/5000"]})
    assert compress_body(req, TEXT, "text/plain") is TEXT


def test_compress_body_incompressible_bytes() -> None:
    """Bytes gzip cannot shorten are sent as they are, and Vary is still set."""
    random = Random(15).randbytes(4096)
    req = request()
    assert compress_body(req, random, "text/plain") is random
    assert req.responseHeaders.getRawHeaders(b"vary") == [b"Accept-Encoding"]


def test_compress_body_fixes_length_and_etag() -> None:
    """A Content-Length set already becomes the compressed length; a strong ETag becomes weak, a weak one stays."""
    req = request(headers={b"content-length": [b"%d" % len(TEXT)], b"etag": [b'"v1"']})
    out = compress_body(req, TEXT, "text/plain")
    assert req.responseHeaders.getRawHeaders(b"content-length") == [b"%d" % len(out)]
    assert req.responseHeaders.getRawHeaders(b"etag") == [b'W/"v1"']
    req = request(headers={b"etag": [b'W/"v2"']})
    compress_body(req, TEXT, "text/plain")
    assert req.responseHeaders.getRawHeaders(b"etag") == [b'W/"v2"']


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ([], [b"Accept-Encoding"]),
        ([b"Origin"], [b"Origin, Accept-Encoding"]),
        ([b"Origin", b"Cookie, Accept"], [b"Origin, Cookie, Accept, Accept-Encoding"]),
        ([b"accept-encoding"], [b"accept-encoding"]),
        ([b"Origin,ACCEPT-ENCODING"], [b"Origin,ACCEPT-ENCODING"]),
        ([b"*"], [b"*"]),
        ([b""], [b"Accept-Encoding"]),
    ],
)
def test_add_vary(before: list[bytes], after: list[bytes]) -> None:
    """Accept-Encoding joins Vary's values in one line, once, and never next to *."""
    headers = Headers({b"vary": before} if before else {})
    add_vary(headers)
    assert headers.getRawHeaders(b"vary") == after


@settings(max_examples=200)
@given(
    st.one_of(st.binary(min_size=MIN_SIZE, max_size=8192), st.text(min_size=MIN_SIZE // 2).map(lambda t: t.encode() * 2)),
    st.sampled_from(["GET", "HEAD", "POST"]),
)
def test_compress_body_round_trip(body: bytes, method: str) -> None:
    """For any body: what is returned decodes to it, and Content-Encoding says gzip exactly when it is gzip."""
    req = request(method.encode())
    out = compress_body(req, body, "application/json")
    if req.responseHeaders.hasHeader(b"content-encoding"):
        assert gzip.decompress(out) == body and len(out) < len(body)
    else:
        assert out is body
    assert req.responseHeaders.getRawHeaders(b"vary") == [b"Accept-Encoding"]


# compress_body over real HTTP


class Handler(Resource):
    """What the lead's write path does: headers on the request, then compress_body on the body."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        size = int(request.args.get(b"size", [b"5000"])[0])
        body = (TEXT * (size // len(TEXT) + 1))[:size]
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"vary", b"Origin")
        return compress_body(request, body, None)


@pytest.fixture
def handler_port() -> Iterator[int]:
    port = reactor.listenTCP(0, Site(Handler()), interface="127.0.0.1")  # type: ignore[attr-defined]
    yield port.getHost().port
    pytest_twisted.blockon(port.stopListening())


@implementer(IAgentEndpointFactory)
class Loopback:
    """Endpoints straight to 127.0.0.1: no name resolution (the GAIResolver's first lookup of 127.0.0.1 came back
    empty here under pytest-cov, for tests/test_route_agreement.py too)."""

    def endpointForURI(self, uri: URI) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", uri.port, timeout=10)


class Body(Protocol):
    """A response body, as it comes (readBody wants a transport the gzip decoder does not give)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self.done.callback(bytes(self.data))
        else:
            self.done.errback(reason)


def fetch(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """One request with http.client (which decodes nothing): status, headers, raw body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest_twisted.inlineCallbacks
def test_handler_body_over_http(handler_port: int, logs: LogCapture) -> Iterator[Deferred[Any]]:
    """Twisted's gzip-decoding Agent reads the body; http.client sees gzip bytes, its length, Vary; HEAD agrees."""
    url = f"http://127.0.0.1:{handler_port}/?size=20000".encode()
    agent = ContentDecoderAgent(Agent.usingEndpointFactory(reactor, Loopback()), [(b"gzip", GzipDecoder)])
    response = yield agent.request(b"GET", url).addTimeout(10, reactor)
    received = Body()
    response.deliverBody(received)
    body = yield received.done.addTimeout(10, reactor)
    assert body == (TEXT * 5)[:20000]

    status, headers, raw = yield deferToThread(fetch, handler_port, "GET", "/?size=20000", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip" and headers["vary"] == "Origin, Accept-Encoding"
    assert int(headers["content-length"]) == len(raw) and gzip.decompress(raw) == body
    status, head, nothing = yield deferToThread(fetch, handler_port, "HEAD", "/?size=20000", {"Accept-Encoding": "gzip"})
    assert nothing == b"" and head["content-length"] == headers["content-length"]
    assert head["content-encoding"] == "gzip"

    status, plain, raw = yield deferToThread(fetch, handler_port, "GET", "/?size=20000", {})
    assert "content-encoding" not in plain and raw == body and plain["vary"] == "Origin, Accept-Encoding"
    status, small, raw = yield deferToThread(fetch, handler_port, "GET", "/?size=100", {"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small and raw == TEXT[:100] and small["vary"] == "Origin"
    assert not logs.failures()
