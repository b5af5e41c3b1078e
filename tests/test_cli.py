"""Errors and logs of ``twistd crow`` and ``python -m crowtwist``: what a person sees at the command line.

Plain calls for the messages, the log threshold and the route table; real
``twistd crow`` and ``python -m crowtwist`` processes for what only a
process shows (one-line errors, start-up lines, exit statuses).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import crowtwist
from crowtwist import Blueprint, Crow, Middleware
from crowtwist import tap
from crowtwist.__main__ import _take_reactor, help_text, main
from crowtwist._log import CrowLogger, log, log_level, set_log_level
from crowtwist._routing import parse_pattern
from crowtwist._version import __version__

from . import frames as F
from .conftest import LogCapture
from .memory import MemoryClient
from .proc import ROOT, Server, env, free_port, twistd

HERE = Path(__file__).resolve()


def line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (in a comment), for messages that must name it."""
    for number, text in enumerate(HERE.read_text().splitlines(), 1):
        if text.endswith(f"# {marker}"):
            return number
    raise AssertionError(marker)


@pytest.fixture
def level() -> Iterator[None]:
    """Put crowtwist's log threshold back to info after the test."""
    yield
    set_log_level("info")


# Errors that name the user's line.


def test_websocket_handler_of_wrong_arity_names_the_declaring_line() -> None:
    """rule.onmessage with a handler of the wrong arity raises TypeError starting with this file and line."""
    rule = Crow().route("/ws").websocket()
    with pytest.raises(TypeError) as raised:
        rule.onmessage(lambda: None)  # ARITY
    message = str(raised.value)
    assert message.startswith(f"{HERE}:{line_of('ARITY')}: onmessage handler"), message
    assert "takes 0 positional argument(s); onmessage passes 3" in message


def test_decorated_websocket_handler_and_non_callable_name_the_line() -> None:
    """@rule.onclose on a one-argument function, and a non-callable handler, name the line they are declared on."""
    rule = Crow().route("/ws").websocket()
    with pytest.raises(TypeError) as raised:

        @rule.onclose  # DECORATOR
        def closed(conn: object) -> None: ...

    assert str(raised.value).startswith(f"{HERE}:{line_of('DECORATOR')}: onclose handler 'test_")
    with pytest.raises(TypeError) as raised:
        rule.onopen(42)  # type: ignore[arg-type]  # NOT CALLABLE
    assert str(raised.value) == f"{HERE}:{line_of('NOT CALLABLE')}: onopen handler must be callable, not int"


def test_exception_handler_of_wrong_arity_names_the_line() -> None:
    """app.exception_handler with a handler taking nothing names this line, and says "handler" once."""
    with pytest.raises(TypeError) as raised:
        Crow().exception_handler(lambda: None)  # EXCEPTION HANDLER
    assert str(raised.value) == (
        f"{HERE}:{line_of('EXCEPTION HANDLER')}: exception handler"
        " 'test_exception_handler_of_wrong_arity_names_the_line.<locals>.<lambda>' takes 0 positional argument(s);"
        " exception handler passes 1 to 2"
    )


def test_unclosed_parameter_says_so_at_the_declaring_line() -> None:
    """app.route("/ws/<int") says the '<' is not closed, suggests <int>, and names this line."""
    with pytest.raises(ValueError) as raised:
        Crow().route("/ws/<int")  # UNCLOSED
    assert str(raised.value) == (
        f"{HERE}:{line_of('UNCLOSED')}: route pattern '/ws/<int': the '<' of segment '<int' is not closed"
        " with '>' (did you mean <int>?)"
    )


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("/ws/<int", "the '<' of segment '<int' is not closed with '>' (did you mean <int>?)"),
        ("/a/<int/b", "the '<' of segment '<int' is not closed with '>' (did you mean <int>?)"),
        ("/a/x<str", "the '<' of segment 'x<str' is not closed with '>' (did you mean <str>?)"),
        ("/a/<nope", "the '<' of segment '<nope' is not closed with '>'"),
        ("/a/<<int>", "the '<' of segment '<<int>' is not closed with '>'"),
        ("/a/int>", "in segment 'int>', a '>' closes no '<'"),
        ("/a/<int>>", "in segment '<int>>', a '>' closes no '<'"),
        ("/a/<int><int>", "segment '<int><int>' holds more than one parameter"),
        ("/a/id<int>", "segment 'id<int>' mixes text and a parameter"),
        ("/a/<int>x", "segment '<int>x' mixes text and a parameter"),
    ],
)
def test_malformed_parameters_are_named_precisely(pattern: str, message: str) -> None:
    """Each way a parameter's brackets can be wrong gets its own message."""
    with pytest.raises(ValueError) as raised:
        parse_pattern(pattern)
    assert str(raised.value).startswith(f"route pattern {pattern!r}: {message}"), str(raised.value)


@given(st.lists(st.text(alphabet="<>ab/", max_size=6), min_size=1, max_size=4))
def test_any_bracket_soup_parses_or_names_the_fault(parts: list[str]) -> None:
    """Whatever '<', '>' and text a pattern holds: no brackets parses; otherwise ValueError, an unclosed '<' or a
    stray '>' named as such."""
    pattern = "/" + "/".join(parts)
    bracketed = [part for part in pattern[1:].split("/") if "<" in part or ">" in part]
    if not bracketed:
        parse_pattern(pattern)
        return
    with pytest.raises(ValueError) as raised:
        parse_pattern(pattern)
    first = bracketed[0]
    if ">" not in first:
        assert "is not closed with '>'" in str(raised.value)
    elif "<" not in first:
        assert "a '>' closes no '<'" in str(raised.value)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder of route modules, good and broken, as the current directory and first on the path."""
    files = {
        "syntaxmod.py": "from crowtwist import Crow\napp = Crow()\ndef broken(:\n",
        "raisingmod.py": "import os\n\nraise RuntimeError('config missing')\n",
        "badroute.py": "from crowtwist import Crow\napp = Crow()\n\napp.route('/ws/<int')\n",
        "badhandler.py": "from crowtwist import Crow\napp = Crow()\napp.route('/ws').websocket().onmessage(lambda: None)\n",
        "libraise.py": "import json\n\n\njson.loads('{')\n",
        "multiline.py": "raise ValueError('first\\nsecond')\n",
        "factorymod.py": "def make():\n    raise KeyError('PORT')\n",
        "goodmod.py": "from crowtwist import Crow\napp = Crow()\napp.route('/')(lambda: 'hi')\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "demo.py").write_text("from crowtwist import Crow\napp = Crow()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [*(name[:-3] for name in files), "pkg", "pkg.demo"]:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("syntaxmod", "cannot import 'syntaxmod': syntaxmod.py:3: SyntaxError: invalid syntax"),
        ("raisingmod", "cannot import 'raisingmod': raisingmod.py:3: RuntimeError: config missing"),
        ("badroute", "cannot import 'badroute': badroute.py:4: ValueError: route pattern '/ws/<int': the '<'"),
        ("badhandler", "cannot import 'badhandler': badhandler.py:3: TypeError: onmessage handler '<lambda>' takes 0"),
        ("libraise", "cannot import 'libraise': libraise.py:4: JSONDecodeError: Expecting property name"),
        ("multiline", "cannot import 'multiline': multiline.py:1: ValueError: first second"),
        ("factorymod:make", "factorymod:make() raised factorymod.py:2: KeyError: 'PORT'"),
        ("pkg/demo.py", "--routes takes a module name, not a file: try --routes pkg.demo"),
        ("pkg/demo", "--routes takes a module name, not a file: try --routes pkg.demo"),
        ("./pkg/demo.py:make", "--routes takes a module name, not a file: try --routes pkg.demo:make"),
        ("goodmod.py", "cannot import 'goodmod.py': no such module; try --routes goodmod"),
        ("nosuchmod.py", "cannot import 'nosuchmod.py': no such module; try --routes nosuchmod"),
        (":app", "--routes ':app' names no module"),
    ],
)
def test_load_errors_name_the_users_file_and_line(project: Path, spec: str, message: str) -> None:
    """A module that does not give an app is one line starting with the user's file:line, or the right --routes."""
    with pytest.raises(tap.LoadError) as raised:
        tap.load_app(spec)
    assert str(raised.value).startswith(message), str(raised.value)
    assert "\n" not in str(raised.value) and "crowtwist/" not in str(raised.value)


def test_file_paths_outside_the_current_directory_say_where_to_run(project: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """An absolute path inside the current directory becomes a dotted name; one outside says where to run from."""
    with pytest.raises(tap.LoadError, match=r"try --routes pkg\.demo\Z"):
        tap.load_app(str(project / "pkg" / "demo.py"))
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "app.py"
    with pytest.raises(tap.LoadError) as raised:
        tap.load_app(str(elsewhere))
    assert str(raised.value).endswith(f"run it from {elsewhere.parent} with --routes app")
    with pytest.raises(tap.LoadError, match=r"run it from \.\. with --routes up\Z"):
        tap.load_app("../up.py")


def test_errors_outside_user_code_fall_back_to_the_innermost_frame() -> None:
    """With no frame of the user's (all library code), the location is the innermost frame outside crowtwist."""
    try:
        import json

        json.loads("{")
    except ValueError as error:
        assert tap._last_line(error).startswith(f"{os.path.relpath(HERE)}:")
    bare = RuntimeError("no traceback")
    assert tap._last_line(bare) == "RuntimeError: no traceback"
    try:
        raise SyntaxError("bad", ("/elsewhere/x.py", 7, 1, "x"))
    except SyntaxError as error:
        assert tap._last_line(error) == "/elsewhere/x.py:7: SyntaxError: bad"


# The log threshold.


def test_log_level_threshold_filters_crowtwists_events(logs: LogCapture, level: None) -> None:
    """Below the threshold nothing is emitted; debug is off by default; names and LogLevels both set it."""
    log.debug("hidden {n}", n=1)
    log.info("shown")
    assert [e["log_format"] for e in logs.events if e.get("log_namespace") == "crowtwist"] == ["shown"]
    assert log_level() is LogLevel.info and not log.debugging
    set_log_level("DEBUG")
    assert log.debugging and log_level() is LogLevel.debug
    log.debug("now shown")
    set_log_level(LogLevel.error)
    assert not log.debugging
    log.warn("dropped")
    log.failure("kept", Failure(RuntimeError("x")))
    set_log_level("warning")
    assert log_level() is LogLevel.warn
    formats = [e["log_format"] for e in logs.events if e.get("log_namespace") == "crowtwist"]
    assert formats == ["shown", "now shown", "kept"]
    assert logs.failures()[-1]["log_level"] is LogLevel.error
    # A logger made from this one (Logger's descriptor) follows the same threshold.
    assert isinstance(CrowLogger.__get__(log, None, Crow), CrowLogger)
    with pytest.raises(ValueError, match="log level 'loud' is none of debug, info, warn, error, critical"):
        set_log_level("loud")
    with pytest.raises(ValueError, match="no twisted.logger.LogLevel"):
        set_log_level(3)  # type: ignore[arg-type, unused-ignore]


def echo_app() -> Crow:
    app = Crow()
    (app.route("/ws/<int>").websocket()
        .onmessage(lambda conn, data, is_binary: conn.send_text(data)))
    return app


@pytest.mark.parametrize("crow_site", [True, False])
def test_debug_logs_each_websocket_opened_and_closed(logs: LogCapture, level: None, crow_site: bool) -> None:
    """At debug, a WebSocket's open (route, peer, subprotocol) and close (route, peer, code, clean) are logged."""
    set_log_level("debug")
    client = MemoryClient(echo_app(), "/ws/7", crow_site=crow_site)
    client.send_close(1001, "bye")
    client.drop(clean=True)
    lines = [formatEvent(e) for e in logs.at(LogLevel.debug) if e.get("log_namespace") == "crowtwist"]
    assert lines == [
        "WebSocket /ws/<int> opened by 10.1.2.3 (subprotocol: none)",
        "WebSocket /ws/<int> of 10.1.2.3 closed: 1001 'bye' (clean)",
    ]


def test_no_debug_lines_by_default_and_unclean_closes_say_so(logs: LogCapture, level: None) -> None:
    """At info nothing is logged per connection; at debug a dropped connection is 1006, not clean."""
    MemoryClient(echo_app(), "/ws/1").drop()
    assert not logs.at(LogLevel.debug)
    set_log_level("debug")
    MemoryClient(echo_app(), "/ws/2").drop()
    assert formatEvent(logs.at(LogLevel.debug)[-1]) == "WebSocket /ws/<int> of 10.1.2.3 closed: 1006 'uncleanly' (not clean)"


def test_websocket_handler_failure_logs_at_error(logs: LogCapture) -> None:
    """A handler that raises is logged at error, as the README says, not critical."""
    app = Crow()
    app.route("/ws").websocket().onmessage(lambda conn, data, is_binary: 1 / 0)
    client = MemoryClient(app, "/ws")
    client.send_text("x")
    assert [e["log_level"] for e in logs.failures()] == [LogLevel.error]
    assert client.close_frame() is not None and client.close_frame().close_code == 1011  # type: ignore[union-attr]


# The route table.


class Counting(Middleware):
    def before_handle(self, req: Any, res: Any, ctx: Any) -> None: ...


def test_route_table_lists_every_route_with_kind_handlers_and_middleware(tmp_path: Path) -> None:
    """route_table() has HTTP methods and handler names, WebSocket events, and middleware counts with the app's."""
    (tmp_path / "static").mkdir()
    app = Crow(Counting()).static_dir(tmp_path / "static")

    @app.route("/users/<int>").methods("GET", "POST").middlewares(Counting)
    def user(req: Any, n: int) -> str:
        return str(n)

    rule = app.route("/chat").websocket()
    rule.onaccept(lambda req: True).onopen(lambda conn: None).onmessage(lambda c, d, b: None)
    rule.onerror(lambda conn, message: None).onclose(lambda conn, reason: None)
    app.route("/bare").websocket()
    api = Blueprint("api").middlewares(Counting())
    api.route("/ping")(lambda: "pong")
    app.register_blueprint(api)
    app.resource()
    rows = app.route_table()
    qualname = "test_route_table_lists_every_route_with_kind_handlers_and_middleware.<locals>.user"
    assert rows == [
        ("/users/<int>", "GET, POST", (qualname,), 2),
        ("/chat", "WebSocket", ("onaccept", "onopen", "onmessage", "onerror", "onclose"), 1),
        ("/bare", "WebSocket", (), 1),
        ("/api/ping", "GET", ("test_route_table_lists_every_route_with_kind_handlers_and_middleware.<locals>.<lambda>",), 2),
        ("/static/<path>", "GET", (rows[-1][2][0],), 1),
    ]
    lines = tap.route_lines(rows)
    assert lines[0].split() == ["ROUTE", "KIND", "HANDLERS", "MIDDLEWARE"]
    assert lines[3].split() == ["/bare", "WebSocket", "-", "1"]
    assert len({line.index(line.split()[1]) for line in lines[1:]} | {lines[0].index("KIND")}) == 1  # aligned
    assert tap.route_lines(Crow().route_table()) == ["no routes"]


def test_addresses_as_urls() -> None:
    """Start-up URLs: http(s)://host:port/ for TCP and TLS, brackets for IPv6, unix:PATH for sockets."""
    assert tap.address_url("tcp:0", IPv4Address("TCP", "127.0.0.1", 8080)) == "http://127.0.0.1:8080/"
    assert tap.address_url("SSL:443", IPv4Address("TCP", "0.0.0.0", 443)) == "https://0.0.0.0:443/"
    assert tap.address_url("tcp6:80", IPv6Address("TCP", "::1", 80)) == "http://[::1]:80/"
    assert tap.address_url("unix:/tmp/s", UNIXAddress(b"/tmp/s")) == "unix:/tmp/s"
    assert tap.address_url("systemd:domain=INET:index=0", object()) == "systemd:domain=INET:index=0"  # type: ignore[arg-type]


def test_bind_check_is_one_line_and_skips_what_it_cannot_judge() -> None:
    """A taken port fails the check with Twisted's words; port 0, UNIX sockets and malformed endpoints pass it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as raised:
            tap._check_bindable(f"tcp:{port}:interface=127.0.0.1")
        assert str(raised.value) == f"twistd crow: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use"
    for description in ("tcp:0", "unix:/nonexistent/dir/s.sock", "tcp:notaport", "bogus:1"):
        tap._check_bindable(description)


def test_tls_endpoints_are_bind_checked_and_bad_certificates_are_one_line(tmp_path: Path) -> None:
    """An ssl: port that is taken fails the check; a key that is not PEM, or missing, is a one-line bad endpoint."""
    from .test_twistd import make_certificate

    key, cert = make_certificate(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot listen on 127.0.0.1:{port}: "):
            tap._check_bindable(f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    with pytest.raises(SystemExit) as raised:
        tap._endpoint(f"ssl:0:privateKey={junk}:certKey={junk}")
    assert str(raised.value).startswith(f"twistd crow: bad --listen endpoint 'ssl:0:privateKey={junk}:certKey={junk}':"
                                        " the key or certificate is not usable (OpenSSL: ")
    with pytest.raises(SystemExit, match=r"No such file or directory"):
        tap._endpoint(f"ssl:0:privateKey={tmp_path / 'none.pem'}")


def test_a_port_lost_after_the_check_is_still_one_line() -> None:
    """A port taken between the check and the listen still ends the process with one line, not a traceback."""
    from twisted.application.service import Service
    from twisted.internet.error import CannotListenError

    class Taken(Service):
        def privilegedStartService(self) -> None:
            raise CannotListenError("", 8080, OSError(98, "Address already in use"))

    service = tap._TwistdService(Taken(), Crow(), ["tcp:8080"])
    with pytest.raises(SystemExit) as raised:
        service.privilegedStartService()
    assert str(raised.value) == "twistd crow: cannot listen on *:8080: [Errno 98] Address already in use"


def test_tls_check_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """--listen ssl:... without pyOpenSSL is one line saying pip install 'crowtwist[tls]'; tcp: is not checked."""
    monkeypatch.setitem(sys.modules, "twisted.internet.ssl", None)
    tap._check_tls("tcp:8443")
    with pytest.raises(SystemExit) as raised:
        tap._check_tls("ssl:8443:privateKey=k.pem")
    assert str(raised.value) == (
        "twistd crow: --listen ssl:8443:privateKey=k.pem: TLS needs the tls extra (twisted.internet.ssl is missing):"
        " pip install 'crowtwist[tls]'"
    )


# Options, in process.


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def test_options_take_the_module_first_or_last_and_once(capsys: pytest.CaptureFixture[str]) -> None:
    """crow MODULE [options] and crow [options] MODULE both name the app; naming it twice is one line."""
    assert parse("mymod", "--port", "9000")["routes"] == "mymod"
    assert parse("--port", "9000", "mymod:make")["routes"] == "mymod:make"
    assert parse("--routes", "mymod").argv == ["--routes", "mymod"]
    with pytest.raises(SystemExit, match="the module is given twice: --routes a and b"):
        parse("--routes", "a", "b")
    with pytest.raises(SystemExit, match=r"^twistd crow: Wrong number of arguments\. \(see twistd crow --help\)$"):
        parse("a", "--port", "1", "b", "c")
    with pytest.raises(SystemExit, match=r"^twistd crow: option --bogus not recognized \(see twistd crow --help\)$"):
        parse("mymod", "--bogus")
    with pytest.raises(SystemExit, match="--log-level is debug, info, warn or error, not 'loud'"):
        parse("mymod", "--log-level", "loud")
    with pytest.raises(SystemExit) as raised:
        parse("--version")
    assert raised.value.code == 0
    assert capsys.readouterr().out.startswith(f"crowtwist {__version__} (Twisted ")


# python -m crowtwist, in process.


def test_main_help_and_reactor_option(capsys: pytest.CaptureFixture[str]) -> None:
    """--help shows python -m crowtwist's usage and crow's options; --reactor is taken out for twistd."""
    with pytest.raises(SystemExit) as raised:
        main(["mymod", "--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert out == help_text() + "\n"
    assert out.startswith("Usage: python -m crowtwist MODULE[:ATTRIBUTE] [options]\n")
    for option in ("--listen", "--log-level", "--list-routes", "--workers", "--reactor", "--version"):
        assert option in out, option
    assert _take_reactor(["m", "--reactor", "asyncio", "--port", "1"]) == ("asyncio", ["m", "--port", "1"])
    assert _take_reactor(["--reactor=poll", "m"]) == ("poll", ["m"])
    with pytest.raises(SystemExit, match="--reactor needs a name"):
        _take_reactor(["m", "--reactor"])
    with pytest.raises(SystemExit, match=r"^python -m crowtwist: no reactor 'nope'; the reactors are .*asyncio"):
        main(["m", "--reactor", "nope"])
    with pytest.raises(SystemExit, match=r"^python -m crowtwist: name the app's module"):
        main([])


# Real processes.


def run(args: list[str], cwd: Path = ROOT, environ: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command to its end; its status and everything it wrote."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=environ or env(), timeout=60)
    return result.returncode, result.stdout + result.stderr


PY_M = [sys.executable, "-m", "crowtwist"]


@pytest.mark.parametrize("command", [["twistd"], PY_M], ids=["twistd", "python-m"])
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("syntaxmod", "cannot import 'syntaxmod': syntaxmod.py:3: SyntaxError: invalid syntax"),
        ("badroute", "badroute.py:4: ValueError: route pattern '/ws/<int': the '<' of segment '<int' is not closed"),
        ("badhandler", "badhandler.py:3: TypeError: onmessage handler '<lambda>' takes 0 positional argument(s)"),
        ("raisingmod", "raisingmod.py:3: RuntimeError: config missing"),
        ("examples/demo.py", "--routes takes a module name, not a file: try --routes examples.demo"),
        ("examples/demo", "--routes takes a module name, not a file: try --routes examples.demo"),
    ],
)
def test_module_errors_are_one_line_naming_the_users_line(
    project: Path, command: list[str], spec: str, message: str
) -> None:
    """twistd crow and python -m crowtwist end a broken module with one line naming the user's file and line."""
    args = twistd("--routes", spec) if command == ["twistd"] else [*PY_M, spec]
    status, output = run(args, cwd=project)
    prefix = "twistd crow" if command == ["twistd"] else "python -m crowtwist"
    assert status == 1
    assert output.count("\n") == 1 and output.startswith(f"{prefix}: ") and message in output, output


NO_TLS = """
import sys

class _NoTLS:
    # As if the tls extra were not installed: pyOpenSSL cannot be imported.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("OpenSSL", "service_identity"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTLS())
"""


@pytest.mark.parametrize("command", [["twistd"], PY_M], ids=["twistd", "python-m"])
def test_ssl_without_the_tls_extra_is_one_line(tmp_path: Path, command: list[str]) -> None:
    """--listen ssl:... where pyOpenSSL cannot be imported says pip install 'crowtwist[tls]', in one line."""
    (tmp_path / "sitecustomize.py").write_text(NO_TLS)
    environ = env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    listen = ["--listen", "ssl:8443:privateKey=key.pem:certKey=cert.pem"]
    args = twistd("--routes", "examples.echo", *listen) if command == ["twistd"] else [*PY_M, "examples.echo", *listen]
    status, output = run(args, environ=environ)
    assert status == 1
    assert output.count("\n") == 1 and "Traceback" not in output, output
    assert "TLS needs the tls extra (OpenSSL is missing): pip install 'crowtwist[tls]'" in output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_port_in_use_is_the_only_line(workers: str) -> None:
    """A taken port is one line and status 1, before twistd's start-up lines or the app's warnings, with or without workers."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, output = run(twistd("--routes", "examples.echo", "--workers", workers,
                                    "--listen", f"tcp:{port}:interface=127.0.0.1"))
    assert status == 1
    assert output == f"twistd crow: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use\n"


def test_list_routes_prints_the_table_without_listening() -> None:
    """--list-routes prints the route table and exits 0 without listening, even on a port that is taken."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, output = run(twistd("--routes", "examples.demo", "--list-routes", "--port", str(port)))
    assert status == 0, output
    lines = output.splitlines()
    assert lines[0].split() == ["ROUTE", "KIND", "HANDLERS", "MIDDLEWARE"]
    assert ["/chat/<string>", "WebSocket", "onaccept,", "onopen,", "onmessage,", "onclose", "0"] in [
        line.split() for line in lines]
    assert ["/auth/<string>", "WebSocket", "onaccept,", "onopen,", "onmessage", "0"] in [line.split() for line in lines]
    assert not any("unmasked" in line or "starting" in line for line in lines)


@pytest.mark.parametrize("command", [["twistd"], PY_M], ids=["twistd", "python-m"])
def test_version(command: list[str]) -> None:
    """twistd crow --version and python -m crowtwist --version print crowtwist's version and exit 0."""
    status, output = run(twistd("--version") if command == ["twistd"] else [*PY_M, "--version"])
    assert status == 0
    assert output.startswith(f"crowtwist {crowtwist.__version__} (Twisted ")


def test_startup_lines_urls_routes_and_debug_connections(tmp_path: Path) -> None:
    """Serving logs the routes and one URL per address; --log-level debug adds each WebSocket's open and close;
    no "Starting factory" line appears, even once a rule's factory starts."""
    port, sock = free_port(), tmp_path / "crow.sock"
    with Server(twistd("examples.echo", "--listen", f"tcp:{port}:interface=127.0.0.1", "--listen", f"unix:{sock}",
                       "--log-level", "debug")) as server:
        server.wait_tcp(port)
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10, subprotocols=None) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
        output = server.stop()
    assert server.process.returncode == 0, output
    assert f"[crowtwist#info] serving http://127.0.0.1:{port}/" in output
    assert f"[crowtwist#info] serving unix:{sock}" in output
    assert "[crowtwist#info] /echo   WebSocket  onmessage" in output
    assert "[crowtwist#debug] WebSocket /echo opened by 127.0.0.1 (subprotocol: none)" in output
    assert "[crowtwist#debug] WebSocket /echo of 127.0.0.1 closed: 1000 '' (clean)" in output
    assert "Starting factory" not in output and "Stopping factory" not in output
    # The routes come after twistd's start-up lines, the URLs after the routes.
    assert output.index("starting up") < output.index("ROUTE") < output.index("serving http://")
    warning = next(line for line in output.splitlines() if "unmasked" in line)
    for how in ("enforce_ws_spec=True", "CROWTWIST_ENFORCE_WS_SPEC=1", "--enforce-ws-spec"):
        assert how in warning


def test_log_level_error_keeps_only_errors() -> None:
    """--log-level error silences crowtwist's info and warn lines (the routes, the URLs, the masking warning)."""
    port = free_port()
    with Server(twistd("examples.echo", "--port", str(port), "--log-level", "error")) as server:
        server.wait_tcp(port)
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10):
            pass
        output = server.stop()
    assert "[crowtwist#" not in output, output
    assert "starting up" in output  # twistd's own lines are twistd's


@pytest.mark.fast_paths("close code")
def test_python_m_serves_and_stops_like_twistd(tmp_path: Path) -> None:
    """python -m crowtwist MODULE serves in the foreground, no pidfile; SIGTERM sends 1001 and exits 0."""
    port = free_port()
    with Server([*PY_M, "examples.echo", "--listen", f"tcp:{port}:interface=127.0.0.1"], cwd=tmp_path) as server:
        server.wait_tcp(port)
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        output = server.finish()
    assert server.process.returncode == 0, output
    assert f"serving http://127.0.0.1:{port}/" in output
    assert not list(tmp_path.iterdir())  # no twistd.pid


def test_python_m_with_another_reactor() -> None:
    """python -m crowtwist --reactor asyncio runs twistd with that reactor (the same process, exec'd)."""
    port = free_port()
    with Server([*PY_M, "examples.echo", "--reactor", "asyncio", "--port", str(port)]) as server:
        server.wait_tcp(port)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(F.handshake("/echo"))
            assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        output = server.stop()
    assert "AsyncioSelectorReactor" in output
    assert server.process.returncode == 0, output


def test_python_m_without_arguments_and_with_bad_ones() -> None:
    """python -m crowtwist alone, or with an unknown option, is one line and status 1."""
    status, output = run(PY_M)
    assert status == 1 and output.startswith("python -m crowtwist: name the app's module") and output.count("\n") == 1
    status, output = run([*PY_M, "examples.echo", "--bogus"])
    assert status == 1 and output == "python -m crowtwist: option --bogus not recognized (see python -m crowtwist --help)\n"


def test_workers_parent_announces_the_addresses() -> None:
    """With --workers 2 the parent logs the routes and the URL of the shared socket once."""
    port = free_port()
    with Server(twistd("examples.echo", "--workers", "2", "--listen", f"tcp:{port}:interface=127.0.0.1")) as server:
        server.wait_tcp(port)
        with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
        output = server.stop()
    assert output.count(f"serving http://127.0.0.1:{port}/") == 1, output
    assert output.count("/echo   WebSocket  onmessage") == 1, output


def test_readme_names_the_levels_the_code_uses() -> None:
    """The README's logging paragraph says what the code logs at debug and error, and documents the new options."""
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("Logging goes through"):]
    paragraph = paragraph[: paragraph.index("\n\n")]
    assert "debug" in paragraph and "error" in paragraph and "--log-level" in paragraph
    assert "python -m crowtwist" in readme and "--list-routes" in readme


def test_remaining_option_checks_in_process(project: Path) -> None:
    """Bad --send-buffer-policy and --allowed-origin are one line; --no-tcp-nodelay reaches the app; a factory
    returning something else than an app is named."""
    with pytest.raises(SystemExit, match="--send-buffer-policy is 'close' or 'wait', not 'drop'"):
        parse("m", "--send-buffer-policy", "drop")
    with pytest.raises(SystemExit, match="--allowed-origin: "):
        parse("m", "--allowed-origin", "http://a/b")
    app = Crow()
    tap.configure(app, parse("m", "--no-tcp-nodelay"))
    assert app.settings.tcp_nodelay is False
    (project / "wrongfactory.py").write_text("def make():\n    return 42\n")
    try:
        with pytest.raises(tap.LoadError, match=r"^wrongfactory:make is a int, not a Crow app"):
            tap.load_app("wrongfactory:make")
    finally:
        sys.modules.pop("wrongfactory", None)
