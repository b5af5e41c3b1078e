"""Fan-out benchmark: one publisher, 1,000 and 10,000 WebSocket subscribers, 64 B messages.

Servers (each started here as child processes on 127.0.0.1 and random ports, stopped after each run):

  crowtwist-1p   twistd crow --routes benchmarks.fanout_routes: one process; each message the
                 publisher sends on /pub is ``sub.broadcast(data)`` to every /sub connection.
  crowtwist-2p   two such twistd processes with --broker redis://... to a redis-server started
                 here; subscribers split evenly between the two ports, the publisher on the first.
                 Each message is PUBLISHed once and each process delivers it to its own members
                 (the topology ``twistd crow --workers 2 --broker`` runs, on two ports).
  crowtwist-2w   ``twistd crow --workers 2 --broker redis://...``: one port, the kernel spreads
                 the subscribers over the two workers (SO_REUSEPORT), the publisher lands on one.
  websockets     benchmarks/peers/websockets_broadcast.py: websockets' asyncio server, each
                 /pub message is ``websockets.broadcast(subscribers, message)``.

The client is this script (asyncio, on uvloop when it is installed): a minimal RFC 6455 client
on raw sockets, subscribers only read unmasked server frames (and answer pings). The publisher
sends binary messages of exactly 64 B, each carrying a sequence number and its send time
(time.perf_counter_ns, the same clock the subscribers read on receipt, same process). It keeps
at most WINDOW messages in flight (--windows 1,4: one run each): the next message goes when one
in flight has reached every subscriber. The first --warmup messages are not counted.

Figures: deliveries/s = counted messages x subscribers received / (last receipt - first counted
send); p50/p99 delay = receipt - send over every counted delivery (a receipt's time is taken once
per read, so frames that arrive together share it); losses = deliveries expected - received;
CPU = utime+stime from /proc over the publishing phase (server processes, Redis, this client).

    .venv/bin/python benchmarks/fanout.py                      # full matrix, 3 rounds (~4.5 min)
    .venv/bin/python benchmarks/fanout.py --subscribers 1000 --servers crowtwist-1p --windows 1 --rounds 1
    .venv/bin/python benchmarks/fanout.py --report benchmarks/results/fanout.jsonl   # re-print a --json file
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
SERVERS = ("crowtwist-1p", "crowtwist-2p", "crowtwist-2w", "websockets")
CLK_TCK = os.sysconf("SC_CLK_TCK")
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
PAYLOAD = 64
perf_ns = time.perf_counter_ns
unpack_from = struct.unpack_from


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_tcp(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and of its live descendants (and the children it waited for)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


class Procs:
    """The child processes of one configuration: started, measured, stopped."""

    def __init__(self, logdir: Path, name: str) -> None:
        self.logdir = logdir
        self.name = name
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.redis_port = 0

    def start(self, role: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logdir / f"{self.name}-{role}.log", "ab")
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs.append((role, proc))
        return proc

    def cpu(self) -> dict[str, float]:
        return {role: cpu_seconds(p.pid) for role, p in self.procs}

    def check_alive(self) -> None:
        for role, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{self.name} {role} exited with {p.returncode} (see {self.logdir})")

    def stop(self) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def twistd_argv(port: int, broker: str | None) -> list[str]:
    twistd = str(Path(sys.executable).with_name("twistd"))
    argv = [twistd, "-n", "--pidfile=", "crow", "--routes", "benchmarks.fanout_routes",
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024"]
    if broker:
        argv += ["--broker", broker]
    return argv


def start_servers(name: str, procs: Procs) -> tuple[list[int], int]:
    """Start configuration ``name``; returns (subscriber ports, publisher port)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if name == "crowtwist-1p":
        port = free_port()
        procs.start("twistd", twistd_argv(port, None), env)
        ports = [port]
    elif name == "crowtwist-2p":
        rport = free_port()
        procs.start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--daemonize", "no"])
        wait_tcp(rport)
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            procs.start(f"twistd{i}", twistd_argv(port, f"redis://127.0.0.1:{rport}/0"), env)
    elif name == "crowtwist-2w":
        rport = free_port()
        procs.start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--daemonize", "no"])
        wait_tcp(rport)
        procs.redis_port = rport
        port = free_port()
        procs.start("twistd", twistd_argv(port, f"redis://127.0.0.1:{rport}/0") + ["--workers", "2"], env)
        ports = [port]
    elif name == "websockets":
        port = free_port()
        procs.start("websockets", [sys.executable, str(HERE / "peers" / "websockets_broadcast.py"),
                                   "--port", str(port)], env)
        ports = [port]
    else:
        raise ValueError(name)
    for port in ports:
        wait_tcp(port)
    return ports, ports[0]


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
        return json.loads(r.read())


def worker_stats(port: int, workers: int = 2) -> list[dict]:
    """Each worker's /stats behind one port: fresh connections until every pid has answered (bounded)."""
    seen: dict[int, dict] = {}
    for _ in range(200):
        s = stats(port)
        seen[s["pid"]] = s
        if len(seen) == workers:
            break
    return list(seen.values())


def numsub(port: int, channel: str) -> int:
    """Redis's PUBSUB NUMSUB for ``channel`` (plain RESP over a socket)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        parts = [b"PUBSUB", b"NUMSUB", channel.encode()]
        sock.sendall(b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        reply = sock.recv(4096)
    return int(reply.rsplit(b":", 1)[1].split(b"\r\n")[0])


# ----------------------------------------------------------------------------- client


class Run:
    """The counters of one run, shared by every connection (one event loop, no locks)."""

    def __init__(self, subscribers: int, messages: int, warmup: int, window: int) -> None:
        self.subscribers = subscribers
        self.total = warmup + messages
        self.warmup = warmup
        self.window = window
        self.counts = array("l", bytes(8 * self.total))  # receipts per message
        self.delays = array("q")  # ns, counted messages only
        self.received = 0
        self.completed = 0
        self.sent = 0
        self.send_ns = 0  # first counted send
        self.last_ns = 0  # last counted receipt
        self.out_of_order = 0
        self.closed = 0
        self.publisher: Pub | None = None
        self.done: asyncio.Future | None = None

    def complete(self) -> None:
        self.completed += 1
        if self.completed == self.total:
            if not self.done.done():
                self.done.set_result(None)
        else:
            self.publisher.pump()


def request(path: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN, masked), payload under 126 B."""
    mask = os.urandom(4)
    n = len(payload)
    key = int.from_bytes(mask * (n // 4 + 1), "little") & ((1 << (8 * n)) - 1)
    body = (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")
    return bytes((0x80 | opcode, 0x80 | n)) + mask + body


class Handshaking(asyncio.Protocol):
    def __init__(self, run: Run, path: str, port: int) -> None:
        self.run = run
        self.path = path
        self.port = port
        self.transport = None
        self.head = b""
        self.ready = asyncio.get_running_loop().create_future()
        self.upgraded = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(request(self.path, self.port))

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            return self.frames(data)
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        if not self.head.startswith(b"HTTP/1.1 101"):
            self.ready.set_exception(RuntimeError(self.head[:80].decode(errors="replace")))
            return
        self.upgraded = True
        rest, self.head = self.head[end + 4:], b""
        self.ready.set_result(None)
        if rest:
            self.frames(rest)

    def connection_lost(self, exc) -> None:
        self.run.closed += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.path}: closed during the handshake"))

    def frames(self, data: bytes) -> None:
        pass


class Sub(Handshaking):
    """A subscriber: reads unmasked server frames, answers pings, records each message."""

    def __init__(self, run: Run, path: str, port: int) -> None:
        super().__init__(run, path, port)
        self.buf = b""
        self.next = 0

    def frames(self, data: bytes) -> None:
        now = perf_ns()
        run = self.run
        counts = run.counts
        if len(data) == PAYLOAD + 2 and not self.buf and data[0] == 0x82:  # the usual read: one frame
            seq, sent = unpack_from("<QQ", data, 2)
            if seq != self.next:
                run.out_of_order += 1
            self.next = seq + 1
            if seq >= run.warmup:
                run.delays.append(now - sent)
                run.last_ns = now
            run.received += 1
            c = counts[seq] + 1
            counts[seq] = c
            if c == run.subscribers:
                run.complete()
            return
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, n = buf[pos], buf[pos + 1]
            h = 2
            if n == 126:
                if end - pos < 4:
                    break
                n, h = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if end - pos < 10:
                    break
                n, h = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if end - pos < h + n:
                break
            op = b0 & 0x0F
            if op == 2 or op == 1:
                seq, sent = unpack_from("<QQ", buf, pos + h)
                if seq != self.next:
                    run.out_of_order += 1
                self.next = seq + 1
                if seq >= run.warmup:
                    run.delays.append(now - sent)
                    run.last_ns = now
                run.received += 1
                c = counts[seq] + 1
                counts[seq] = c
                if c == run.subscribers:
                    run.complete()
            elif op == 9:
                self.transport.write(masked(10, buf[pos + h:pos + h + n]))
            elif op == 8:
                self.transport.abort()
                return
            pos += h + n
        self.buf = buf[pos:] if pos < end else b""


class Pub(Handshaking):
    """The publisher: sends 64 B binary messages, at most run.window in flight."""

    pad = os.urandom(PAYLOAD - 16)

    def pump(self) -> None:
        run = self.run
        write = self.transport.write
        while run.sent < run.total and run.sent - run.completed < run.window:
            seq = run.sent
            run.sent += 1
            now = perf_ns()
            if seq == run.warmup:
                run.send_ns = now
            write(masked(2, struct.pack("<QQ", seq, now) + self.pad))

    def frames(self, data: bytes) -> None:  # answer pings; nothing else comes here
        if len(data) >= 2 and data[0] & 0x0F == 9:
            self.transport.write(masked(10, data[2:2 + data[1]]))


async def connect(loop, cls, run: Run, path: str, port: int, source: str):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((source, 0))
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    _, proto = await loop.create_connection(lambda: cls(run, path, port), sock=sock)
    await proto.ready
    return proto


async def client(name: str, ports: list[int], pub_port: int, procs: Procs, args, subscribers: int,
                 messages: int) -> dict:
    loop = asyncio.get_running_loop()
    run = Run(subscribers, messages, args.warmup, args.window)
    run.done = loop.create_future()
    limit = asyncio.Semaphore(args.connect_concurrency)
    sources = [f"127.0.0.{2 + i}" for i in range(args.sources)]

    async def one(i: int):
        async with limit:
            return await connect(loop, Sub, run, "/sub", ports[i % len(ports)], sources[i % len(sources)])

    t0 = time.monotonic()
    subs = await asyncio.gather(*(one(i) for i in range(subscribers)))
    pub = await connect(loop, Pub, run, "/pub", pub_port, sources[0])
    run.publisher = pub
    connect_s = time.monotonic() - t0
    # Every subscriber is registered with its server (and, with Redis, subscribed) before the first send.
    deadline = time.monotonic() + 20
    while True:
        if name == "crowtwist-2w":
            # Behind one port: every subscriber has its 101, so it is in its worker's hub; both
            # workers must have Redis's confirmation of the route's channel.
            seen = await loop.run_in_executor(None, worker_stats, ports[0])
            ready = len(seen) == 2 and numsub(procs.redis_port, "crowtwist:0:route:/sub") == 2 and \
                sum(s["subscribers"] for s in seen) >= subscribers
        else:
            seen = [await loop.run_in_executor(None, stats, p) for p in ports]
            ready = sum(s["subscribers"] for s in seen) >= subscribers
        if ready or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    procs.check_alive()

    cpu0, client0, wall0 = procs.cpu(), time.process_time(), time.monotonic()
    pub.pump()
    last = -1
    while not run.done.done():
        try:
            await asyncio.wait_for(asyncio.shield(run.done), args.stall)
        except asyncio.TimeoutError:
            if run.received == last:  # nothing arrived for --stall seconds: losses
                break
            last = run.received
    cpu1, client1, wall1 = procs.cpu(), time.process_time(), time.monotonic()
    server_stats = worker_stats(ports[0]) if name == "crowtwist-2w" else [stats(p) for p in ports]

    for s in subs:
        s.transport.abort()
    pub.transport.abort()
    await asyncio.sleep(0.2)

    wall = wall1 - wall0
    delays = sorted(run.delays)
    expected = messages * subscribers
    got = len(delays)
    span_s = (run.last_ns - run.send_ns) / 1e9 if got else float("nan")
    cpu = {role: cpu1[role] - cpu0[role] for role in cpu1}
    server_cpu = sum(v for k, v in cpu.items() if k != "redis")
    return {
        "server": name, "subscribers": subscribers, "messages": messages, "window": args.window,
        "deliveries_per_s": got / span_s if got else 0.0,
        "p50_us": delays[got // 2] / 1e3 if got else None,
        "p99_us": delays[min(got - 1, int(got * 0.99))] / 1e3 if got else None,
        "max_us": delays[-1] / 1e3 if got else None,
        "losses": expected - got,
        "out_of_order": run.out_of_order,
        "skipped": sum(s["skipped"] or 0 for s in server_stats) if server_stats[0]["skipped"] is not None else None,
        "server_stats": server_stats,
        "wall_s": wall, "span_s": span_s, "connect_s": connect_s,
        "cpu_s": cpu, "server_cpu_s": server_cpu, "redis_cpu_s": cpu.get("redis"),
        "client_cpu_s": client1 - client0,
        "received": run.received,  # warm-up included: what the CPU figures cover
        "loadavg_1m": float(open("/proc/loadavg").read().split()[0]),
    }


def one_run(name: str, subscribers: int, args, logdir: Path) -> dict:
    """One run of ``name`` with ``subscribers`` subscribers and ``args.window`` in flight."""
    messages = args.messages or max(50, args.deliveries // subscribers)
    procs = Procs(logdir, name)
    try:
        ports, pub_port = start_servers(name, procs)
        return asyncio.run(client(name, ports, pub_port, procs, args, subscribers, messages))
    finally:
        procs.stop()


# ----------------------------------------------------------------------------- report


def fmt_int(x) -> str:
    return f"{x:,.0f}" if x is not None else "n/a"


def fmt_us(x) -> str:
    if x is None:
        return "n/a"
    return f"{x / 1000:,.1f} ms" if x >= 10_000 else f"{x:,.0f} µs"


def cores(cpu: float, wall: float) -> str:
    return f"{cpu / wall:.2f}" if wall else "n/a"


def received(r: dict) -> int:
    """Deliveries the CPU figures cover (warm-up included)."""
    return r.get("received") or (r["messages"] + 10) * r["subscribers"] - r["losses"]


def report(results: list[dict], order: list[str]) -> str:
    lines = [
        "| subscribers, window | server | deliveries/s | ratio | p50 delay | p99 delay | losses | skipped "
        "| server CPU: cores, µs/delivery | Redis CPU (s) | client CPU: cores, µs/delivery | each round (deliveries/s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    groups = sorted({(r["subscribers"], r["window"]) for r in results})
    for subs, window in groups:
        med: dict[str, dict] = {}
        for name in order:
            rs = [r for r in results if r["server"] == name and r["subscribers"] == subs and r["window"] == window]
            if not rs:
                continue
            def m(key, rs=rs):
                vals = [r[key] for r in rs if r[key] is not None]
                return statistics.median(vals) if vals else None
            med[name] = {
                "dps": m("deliveries_per_s"), "p50": m("p50_us"), "p99": m("p99_us"),
                "losses": sum(r["losses"] for r in rs), "skipped": sum(r["skipped"] or 0 for r in rs)
                if any(r["skipped"] is not None for r in rs) else None,
                "srv": statistics.median(r["server_cpu_s"] / r["wall_s"] for r in rs),
                "redis": statistics.median(r["redis_cpu_s"] for r in rs) if rs[0]["redis_cpu_s"] is not None else None,
                "cli": statistics.median(r["client_cpu_s"] / r["wall_s"] for r in rs),
                "us": statistics.median(r["server_cpu_s"] * 1e6 / received(r) for r in rs),
                "cli_us": statistics.median(r["client_cpu_s"] * 1e6 / received(r) for r in rs),
                "rounds": ", ".join(fmt_int(r["deliveries_per_s"]) for r in rs),
            }
        # Ratio: the median over rounds of this server / websockets in the same round (runs
        # minutes apart on a shared machine move more than runs seconds apart).
        base = {r["round"]: r["deliveries_per_s"] for r in results
                if r["server"] == "websockets" and r["subscribers"] == subs and r["window"] == window}
        for name, v in med.items():
            ratios = [r["deliveries_per_s"] / base[r["round"]] for r in results
                      if r["server"] == name and r["subscribers"] == subs and r["window"] == window
                      and base.get(r["round"])]
            ratio = f"{statistics.median(ratios):.2f}x" if ratios else ""
            redis = f"{v['redis']:.2f}" if v["redis"] is not None else ""
            lines.append(
                f"| {subs:,}, {window} | {name} | {fmt_int(v['dps'])} | {ratio} | {fmt_us(v['p50'])} | {fmt_us(v['p99'])} "
                f"| {v['losses']} | {v['skipped'] if v['skipped'] is not None else 'n/a'} | {v['srv']:.2f}, {v['us']:.1f} "
                f"| {redis} "
                f"| {v['cli']:.2f}, {v['cli_us']:.1f} | {v['rounds']} |"
            )
    return "\n".join(lines)


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need) if hard == resource.RLIM_INFINITY else max(soft, hard)
    if need > want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (ValueError, OSError):
            sys.exit(f"fanout: needs {need} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the servers inherit it


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", default="1000,10000", help="comma-separated counts (default 1000,10000)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {', '.join(SERVERS)}")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the server order rotates each round (3)")
    parser.add_argument("--deliveries", type=int, default=500_000,
                        help="counted deliveries per run: messages = this / subscribers, at least 50 (500,000)")
    parser.add_argument("--messages", type=int, default=0, help="counted messages per run (overrides --deliveries)")
    parser.add_argument("--warmup", type=int, default=10, help="messages sent first and not counted (10)")
    parser.add_argument("--windows", default="1,4",
                        help="messages in flight at most, one table row each (1,4): 1 gives the delay of "
                             "one fan-out alone, 4 keeps the server busy while the client reads")
    parser.add_argument("--sources", type=int, default=4, help="loopback source addresses 127.0.0.2... (4)")
    parser.add_argument("--connect-concurrency", type=int, default=200, help="handshakes in progress at once (200)")
    parser.add_argument("--stall", type=float, default=5.0, help="end a run after this long without a delivery (5 s)")
    parser.add_argument("--json", type=Path, help="append one JSON line per run to this file")
    parser.add_argument("--logs", type=Path, help="servers' output folder (default: a temporary one)")
    parser.add_argument("--report", type=Path, metavar="JSONL",
                        help="print the table of a --json file's runs, and run nothing")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default=None,
                        help="the client's event loop (default: uvloop if installed)")
    args = parser.parse_args()

    if args.report:
        rows = [json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]
        print(report(rows, [s for s in SERVERS if any(r["server"] == s for r in rows)]))
        return
    subs_list = [int(x) for x in args.subscribers.split(",")]
    windows = [int(x) for x in args.windows.split(",")]
    order = [s for s in args.servers.split(",") if s]
    for s in order:
        if s not in SERVERS:
            parser.error(f"unknown server {s!r}")
    raise_nofile(max(subs_list) + 1000)
    if args.loop != "asyncio":
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            loop_name = f"uvloop {uvloop.__version__}"
        except ImportError:
            if args.loop == "uvloop":
                parser.error("uvloop is not installed")
            loop_name = "asyncio"
    else:
        loop_name = "asyncio"
    logdir = args.logs or Path(tempfile.mkdtemp(prefix="fanout-"))
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"fanout: client loop {loop_name}, logs in {logdir}", file=sys.stderr)

    results = []
    for rnd in range(args.rounds):
        rotated = order[rnd % len(order):] + order[:rnd % len(order)]
        for subs, window, name in [(s, w, n) for s in subs_list for w in windows for n in rotated]:
            args.window = window
            try:
                r = one_run(name, subs, args, logdir)
            except Exception as e:  # a failed run is reported, the matrix goes on
                print(f"fanout: round {rnd + 1} {name} {subs}: FAILED: {e!r}", file=sys.stderr)
                continue
            r["round"] = rnd + 1
            r["client_loop"] = loop_name
            results.append(r)
            print(f"fanout: round {rnd + 1} {name:13} {subs:6} window {window}: {r['deliveries_per_s']:>10,.0f} deliveries/s "
                  f"p50 {fmt_us(r['p50_us'])} p99 {fmt_us(r['p99_us'])} losses {r['losses']} "
                  f"skipped {r['skipped']} server CPU {r['server_cpu_s']:.2f} s client CPU "
                  f"{r['client_cpu_s']:.2f} s / {r['wall_s']:.2f} s (connect {r['connect_s']:.1f} s, load {r['loadavg_1m']})",
                  file=sys.stderr)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(r) + "\n")
            time.sleep(0.5)
    print(report(results, order))


if __name__ == "__main__":
    main()
