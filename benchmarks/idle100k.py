"""100,000 idle WebSocket connections, keepalive on, with a 1,000-connection echo workload beside them.

    PYTHONPATH=. /work/main/.venv/bin/python benchmarks/idle100k.py [--conns 100000] [--hold 50]

Raises ``ulimit -n``, starts ``twistd crow --routes examples.echo`` from this
tree (keepalive at its defaults: a ping every 20 s, 20 s for the pong) pinned
to CPU 0, opens ``--conns`` idle connections from 127.0.0.2, 127.0.0.3, ...
(25,000 per source address: the ephemeral ports of one address reach one
destination about 28,000 times), holds them for ``--hold`` seconds after the
last is up (longer than one keepalive interval, so every connection has been
pinged and has answered), then runs ``wsload throughput -c 1000 -k 1 -s 64``
beside them, and the same workload against a fresh server without them.
Prints the figures as Markdown and one ``JSON {...}`` line.

The idle client is this file again (``--client``): raw non-blocking sockets
and epoll in one process pinned to CPU 1, an RFC 6455 handshake per socket,
the server's unmasked frames in, masked pongs out for its pings.  It counts
every connection the server closed or reset: "lost" must be 0.

Bounded: every wait has a timeout, and the processes it started are stopped
(SIGTERM, then SIGKILL) whatever happens.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/work/main/.venv/bin/python"
TWISTD = "/work/main/.venv/bin/twistd"
WSLOAD_SRC = ROOT.parent / "shared" / "bench" / "wsload.c"
PER_ADDRESS = 25000
"""Connections per source address (ephemeral ports 32768-60999 to one destination)."""


# The idle client (``--client``).

_KEY = base64.b64encode(b"crowtwist-idle-k").decode()


def _pong(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return bytes((0x8A, 0x80 | len(payload))) + mask + masked


def client(port: int, conns: int, addresses: list[str], path: str, window: int, deadline: float) -> int:
    """Open ``conns`` connections, answer pings; report on stdin's commands (status, quit)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    ep = select.epoll(sizehint=conns + 16)
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    state: dict[int, int] = {}  # fd -> 0 connecting, 1 handshake sent, 2 open
    partial: dict[int, bytes] = {}
    counts = {"up": 0, "failed": 0, "lost": 0, "pings": 0, "pongs": 0, "other_frames": 0}
    opened = 0
    started = time.monotonic()
    up_at: float | None = None

    def out(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def drop(fd: int, lost: bool) -> None:
        sock = socks.pop(fd)
        was = state.pop(fd)
        partial.pop(fd, None)
        try:
            ep.unregister(fd)
        except OSError:
            pass
        sock.close()
        if was == 2:
            counts["up"] -= 1
            if lost:
                counts["lost"] += 1
        else:
            counts["failed"] += 1

    def open_more() -> None:
        nonlocal opened
        while opened < conns and len(socks) - counts["up"] < window:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT: the port at connect()
            sock.bind((addresses[opened % len(addresses)], 0))
            opened += 1
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                counts["failed"] += 1
                continue
            fd = sock.fileno()
            socks[fd] = sock
            state[fd] = 0
            ep.register(fd, select.EPOLLOUT)

    def frames(fd: int, data: bytes) -> bool:
        buf = partial.pop(fd, b"") + data
        pos = 0
        end = len(buf)
        sock = socks[fd]
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if second == 126:
                if end - pos < 4:
                    break
                second = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif second == 127:
                if end - pos < 10:
                    break
                second = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if end - pos < head + second:
                break
            payload = buf[pos + head:pos + head + second]
            pos += head + second
            opcode = first & 0x0F
            if opcode == 9:
                counts["pings"] += 1
                sock.send(_pong(payload))  # a few bytes: the socket buffer has room
                counts["pongs"] += 1
            elif opcode == 8:
                return False  # the server closes: lost
            else:
                counts["other_frames"] += 1
        if pos < end:
            partial[fd] = buf[pos:]
        return True

    open_more()
    quit_at: float | None = None
    while True:
        now = time.monotonic()
        if now > deadline or (quit_at is not None and now > quit_at):
            break
        if up_at is None and counts["up"] + counts["failed"] >= conns:
            up_at = now
            out({"event": "up", "up": counts["up"], "failed": counts["failed"], "seconds": round(now - started, 2)})
        for fd, ev in ep.poll(0.5, 4096):
            if fd == stdin:
                line = sys.stdin.readline()
                if not line or line.strip() == "quit":
                    quit_at = time.monotonic()
                    break
                out({"event": "status", **counts, "open": len(socks)})
                continue
            st = state.get(fd)
            if st is None:
                continue
            sock = socks[fd]
            if st == 0:
                if ev & (select.EPOLLERR | select.EPOLLHUP) or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    drop(fd, False)
                    continue
                sock.send(request)
                state[fd] = 1
                ep.modify(fd, select.EPOLLIN)
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                drop(fd, True)
                continue
            if st == 1:
                buf = partial.pop(fd, b"") + data
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    partial[fd] = buf
                    continue
                if not buf.startswith(b"HTTP/1.1 101"):
                    drop(fd, False)
                    continue
                state[fd] = 2
                counts["up"] += 1
                rest = buf[head_end + 4:]
                if rest and not frames(fd, rest):
                    drop(fd, True)
            elif not frames(fd, data):
                drop(fd, True)
        open_more()
    out({"event": "done", **counts, "open": len(socks)})
    for sock in socks.values():
        sock.close()
    return 0


# The driver.


class Proc:
    """A child process in its own group, stopped on exit."""

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        self.popen = subprocess.Popen(args, start_new_session=True, **kwargs)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, grace: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers, with ``--workers``)."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += tree(int(child))
    return found


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def rss_kib(pid: int) -> int:
    """VmRSS of the server's process tree."""
    return sum(_status_kib(p, "VmRSS") for p in tree(pid))


def pss_kib(pid: int) -> int:
    """PSS of the server's process tree: shared pages counted once over the processes sharing them."""
    total = 0
    for p in tree(pid):
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def cpu_s(pid: int) -> float:
    """utime + stime of the server's process tree (the dead ones' are in cutime and cstime)."""
    total = 0.0
    for p in tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in tree(pid))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, log: Path, cpu: str, workers: int) -> Proc:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = ["taskset", "-c", cpu, TWISTD, "-n", "--pidfile=", "crow", "--routes", "examples.echo",
           "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=4096"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    server = Proc(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(f"the server exited: see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            time.sleep(1.0 + workers)  # settle: imports done, first allocations made
            return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError("the server did not start within 30 s")


def echo(wsload: str, port: int, cpu: str, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    before = cpu_s(server_pid)
    cmd = ["taskset", "-c", cpu, wsload, "throughput", "-p", str(port), "-u", args.path, "-c", str(args.echo_conns),
           "-k", "1", "-s", "64", "-d", str(args.echo_duration), "-T", "30"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=args.echo_duration + 120)
    used = cpu_s(server_pid) - before
    result: dict[str, Any] = {}
    for line in run.stdout.splitlines():
        if line.startswith("JSON "):
            result = json.loads(line[5:])
    if not result:
        raise RuntimeError(f"wsload gave no result: {run.stdout} {run.stderr}")
    msgs = result["msgs"] or 1
    return {"msgs_per_s": result["msgs_per_s"], "errors": result["errors"], "established": result["established"],
            "wsload_cpu_s": result["cpu_s"], "wall_s": result["wall_s"], "server_cpu_s": round(used, 2),
            "server_us_per_msg": round(used / msgs * 1e6, 2)}


def _client_setup(cpu: int) -> None:
    # The idle clients share wsload's CPU: niced, they answer pings in the
    # gaps and never hold the echo workload's generator back.
    os.sched_setaffinity(0, {cpu})
    os.nice(19)


def build_wsload() -> str:
    binary = Path("/tmp/wsload.idle100k")
    if not binary.exists():
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(WSLOAD_SRC)], check=True, timeout=120)
    return str(binary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=100000)
    parser.add_argument("--hold", type=float, default=50.0,
                        help="seconds to hold them once all are up (default 50: every connection pinged twice)")
    parser.add_argument("--echo-conns", type=int, default=1000)
    parser.add_argument("--echo-duration", type=float, default=10.0)
    parser.add_argument("--path", default="/echo")
    parser.add_argument("--window", type=int, default=2000, help="handshakes in flight")
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--workers", type=int, default=0,
                        help="server processes (default: 1 if `ulimit -n` can be raised enough, else as many as needed)")
    parser.add_argument("--json", type=Path, help="append the JSON line to this file")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--addresses", default="", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.conns + 4096
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, 1048576),) * 2)  # root with CAP_SYS_RESOURCE
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # up to the hard limit only
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if args.client:
        return client(args.port, args.conns, args.addresses.split(","), args.path, args.window, args.deadline)

    # Without CAP_SYS_RESOURCE the hard limit stands (20,000 on the machine of the
    # figures): the connections are spread over worker processes (SO_REUSEPORT,
    # the kernel hashing each to one) and client processes, each within it.
    per_process = limit - 2500  # room for the echo connections and the kernel's uneven spread
    workers = args.workers or max(1, -(-(args.conns + 3000) // per_process))
    clients = max(1, -(-args.conns // (limit - 100)))
    wsload = build_wsload()
    n_addr = -(-args.conns // PER_ADDRESS)
    addresses = [f"127.0.0.{2 + i}" for i in range(n_addr)]
    logs = Path("/tmp/idle100k-logs")
    logs.mkdir(exist_ok=True)
    fig: dict[str, Any] = {"conns": args.conns, "addresses": addresses, "hold_s": args.hold, "nofile": limit,
                           "workers": workers, "client_processes": clients,
                           "echo": f"wsload throughput -c {args.echo_conns} -k 1 -s 64 -d {args.echo_duration}"}
    procs: list[Proc] = []
    budget = time.monotonic() + 600 + args.hold + 3 * args.echo_duration
    try:
        def alone(name: str) -> dict[str, Any]:
            # The workload against a fresh server of the same shape, without the idle ones.
            port = free_port()
            fresh = start_server(port, logs / f"server-{name}.log", args.server_cpu, workers)
            procs.append(fresh)
            try:
                return echo(wsload, port, args.client_cpu, fresh.pid, args)
            finally:
                fresh.stop()

        # Alone before and after: the machine's drift shows between the two.
        before = alone("fresh-before")
        port = free_port()
        server = start_server(port, logs / "server-idle.log", args.server_cpu, workers)
        procs.append(server)
        fig["rss_before_kib"] = rss_kib(server.pid)
        fig["pss_before_kib"] = pss_kib(server.pid)
        cpu0 = cpu_s(server.pid)
        share = [args.conns // clients + (i < args.conns % clients) for i in range(clients)]
        idles = []
        for i, count in enumerate(share):
            mine = addresses[i % len(addresses):] + addresses[:i % len(addresses)]
            idle = Proc([sys.executable, __file__, "--client", "--port", str(port), "--conns", str(count),
                         "--addresses", ",".join(mine), "--path", args.path,
                         "--window", str(max(1, args.window // clients)), "--deadline", str(budget)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                        preexec_fn=lambda: _client_setup(int(args.client_cpu)))
            procs.append(idle)
            idles.append(idle)

        def read(idle: Proc) -> dict[str, Any]:
            assert idle.popen.stdout is not None
            return dict(json.loads(idle.popen.stdout.readline() or "{}"))  # the client's deadline bounds this

        def ask(command: str) -> dict[str, Any]:
            for idle in idles:
                assert idle.popen.stdin is not None
                idle.popen.stdin.write(command + "\n")
                idle.popen.stdin.flush()
            total: dict[str, Any] = {}
            for idle in idles:
                for key, value in read(idle).items():
                    total[key] = total.get(key, 0) + value if isinstance(value, (int, float)) else value
            return total

        t0 = time.monotonic()
        ups = [read(idle) for idle in idles]
        if any(up.get("event") != "up" for up in ups):
            raise RuntimeError(f"an idle client failed: {ups}")
        fig["up"] = sum(up["up"] for up in ups)
        fig["failed"] = sum(up["failed"] for up in ups)
        fig["up_seconds"] = round(time.monotonic() - t0, 1)
        fig["connect_cpu_s"] = round(cpu_s(server.pid) - cpu0, 2)
        fig["rss_up_kib"] = rss_kib(server.pid)
        print(f"idle100k: {fig['up']} up in {fig['up_seconds']} s, RSS {fig['rss_up_kib'] / 1024:.1f} MiB; "
              f"holding {args.hold} s", file=sys.stderr)
        cpu1 = cpu_s(server.pid)
        time.sleep(args.hold)
        fig["hold_cpu_s"] = round(cpu_s(server.pid) - cpu1, 2)
        fig["hold_cpu_pct"] = round(100 * fig["hold_cpu_s"] / args.hold, 1)
        fig["rss_held_kib"] = rss_kib(server.pid)
        fig["pss_held_kib"] = pss_kib(server.pid)
        fig["kib_per_conn"] = round((fig["rss_held_kib"] - fig["rss_before_kib"]) / max(fig["up"], 1), 2)
        fig["server_fds_held"] = open_fds(server.pid)
        status = ask("status")
        fig["pings_answered"] = status["pongs"]
        print(f"idle100k: held, RSS {fig['rss_held_kib'] / 1024:.1f} MiB, {status}; echo beside them",
              file=sys.stderr)
        fig["echo_with"] = echo(wsload, port, args.client_cpu, server.pid, args)
        fig["rss_after_echo_kib"] = rss_kib(server.pid)
        status = ask("status")
        fig["still_open"] = status["up"]
        fig["pings_answered"] = status["pongs"]
        done = ask("quit")
        fig["lost"] = done.get("lost", status["lost"])
        for idle in idles:
            idle.stop()
        fig["server_exit"] = server.stop(30)
        for log_line in (logs / "server-idle.log").read_text().splitlines():
            if "Traceback" in log_line or "[crowtwist#error]" in log_line:
                fig.setdefault("server_errors", []).append(log_line)

        after = alone("fresh-after")
        fig["echo_alone_runs"] = [before, after]
        fig["echo_without"] = {
            key: round((before[key] + after[key]) / 2, 2) for key in ("msgs_per_s", "server_us_per_msg")
        } | {"errors": before["errors"] + after["errors"]}
    finally:
        for proc in reversed(procs):
            proc.stop()

    fig["echo_ratio"] = round(fig["echo_with"]["msgs_per_s"] / max(fig["echo_without"]["msgs_per_s"], 1), 3)
    fig["rss_held_mib"] = round(fig["rss_held_kib"] / 1024, 1)
    ok = fig["up"] == args.conns and fig["lost"] == 0 and fig["rss_held_mib"] < 700 and fig["echo_ratio"] >= 0.9
    fig["pass"] = ok
    ew, eo = fig["echo_with"], fig["echo_without"]
    print(f"""
| figure | value |
|---|---|
| server processes (`ulimit -n` {limit:,}) | {workers} (client processes: {clients}) |
| idle connections up | {fig['up']:,} of {args.conns:,} in {fig['up_seconds']} s, from {len(addresses)} addresses \
({addresses[0]}..{addresses[-1]}); server CPU {fig['connect_cpu_s']} s |
| server RSS | {fig['rss_before_kib'] / 1024:.1f} MiB before, {fig['rss_up_kib'] / 1024:.1f} MiB all up, \
{fig['rss_held_mib']} MiB after {args.hold:g} s held (target < 700); PSS {fig['pss_before_kib'] / 1024:.1f} \
→ {fig['pss_held_kib'] / 1024:.1f} MiB |
| RSS per idle connection | {fig['kib_per_conn']} KiB |
| server CPU while idle (pings every 20 s) | {fig['hold_cpu_s']} s over {args.hold:g} s: {fig['hold_cpu_pct']} % of one core; \
{fig['pings_answered']:,} pings answered |
| echo beside them ({fig['echo']}) | {ew['msgs_per_s']:,.0f} msg/s, server {ew['server_us_per_msg']} µs/msg, \
errors {ew['errors']} |
| echo alone (fresh server, mean of before and after) | {eo['msgs_per_s']:,.0f} msg/s \
({fig['echo_alone_runs'][0]['msgs_per_s']:,.0f} and {fig['echo_alone_runs'][1]['msgs_per_s']:,.0f}), \
server {eo['server_us_per_msg']} µs/msg, errors {eo['errors']} |
| ratio with / without | {fig['echo_ratio']} (target >= 0.9) |
| idle connections lost | {fig['lost']} (open at the end: {fig['still_open']:,}; server fds {fig['server_fds_held']:,}) |
| RSS after the echo run | {fig['rss_after_echo_kib'] / 1024:.1f} MiB |
""")
    line = json.dumps(fig)
    print("JSON " + line)
    if args.json:
        with args.json.open("a") as f:
            f.write(line + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
