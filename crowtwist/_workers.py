"""Worker processes: one parent holds the listening sockets, N children serve on them.

The parent (``Supervisor``) binds, never accepts, and never starts the app's
service: each worker builds the app's service itself, as a single process
would, on the sockets it inherited, so whatever starts with that service (a
broker's connection, say) exists once per worker and never in the parent.

How the sockets are shared.  Where the kernel balances ``SO_REUSEPORT``
groups (Linux), the parent binds one socket per worker for each endpoint, all
on the same address, and worker *i* is always given socket *i*: the kernel
hashes new connections over the sockets evenly, and while a dead worker
restarts, connections hashed to its socket wait in that socket's backlog
(the parent keeps it open) instead of being refused.  Elsewhere (BSDs bind
several ``SO_REUSEPORT`` sockets but hand every connection to one) a single
socket is shared by all workers, which race to accept.

How a worker starts.  It is the same program run again (``twistd crow`` with
the parent's own ``crow`` arguments, or the script that called
``app.run(workers=N)``) with ``CROWTWIST_WORKER=INDEX:FD,FD...`` in its
environment: that program, seeing it, adopts the descriptors instead of
listening.  The endpoint strings are parsed by Twisted's ``serverFromString``
against a stand-in reactor: in the parent it records what ``listenTCP`` or
``listenSSL`` would bind, in a worker it adopts the inherited descriptor
(wrapped in TLS for ``ssl:``, as ``listenSSL`` does), so ``tcp:``, ``tcp6:``
and ``ssl:`` take every option they take without workers.  ``unix:`` is
refused: Twisted's UNIX port unlinks its path when it stops, so one worker
stopping alone would take the socket file from the others.

Logs.  A worker writes its log lines without timestamps to its stdout; the
parent logs each line (stderr's too) with the system ``worker N``, so they
carry the parent's timestamps and go wherever the parent's log goes.

Stopping.  SIGTERM or SIGINT to the parent stops restarts and sends SIGTERM to
every worker (each closes its WebSockets with 1001 and runs every
``onclose``), then waits, at most ``stop_timeout``, before SIGKILL.  A worker
ignores SIGINT: Ctrl-C in a terminal signals the whole process group, and
each worker should get one stop, from the parent.  A worker's stdin is a pipe
from the parent; at its end (the parent died, even by SIGKILL) the worker stops
gracefully, so no orphan keeps the port.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import IO, Any, cast
from collections.abc import Callable, Mapping, MutableMapping, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import CannotListenError, ProcessExitedAlready, ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall, IReadDescriptor, IStreamServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import FileLogObserver, formatEventAsClassicLogText
from twisted.python.failure import Failure
from zope.interface import implementer

from ._log import log

__all__ = [
    "ENVIRONMENT",
    "Supervisor",
    "UnsupportedEndpoint",
    "WorkerSockets",
    "adopted_endpoints",
    "script_command",
    "worker_count",
    "worker_observer",
    "worker_service",
    "worker_sockets",
]


ENVIRONMENT = "CROWTWIST_WORKER"
"""Set in a worker's environment: ``INDEX:FD,FD...``, its number (from 1) and its listening descriptors."""

MAX_WORKERS = 4096
"""More processes than this on one machine is a typo, not a plan (and each costs memory before it binds)."""

FIRST_FD = 3
"""A worker's first inherited listening descriptor; the endpoints' follow in --listen order."""


class UnsupportedEndpoint(ValueError):
    """An endpoint that workers cannot share (anything but tcp:, tcp6: and ssl:)."""


def worker_count(value: int | str, name: str = "--workers") -> int:
    """``value`` as a number of workers: a positive integer, or ``auto`` for the CPUs this process may use."""
    text = str(value).strip().lower()
    if text == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1 or isinstance(value, bool):
        raise ValueError(f"{name} takes a positive number or 'auto', not {value!r}")
    if count > MAX_WORKERS:
        raise ValueError(f"{name} takes at most {MAX_WORKERS}, not {value!r}")
    return count


# The endpoints, parsed by Twisted against stand-in reactors.


@dataclass(frozen=True)
class _Binding:
    """What an endpoint would have bound."""

    description: str
    family: int
    host: str
    port: int
    backlog: int


class _Recorder:
    """A stand-in reactor for ``serverFromString``: notes what an endpoint would bind, binds nothing."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.binding: _Binding | None = None

    def listenTCP(self, port: int, factory: object, backlog: int = 50, interface: str = "") -> None:
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        self.binding = _Binding(self.description, family, interface, int(port), int(backlog))

    def listenSSL(
        self, port: int, factory: object, contextFactory: object, backlog: int = 50, interface: str = ""
    ) -> None:
        self.listenTCP(port, factory, backlog, interface)


def _binding(description: str) -> _Binding:
    """Parse ``description`` as Twisted does; raises ``UnsupportedEndpoint`` for what workers cannot share."""
    from twisted.internet.endpoints import serverFromString

    recorder = _Recorder(description)
    endpoint = serverFromString(recorder, description)
    # Any other endpoint asks for something the recorder lacks (AttributeError, at once or in a Deferred).
    try:
        endpoint.listen(Factory()).addErrback(lambda _: None)
    except AttributeError:
        pass
    if recorder.binding is None:
        raise UnsupportedEndpoint(f"--workers serves tcp:, tcp6: and ssl: endpoints, not {description!r}")
    return recorder.binding


def _reuse_port() -> bool:
    """Whether the kernel spreads connections over a ``SO_REUSEPORT`` group (Linux's does)."""
    option = getattr(socket, "SO_REUSEPORT", None)
    if option is None or not sys.platform.startswith("linux"):
        return False
    try:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, option, 1)
    except OSError:
        return False
    return True


def _bind(binding: _Binding, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(binding.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's own ports do
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((binding.host, port))
        sock.listen(binding.backlog)
    except OSError as error:
        sock.close()
        raise CannotListenError(binding.host, port, error) from None
    return sock


# The parent.


@dataclass
class _Slot:
    """One worker's place: it outlives each of its processes."""

    index: int
    delay: float
    quick_failures: int = 0
    process: _WorkerProcess | None = None
    restart: IDelayedCall | None = None


_LONGEST_LINE = 64 * 1024


class _WorkerProcess(ProcessProtocol):
    """One worker process: relays its output lines to the log; tells the supervisor when it exits."""

    def __init__(self, supervisor: Supervisor, slot: _Slot, started: float) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.started = started
        self.pid: int | None = None
        self.exited: Deferred[None] = Deferred()
        self._partial = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid if self.transport is not None else None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, rest = (self._partial.get(childFD, b"") + data).split(b"\n")
        if len(rest) > _LONGEST_LINE:  # output without newlines must not grow the parent without bound
            lines.append(rest)
            rest = b""
        self._partial[childFD] = rest
        for line in lines:
            self._relay(line)

    def _relay(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text:
            log.info("{line}", line=text, log_system=f"worker {self.slot.index}")

    def processExited(self, reason: Failure) -> None:
        # Not processEnded: a handler's own child holding the pipes must not delay a restart.
        for fd in sorted(self._partial):
            self._relay(self._partial[fd])
        self._partial = {}
        self.supervisor._exited(self, reason)
        self.exited.callback(None)

    def signal(self, name: str) -> None:
        try:
            if self.transport is not None:
                self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


def _how(reason: Failure) -> str:
    """A worker's end in words: ProcessDone or ProcessTerminated's exit code or signal."""
    sig = getattr(reason.value, "signal", None)
    if sig:
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {getattr(reason.value, 'exitCode', None) or 0}"


def _give_up_by_signal() -> None:
    # twistd and app.run both stop gracefully on SIGTERM; the signal is how twistd's exit status is non-zero.
    os.kill(os.getpid(), signal.SIGTERM)


class Supervisor(Service):
    """Binds the listening sockets, runs ``count`` workers on them, restarts those that die.

    ``command`` is each worker's argv (it must adopt its sockets when it finds
    ``ENVIRONMENT``), run in ``path`` (default: this process's folder) with
    ``environ`` (default: this process's environment); ``listen`` the endpoint descriptions, in the order the
    worker adopts them.  A worker that dies is restarted after ``backoff``
    seconds, doubling on each death within ``steady`` seconds of its start
    up to ``max_backoff``, back to ``backoff`` after one that ran longer.
    ``give_up_after`` such quick deaths in a row (a module that does not
    import in the workers, say) set ``failed`` and call ``on_give_up`` (by
    default: SIGTERM to this process, so it stops, and twistd exits by the
    signal, with a non-zero status).
    """

    def __init__(
        self,
        command: Sequence[str],
        listen: Sequence[str],
        count: int,
        *,
        environ: Mapping[str, str] | None = None,
        path: str | None = None,
        stop_timeout: float = 15.0,
        reuse_port: bool | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        steady: float = 10.0,
        give_up_after: int = 5,
        on_give_up: Callable[[], None] = _give_up_by_signal,
    ) -> None:
        if count < 1:
            raise ValueError(f"a supervisor needs at least one worker, not {count}")
        self.command = list(command)
        self.bindings = [_binding(description) for description in listen]
        self.count = count
        self.environ = dict(os.environ if environ is None else environ)
        self.path = path
        self.stop_timeout = stop_timeout
        self.reuse_port = _reuse_port() if reuse_port is None else reuse_port
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.steady = steady
        self.give_up_after = give_up_after
        self.on_give_up = on_give_up
        self.failed = False
        self.slots = [_Slot(index, backoff) for index in range(1, count + 1)]
        self._sockets: list[list[socket.socket]] = []

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Each endpoint's bound (host, port), once bound."""
        return [cast(tuple[str, int], sockets[0].getsockname()[:2]) for sockets in self._sockets]

    def _bind_all(self) -> None:
        if self._sockets:
            return
        try:
            for binding in self.bindings:
                first = _bind(binding, binding.port, self.reuse_port)
                sockets = [first]
                if self.reuse_port:
                    # A port of 0 is the one the first socket got.
                    port = first.getsockname()[1]
                    sockets += [_bind(binding, port, True) for _ in range(self.count - 1)]
                self._sockets.append(sockets)
        except CannotListenError:
            self._close_sockets()
            raise
        except OSError as error:  # more sockets than the process may open (EMFILE), say
            self._close_sockets()
            raise CannotListenError(binding.host, binding.port, error) from None

    def _close_sockets(self) -> None:
        for sockets in self._sockets:
            for sock in sockets:
                sock.close()
        self._sockets = []

    def privilegedStartService(self) -> None:
        # Bound here, so twistd may bind a low port before it sheds privileges; workers start later, unprivileged.
        Service.privilegedStartService(self)
        self._bind_all()

    def startService(self) -> None:
        self._bind_all()
        Service.startService(self)
        how = "one socket per worker (SO_REUSEPORT)" if self.reuse_port else "one shared socket"
        log.info("starting {count} workers on {listen}, {how}", count=self.count,
                 listen=", ".join(b.description for b in self.bindings), how=how)
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        from twisted.internet import reactor

        slot.restart = None
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for number, sockets in enumerate(self._sockets):
            sock = sockets[slot.index - 1] if self.reuse_port else sockets[0]
            fds[FIRST_FD + number] = sock.fileno()
        environ = dict(self.environ)
        environ[ENVIRONMENT] = f"{slot.index}:" + ",".join(str(fd) for fd in sorted(fds) if fd >= FIRST_FD)
        environ["PYTHONUNBUFFERED"] = "1"  # print() in a handler reaches the log at once, not at exit
        process = _WorkerProcess(self, slot, cast(Any, reactor).seconds())
        slot.process = process
        cast(Any, reactor).spawnProcess(
            process, self.command[0], self.command, env=environ, path=self.path, childFDs=fds
        )
        log.info("worker {index} started (pid {pid})", index=slot.index, pid=process.pid)

    def _exited(self, process: _WorkerProcess, reason: Failure) -> None:
        from twisted.internet import reactor

        slot = process.slot
        slot.process = None
        how = _how(reason)
        if not self.running:
            log.info("worker {index} (pid {pid}) stopped: {how}", index=slot.index, pid=process.pid, how=how)
            return
        lived = cast(Any, reactor).seconds() - process.started
        if lived >= self.steady:
            slot.delay, slot.quick_failures = self.backoff, 0
        else:
            slot.quick_failures += 1
        if slot.quick_failures >= self.give_up_after:
            log.error(
                "worker {index} (pid {pid}) died ({how}) {n} times in a row within {steady}s of starting;"
                " giving up and stopping",
                index=slot.index, pid=process.pid, how=how, n=slot.quick_failures, steady=self.steady,
            )
            self.failed = True
            self.on_give_up()
            return
        delay = slot.delay
        slot.delay = min(slot.delay * 2, self.max_backoff)
        log.warn(
            "worker {index} (pid {pid}) died ({how}) after {lived:.1f}s; restarting it in {delay}s",
            index=slot.index, pid=process.pid, how=how, lived=lived, delay=delay,
        )
        slot.restart = cast(Any, reactor).callLater(delay, self._spawn, slot)

    def stopService(self) -> Deferred[None]:
        from twisted.internet import reactor

        Service.stopService(self)
        # Workers keep their copies: they go on accepting until each stops listening.
        self._close_sockets()
        waits: list[Deferred[None]] = []
        for slot in self.slots:
            if slot.restart is not None and slot.restart.active():
                slot.restart.cancel()
            slot.restart = None
            if slot.process is not None:
                waits.append(slot.process.exited)
                slot.process.signal("TERM")
        if not waits:
            return succeed(None)
        log.info("stopping {count} workers", count=len(waits))
        killer = cast(Any, reactor).callLater(self.stop_timeout, self._kill_remaining)

        def stopped(_: object) -> None:
            if killer.active():
                killer.cancel()
            log.info("all workers stopped")

        return DeferredList(waits).addCallback(stopped)

    def _kill_remaining(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                log.warn("worker {index} (pid {pid}) did not stop within {timeout}s; killing it",
                         index=slot.index, pid=slot.process.pid, timeout=self.stop_timeout)
                slot.process.signal("KILL")


def script_command() -> list[str]:
    """The command that started this Python process (interpreter options and script included), to run again."""
    return [sys.executable, *sys.orig_argv[1:]]


# The worker.


@dataclass(frozen=True)
class WorkerSockets:
    """What a worker inherited: its number (from 1) and its listening descriptors, in --listen order."""

    index: int
    fds: tuple[int, ...]


def worker_sockets(environ: MutableMapping[str, str] | None = None) -> WorkerSockets | None:
    """This process's ``WorkerSockets`` if it is a worker, else ``None``.

    The variable is taken out of the environment, so a process a handler
    starts is not mistaken for a worker.  A worker ignores SIGINT from here on:
    its parent stops it with SIGTERM (see the module's docstring).
    """
    environ = os.environ if environ is None else environ
    value = environ.pop(ENVIRONMENT, None)
    if value is None:
        return None
    index, _, fds = value.partition(":")
    try:
        found = WorkerSockets(int(index), tuple(int(fd) for fd in fds.split(",") if fd))
    except ValueError:
        raise ValueError(f"{ENVIRONMENT}={value!r} is not INDEX:FD,FD...") from None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return found


class _Adopter:
    """A stand-in reactor for ``serverFromString``: listens by adopting one inherited descriptor."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def listenTCP(self, port: int, factory: Factory[Any], backlog: int = 50, interface: str = "") -> Any:
        with socket.socket(fileno=os.dup(self._fd)) as probe:
            family = probe.family
        os.set_blocking(self._fd, False)  # adoptStreamPort's contract: Twisted leaves an adopted socket as it is
        # adoptStreamPort takes a copy of the descriptor; ours would keep the socket open after it stops.
        listening = self._reactor.adoptStreamPort(self._fd, family, factory)
        os.close(self._fd)
        return listening

    def listenSSL(
        self, port: int, factory: Factory[Any], contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        # What reactor.listenSSL does: TLS in memory over a plain TCP port.
        return self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface)


def adopted_endpoints(listen: Sequence[str], fds: Sequence[int]) -> list[IStreamServerEndpoint]:
    """Endpoints for ``listen`` (as the parent parsed them) that adopt ``fds`` instead of binding."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    if len(listen) != len(fds):
        raise ValueError(f"{len(listen)} endpoints to serve but {len(fds)} inherited sockets")
    return [serverFromString(_Adopter(reactor, fd), description) for description, fd in zip(listen, fds)]


@implementer(IReadDescriptor)
class _ParentWatch:
    """Reads the worker's stdin, a pipe from its parent; at its end, stops the reactor."""

    def __init__(self, reactor: Any, index: int, fd: int = 0) -> None:
        self._reactor = reactor
        self._index = index
        self._fd = fd
        self._stopped = False

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._reactor.removeReader(self)
            self._gone()

    def connectionLost(self, reason: Failure) -> None:
        # The epoll reactor reports a pipe's end (EPOLLHUP without data) here, without a doRead.
        self._gone()

    def _gone(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            return
        log.warn("worker {index}: the parent process is gone; stopping", index=self._index)

    def logPrefix(self) -> str:
        return "parent-watch"


class _ParentWatchService(Service):
    def __init__(self, index: int) -> None:
        from twisted.internet import reactor

        self._watch = _ParentWatch(reactor, index)
        self._reactor: Any = reactor

    def startService(self) -> None:
        Service.startService(self)
        self._reactor.callWhenRunning(_stop_once)
        try:
            os.fstat(0)
        except OSError:  # no stdin at all: nothing to watch
            return
        self._reactor.addReader(self._watch)

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        self._watch._stopped = True  # our own stop: the pipe's end (the parent exiting too) is expected
        self._reactor.removeReader(self._watch)
        return None


def _stop_once() -> None:
    """Make the reactor's SIGTERM handler act once: a service manager may signal the whole group
    (systemd's KillMode=control-group) as well as the parent, and a second stop raises in Twisted."""
    installed = signal.getsignal(signal.SIGTERM)
    if not callable(installed):
        return
    handler = cast(Callable[[int, Any], Any], installed)

    def once(number: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        handler(number, frame)

    signal.signal(signal.SIGTERM, once)


def worker_service(inner: Service | MultiService, index: int) -> MultiService:
    """``inner`` (the app's service on adopted endpoints) plus the watch on the parent."""
    top = MultiService()
    top.addService(inner)
    top.addService(_ParentWatchService(index))
    return top


def _bare(event: dict[str, Any]) -> str | None:
    text = formatEventAsClassicLogText(event, formatTime=lambda _: "")
    return text.lstrip() if text else None


def worker_observer(out: IO[str] | None = None) -> FileLogObserver:
    """A worker's log observer: each event as ``[system] text``, without a timestamp (the parent adds its own).

    ``twistd --logger=crowtwist._workers.worker_observer`` calls it without arguments: stdout.
    """
    return FileLogObserver(out if out is not None else cast(IO[str], sys.__stdout__), _bare)
