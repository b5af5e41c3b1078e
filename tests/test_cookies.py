"""CookieParser (Crow's crow::CookieParser): lenient parsing, strict setting, Crow's dump format, over HTTP."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from http.cookiejar import CookieJar
from http.cookies import SimpleCookie
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.web.client import Agent, CookieAgent, readBody

from crowtwist._cookies import Cookie, CookieContext, CookieParser, SameSitePolicy, parse_cookie_header
from crowtwist._middleware import Middleware
from crowtwist._response import Response

from . import test_cors
from .test_cors import Harness

serve = test_cors.serve  # the fixture serving a Resource on 127.0.0.1:0


class FakeRequest:
    """A request with get_header_value only (the first line of a header), as the duck type promises."""

    def __init__(self, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.method, self.url = "GET", "/"
        self.headers = list(headers)

    def get_header_value(self, name: str) -> str:
        return next((value for key, value in self.headers if key.lower() == name.lower()), "")


class FakeRequestAllLines(FakeRequest):
    """A request that also offers every line of a header."""

    def get_header_values(self, name: str) -> list[Any]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


def jar_of(*cookie_headers: str, every_line: bool = False) -> dict[str, str]:
    """before_handle on a request with these Cookie lines; the jar it fills."""
    kind = FakeRequestAllLines if every_line else FakeRequest
    parser, res = CookieParser(), Response()
    ctx = parser.Context()
    parser.before_handle(kind([("Cookie", header) for header in cookie_headers]), res, ctx)
    assert res == Response()  # reading cookies never answers for the handler
    return ctx.jar


def simple_cookie(header: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    return {name: morsel.value for name, morsel in jar.items()}


# Parsing.


def test_what_browsers_send() -> None:
    """'a=1; b=2' (RFC 6265 5.4), with or without the space, tabs around, and no Cookie header at all."""
    assert jar_of("a=1; b=2") == {"a": "1", "b": "2"}
    assert jar_of("a=1;b=2") == {"a": "1", "b": "2"}
    assert jar_of(" a = 1 ;\tb=2\t") == {"a": "1", "b": "2"}
    assert jar_of() == {}
    assert jar_of("") == {}
    assert isinstance(CookieParser(), Middleware)


def test_crows_parse_test() -> None:
    """Crow's middleware_cookieparser_parse: quotes around a value are removed, quotes and '=' inside kept."""
    header = 'key1=value1; key2="val=ue2"; key3="val"ue3"; key4="val"ue4"'
    assert jar_of(header) == {"key1": "value1", "key2": "val=ue2", "key3": 'val"ue3', "key4": 'val"ue4'}


def test_the_first_cookie_of_a_name_wins() -> None:
    """Browsers send the longest-path cookie first, so the first wins (Crow's emplace; SimpleCookie, aiohttp: last)."""
    assert jar_of("sid=specific; sid=general") == {"sid": "specific"}
    assert simple_cookie("sid=specific; sid=general") == {"sid": "general"}


def test_bad_pairs_are_skipped_not_the_header() -> None:
    """A pair without '=', an empty name or a control character is skipped; the rest are read."""
    assert jar_of("flag; b=2") == {"b": "2"}  # Crow reads a cookie named "flag; b"
    assert simple_cookie("flag; b=2") == {}  # SimpleCookie drops the whole header
    assert jar_of("=v; b=2; ==; ;;; a=") == {"b": "2", "a": ""}
    assert jar_of("a=x\x00y; b\x7f=1; c=\r\n; d=ok\tok") == {"d": "ok\tok"}
    assert jar_of('a="; b=""') == {"a": '"', "b": ""}  # one lone quote is a value, not a quoted empty one


def test_lenient_about_names_and_values_browsers_accept() -> None:
    """Names outside RFC 6265's token and values with spaces or commas are read as sent (browsers store them)."""
    assert jar_of("a[0]=1; {b}=x y; c=1,2; d=ü") == {"a[0]": "1", "{b}": "x y", "c": "1,2", "d": "ü"}
    assert simple_cookie("a=x y; b=2") == {}


def test_no_backslash_unescaping() -> None:
    """A quoted value keeps its backslashes (RFC 6265 has no escapes; SimpleCookie and aiohttp read \\012 as LF)."""
    assert jar_of('a="\\012"') == {"a": "\\012"}
    assert simple_cookie('a="\\012"') == {"a": "\n"}


def test_a_semicolon_in_quotes_still_splits() -> None:
    """';' ends a pair even inside quotes, as in browsers and Crow (aiohttp keeps "x;y" whole)."""
    assert jar_of('a="x;y"; b=2') == {"a": '"x', "b": "2"}


def test_every_cookie_line_is_read_when_the_request_offers_them() -> None:
    """With get_header_values every Cookie line counts (HTTP/2 splits it); without, the first one."""
    assert jar_of("a=1", "b=2; a=3", every_line=True) == {"a": "1", "b": "2"}
    assert jar_of("a=1", "b=2") == {"a": "1"}
    parser, ctx = CookieParser(), CookieContext()
    odd = FakeRequestAllLines([("Cookie", None), ("Cookie", b"a=1"), ("Cookie", "c=3")])  # type: ignore[list-item]
    parser.before_handle(odd, Response(), ctx)
    assert ctx.jar == {"c": "3"}


def test_parse_cookie_header_alone() -> None:
    """parse_cookie_header returns a new dict, or adds to a given one without replacing what is there."""
    assert parse_cookie_header("a=1") == {"a": "1"}
    jar = {"a": "0"}
    assert parse_cookie_header("a=1; b=2", jar) is jar and jar == {"a": "0", "b": "2"}


# The context and after_handle.


def test_context_get_and_set() -> None:
    """get_cookie is "" when absent; set_cookie returns the cookie to chain; after_handle sends one line each."""
    parser = CookieParser()
    req, res = FakeRequest([("Cookie", "sid=abc")]), Response(200, "ok", {"Set-Cookie": "early=1"})
    ctx = parser.Context()
    parser.before_handle(req, res, ctx)
    assert (ctx.get_cookie("sid"), ctx.get_cookie("nope")) == ("abc", "")
    returned = ctx.set_cookie("sid", "def")
    assert isinstance(returned, CookieParser.Cookie) and returned.path("/") is returned
    made = Cookie("theme", "dark").max_age(60)
    assert ctx.set_cookie(made) is made
    ctx.set_cookie("empty")
    assert [c.name for c in ctx.cookies_to_set] == ["sid", "theme", "empty"]
    ctx.cookies_to_set.clear()  # a copy: the queue is not changed
    parser.after_handle(req, res, ctx)
    assert [v for k, v in res.header_lines() if k == "Set-Cookie"] == [
        "early=1", "sid=def; Path=/", "theme=dark; Max-Age=60", 'empty=""']
    assert "sid=def" in repr(ctx) and "abc" in repr(ctx)


def test_nested_names_as_in_crow() -> None:
    """CookieParser.Context, CookieParser.Cookie and Cookie.SameSitePolicy are there, as Crow's nested types."""
    assert CookieParser.Context is CookieContext and CookieParser.Cookie is Cookie
    assert CookieParser.Cookie.SameSitePolicy is SameSitePolicy is CookieParser.SameSitePolicy
    assert [p.value for p in SameSitePolicy] == ["Strict", "Lax", "None"]


# Cookie.dump, as Crow's.


def test_crows_format_test() -> None:
    """Crow's middleware_cookieparser_format: the same strings, attributes in Crow's order."""
    assert Cookie("key", "value").dump() == "key=value"
    assert Cookie("key", "value").max_age(123).domain("example.com").dump() == "key=value; Domain=example.com; Max-Age=123"
    assert Cookie("key", "value").secure().same_site(SameSitePolicy.None_).dump() == "key=value; Secure; SameSite=None"
    expires = datetime(2000, 11, 1, 23, 59, 59, tzinfo=timezone.utc)
    assert Cookie("key", "value").expires(expires).dump() == "key=value; Expires=Wed, 01 Nov 2000 23:59:59 GMT"
    assert Cookie("key").dump() == 'key=""'


def test_every_attribute_in_crows_order() -> None:
    """Domain, Path, Secure, HttpOnly, Expires, Max-Age, SameSite: Crow's dump order; Expires converted to GMT."""
    plus_two = timezone(timedelta(hours=2))
    cookie = (Cookie("k", "v").same_site(SameSitePolicy.Lax).max_age(0).expires(datetime(2030, 1, 1, 2, tzinfo=plus_two))
              .httponly().secure().path("/app").domain(".example.com"))
    assert cookie.dump() == ("k=v; Domain=.example.com; Path=/app; Secure; HttpOnly;"
                             " Expires=Tue, 01 Jan 2030 00:00:00 GMT; Max-Age=0; SameSite=Lax")
    assert Cookie("k", "v").same_site(SameSitePolicy.Strict).dump() == "k=v; SameSite=Strict"
    assert Cookie("k", "v").max_age(-1).dump() == "k=v; Max-Age=-1"
    assert (cookie.name, cookie.value, repr(Cookie("k", "v"))) == ("k", "v", "<Cookie 'k=v'>")


def test_browser_rules_are_kept_for_the_user() -> None:
    """SameSite=None brings Secure; __Secure- and __Host- names get Secure (and Path=/), as browsers demand."""
    assert Cookie("a", "1").same_site(SameSitePolicy.None_).dump() == "a=1; Secure; SameSite=None"
    assert Cookie("__Secure-id", "1").dump() == "__Secure-id=1; Secure"
    assert Cookie("__Host-id", "1").dump() == "__Host-id=1; Path=/; Secure"
    assert Cookie("__host-id", "1").path("/").dump() == "__host-id=1; Path=/; Secure"
    with pytest.raises(ValueError, match="'__Host-id'.*has no Domain"):
        Cookie("__Host-id", "1").domain("example.com")
    with pytest.raises(ValueError, match="'__HOST-id'.*path is '/'"):
        Cookie("__HOST-id", "1").path("/app")


@pytest.mark.parametrize("name", ["", "a b", "a;b", "a=b", "a,b", "a\r\nSet-Cookie: x", "é", 'a"', "a\\b", "(a)", None])
def test_bad_names_are_refused(name: Any) -> None:
    """A name that is not an RFC 6265 token raises ValueError naming it, from set_cookie as from Cookie()."""
    with pytest.raises(ValueError, match="invalid cookie name"):
        CookieContext().set_cookie(name, "v")


@pytest.mark.parametrize("value", ["a b", 'a"b', '"quoted"', "a,b", "a;b", "a\\b", "a\r\nX: y", "\x00", "é", 7])
def test_bad_values_are_refused(value: Any) -> None:
    """A value outside RFC 6265's cookie-octet raises ValueError naming the cookie and suggesting quoting."""
    with pytest.raises(ValueError, match=r"invalid value for cookie 'sid'.*urllib.parse.quote"):
        CookieContext().set_cookie("sid", value)


def test_bad_attributes_are_refused() -> None:
    """Paths, domains, max_age, expires and same_site are checked when set, the error naming the cookie."""
    cookie = Cookie("sid", "1")
    for call, message in [
        (lambda: cookie.path("app"), "starts with '/'"),
        (lambda: cookie.path("/a;b"), "starts with '/'"),
        (lambda: cookie.path("/a\nb"), "starts with '/'"),
        (lambda: cookie.path("/é"), "non-ASCII"),
        (lambda: cookie.domain("exa mple.com"), "a host name"),
        (lambda: cookie.domain("a.com; Secure"), "a host name"),
        (lambda: cookie.domain("bücher.example"), "xn--"),
        (lambda: cookie.domain(""), "a host name"),
        (lambda: cookie.max_age(True), "int of seconds"),
        (lambda: cookie.max_age(1.5), "int of seconds"),  # type: ignore[arg-type]
        (lambda: cookie.expires(datetime(2030, 1, 1)), "aware datetime"),
        (lambda: cookie.expires("tomorrow"), "aware datetime"),  # type: ignore[arg-type]
        (lambda: cookie.same_site("Lax"), "SameSitePolicy"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(ValueError, match=f"cookie 'sid'.*{message}"):
            call()
    assert cookie.dump() == "sid=1"


# Properties.


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
       | st.lists(st.sampled_from(['a', '=', ';', ' ', '"', '\t', '\x00', 'b', ',', '\\', 'é']), max_size=40).map("".join))
def test_any_cookie_header_parses_without_raising(header: str) -> None:
    """Whatever a client sends, parsing gives names without ';' or controls and never raises."""
    jar = jar_of(header, every_line=True)
    for name, value in jar.items():
        assert name and name == name.strip(" \t") and ";" not in name and "=" not in name
        assert ";" not in value
        assert not any(ord(c) < 32 and c != "\t" or c == "\x7f" for c in name + value)


TOKENS = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1,
                 max_size=20)
OCTETS = st.text(alphabet=st.sampled_from(
    [chr(c) for c in [0x21, *range(0x23, 0x2C), *range(0x2D, 0x3B), *range(0x3C, 0x5C), *range(0x5D, 0x7F)]]),
    max_size=30)


def with_attributes(cookie: Cookie, data: st.DataObject) -> Cookie:
    if data.draw(st.booleans()):
        cookie.path(data.draw(st.sampled_from(["/", "/a", "/a/b"])))
    if data.draw(st.booleans()):
        cookie.max_age(data.draw(st.integers(-10, 10**9)))
    if data.draw(st.booleans()):
        cookie.httponly()
    if data.draw(st.booleans()):
        cookie.same_site(data.draw(st.sampled_from(SameSitePolicy)))
    return cookie


@settings(max_examples=300, deadline=None)
@given(name=TOKENS, value=OCTETS, data=st.data())
def test_every_valid_cookie_round_trips(name: str, value: str, data: st.DataObject) -> None:
    """A cookie set with any valid name and value reads back the same from its dump(), whatever its attributes."""
    cookie = with_attributes(CookieContext().set_cookie(name, value), data)
    assert parse_cookie_header(cookie.dump())[name] == value


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(TOKENS, OCTETS), max_size=8))
def test_what_a_browser_sends_back_reads_as_set(pairs: list[tuple[str, str]]) -> None:
    """Several cookies sent back as a browser joins them ("; ") read back as set, the first of a name winning."""
    header = "; ".join(Cookie(name, value).dump() for name, value in pairs)
    expected: dict[str, str] = {}
    for name, value in pairs:
        expected.setdefault(name, value)
    assert jar_of(header) == expected


# Over real HTTP, with a client cookie jar we did not write (http.cookiejar through Twisted's CookieAgent).


@pytest.mark.filterwarnings("ignore:Using readBody with a transport:DeprecationWarning")  # Twisted's own, small bodies
@pytest_twisted.inlineCallbacks
def test_a_client_cookie_jar_stores_and_sends_back(serve: Any) -> Any:
    """Set-Cookie lines from after_handle are stored by http.cookiejar and come back in Cookie, read by the jar."""
    parser = CookieParser()

    def handler(req: Any, res: Response, contexts: list[Any]) -> None:
        ctx = contexts[0]
        if req.url == "/login":
            ctx.set_cookie("sid", "s-1").path("/").httponly()
            ctx.set_cookie("deep", "d-1").path("/login")
            ctx.set_cookie("lang", "").max_age(3600)
        res.body = f"sid={ctx.get_cookie('sid')} deep={ctx.get_cookie('deep')} all={sorted(ctx.jar)}"

    base = serve(Harness([parser], handler))
    jar = CookieJar()
    agent = CookieAgent(Agent(reactor), jar)
    first = yield agent.request(b"GET", f"{base}/login".encode()).addTimeout(10, reactor)
    assert (yield readBody(first)) == b"sid= deep= all=[]"
    assert len(first.headers.getRawHeaders("Set-Cookie")) == 3
    assert sorted(cookie.name for cookie in jar) == ["deep", "lang", "sid"]
    again = yield agent.request(b"GET", f"{base}/login".encode()).addTimeout(10, reactor)
    assert (yield readBody(again)) == b"sid=s-1 deep=d-1 all=['deep', 'lang', 'sid']"
    other = yield agent.request(b"GET", f"{base}/home".encode()).addTimeout(10, reactor)
    assert (yield readBody(other)) == b"sid=s-1 deep= all=['lang', 'sid']"
