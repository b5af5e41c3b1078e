"""``twistd crow``: options and ``makeService``.

``twistd -n crow --routes mymod`` imports ``mymod`` and serves the ``Crow``
app it defines.  Bad input ends the process with one line on stderr and a
non-zero status, not a usage dump or a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any
from collections.abc import Sequence

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.python import usage

from ._log import log
from ._app import Crow
from ._broker import check_client_installed, parse_broker_url
from ._settings import DEFAULT_PORT, check_positive
from ._twisted import forget_exit_signal
from ._workers import Supervisor, UnsupportedEndpoint, adopted_endpoints, worker_count, worker_service, worker_sockets
from .websocket._origin import OriginPolicy

__all__ = ["Options", "load_app", "makeService"]



class LoadError(Exception):
    """The --routes module could not give us an app; the message says why."""


def _fail(message: str) -> SystemExit:
    return SystemExit(f"twistd crow: {message}")


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
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise LoadError(f"cannot import {module_name!r}: no such module") from None
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


def _last_line(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{where}"


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


class Options(usage.Options):
    """Options of ``twistd crow``."""

    synopsis = "--routes MODULE[:ATTRIBUTE] [options]"
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
    ]
    optFlags = [
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
        usage.Options.parseOptions(self, options)

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
        if self["port"] is not None:
            self["listen"].append(f"tcp:{_positive('port', self['port'], int, allow_none=False)}")
        if not self["listen"]:
            self["listen"].append(f"tcp:{DEFAULT_PORT}")
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
    try:
        app = load_app(options["routes"])
    except LoadError as error:
        raise _fail(str(error)) from None
    configure(app, options)
    # A worker (started by a parent below) serves on the sockets it inherited; --workers is the parent's.
    worker = worker_sockets()
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
            service = app.service(*options["listen"])
    except UnsupportedEndpoint as error:
        raise _fail(str(error)) from None
    except (ValueError, TypeError, KeyError) as error:
        raise _fail(f"bad --listen endpoint: {error}") from None
    return _TwistdService(service)


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

    def __init__(self, inner: IService) -> None:
        MultiService.__init__(self)
        MultiService.addService(self, inner)
        self._inner = inner

    def privilegedStartService(self) -> None:
        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as error:
            raise _fail(f"cannot listen on {error.interface or '*'}:{error.port}: {error.socketError}") from None

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = MultiService.stopService(self)
        if isinstance(self._inner, Supervisor) and self._inner.failed:
            return stopped  # the workers kept failing: twistd exits by the signal, not 0
        return stopped.addCallback(_clean_exit)


def _clean_exit(_: object) -> None:
    from twisted.internet import reactor

    forget_exit_signal(reactor)
