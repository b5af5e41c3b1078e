"""Fault: 200 slowloris clients (a request head trickled one byte a second) during normal traffic.

Reports the echo latency of a normal client without and with the slow ones, and when the server
cut each slow client off (its handshake deadline, 10 s by default).

    .venv/bin/python stress/slowloris.py [--clients 200] [--deadline 10]
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import subprocess
import threading
import time

from _harness import Server, raise_fd_limit
from idle import wsload


def latency(port: int) -> dict[str, float]:
    out = subprocess.run(
        [wsload(), "latency", "-p", str(port), "-u", "/echo", "-c", "1", "-d", "5", "-w", "1"],
        capture_output=True, text=True, timeout=120,
    ).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("JSON ")).split(" ", 1)[1])
    return {"p50": result["lat_us"]["p50"], "p99": result["lat_us"]["p99"], "msgs": result["msgs"]}


def slowloris(port: int, clients: int, limit: float, cut: list[float]) -> None:
    selector = selectors.DefaultSelector()
    started: dict[socket.socket, float] = {}
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        sock.send(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started[sock] = time.monotonic()
        selector.register(sock, selectors.EVENT_READ)
    header = b"X-Slow: " + b"a" * 1000
    position = 0
    deadline = time.monotonic() + limit
    while started and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                cut.append(time.monotonic() - started.pop(sock))
                selector.unregister(sock)
                sock.close()
        byte = header[position % len(header) : position % len(header) + 1]
        position += 1
        for sock in list(started):
            try:
                sock.send(byte)
            except OSError:
                cut.append(time.monotonic() - started.pop(sock))
                selector.unregister(sock)
                sock.close()
    for sock in started:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=10)
    args = parser.parse_args()
    raise_fd_limit()
    server = Server("examples.echo", "--handshake-timeout", str(args.deadline))
    baseline = latency(server.port)
    cut: list[float] = []
    attack = threading.Thread(target=slowloris, args=(server.port, args.clients, args.deadline * 3, cut))
    attack.start()
    time.sleep(1)
    during = latency(server.port)
    attack.join()
    server.stop()
    cut.sort()
    print(f"echo latency, 1 connection, alone: p50 {baseline['p50']:.0f} us, p99 {baseline['p99']:.0f} us")
    print(f"echo latency during {args.clients} slowloris clients: p50 {during['p50']:.0f} us, p99 {during['p99']:.0f} us")
    if cut:
        print(f"slow clients cut: {len(cut)} of {args.clients}, after {cut[0]:.1f} s (first), "
              f"{cut[len(cut) // 2]:.1f} s (median), {cut[-1]:.1f} s (last); deadline {args.deadline:.0f} s")
    else:
        print(f"slow clients cut: 0 of {args.clients}")


if __name__ == "__main__":
    main()
