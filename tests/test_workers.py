"""Worker processes: ``twistd crow --workers N`` and ``app.run(workers=N)``, real processes on 127.0.0.1."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from crowtwist._workers import ENVIRONMENT, Supervisor, UnsupportedEndpoint, worker_count, worker_sockets

from .proc import Server, env, free_port, twistd
from .test_twistd import make_certificate

WORKERMOD = textwrap.dedent(
    """
    import os
    from crowtwist import Crow

    if os.environ.get("FAIL_IN_WORKER") and os.environ.get("CROWTWIST_WORKER"):
        raise RuntimeError("cannot start in a worker")

    app = Crow()
    app.route("/pid")(lambda request: str(os.getpid()))

    def closed(conn, reason, code):
        log = os.environ.get("ONCLOSE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {code} {reason}\\n")

    (app.route("/ws").websocket()
        .onopen(lambda conn: conn.send_text(str(os.getpid())))
        .onmessage(lambda conn, data, is_binary: conn.send_text(data))
        .onclose(closed))

    if __name__ == "__main__":
        import sys
        app.run(port=int(sys.argv[1]), host="127.0.0.1", workers=sys.argv[2])
    """
)


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    """A folder holding the workers' routes module, used as the current directory."""
    (tmp_path / "workermod.py").write_text(WORKERMOD)
    return tmp_path


def until(condition: Callable[[], Any], seconds: float = 30.0, what: str = "the condition") -> Any:
    """Poll ``condition`` until it returns something true, at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {seconds}s")


def fetch_pid(port: int, context: ssl.SSLContext | None = None) -> int | None:
    """The PID of the worker that answered ``/pid`` on a fresh connection, or None if none answered."""
    cls: Any = http.client.HTTPSConnection if context else http.client.HTTPConnection
    kwargs: dict[str, Any] = {"context": context} if context else {}
    conn = cls("127.0.0.1", port, timeout=10, **kwargs)
    try:
        conn.request("GET", "/pid")
        return int(conn.getresponse().read())
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def serving_pids(port: int, count: int, context: ssl.SSLContext | None = None, seconds: float = 30.0) -> set[int]:
    """At least ``count`` distinct PIDs answering ``/pid`` over fresh connections (each one a new hash)."""
    seen: set[int] = set()

    def enough() -> bool:
        pid = fetch_pid(port, context)
        if pid is not None:
            seen.add(pid)
        return len(seen) >= count

    until(enough, seconds, f"{count} distinct workers answering")
    return seen


def one_socket_per_worker(port: int, pids: set[int], stack: ExitStack, url: str = "ws", **kwargs: Any) -> list[ClientConnection]:
    """Open WebSockets until every PID in ``pids`` holds at least one (onopen sends the PID)."""
    clients: list[ClientConnection] = []
    held: set[int] = set()

    def more() -> bool:
        ws = stack.enter_context(connect(f"{url}://127.0.0.1:{port}/ws", open_timeout=10, close_timeout=10, **kwargs))
        held.add(int(ws.recv(timeout=10)))
        clients.append(ws)
        return held >= pids

    until(more, 30, "a WebSocket on every worker")
    return clients


def expect_1001(clients: list[ClientConnection]) -> None:
    for ws in clients:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def onclose_log(tmp_path: Path) -> Path:
    return tmp_path / "onclose.log"


def serve(modules: Path, onclose_log: Path, port: int, *extra: str, session: bool = False) -> Server:
    return Server(
        twistd("--routes", "workermod", "--listen", f"tcp:{port}:interface=127.0.0.1", *extra),
        cwd=modules,
        environ=env(ONCLOSE_LOG=str(onclose_log)),
        session=session,
    )


@pytest.mark.fast_paths("close code")
def test_two_workers_serve_and_sigterm_closes_with_1001(modules: Path, onclose_log: Path) -> None:
    """Both workers answer fresh connections; SIGTERM gives every client 1001, runs onclose in each, exits 0."""
    port = free_port()
    with serve(modules, onclose_log, port, "--workers", "2") as server, ExitStack() as stack:
        server.wait_tcp(port)
        pids = serving_pids(port, 2)
        assert len(pids) == 2 and server.process.pid not in pids
        clients = one_socket_per_worker(port, pids, stack)
        server.process.send_signal(signal.SIGTERM)
        expect_1001(clients)
        output = server.finish()
        assert server.process.returncode == 0, output
    closes = onclose_log.read_text().splitlines()
    assert len(closes) == len(clients) and all(line.endswith(" 1001 going away") for line in closes)
    assert {int(line.split()[0]) for line in closes} == pids
    assert "[worker 1]" in output and "[worker 2]" in output
    assert "one socket per worker (SO_REUSEPORT)" in output
    assert "without --broker" in output  # (broadcasts stay within a worker: said once, at start)
    assert "Traceback" not in output and "restarting" not in output
    assert not any(alive(pid) for pid in pids)


def test_killed_worker_is_restarted_and_serves(modules: Path, onclose_log: Path) -> None:
    """kill -9 of one worker: it is logged, restarted after the backoff, and the new one serves."""
    port = free_port()
    with serve(modules, onclose_log, port, "--workers", "2") as server:
        server.wait_tcp(port)
        first = serving_pids(port, 2)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # Connections hashed to the dead worker's socket wait in its backlog until the new one takes them.
        until(lambda: (fetch_pid(port) or victim) not in first, 30, "a new worker answering")
        now = serving_pids(port, 2)
        assert victim not in now and len(now - first) == 1
        output = server.stop()
        assert server.process.returncode == 0, output
    assert f"(pid {victim}) died (killed by SIGKILL)" in output and "restarting it in 0.5s" in output


@pytest.mark.fast_paths("close code")
def test_ctrl_c_to_the_process_group_stops_cleanly(modules: Path, onclose_log: Path) -> None:
    """SIGINT to the whole group (a terminal's Ctrl-C): 1001 to every client, no restart, no traceback, exit 0."""
    port = free_port()
    with serve(modules, onclose_log, port, "--workers", "2", session=True) as server, ExitStack() as stack:
        server.wait_tcp(port)
        pids = serving_pids(port, 2)
        clients = one_socket_per_worker(port, pids, stack)
        os.killpg(server.process.pid, signal.SIGINT)
        expect_1001(clients)
        output = server.finish()
        assert server.process.returncode == 0, output
    assert "Traceback" not in output and "restarting" not in output
    assert len(onclose_log.read_text().splitlines()) == len(clients)


@pytest.mark.fast_paths("close code")
def test_workers_stop_when_the_parent_is_killed(modules: Path, onclose_log: Path) -> None:
    """kill -9 of the parent: each worker sees its stdin end and stops gracefully (1001), leaving no orphan."""
    port = free_port()
    with serve(modules, onclose_log, port, "--workers", "2") as server, ExitStack() as stack:
        server.wait_tcp(port)
        pids = serving_pids(port, 2)
        clients = one_socket_per_worker(port, pids, stack)
        server.process.kill()
        expect_1001(clients)
        until(lambda: not any(alive(pid) for pid in pids), 30, "the workers' exit")
        server.finish()
    assert len(onclose_log.read_text().splitlines()) == len(clients)


def test_workers_auto_is_one_per_cpu(modules: Path, onclose_log: Path) -> None:
    """--workers auto runs one worker per CPU this process may use."""
    cpus = len(os.sched_getaffinity(0))
    port = free_port()
    with serve(modules, onclose_log, port, "--workers", "auto") as server:
        server.wait_tcp(port)
        serving_pids(port, min(cpus, 2))
        output = server.stop()
    assert server.process.returncode == 0, output
    if cpus > 1:
        assert f"starting {cpus} workers" in output


def test_workers_run_the_parents_reactor(modules: Path, onclose_log: Path) -> None:
    """twistd -r asyncio crow --workers 2: the workers run the asyncio reactor too, and serve."""
    port = free_port()
    with Server(
        twistd("--routes", "workermod", "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2", reactor="asyncio"),
        cwd=modules, environ=env(ONCLOSE_LOG=str(onclose_log)),
    ) as server:
        server.wait_tcp(port)
        serving_pids(port, 2)
        output = server.stop()
    assert server.process.returncode == 0, output
    reactors = [line for line in output.splitlines() if "reactor class:" in line]
    assert len(reactors) == 3 and all("AsyncioSelectorReactor" in line for line in reactors), reactors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers takes a positive number or 'auto', not '0'"),
        (["--workers", "x"], "--workers takes a positive number or 'auto', not 'x'"),
        (["--workers", "-2"], "--workers takes a positive number or 'auto', not '-2'"),
        (["--workers", ""], "--workers takes a positive number or 'auto', not ''"),
        (["--workers", "99999"], "--workers takes at most 4096, not '99999'"),
        (["--workers", "100000000000000000000"], "--workers takes at most 4096"),
        (["--workers", "2", "--listen", "unix:/tmp/crowtwist-workers.sock"], "--workers serves tcp:, tcp6: and ssl:"),
        (["--workers", "2", "--listen", "tcp:notaport"], "bad --listen endpoint"),
    ],
)
def test_bad_workers_input_is_one_line(modules: Path, args: list[str], message: str) -> None:
    """A bad --workers value, or an endpoint workers cannot share, is one clear line and a non-zero status."""
    result = subprocess.run(
        twistd("--routes", "workermod", *args), cwd=modules, capture_output=True, text=True, env=env(), timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "twistd crow:" in line]
    assert len(lines) == 1 and message in lines[0], output


def test_port_in_use_is_one_line(modules: Path) -> None:
    """With --workers, a port already taken is one line and exit status 1, and no worker starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            twistd("--routes", "workermod", "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2"),
            cwd=modules, capture_output=True, text=True, env=env(), timeout=60,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Traceback" not in output and "worker 1 started" not in output
    assert f"twistd crow: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use" in output


def test_tls_endpoint_with_workers(modules: Path, tmp_path: Path, onclose_log: Path) -> None:
    """--listen ssl:... with --workers: each worker wraps its adopted socket in TLS; both serve https://, wss:// echoes."""
    key, cert = make_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    port = free_port()
    listen = f"ssl:{port}:privateKey={key}:certKey={cert}:interface=127.0.0.1"
    with Server(
        twistd("--routes", "workermod", "--listen", listen, "--workers", "2"),
        cwd=modules, environ=env(ONCLOSE_LOG=str(onclose_log)),
    ) as server:
        server.wait_tcp(port)
        assert len(serving_pids(port, 2, context)) == 2
        # One wss:// client at a time: several at once failed now and then, with or without workers
        # (a local "[SSL] internal error" in the client's write, or a handshake timeout): not this test's subject.
        with connect(f"wss://127.0.0.1:{port}/ws", ssl=context, open_timeout=10) as ws:
            int(ws.recv(timeout=10))
            ws.send("over tls")
            assert ws.recv(timeout=10) == "over tls"
        output = server.stop()
        assert server.process.returncode == 0, output
    assert "Traceback" not in output


@pytest.mark.fast_paths("close code")
def test_app_run_with_workers(modules: Path, onclose_log: Path) -> None:
    """app.run(workers=2) from a script: two workers serve, SIGTERM gives clients 1001, every onclose runs, exit 0."""
    port = free_port()
    with Server(
        [sys.executable, "workermod.py", str(port), "2"], cwd=modules, environ=env(ONCLOSE_LOG=str(onclose_log))
    ) as server, ExitStack() as stack:
        server.wait_tcp(port)
        pids = serving_pids(port, 2)
        assert server.process.pid not in pids
        clients = one_socket_per_worker(port, pids, stack)
        server.process.send_signal(signal.SIGTERM)
        expect_1001(clients)
        output = server.finish()
        assert server.process.returncode == 0, output
    assert "with 2 workers" in output and "[worker 2]" in output
    assert {int(line.split()[0]) for line in onclose_log.read_text().splitlines()} == pids


def test_app_run_crash_loop_gives_up(modules: Path) -> None:
    """Workers that fail at start-up every time are logged, given up on, and app.run exits non-zero."""
    port = free_port()
    result = subprocess.run(
        [sys.executable, "workermod.py", str(port), "2"],
        cwd=modules, capture_output=True, text=True, env=env(FAIL_IN_WORKER="1"), timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "RuntimeError: cannot start in a worker" in result.stderr
    assert "5 times in a row" in result.stderr and "giving up" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "crowtwist: the workers kept failing at start-up (see above); stopped"


# The supervisor in this process, on the pytest reactor.


def test_worker_count() -> None:
    """worker_count takes positive integers and 'auto'; anything else is a ValueError naming the option."""
    assert worker_count(3) == 3 and worker_count(" 2 ") == 2
    assert worker_count("AUTO") == len(os.sched_getaffinity(0))
    for bad in (0, -1, "x", "1.5", True):
        with pytest.raises(ValueError, match="workers takes a positive number"):
            worker_count(bad, "workers")


def test_worker_sockets_from_the_environment() -> None:
    """A worker's index and descriptors come from the variable, which is then removed; a bad value is an error."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        environ = {ENVIRONMENT: "2:3,4", "OTHER": "x"}
        found = worker_sockets(environ)
        assert found is not None and (found.index, found.fds) == (2, (3, 4)) and ENVIRONMENT not in environ
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert worker_sockets({}) is None
        with pytest.raises(ValueError, match="INDEX:FD"):
            worker_sockets({ENVIRONMENT: "one:3"})
    finally:
        signal.signal(signal.SIGINT, previous)


def test_supervisor_refuses_what_it_cannot_share() -> None:
    """Endpoints other than tcp:, tcp6: and ssl: are refused, and a supervisor needs a worker."""
    with pytest.raises(UnsupportedEndpoint):
        Supervisor(["true"], ["unix:/tmp/never.sock"], 2)
    with pytest.raises(ValueError, match="at least one worker"):
        Supervisor(["true"], ["tcp:0"], 0)


def worker_command(*listen: str) -> list[str]:
    command = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.exit(run())"]
    command += ["--nodaemon", "--pidfile=", "--logger=crowtwist._workers.worker_observer", "crow", "--routes", "workermod"]
    for endpoint in listen:
        command += ["--listen", endpoint]
    return command


@pytest_twisted.ensureDeferred
async def test_supervisor_in_process_shares_one_socket(modules: Path, logs: Any) -> None:
    """Without SO_REUSEPORT the workers share one socket; both serve, and the stop ends them both."""
    listen = "tcp:0:interface=127.0.0.1"
    supervisor = Supervisor(
        worker_command(listen), [listen], 2, environ=env(), path=str(modules), reuse_port=False, stop_timeout=20,
        on_give_up=lambda: None,  # never the default here: it would SIGTERM pytest itself
    )
    supervisor.privilegedStartService()
    supervisor.startService()
    try:
        port = supervisor.addresses[0][1]
        pids = await threads.deferToThread(serving_pids, port, 2)
        assert len(pids) == 2
    finally:
        await supervisor.stopService()
    assert all(slot.process is None for slot in supervisor.slots)
    text = [e.get("line", "") for e in logs.events if str(e.get("log_system", "")).startswith("worker")]
    assert any("CrowSite" in line for line in text)


@pytest_twisted.ensureDeferred
async def test_supervisor_in_process_gives_up_on_a_crash_loop(modules: Path) -> None:
    """Workers failing at start-up are restarted with a growing backoff, then given up on: failed, on_give_up called."""
    from twisted.internet.defer import Deferred

    gave_up: Deferred[None] = Deferred()
    listen = "tcp:0:interface=127.0.0.1"
    supervisor = Supervisor(
        worker_command(listen), [listen], 1, environ=env(FAIL_IN_WORKER="1"), path=str(modules),
        backoff=0.05, max_backoff=0.1, give_up_after=3, on_give_up=lambda: gave_up.callback(None),
    )
    supervisor.startService()
    try:
        await gave_up
        assert supervisor.failed
    finally:
        await supervisor.stopService()


@pytest_twisted.ensureDeferred
async def test_supervisor_kills_a_worker_that_does_not_stop(modules: Path, logs: Any) -> None:
    """A worker that ignores SIGTERM is killed after stop_timeout, so stopping always ends."""
    listen = "tcp:0:interface=127.0.0.1"
    ignore = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); sys.stdin.read()"]
    supervisor = Supervisor(ignore, [listen], 1, environ=env(), stop_timeout=0.5, on_give_up=lambda: None)
    supervisor.startService()
    def printed() -> bool:
        return any(e.get("line") == "ready" for e in logs.events)

    ready = await threads.deferToThread(until, printed, 30, "the worker's first line")
    assert ready
    await supervisor.stopService()
    assert any("did not stop within" in str(e.get("log_format", "")) for e in logs.events)


class FakeReactor:
    """What the parent watch asks of a reactor: removeReader and stop (which raises once stopped)."""

    def __init__(self) -> None:
        self.stops = 0
        self.removed: list[object] = []

    def removeReader(self, reader: object) -> None:
        self.removed.append(reader)

    def stop(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        self.stops += 1
        if self.stops > 1:
            raise ReactorNotRunning()


def test_parent_watch_stops_once_at_the_pipes_end() -> None:
    """Data from the parent is ignored; the pipe's end, by doRead or connectionLost, stops the reactor once."""
    from twisted.python.failure import Failure

    from crowtwist._workers import _ParentWatch

    read, write = os.pipe()
    try:
        reactor = FakeReactor()
        watch = _ParentWatch(reactor, 1, fd=read)
        assert watch.fileno() == read and watch.logPrefix() == "parent-watch"
        os.write(write, b"ignored")
        watch.doRead()
        assert reactor.stops == 0
        os.close(write)
        write = -1
        watch.doRead()
        assert reactor.stops == 1 and reactor.removed == [watch]
        watch.connectionLost(Failure(Exception("gone")))
        assert reactor.stops == 1
        stopped_elsewhere = FakeReactor()
        stopped_elsewhere.stops = 1  # the reactor was already stopping: no second stop, no log line
        _ParentWatch(stopped_elsewhere, 2, fd=read).connectionLost(Failure(Exception("gone")))
        assert stopped_elsewhere.stops == 2
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def test_exit_descriptions() -> None:
    """A worker's end is logged as its exit status or the signal that killed it."""
    from twisted.internet.error import ProcessDone, ProcessTerminated
    from twisted.python.failure import Failure

    from crowtwist._workers import _how

    assert _how(Failure(ProcessDone(0))) == "exit status 0"
    assert _how(Failure(ProcessTerminated(exitCode=3))) == "exit status 3"
    assert _how(Failure(ProcessTerminated(signal=signal.SIGKILL))) == "killed by SIGKILL"
    assert _how(Failure(ProcessTerminated(signal=99))) == "killed by signal 99"
