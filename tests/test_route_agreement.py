"""Three ways to route one request agree: the twisted.web resource tree (a real
``app.site()``, requests fed as bytes), the upgrade fast path's ``_route``, and
``RouteNode.match``; and none of them depends on the requests that came before."""

from __future__ import annotations

import threading
from typing import Any
from collections.abc import Iterator, Sequence
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from crowtwist import Crow, Response
from crowtwist._routing import PATH, ParamType, ParamValue, Segment, parse_pattern, path_segments
from crowtwist._site import CrowSite
from crowtwist.websocket._upgrade import _route

from .clients import within

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# Serving requests in memory.


def serve(site: Site, target: bytes, method: bytes = b"GET", upgrade: bool = False) -> tuple[int, bytes]:
    """One request on a fresh connection to ``site``: the status and the body."""
    transport = StringTransport()
    channel = site.buildProtocol(None)
    transport.protocol = channel
    channel.makeConnection(transport)
    head = [method + b" " + target + b" HTTP/1.1", b"Host: x"]
    if upgrade:
        head += [
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: " + KEY.encode(),
            b"Sec-WebSocket-Version: 13",
        ]
    channel.dataReceived(b"\r\n".join(head) + b"\r\n\r\n")
    data = transport.value()
    channel.connectionLost(Failure(ConnectionDone()))
    status_line, _, rest = data.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body


def memory_site(app: Crow) -> CrowSite:
    site = app.site()
    site.reactor = Clock()  # idle and head timers on a clock nobody advances
    return site


def echo(pattern: str, params: Sequence[ParamValue]) -> str:
    return repr((pattern, tuple(params)))


def echo_app(patterns: Sequence[str]) -> Crow:
    """Every pattern as an HTTP route and a WebSocket route with ``onaccept``, both echoing route and params."""
    app = Crow()

    def register(pattern: str) -> None:
        app.route(pattern)(lambda request, *params: echo(pattern, params))
        app.route(pattern).websocket().onaccept(lambda request: Response(403, "ws " + echo(pattern, request.route_params)))

    for pattern in patterns:
        register(pattern)
    return app


# An oracle for precedence: static first, then typed segments in declaration order, per level.


def _take(segments: Sequence[Segment], request: Sequence[str]) -> list[ParamValue] | None:
    params: list[ParamValue] = []
    for index, segment in enumerate(segments):
        if index >= len(request):
            return None
        if segment is PATH:
            rest = "/".join(request[index:])
            return [*params, rest] if rest else None
        if isinstance(segment, str):
            if segment != request[index]:
                return None
            continue
        assert isinstance(segment, ParamType)
        value = segment.convert(request[index])
        if value is None:
            return None
        params.append(value)
    return params if len(segments) == len(request) else None


def oracle(patterns: Sequence[str], request: Sequence[str]) -> str | None:
    parsed = [parse_pattern(p) for p in patterns]

    def rank(segments: Sequence[Segment]) -> tuple[int, ...]:
        ranks = []
        for level, segment in enumerate(segments):
            if isinstance(segment, str):
                ranks.append(0)
                continue
            kinds: list[Segment] = []
            for other in parsed:
                if len(other) > level and other[:level] == segments[:level] and not isinstance(other[level], str):
                    if other[level] not in kinds:
                        kinds.append(other[level])
            ranks.append(1 + kinds.index(segment))
        return tuple(ranks)

    best: tuple[tuple[int, ...], str] | None = None
    for pattern, segments in zip(patterns, parsed):
        params = _take(segments, request)
        if params is not None:
            ranked = (rank(segments), echo(pattern, params))
            if best is None or ranked[0] < best[0]:
                best = ranked
    return None if best is None else best[1]


# Strategies.

STATIC = ["a", "b", "ab", "", "é", "1", "x y", "..", "%"]
TYPED = ["<int>", "<uint>", "<double>", "<float>", "<string>", "<str>"]
VALUES = [
    *STATIC, "0", "-3", "+7", "42", str(2**63), str(-(2**63)), str(2**64), "1.5", ".5", "-.5e1", "1e3",
    "1e400", "1e-400", "-inf", "nan", "1_0", ".", "a/b", "/", "\x00", "?", "#", "é/x",
]

patterns_strategy = st.lists(
    st.builds(
        lambda middle, last: "/" + "/".join([*middle, *last]),
        st.lists(st.sampled_from(STATIC + TYPED), max_size=3),
        st.sampled_from([[], ["<path>"], [""]]),
    ),
    min_size=1,
    max_size=8,
    unique_by=parse_pattern,
)


@st.composite
def raw_segment(draw: st.DrawFn, text: str) -> str:
    """``text`` as it may appear in a request target: escaped fully, minimally, or partly; or broken UTF-8."""
    how = draw(st.sampled_from(["full", "minimal", "mixed", "lower", "broken"]))
    if how == "full":
        return quote(text, safe="")
    if how == "minimal":
        return quote(text, safe="/!$&'()*+,;=:@")  # a slash stays a slash: two segments
    if how == "lower":
        return quote(text, safe="").lower()
    if how == "broken":
        return quote(text, safe="") + draw(st.sampled_from(["%FF", "%C3", "%ED%A0%80", "%c3%28"]))
    return "".join(quote(c, safe="") if draw(st.booleans()) else quote(c, safe="/") for c in text)


@st.composite
def target(draw: st.DrawFn, patterns: Sequence[str]) -> str:
    """A request target: mostly a route's pattern filled in, sometimes anything."""
    if draw(st.integers(0, 3)):
        texts = []
        for segment in parse_pattern(draw(st.sampled_from(patterns))):
            if isinstance(segment, str) and draw(st.integers(0, 5)):
                texts.append(segment)
            elif segment is PATH:
                texts += draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=3))
            else:
                texts.append(draw(st.sampled_from(VALUES) | st.text(max_size=3)))
        if draw(st.integers(0, 4)) == 0:
            texts.append(draw(st.sampled_from(VALUES)))
    else:
        texts = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=5))
    path = "/" + "/".join(draw(raw_segment(t)) for t in texts)
    return path + draw(st.sampled_from(["", "", "?q=1", "?a/b/c", "?", "?%FF"]))


# The property.


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), patterns=patterns_strategy)
def test_tree_fast_path_and_match_agree(data: st.DataObject, patterns: list[str]) -> None:
    """For any route table and any sequence of requests to one Site, the tree, _route and match pick the same."""
    app = echo_app(patterns)
    site = memory_site(app)
    requests = data.draw(st.lists(st.tuples(target(patterns), st.booleans()), min_size=1, max_size=12))
    for text, upgrade in requests:
        raw = text.encode("ascii")
        path = raw.partition(b"?")[0]
        segments = path_segments(path)
        found = app._root.match(segments) if segments is not None else None
        by_match = None if found is None else echo(found[0].endpoint.http["GET"].pattern, found[1])  # type: ignore[union-attr]
        routed = _route(app._root, path)
        by_fast_path = None if routed is None else echo(routed[0].pattern, routed[1])
        by_oracle = None if segments is None else oracle(patterns, segments)
        status, body = serve(site, raw, upgrade=upgrade)
        if upgrade:
            by_tree = body.decode("utf-8").removeprefix("ws ") if status == 403 else None
        else:
            by_tree = body.decode("utf-8") if status == 200 else None
        # 301: no route takes the path, but one declared with a trailing slash takes it with one.
        slashed = segments is not None and segments[-1] != "" and oracle(patterns, [*segments, ""]) is not None
        assert status in ((200, 403, 404) if by_oracle is not None or not slashed else (301,)), (text, status, body)
        assert by_tree == by_match == by_fast_path == by_oracle, (text, upgrade)


# The sequence, in memory and over TCP.


def path_app() -> Crow:
    app = Crow()
    app.route("/hp/<path>")(lambda request, rest: rest)
    (
        app.route("/wp/<path>")
        .websocket()
        .onaccept(lambda request: True)
        .onopen(lambda conn: conn.send_text(repr(conn.params)))
    )
    return app


@pytest.mark.parametrize("upgrade", [False, True])
def test_path_route_after_a_one_segment_request(upgrade: bool) -> None:
    """/x, then /a/b, then /x on one Site: each answers for its own path, an HTTP route or a WebSocket route with onaccept."""
    app = path_app()
    site = memory_site(app)
    prefix = b"/wp/" if upgrade else b"/hp/"
    ok = 101 if upgrade else 200
    for rest in (b"x", b"a/b", b"x", b"a/b/", b"a%2Fb"):
        assert serve(site, prefix + rest, upgrade=upgrade)[0] == ok, rest


@pytest_twisted.inlineCallbacks
def test_path_route_sequence_over_tcp() -> Iterator[Any]:
    """Over 127.0.0.1, twisted's Agent and the websockets client see /x then /a/b both routed, HTTP and WebSocket."""
    app = path_app()
    port = reactor.listenTCP(0, app.site(), interface="127.0.0.1")  # type: ignore[attr-defined]
    base = f"127.0.0.1:{port.getHost().port}"
    try:
        agent = Agent(reactor)
        for rest in ("x", "a/b", "x"):
            response = yield within(agent.request(b"GET", f"http://{base}/hp/{rest}".encode()))
            body = yield within(readBody(response))
            assert (response.code, body) == (200, rest.encode())

        def client(rest: str) -> str:
            assert threading.current_thread() is not threading.main_thread()
            try:
                with ws_connect(f"ws://{base}/wp/{rest}", open_timeout=10, compression=None) as ws:
                    return str(ws.recv(timeout=10))
            except InvalidStatus as error:
                return f"refused {error.response.status_code}"

        for rest in ("x", "a/b", "x"):
            assert (yield within(deferToThread(client, rest))) == repr((rest,))
    finally:
        yield port.stopListening()
        yield app.close_all()


# Probes: what an attacker or an unlucky client may send.


def probe_app() -> Crow:
    app = Crow()
    app.route("/")(lambda request: "root")
    app.route("/a")(lambda request: "a")
    app.route("/s/<string>")(lambda request, s: echo("/s/<string>", (s,)))
    app.route("/p/<path>")(lambda request, p: echo("/p/<path>", (p,)))
    app.route("/n/<int>")(lambda request, n: echo("/n/<int>", (n,)))
    app.route("/static/<int>")(lambda request, n: echo("/static/<int>", (n,)))
    return app


class Text(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render_GET(self, request: Any) -> bytes:
        return self.body + b":" + b"/".join(request.postpath)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # An escaped slash is no segment boundary: <string> is one segment, as in Crow, and refuses it.
        (b"/s/..%2F..%2Fetc%2Fpasswd", (404, None)),
        (b"/s/a%2fb", (404, None)),
        # <path> takes slashes anyway; unescaped it cannot tell them apart.
        (b"/p/a%2Fb", (200, echo("/p/<path>", ("a/b",)))),
        # No normalisation: ".." and "." are values, as in Crow; handlers must check them.
        (b"/p/../../etc/passwd", (200, echo("/p/<path>", ("../../etc/passwd",)))),
        (b"/s/%2e%2e", (200, echo("/s/<string>", ("..",)))),
        (b"/a/../a", (404, None)),
        # Empty segments are segments; <path> takes what follows, as in Crow.
        (b"//a", (404, None)),
        (b"/p//x", (200, echo("/p/<path>", ("/x",)))),
        (b"/p/", (404, None)),
        (b"/a/", (404, None)),
        # Escapes that are not UTF-8 match no route.
        (b"/s/%FF", (404, None)),
        (b"/s/%C3%A9", (200, echo("/s/<string>", ("é",)))),
        (b"/n/%31", (200, echo("/n/<int>", (1,)))),
        # The query string is not the path, whatever it holds.
        (b"/a?/s/x", (200, "a")),
        (b"/s/x?%FF", (200, echo("/s/<string>", ("x",)))),
        (b"/s/x%3Fy", (200, echo("/s/<string>", ("x?y",)))),
        # A target not starting with "/" (nor absolute-form): twisted.web would drop its first byte; no route takes it.
        (b"xa", (404, None)),
        (b"*a", (404, None)),
    ],
)
def test_hostile_paths(target: bytes, expected: tuple[int, str | None]) -> None:
    """Encoded slashes, dot segments, empty segments, bad escapes, queries and odd targets route as documented."""
    app = probe_app()
    status, body = serve(memory_site(app), target)
    assert (status, body.decode("utf-8") if status == 200 else None) == expected
    raw = target.partition(b"?")[0]
    if raw.startswith(b"/"):
        routed = _route(app._root, raw)
        segments = path_segments(raw)
        assert routed is None  # no WebSocket rules here
        assert (segments is not None and app._root.match(segments) is not None) == (status == 200)


def test_very_long_paths() -> None:
    """A path of thousands of segments routes in one pass: <path> takes it, elsewhere it is a 404."""
    app = probe_app()
    site = memory_site(app)
    many = b"/".join([b"a"] * 6000)
    status, body = serve(site, b"/p/" + many)
    assert status == 200 and body.decode() == echo("/p/<path>", ("/".join(["a"] * 6000),))
    assert serve(site, b"/s/" + many)[0] == 404
    assert serve(site, b"/" + many)[0] == 404


def test_head_answers_like_get_without_a_body() -> None:
    """HEAD follows GET's route and params; the body is left out."""
    app = probe_app()
    assert serve(memory_site(app), b"/s/x", method=b"HEAD") == (200, b"")
    assert serve(memory_site(app), b"/s/x%2Fy", method=b"HEAD")[0] == 404


def test_mounts_mixed_with_routes() -> None:
    """putChild mounts answer only where no route does, including paths that are not UTF-8."""
    app = probe_app()
    tree = app.resource()
    tree.putChild(b"static", Text(b"mounted"))
    site = CrowSite(tree)
    site.reactor = Clock()
    assert serve(site, b"/static/5") == (200, echo("/static/<int>", (5,)).encode())
    assert serve(site, b"/static/x") == (200, b"mounted:x")
    assert serve(site, b"/static/%FF") == (200, b"mounted:\xff")
    assert serve(site, b"/static") == (200, b"mounted:")


def test_mount_prefix_itself() -> None:
    """Mounted at /crow, /crow/ serves the "/" route and /crow redirects there; other paths under it route as usual."""
    app = probe_app()
    root = Resource()
    root.putChild(b"crow", app.resource())
    site = CrowSite(root)
    site.reactor = Clock()
    assert serve(site, b"/crow")[0] == 301
    assert serve(site, b"/crow/") == (200, b"root")
    assert serve(site, b"/crow/a") == (200, b"a")
    assert serve(site, b"/crow/p/x/y") == (200, echo("/p/<path>", ("x/y",)).encode())
    assert serve(site, b"/crowx")[0] == 404
