"""CORSHandler (Crow's crow::CORSHandler): rule choice, the headers sent, where Fetch overrides Crow, validation."""

from __future__ import annotations

import http
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from crowtwist._cookies import CookieParser
from crowtwist._cors import CORSHandler, CORSRules
from crowtwist._http import write_response
from crowtwist._middleware import Middleware
from crowtwist._response import Response

CORS_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Allow-Credentials",
    "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
)


class FakeRequest:
    """The request's duck type the middleware uses: method, url (no query), get_header_value."""

    def __init__(self, method: str = "GET", url: str = "/", headers: Iterable[tuple[str, str]] = ()) -> None:
        self.method = method
        self.url = url
        self.headers = list(headers)

    def get_header_value(self, name: str) -> str:
        return next((value for key, value in self.headers if key.lower() == name.lower()), "")


def run(cors: CORSHandler, url: str = "/", origin: str | None = None, method: str = "GET",
        headers: Iterable[tuple[str, str]] = (), res: Response | None = None) -> Response:
    """after_handle for one request; the response it leaves."""
    sent = [("Origin", origin)] if origin is not None else []
    req = FakeRequest(method, url, [*sent, *headers])
    res = res if res is not None else Response(200, "ok")
    ctx = cors.Context()
    cors.before_handle(req, res, ctx)
    cors.after_handle(req, res, ctx)
    return res


def cors_headers(res: Response) -> dict[str, str]:
    return {name: res.get_header_value(name) for name in CORS_HEADERS if res.get_header_value(name)}


def vary(res: Response) -> list[str]:
    return [value for name, value in res.header_lines() if name.lower() == "vary"]


# Crow's behaviour, kept.


def test_defaults_are_crows_stars_on_every_response() -> None:
    """With no configuration every response gets origin, methods and headers "*", with or without Origin (Crow's)."""
    cors = CORSHandler()
    expected = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "*",
                "Access-Control-Allow-Headers": "*"}
    assert cors_headers(run(cors)) == expected
    assert cors_headers(run(cors, origin="https://a.example")) == expected
    assert cors_headers(run(cors, method="OPTIONS")) == expected
    assert vary(run(cors, origin="https://a.example")) == []  # the same answer for all: nothing to vary on
    assert isinstance(cors, Middleware)


def test_the_chained_configuration_of_the_brief() -> None:
    """global_() chains every setter, and prefix() goes on from a rule to the next one, as Crow's CORSRules do."""
    cors = CORSHandler()
    rules = (
        cors.global_().headers("X-Custom-Header", "Upgrade-Insecure-Requests").methods("POST", "GET")
        .origin("https://example.com").max_age(600).allow_credentials().expose("X-Foo", "X-Bar")
    )
    assert isinstance(rules, CORSRules) and rules is cors.global_()
    rules.prefix("/cors").origin("https://a.example", "https://b.example").global_().expose("X-Baz")
    cors.prefix("/nocors").ignore()
    assert cors_headers(run(cors, "/", origin="https://example.com")) == {
        "Access-Control-Allow-Origin": "https://example.com",
        "Access-Control-Allow-Methods": "POST, GET",
        "Access-Control-Allow-Headers": "X-Custom-Header, Upgrade-Insecure-Requests",
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "X-Foo, X-Bar, X-Baz",
        "Access-Control-Max-Age": "600",
    }
    assert cors_headers(run(cors, "/cors/x", origin="https://b.example")) == {
        "Access-Control-Allow-Origin": "https://b.example", "Access-Control-Allow-Methods": "*",
        "Access-Control-Allow-Headers": "*",
    }
    assert cors_headers(run(cors, "/nocors", origin="https://example.com")) == {}
    assert cors_headers(run(cors, "/nocors/deep/path", origin="https://example.com")) == {}


def test_crows_unit_test_where_it_still_holds() -> None:
    """Crow's middleware_cors test: "*" on / and OPTIONS, expose, ignore, credentials echoing the Origin."""
    cors = CORSHandler()
    cors.prefix("/origin").origin("https://test.test").prefix("/auth-origin").allow_credentials()
    cors.prefix("/expose").expose("exposed-header").prefix("/nocors").ignore()
    assert run(cors, "/", method="OPTIONS").get_header_value("Access-Control-Allow-Origin") == "*"
    assert run(cors, "/").get_header_value("Access-Control-Allow-Origin") == "*"
    assert run(cors, "/origin").get_header_value("Access-Control-Allow-Origin") == "https://test.test"
    auth = run(cors, "/auth-origin", origin="https://test-client.example")
    assert auth.get_header_value("Access-Control-Allow-Origin") == "https://test-client.example"
    assert auth.get_header_value("Access-Control-Allow-Credentials") == "true"
    assert run(cors, "/expose").get_header_value("Access-Control-Expose-Headers") == "exposed-header"
    assert cors_headers(run(cors, "/nocors/path")) == {}


def test_the_first_declared_matching_prefix_wins() -> None:
    """Rules are tried in declaration order (Crow's find_rule), so a longer prefix declared first wins for its paths."""
    cors = CORSHandler()
    cors.prefix("/api/public").origin("https://public.example")
    cors.prefix("/api").origin("https://private.example")
    assert run(cors, "/api/public/x").get_header_value("Access-Control-Allow-Origin") == "https://public.example"
    assert run(cors, "/api/other").get_header_value("Access-Control-Allow-Origin") == "https://private.example"
    assert run(cors, "/elsewhere").get_header_value("Access-Control-Allow-Origin") == "*"
    assert cors.rule_for("/api") is cors.prefix("/api")  # asking again gives the same rule


def test_a_prefix_declared_after_one_covering_it_is_refused() -> None:
    """A rule that could never be chosen (Crow silently never uses it) raises ValueError naming both prefixes."""
    cors = CORSHandler()
    cors.prefix("/api")
    with pytest.raises(ValueError, match=r"'/api/public'.*'/api'.*declare the longer prefix first"):
        cors.prefix("/api/public")
    cors.prefix("/static/")
    with pytest.raises(ValueError, match="never be used"):
        cors.prefix("/static/img")
    cors.prefix("/apikeys")  # not covered: prefixes match whole segments


def test_prefixes_match_whole_segments() -> None:
    """/cors covers /cors and /cors/x but not /corsage (Crow's plain string prefix would); "/x/" covers under it."""
    cors = CORSHandler()
    cors.prefix("/cors").ignore()
    cors.prefix("/files/").ignore()
    assert cors_headers(run(cors, "/cors")) == {}
    assert cors_headers(run(cors, "/cors/x")) == {}
    assert cors_headers(run(cors, "/corsage")) != {}
    assert cors_headers(run(cors, "/files/a")) == {}
    assert cors_headers(run(cors, "/files")) != {}


class Blueprint:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix


class CrowStyleBlueprint:
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def prefix(self) -> str:
        return self._prefix


def test_blueprint_rules_match_the_blueprints_prefix() -> None:
    """blueprint(bp) is the rule for bp.prefix; a Crow-style prefix() method and a prefix without '/' work too."""
    cors = CORSHandler()
    cors.blueprint(Blueprint("/bp")).origin("https://bp.example")
    cors.global_().blueprint(CrowStyleBlueprint("crow")).ignore()  # Crow's prefix has no leading '/'
    assert run(cors, "/bp/route").get_header_value("Access-Control-Allow-Origin") == "https://bp.example"
    assert cors_headers(run(cors, "/crow/route")) == {}
    assert run(cors, "/bpx").get_header_value("Access-Control-Allow-Origin") == "*"
    with pytest.raises(ValueError, match="has no str prefix"):
        cors.blueprint(object())


def test_headers_the_handler_set_are_not_overridden() -> None:
    """A CORS header the handler set stays (Crow's set_header_no_override), the others are added."""
    cors = CORSHandler()
    res = Response(200, "ok", {"access-control-allow-origin": "https://mine.example"})
    run(cors, res=res)
    assert res.get_header_value("Access-Control-Allow-Origin") == "https://mine.example"
    assert [v for k, v in res.header_lines() if k.lower() == "access-control-allow-origin"] == ["https://mine.example"]
    assert res.get_header_value("Access-Control-Allow-Methods") == "*"


def test_methods_headers_and_expose_accumulate_without_duplicates() -> None:
    """Each call adds to the list (Crow's add_list_item), the first replacing "*"; a repeated name is sent once."""
    cors = CORSHandler()
    cors.global_().methods("GET").methods(http.HTTPMethod.POST, "GET").headers("X-A").headers("x-a", "X-B")
    res = run(cors)
    assert res.get_header_value("Access-Control-Allow-Methods") == "GET, POST"
    assert res.get_header_value("Access-Control-Allow-Headers") == "X-A, X-B"


def test_origin_replaces_and_star_resets() -> None:
    """origin() replaces the list (Crow's origin() sets it); origin("*") goes back to every origin."""
    cors = CORSHandler()
    cors.global_().origin("https://a.example").origin("https://b.example")
    assert run(cors).get_header_value("Access-Control-Allow-Origin") == "https://b.example"
    cors.global_().origin("*")
    assert run(cors).get_header_value("Access-Control-Allow-Origin") == "*"


def test_reprs_say_the_rules() -> None:
    """repr() of the handler and its rules shows their configuration, for debugging."""
    cors = CORSHandler()
    cors.prefix("/x").ignore()
    cors.global_().origin("https://a.example").max_age(5)
    text = repr(cors)
    assert "https://a.example" in text and "max_age=5" in text and "ignore" in text


# Where Fetch overrides Crow.


def test_credentials_with_star_echo_the_origin_never_star() -> None:
    """allow_credentials() with origin "*" echoes the request's Origin with Vary: Origin; "*" would be refused."""
    cors = CORSHandler()
    cors.global_().allow_credentials()
    res = run(cors, origin="https://a.example")
    assert res.get_header_value("Access-Control-Allow-Origin") == "https://a.example"
    assert res.get_header_value("Access-Control-Allow-Credentials") == "true"
    assert vary(res) == ["Origin"]


def test_credentials_with_star_and_no_usable_origin_send_nothing_but_vary() -> None:
    """Without Origin, with "null" (shared by every sandboxed page) or junk, no CORS header goes out; Vary does."""
    cors = CORSHandler()
    cors.global_().allow_credentials()
    for origin in (None, "null", "", "https://a.example/", "HTTPS://A.EXAMPLE", "https://a.example:443",
                   "https://a.example\r\nX-Evil: 1", "https://a.example, https://b.example", "*"):
        res = run(cors, origin=origin)
        assert cors_headers(res) == {}, origin
        assert vary(res) == ["Origin"], origin


def test_credentials_apply_to_preflights_too() -> None:
    """A preflight (OPTIONS with Access-Control-Request-Method) gets credentials and the echoed Origin (Crow: "*")."""
    cors = CORSHandler()
    cors.global_().allow_credentials()
    res = run(cors, method="OPTIONS", origin="https://a.example", headers=[
        ("Access-Control-Request-Method", "PUT"), ("Access-Control-Request-Headers", "content-type,x-token")])
    assert cors_headers(res) == {
        "Access-Control-Allow-Origin": "https://a.example",
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "PUT",  # "*" is a literal method name with credentials: echo instead
        "Access-Control-Allow-Headers": "content-type, x-token",
    }


def test_preflight_echo_refuses_junk_and_keeps_explicit_lists() -> None:
    """Only token names are echoed; explicit methods/headers are sent as configured; no request list, no header."""
    cors = CORSHandler()
    cors.global_().allow_credentials()
    junk = run(cors, method="OPTIONS", origin="https://a.example", headers=[
        ("Access-Control-Request-Method", "P UT"), ("Access-Control-Request-Headers", "a b, c")])
    assert "Access-Control-Allow-Methods" not in cors_headers(junk)
    assert "Access-Control-Allow-Headers" not in cors_headers(junk)
    cors.global_().methods("GET", "PATCH").headers("X-Token")
    listed = run(cors, method="OPTIONS", origin="https://a.example", headers=[("Access-Control-Request-Method", "PUT")])
    assert listed.get_header_value("Access-Control-Allow-Methods") == "GET, PATCH"
    assert listed.get_header_value("Access-Control-Allow-Headers") == "X-Token"


def test_without_credentials_a_preflight_gets_the_literal_star() -> None:
    """Without credentials "*" is Fetch's wildcard and is sent as it is (Authorization must be listed by name)."""
    cors = CORSHandler()
    res = run(cors, method="OPTIONS", origin="https://a.example", headers=[
        ("Access-Control-Request-Method", "PUT"), ("Access-Control-Request-Headers", "authorization")])
    assert res.get_header_value("Access-Control-Allow-Methods") == "*"
    assert res.get_header_value("Access-Control-Allow-Headers") == "*"


def test_an_allow_list_echoes_only_listed_origins() -> None:
    """With several origins, a listed Origin is echoed; any other gets no CORS header; Vary: Origin on all."""
    cors = CORSHandler()
    cors.global_().origin("https://a.example", "https://b.example:8443").allow_credentials().expose("X-Id")
    for origin in ("https://a.example", "https://b.example:8443"):
        res = run(cors, origin=origin)
        assert res.get_header_value("Access-Control-Allow-Origin") == origin
        assert res.get_header_value("Access-Control-Allow-Credentials") == "true"
        assert vary(res) == ["Origin"]
    for origin in (None, "https://c.example", "https://a.example.evil", "http://a.example", "https://A.example",
                   "https://b.example", "null", "https://a.example/"):
        res = run(cors, origin=origin)
        assert cors_headers(res) == {}, origin
        assert vary(res) == ["Origin"], origin


def test_null_passes_only_when_listed() -> None:
    """An opaque origin ("null") is echoed only by a list naming "null" itself."""
    cors = CORSHandler()
    cors.global_().origin("https://a.example", "null")
    assert run(cors, origin="null").get_header_value("Access-Control-Allow-Origin") == "null"
    cors.global_().origin("https://a.example", "https://b.example")
    assert run(cors, origin="null").get_header_value("Access-Control-Allow-Origin") == ""


def test_configured_origins_are_serialized_as_browsers_send_them() -> None:
    """Scheme and host are lowercased and a default port dropped (RFC 6454), so they match the browser's Origin."""
    cors = CORSHandler()
    cors.global_().origin("HTTPS://Example.COM:443", "http://b.example:80", "https://[::1]:8443")
    for origin in ("https://example.com", "http://b.example", "https://[::1]:8443"):
        assert run(cors, origin=origin).get_header_value("Access-Control-Allow-Origin") == origin
    cors.global_().origin("http://x.example:0080")
    assert run(cors).get_header_value("Access-Control-Allow-Origin") == "http://x.example"


def test_vary_keeps_what_the_handler_put() -> None:
    """Origin joins an existing Vary in a line of its own, and is not added twice (or over "*")."""
    cors = CORSHandler()
    cors.global_().allow_credentials()
    res = run(cors, origin="https://a.example", res=Response(200, "", {"Vary": "Accept-Encoding"}))
    assert vary(res) == ["Accept-Encoding", "Origin"]
    for existing in ("accept, ORIGIN", "*"):
        assert vary(run(cors, origin="https://a.example", res=Response(200, "", {"Vary": existing}))) == [existing]


# Validation at configuration time.


@pytest.mark.parametrize(("origin", "message"), [
    ("example.com", "has no scheme"),
    ("https://example.com/", "has a path"),
    ("https://example.com/app", "has a path"),
    ("https://user@example.com", "has a user name"),
    ("https://example.com?x", "has a query"),
    ("https://example.com#x", "has a fragment"),
    ("https://exa mple.com", "is not valid"),
    ("https://bücher.example", "xn-- form"),
    ("https://example.com:65536", "port is from 0 to 65535"),
    ("https://", "is not valid"),
    (42, "is a str"),
])
def test_bad_origins_are_refused_with_the_reason(origin: Any, message: str) -> None:
    """An origin that no browser could send raises ValueError saying what is wrong with it."""
    with pytest.raises(ValueError, match=message):
        CORSHandler().global_().origin(origin)


def test_bad_settings_are_refused() -> None:
    """Empty lists, "*" among origins, names with spaces or commas, bad max_age and prefixes raise ValueError."""
    rules = CORSHandler().global_()
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: rules.origin(), "at least one"),
        (lambda: rules.origin("*", "https://a.example"), "cannot be listed with others"),
        (lambda: rules.methods(), "at least one"),
        (lambda: rules.methods("GET POST"), "'GET POST' is not a valid name"),
        (lambda: rules.methods(""), "not a valid name"),
        (lambda: rules.headers("X-A, X-B"), "header: 'X-A, X-B'"),
        (lambda: rules.headers(b"X-A"), "not a valid name"),  # type: ignore[arg-type]
        (lambda: rules.expose("X\r\nEvil"), "exposed header"),
        (lambda: rules.max_age(-1), "0 or more"),
        (lambda: rules.max_age(True), "int of seconds"),
        (lambda: rules.max_age(1.5), "int of seconds"),  # type: ignore[arg-type]
        (lambda: rules.prefix("api"), "starting with '/'"),
        (lambda: rules.prefix("/a b"), "starting with '/'"),
        (lambda: rules.prefix("/a?b=1"), "without query"),
        (lambda: rules.prefix(None), "starting with '/'"),  # type: ignore[arg-type]
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# Properties.

HOSTS = st.sampled_from(["a.example", "b.example", "c.test", "127.0.0.1", "[::1]", "xn--bcher-kva.example"])
ORIGINS = st.builds(lambda scheme, host, port: f"{scheme}://{host}{port}",
                    st.sampled_from(["http", "https"]), HOSTS, st.sampled_from(["", ":8080", ":1"]))


@settings(max_examples=300, deadline=None)
@given(
    configured=st.one_of(st.just(["*"]), st.lists(ORIGINS | st.just("null"), min_size=1, max_size=4)),
    credentials=st.booleans(),
    request_origin=st.one_of(st.none(), ORIGINS, st.just("null"), st.text(max_size=30),
                             ORIGINS.map(str.upper), ORIGINS.map(lambda o: o + "/")),
    preflight=st.booleans(),
)
def test_only_listed_origins_are_ever_allowed(configured: list[str], credentials: bool,
                                              request_origin: str | None, preflight: bool) -> None:
    """For any list and any Origin, the Allow-Origin sent is "*" (no credentials), a listed origin, or an echo."""
    cors = CORSHandler()
    rules = cors.global_().origin(*configured)
    if credentials:
        rules.allow_credentials()
    headers = [("Access-Control-Request-Method", "PUT")] if preflight else []
    res = run(cors, origin=request_origin, method="OPTIONS" if preflight else "GET", headers=headers)
    allowed = res.get_header_value("Access-Control-Allow-Origin")
    if configured == ["*"]:
        if credentials:
            assert allowed in ("", request_origin) and allowed != "null"
        else:
            assert allowed == "*"
    else:
        assert allowed in ("", *configured)
        if len(set(configured)) > 1:
            assert allowed in ("", request_origin)
    if credentials:
        assert allowed != "*"
        assert (res.get_header_value("Access-Control-Allow-Credentials") == "true") == (allowed != "")
    if allowed not in ("*", "") and len(set(configured)) != 1:
        assert vary(res) == ["Origin"]


# Over real HTTP, without the app: a Resource runs the middleware around a handler.


class TwistedRequest:
    """The middleware's view of a twisted.web request, as the lead's request will give it."""

    def __init__(self, request: Any) -> None:
        self.method = request.method.decode("latin-1")
        self.url = request.path.decode("latin-1")
        self._headers = request.requestHeaders

    def get_header_value(self, name: str) -> str:
        values = self._headers.getRawHeaders(name)
        return values[0] if values else ""

    def get_header_values(self, name: str) -> list[str]:
        return list(self._headers.getRawHeaders(name, []))


class Harness(Resource):
    """Middleware's before_handle in order, the handler, after_handle in reverse; then write_response."""

    isLeaf = True

    def __init__(self, middleware: list[Any], handler: Callable[[Any, Response, list[Any]], None]) -> None:
        super().__init__()
        self.middleware = middleware
        self.handler = handler

    def render(self, request: Any) -> bytes | int:
        req, res = TwistedRequest(request), Response()
        contexts = [mw.Context() for mw in self.middleware]
        for mw, ctx in zip(self.middleware, contexts):
            mw.before_handle(req, res, ctx)
        self.handler(req, res, contexts)
        for mw, ctx in reversed(list(zip(self.middleware, contexts))):
            mw.after_handle(req, res, ctx)
        return write_response(request, res)


@pytest.fixture
def serve() -> Any:
    ports: list[Any] = []

    def start(resource: Resource) -> str:
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.mark.filterwarnings("ignore:Using readBody with a transport:DeprecationWarning")  # Twisted's own, small bodies
@pytest_twisted.inlineCallbacks
def test_end_to_end_preflight_and_request_with_cookies(serve: Any) -> Any:
    """Over HTTP, a credentialed preflight and request get echoed origin, credentials, and the cookies set."""
    cors, cookies = CORSHandler(), CookieParser()
    cors.global_().origin("https://app.example", "https://admin.example").allow_credentials().expose("X-Seen")

    def handler(req: Any, res: Response, contexts: list[Any]) -> None:
        jar = contexts[1]
        res.set_header("X-Seen", jar.get_cookie("sid") or "-")
        jar.set_cookie("sid", "s2").path("/").httponly()
        jar.set_cookie("theme", "dark")
        res.body = "ok"

    base = serve(Harness([cors, cookies], handler))
    agent = Agent(reactor)
    preflight = yield agent.request(b"OPTIONS", f"{base}/api".encode(), Headers({
        "Origin": ["https://app.example"], "Access-Control-Request-Method": ["PUT"],
        "Access-Control-Request-Headers": ["content-type"]})).addTimeout(10, reactor)
    yield readBody(preflight)
    assert preflight.headers.getRawHeaders("Access-Control-Allow-Origin") == ["https://app.example"]
    assert preflight.headers.getRawHeaders("Access-Control-Allow-Credentials") == ["true"]
    assert preflight.headers.getRawHeaders("Access-Control-Allow-Methods") == ["PUT"]
    assert preflight.headers.getRawHeaders("Access-Control-Allow-Headers") == ["content-type"]

    response = yield agent.request(b"GET", f"{base}/api".encode(), Headers({
        "Origin": ["https://admin.example"], "Cookie": ["sid=s1; theme=light", "extra=1"]})).addTimeout(10, reactor)
    body = yield readBody(response)
    assert body == b"ok"
    assert response.headers.getRawHeaders("Access-Control-Allow-Origin") == ["https://admin.example"]
    assert response.headers.getRawHeaders("Access-Control-Expose-Headers") == ["X-Seen"]
    assert response.headers.getRawHeaders("Vary") == ["Origin"]
    assert response.headers.getRawHeaders("X-Seen") == ["s1"]
    assert response.headers.getRawHeaders("Set-Cookie") == ["sid=s2; Path=/; HttpOnly", "theme=dark"]

    refused = yield agent.request(b"GET", f"{base}/api".encode(), Headers({
        "Origin": ["https://evil.example"]})).addTimeout(10, reactor)
    yield readBody(refused)
    assert refused.headers.getRawHeaders("Access-Control-Allow-Origin") is None
    assert refused.headers.getRawHeaders("Access-Control-Allow-Credentials") is None
