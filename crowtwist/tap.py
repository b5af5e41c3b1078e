"""``twistd crow``: options and ``makeService``.

``twistd -n crow --routes mymod`` imports ``mymod`` and serves the ``Crow``
app it defines (``python -m crowtwist mymod`` runs the same).  Bad input
ends the process with one line on stderr and a non-zero status, not a usage
dump or a traceback: that line names the user's file and line where the
fault is there, and a port that cannot be had is found before twistd starts
logging.  Once serving, the log says each address as a URL and the routes.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import sys
import sysconfig
import traceback
from pathlib import Path
from typing import Any
from collections.abc import Sequence

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.python import usage
from zope.interface import implementer

from ._log import LEVEL_NAMES, log, set_log_level
from ._app import Crow
from ._broker import check_client_installed, parse_broker_url
from ._settings import DEFAULT_PORT, check_positive
from ._twisted import forget_exit_signal
from ._workers import Supervisor, UnsupportedEndpoint, adopted_endpoints, worker_count, worker_service, worker_sockets
from .websocket._origin import OriginPolicy

__all__ = ["Options", "load_app", "makeService", "route_lines"]


PROGRAM = "twistd crow"
"""How one-line errors name the command (``python -m crowtwist`` sets its own name)."""


class LoadError(Exception):
    """The --routes module could not give us an app; the message says why."""


def _fail(message: str) -> SystemExit:
    return SystemExit(f"{PROGRAM}: {message}")


def load_app(spec: str) -> Crow:
    """The ``Crow`` app named by ``module`` or ``module:attribute``.

    The attribute defaults to ``app``; it may be a ``Crow`` or a callable
    taking no arguments that returns one.  The current directory is
    importable, as it is for ``python -m``.
    """
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    if not module_name:
        raise LoadError(f"--routes {spec!r} names no module")
    if "/" in module_name or os.sep in module_name:
        raise LoadError(f"--routes takes a module name, not a file: {_module_for(module_name, attribute)}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            hint = f"; {_module_for(module_name, attribute)}" if module_name.endswith(".py") else ""
            raise LoadError(f"cannot import {module_name!r}: no such module{hint}") from None
        raise LoadError(f"cannot import {module_name!r}: {_last_line(error)}") from None
    except Exception as error:
        raise LoadError(f"cannot import {module_name!r}: {_last_line(error)}") from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise LoadError(f"module {module_name!r} has no attribute {attribute!r} (expected a Crow app)") from None
    if isinstance(target, Crow):
        return target
    if callable(target):
        try:
            target = target()
        except Exception as error:
            raise LoadError(f"{module_name}:{attribute}() raised {_last_line(error)}") from None
        if isinstance(target, Crow):
            return target
    raise LoadError(
        f"{module_name}:{attribute} is a {type(target).__name__}, not a Crow app"
        " or a callable returning one"
    )


def _module_for(path: str, attribute: str) -> str:
    """What to pass to --routes for the file ``path`` (``examples/demo.py``: ``examples.demo``)."""
    file = Path(path[:-3] if path.endswith(".py") else path)
    suffix = "" if attribute == "app" else f":{attribute}"
    try:
        relative = file.resolve().relative_to(Path.cwd().resolve()) if file.is_absolute() else file
    except ValueError:  # outside the current directory
        relative = None
    parts = [part for part in relative.parts if part != "."] if relative is not None else None
    if not parts or ".." in parts:
        return f"run it from {file.parent} with --routes {file.name}{suffix}"
    return f"try --routes {'.'.join(parts)}{suffix}"


_LIBRARIES = tuple(
    {os.path.join(os.path.abspath(path), "") for key in ("stdlib", "platstdlib", "purelib", "platlib")
     if (path := sysconfig.get_paths().get(key))}
    | {os.path.join(os.path.dirname(os.path.abspath(__file__)), "")}
)
"""Where the standard library, installed packages and crowtwist live: code that is not the user's."""

_LOCATED = re.compile(r"(?P<file>[^\s:][^:]*):(?P<line>[0-9]+): ")


def _shown(filename: str) -> str:
    """``filename`` relative to the current directory when it is under it."""
    try:
        return str(Path(os.path.abspath(filename)).relative_to(Path.cwd()))
    except ValueError:  # elsewhere
        return filename


def _user_frame(error: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of ``error``'s traceback in the user's code, else outside crowtwist and importlib."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if not f.filename.startswith("<") and not os.path.abspath(f.filename).startswith(_LIBRARIES)]
    if ours:
        return ours[-1]
    outside = [f for f in frames if not f.filename.startswith("<") and not os.path.abspath(f.filename).startswith(_LIBRARIES[-1])]
    return outside[-1] if outside else (frames[-1] if frames else None)


def _last_line(error: BaseException) -> str:
    """``error`` as one line that starts with the user's ``file:line``, where there is one."""
    kind = type(error).__name__
    if isinstance(error, SyntaxError) and error.filename:
        where: str | None = f"{_shown(error.filename)}:{error.lineno}"
        message = str(error.msg)
    else:
        message = str(error)
        # crowtwist's own errors start with where the user declared what they check.
        found = _LOCATED.match(message)
        if found is not None and os.path.isfile(found["file"]):
            where, message = f"{_shown(found['file'])}:{found['line']}", message[found.end():]
        else:
            frame = _user_frame(error)
            where = f"{_shown(frame.filename)}:{frame.lineno}" if frame is not None else None
    message = " ".join(message.split("\n"))
    return f"{where}: {kind}: {message}" if where else f"{kind}: {message}"


def _positive(name: str, value: str, kind: type[int] | type[float] = float, allow_none: bool = True) -> Any:
    """Option ``--name``'s ``value`` as a positive ``kind``; ``none``, ``off`` or ``0`` is ``None`` if allowed."""
    if allow_none and value.lower() in ("none", "off", "0"):
        return None
    try:
        number = kind(value)
    except ValueError:
        raise _fail(f"--{name} takes a number, not {value!r}") from None
    try:
        return check_positive(f"--{name}", number, integer=kind is int, optional=False)
    except ValueError:
        raise _fail(f"--{name} must be positive, not {value!r}") from None


def _version_of(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:  # pragma: no cover - a dependency is always installed
        return "?"


class Options(usage.Options):
    """Options of ``twistd crow``."""

    synopsis = "[--routes] MODULE[:ATTRIBUTE] [options]"
    longdesc = (
        "Serve the routes of a crowtwist (Crow-style) app. MODULE is imported from the"
        " current directory or the Python path; ATTRIBUTE (default: app) is a Crow app or"
        " a callable returning one. Listens on tcp:18080, Crow's port, unless told otherwise."
    )
    optParameters = [
        ["routes", "r", None, "Module defining the app: MODULE or MODULE:ATTRIBUTE."],
        ["port", "p", None, "Shorthand for --listen tcp:PORT."],
        ["max-payload", None, None, "Largest incoming message in bytes, after decompression ('none': no bound)."],
        ["max-body-size", None, None, "Largest HTTP request body in bytes, 413 over it ('none': no bound). [default: 64 MiB]"],
        ["keepalive-interval", None, None, "Seconds between server pings ('off': no pings). [default: 20]"],
        ["keepalive-timeout", None, None, "Seconds to wait for a pong before closing with 1011. [default: 20]"],
        ["close-timeout", None, None, "Seconds to wait for the peer's close frame before dropping it. [default: 5]"],
        ["handshake-timeout", None, None,
         "Seconds from TCP accept to a complete request head and to the 101 ('off': none). [default: 10]"],
        ["max-send-buffer", None, None,
         "Bytes a connection may leave unread by a slow peer ('none': no bound). [default: 4194304]"],
        ["send-buffer-policy", None, None, "Over --max-send-buffer: 'close' (1008) or 'wait'. [default: close]"],
        ["max-connections", None, None, "Open WebSockets at once; more get 503 ('none': no cap)."],
        ["workers", "w", None,
         "Worker processes serving the --listen sockets (tcp:, tcp6:, ssl:); 'auto': one per CPU;"
         " a worker that dies is restarted. [default: 1]"],
        ["max-queue", None, None,
         "Messages a connection buffers while a handler is pending; then it stops reading ('none': no bound)."
         " [default: 16]"],
        ["max-queue-bytes", None, None,
         "Bytes of messages a connection buffers while a handler is pending ('none': no bound)."
         " [default: 1048576]"],
        ["broker", None, None,
         "Carry rooms and broadcasts between processes and machines through Redis:"
         " redis://[[user]:password@]host[:port][/db] or rediss://... (needs crowtwist[redis])."],
        ["log-level", None, None,
         "crowtwist's log threshold: debug (adds each WebSocket opened and closed), info, warn or error."
         " [default: info]"],
    ]
    optFlags = [
        ["list-routes", None, "Print the routes the app serves (pattern, kind, handlers, middleware) and exit."],
        ["enforce-ws-spec", None, "Require masked client frames (Crow's CROW_ENFORCE_WS_SPEC)."],
        ["no-compression", None, "Decline permessage-deflate."],
        ["no-tcp-nodelay", None, "Leave Nagle's algorithm on for WebSocket connections (TCP_NODELAY off)."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["listen"] = []
        self["allowed-origin"] = []
        self.argv: list[str] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # Kept for the workers' command line: whatever crow options exist, they pass through unchanged.
        self.argv = list(sys.argv[1:] if options is None else options)
        argv = self.argv
        if argv and not argv[0].startswith("-"):
            # getopt stops at the first argument that is no option: "crow mymod --listen ..." names the module first.
            argv = ["--routes", *argv]
        try:
            usage.Options.parseOptions(self, argv)
        except usage.UsageError as error:
            raise _fail(f"{error} (see {PROGRAM} --help)") from None

    def parseArgs(self, module: str | None = None) -> None:
        """MODULE[:ATTRIBUTE] may come without --routes."""
        if module is not None:
            if self["routes"] is not None:
                raise _fail(f"the module is given twice: --routes {self['routes']} and {module}")
            self["routes"] = module

    def opt_version(self) -> None:
        """Print crowtwist's version (and Twisted's, autobahn's, Python's) and exit."""
        import platform

        import twisted

        from ._version import __version__

        print(
            f"crowtwist {__version__} (Twisted {twisted.__version__}, autobahn {_version_of('autobahn')},"
            f" Python {platform.python_version()})"
        )
        raise SystemExit(0)

    def opt_allowed_origin(self, pattern: str) -> None:
        """An origin allowed to open WebSockets (scheme://host[:port], '*' wildcards in the
        host; 'null' for sandboxed pages and files, refused unless named); repeatable;
        others get 403. [default: any]"""
        self["allowed-origin"].append(pattern)

    def opt_listen(self, description: str) -> None:
        """A Twisted endpoint to listen on, e.g. tcp:18080:interface=127.0.0.1,
        ssl:8443:privateKey=key.pem:certKey=cert.pem or unix:/tmp/crow.sock.
        Repeatable. [default: tcp:18080]"""
        self["listen"].append(description)

    def postOptions(self) -> None:
        self.given = {name for name in self.keys() if self[name] is not None}
        if not self["routes"]:
            raise _fail("--routes MODULE is required (e.g. --routes examples.echo)")
        if self["log-level"] is not None and self["log-level"].strip().lower() not in LEVEL_NAMES:
            raise _fail(f"--log-level is debug, info, warn or error, not {self['log-level']!r}")
        if self["port"] is not None:
            self["listen"].append(f"tcp:{_positive('port', self['port'], int, allow_none=False)}")
        if not self["listen"]:
            self["listen"].append(f"tcp:{DEFAULT_PORT}")
        for description in self["listen"]:
            _check_tls(description)
        for name in ("max-payload", "max-body-size", "max-send-buffer", "max-connections", "max-queue", "max-queue-bytes"):
            if self[name] is not None:
                self[name] = _positive(name, self[name], int)
        for name in ("keepalive-interval", "keepalive-timeout", "close-timeout", "handshake-timeout"):
            if self[name] is not None:
                self[name] = _positive(name, self[name], float, allow_none=name != "close-timeout")
        try:
            self["workers"] = 1 if self["workers"] is None else worker_count(self["workers"])
        except ValueError as error:
            raise _fail(str(error)) from None
        if self["send-buffer-policy"] not in (None, "close", "wait"):
            raise _fail(f"--send-buffer-policy is 'close' or 'wait', not {self['send-buffer-policy']!r}")
        try:
            OriginPolicy(self["allowed-origin"])
        except ValueError as error:
            raise _fail(f"--allowed-origin: {error}") from None
        if self["broker"] is not None:
            try:
                parse_broker_url(self["broker"])
                check_client_installed()
            except (ValueError, ImportError) as error:
                raise _fail(f"--broker: {error}") from None


def configure(app: Crow, options: Options) -> None:
    """Apply command-line settings over what the module set."""
    settings = app.settings
    if options["enforce-ws-spec"]:
        settings.enforce_ws_spec = True
    if options["no-compression"]:
        settings.compression = False
    if options["no-tcp-nodelay"]:
        settings.tcp_nodelay = False
    # The option parser stores None both for "not given" and for "none"/"off";
    # only the options actually on the command line override the module.
    given = set(options.given)
    for option, attribute in (
        ("max-payload", "websocket_max_payload"),
        ("max-body-size", "max_body_size"),
        ("keepalive-interval", "keepalive_interval"),
        ("keepalive-timeout", "keepalive_timeout"),
        ("close-timeout", "close_timeout"),
        ("handshake-timeout", "handshake_timeout"),
        ("max-send-buffer", "max_send_buffer"),
        ("max-connections", "max_connections"),
        ("max-queue", "max_queue"),
        ("max-queue-bytes", "max_queue_bytes"),
        ("send-buffer-policy", "send_buffer_policy"),
    ):
        if option in given:
            setattr(settings, attribute, options[option])
    if options["allowed-origin"]:
        settings.allowed_origins = tuple(options["allowed-origin"])
    app.apply_settings()
    if options["broker"] is not None:
        app.broker(options["broker"])


def makeService(options: Options) -> IService:
    """The app named by --routes, listening on every --listen endpoint."""
    if options["log-level"] is not None:
        set_log_level(options["log-level"])
    try:
        app = load_app(options["routes"])
    except LoadError as error:
        raise _fail(str(error)) from None
    configure(app, options)
    if options["list-routes"]:
        app.resource()  # the static files' route is placed when the app is first served
        print("\n".join(route_lines(app.route_table())))
        raise SystemExit(0)
    # A worker (started by a parent below) serves on the sockets it inherited; --workers is the parent's.
    worker = worker_sockets()
    if worker is None:
        for description in options["listen"]:
            _check_bindable(description)
    try:
        if worker is not None:
            service: IService = worker_service(app.service(*adopted_endpoints(options["listen"], worker.fds)), worker.index)
        elif options["workers"] > 1:
            # The parent only supervises: it never starts the app's own service.
            if app.websocket_rules and app.broker_client is None:
                log.info(
                    "--workers {workers} without --broker: rule.broadcast, rooms and app.publish reach"
                    " the connections of the worker that sends them only",
                    workers=options["workers"],
                )
            service = Supervisor(
                _worker_command(options), options["listen"], options["workers"],
                stop_timeout=2 * app.settings.close_timeout + 5,
            )
        else:
            service = app.service(*(_Announced(_endpoint(d), d) for d in options["listen"]))
    except UnsupportedEndpoint as error:
        raise _fail(str(error)) from None
    except (ValueError, TypeError, KeyError) as error:
        raise _fail(f"bad --listen endpoint: {error}") from None
    return _TwistdService(service, None if worker is not None else app, options["listen"])


# Listening: TLS present, the port free, the URLs once listening.


def _endpoint(description: str) -> IStreamServerEndpoint:
    """``serverFromString``'s endpoint; what it fails on (a certificate file not found, not PEM...) is one line."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except Exception as error:
        if type(error).__module__.startswith("OpenSSL"):
            why = f"the key or certificate is not usable (OpenSSL: {error})"
        elif isinstance(error, OSError):
            why = str(error)
        else:
            why = f"{type(error).__name__}: {error}"
        raise _fail(f"bad --listen endpoint {description!r}: {why}") from None
    return endpoint


def _kind(description: str) -> str:
    """An endpoint description's type, as Twisted reads it: ``tcp``, ``ssl``, ``unix``..."""
    return description.split(":", 1)[0].strip().lower()


def _check_tls(description: str) -> None:
    """An ``ssl:`` endpoint without pyOpenSSL is one line saying what to install, not a traceback."""
    if _kind(description) != "ssl":
        return
    try:
        importlib.import_module("twisted.internet.ssl")  # pyOpenSSL, through Twisted's TLS support
    except ImportError as error:
        missing = f" ({error.name} is missing)" if error.name else ""
        raise _fail(f"--listen {description}: TLS needs the tls extra{missing}: pip install 'crowtwist[tls]'") from None


class _Probe:
    """A stand-in reactor for ``serverFromString``: notes the address a TCP or TLS endpoint would bind."""

    def __init__(self) -> None:
        self.address: tuple[str, int] | None = None

    def listenTCP(self, port: int, factory: object, backlog: int = 50, interface: str = "") -> None:
        self.address = (interface, int(port))

    def listenSSL(
        self, port: int, factory: object, contextFactory: object, backlog: int = 50, interface: str = ""
    ) -> None:
        self.address = (interface, int(port))


def _check_bindable(description: str) -> None:
    """A TCP or TLS port that cannot be bound is one line, before twistd logs that it starts up.

    Bound and released at once, with ``SO_REUSEADDR`` as Twisted's ports
    have it; a port taken between this and the real listen is still one
    line (``_TwistdService``), after twistd's start-up lines.
    """
    from twisted.internet.endpoints import serverFromString

    probe = _Probe()
    try:
        serverFromString(probe, description).listen(Factory()).addErrback(lambda _: None)
    except Exception:
        return  # not a TCP or TLS endpoint, or malformed: the real listen says what is wrong
    if probe.address is None or probe.address[1] == 0:
        return
    host, port = probe.address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise _fail(f"cannot listen on {host or '*'}:{port}: {error}") from None


class _Address:
    """A bound (host, port), as ``address_url`` reads an ``IAddress``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port


def address_url(description: str, address: IAddress | _Address) -> str:
    """Where a client reaches ``address``, which the endpoint ``description`` listens on, as a URL."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        scheme = "https" if _kind(description) == "ssl" else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/"
    name = getattr(address, "name", None)
    if isinstance(name, (str, bytes)):
        return f"unix:{os.fsdecode(name)}"
    return description


@implementer(IStreamServerEndpoint)
class _Announced:
    """An endpoint that logs the URL it serves once it listens."""

    def __init__(self, endpoint: IStreamServerEndpoint, description: str) -> None:
        self._endpoint = endpoint
        self._description = description

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        def listening(port: IListeningPort) -> IListeningPort:
            log.info("serving {url}", url=address_url(self._description, port.getHost()))
            return port

        listened: Deferred[IListeningPort] = self._endpoint.listen(protocolFactory)
        return listened.addCallback(listening)


def route_lines(rows: Sequence[tuple[str, str, tuple[str, ...], int]]) -> list[str]:
    """``Crow.route_table()`` as an aligned table, one line per route, with a heading."""
    if not rows:
        return ["no routes"]
    table = [("ROUTE", "KIND", "HANDLERS", "MIDDLEWARE")]
    table += [(pattern, kind, ", ".join(handlers) or "-", str(count)) for pattern, kind, handlers, count in rows]
    widths = [max(len(row[column]) for row in table) for column in range(3)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[3]])
        for row in table
    ]


_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"
"""``twistd`` as ``python -c`` runs it: the same interpreter and path as this process, whatever the bin folder."""


def _worker_command(options: Options) -> list[str]:
    """A worker's command: twistd in the foreground, no pidfile (the parent's is the parent's), bare log lines
    (the parent stamps them), the parent's reactor, and this process's own ``crow`` arguments."""
    command = [sys.executable, "-c", _TWISTD, "--nodaemon", "--pidfile=", "--logger=crowtwist._workers.worker_observer"]
    reactor = options.parent.get("reactor") if options.parent is not None else None
    if reactor:
        command.append(f"--reactor={reactor}")
    return [*command, "crow", *options.argv]


class _TwistdService(MultiService):
    """The app's service as twistd runs it.

    A port that cannot be had becomes one line and exit status 1.  A stop
    on SIGTERM or SIGINT that closed every WebSocket is a clean shutdown, so
    the process exits 0 rather than re-raising the signal on itself (what
    twistd does by default), and supervisors see a completed stop.  The one
    exception: a worker ``Supervisor`` that gave up on a crash loop stopped
    the process with SIGTERM, and twistd then exits by it (non-zero).
    """

    def __init__(self, inner: IService, app: Crow | None = None, listen: Sequence[str] = ()) -> None:
        MultiService.__init__(self)
        MultiService.addService(self, inner)
        self._inner = inner
        self._app = app
        """The app, to log its routes; None in a worker, whose parent logs them."""
        self._listen = list(listen)

    def privilegedStartService(self) -> None:
        if self._app is not None:
            for line in route_lines(self._app.route_table()):
                log.info("{line}", line=line)
        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as error:
            raise _fail(f"cannot listen on {error.interface or '*'}:{error.port}: {error.socketError}") from None

    def startService(self) -> None:
        MultiService.startService(self)
        if isinstance(self._inner, Supervisor):
            # The parent bound the workers' sockets: it says where they are.
            for description, (host, port) in zip(self._listen, self._inner.addresses):
                log.info("serving {url}", url=address_url(description, _Address(host, port)))

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = MultiService.stopService(self)
        if isinstance(self._inner, Supervisor) and self._inner.failed:
            return stopped  # the workers kept failing: twistd exits by the signal, not 0
        return stopped.addCallback(_clean_exit)


def _clean_exit(_: object) -> None:
    from twisted.internet import reactor

    forget_exit_signal(reactor)
