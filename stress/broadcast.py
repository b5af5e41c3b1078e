"""Fault: 1,000 connections receive broadcasts while 10 % of them stop reading.

The stuck readers shrink their receive buffer and stop reading; the server must not stall the
others or grow without bound: each stuck one is closed (1008) once it owes more than
--max-send-buffer, and every reader that reads gets every message, in order.

    .venv/bin/python stress/broadcast.py [--conns 1000] [--stuck 0.1] [--count 200] [--size 4096] [--rate 10]
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import urllib.request
from typing import Any

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from _harness import Server, raise_fd_limit  # noqa: E402

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


class Reader(Protocol):
    def __init__(self, stuck: bool) -> None:
        self.stuck = stuck
        self.buffer = b""
        self.head = False
        self.expected = 0
        self.out_of_order = 0
        self.close_code: int | None = None
        self.lost = False
        self.opened: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.stuck:
            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # type: ignore[union-attr]
        self.transport.write(  # type: ignore[union-attr]
            (f"GET /feed HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        )

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.head:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = True
            self.buffer = self.buffer[end + 4 :]
            self.opened.callback(None)
            if self.stuck:
                self.transport.pauseProducing()  # type: ignore[union-attr]
        view, offset = self.buffer, 0
        while len(view) - offset >= 2:
            opcode, length = view[offset] & 0x0F, view[offset + 1] & 0x7F
            start = offset + 2
            if length == 126:
                if len(view) - offset < 4:
                    break
                length = struct.unpack_from("!H", view, offset + 2)[0]
                start = offset + 4
            elif length == 127:
                if len(view) - offset < 10:
                    break
                length = struct.unpack_from("!Q", view, offset + 2)[0]
                start = offset + 10
            if len(view) < start + length:
                break
            if opcode == 0x1:
                if int(view[start : start + 8]) != self.expected:
                    self.out_of_order += 1
                self.expected = int(view[start : start + 8]) + 1
            elif opcode == 0x8 and length >= 2:
                self.close_code = struct.unpack_from("!H", view, start)[0]
            offset = start + length
        self.buffer = view[offset:]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
        return bytes(reply.read())


@inlineCallbacks
def run(args: argparse.Namespace, server: Server) -> Any:
    readers: list[Reader] = []
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port, timeout=30)
    stuck_every = max(1, round(1 / args.stuck)) if args.stuck else 0
    for i in range(args.conns):
        reader = Reader(stuck=bool(stuck_every) and i % stuck_every == 0)
        readers.append(reader)
        yield endpoint.connect(Factory.forProtocol(lambda r=reader: r))
        if i % 100 == 99:
            yield DeferredList([r.opened for r in readers])
    yield DeferredList([r.opened for r in readers])
    rss_before = server.rss()
    yield deferToThread(get, server.port, f"/start/{args.count}/{args.size}/{args.rate}")
    peak = rss_before
    deadline = reactor.seconds() + args.count / args.rate + 60  # type: ignore[attr-defined]
    while reactor.seconds() < deadline:  # type: ignore[attr-defined]
        yield deferLater(reactor, 1.0, lambda: None)
        peak = max(peak, server.rss())
        status = json.loads((yield deferToThread(get, server.port, "/status")))
        readers_done = all(r.expected >= args.count for r in readers if not r.stuck)
        if status["sent"] >= args.count and readers_done:
            break
    for reader in readers:
        if reader.stuck and not reader.lost:
            reader.transport.resumeProducing()  # type: ignore[union-attr]
    yield deferLater(reactor, 3.0, lambda: None)
    # Taken before the server stops, which ends every connection.
    snapshot = [(r.stuck, r.expected, r.out_of_order, r.lost, r.close_code) for r in readers]
    return snapshot, rss_before, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=1000)
    parser.add_argument("--stuck", type=float, default=0.1)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rate", type=int, default=10)
    parser.add_argument("--max-send-buffer", type=int, default=262144)
    args = parser.parse_args()
    raise_fd_limit()
    server = Server("stress.broadcast_app", "--max-send-buffer", str(args.max_send_buffer),
                    "--keepalive-interval", "off")
    outcome: dict[str, Any] = {}

    def done(result: Any) -> None:
        outcome["result"] = result
        reactor.stop()  # type: ignore[attr-defined]

    def failed(failure: Any) -> None:
        outcome["failure"] = failure
        reactor.stop()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: run(args, server).addCallbacks(done, failed))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    server.stop()
    if "failure" in outcome:
        outcome["failure"].raiseException()
    snapshot, rss_before, peak = outcome["result"]
    good = [r for r in snapshot if not r[0]]
    stuck = [r for r in snapshot if r[0]]
    complete = sum(1 for _, expected, disorder, lost, _ in good if expected == args.count and not disorder and not lost)
    print(f"{len(snapshot)} connections, {len(stuck)} stuck; {args.count} broadcasts of {args.size} B at {args.rate}/s")
    print(f"readers with every message in order, still connected: {complete} of {len(good)}")
    print(f"stuck readers closed by the server: {sum(1 for r in stuck if r[3])} of {len(stuck)}"
          f" (close codes read after resuming: {sorted(set(r[4] for r in stuck if r[4]))})")
    # Per stuck reader: Twisted's 64 KiB high-water mark, then max_send_buffer, then one more message.
    bound = len(stuck) * (65536 + args.max_send_buffer + args.size)
    print(f"server RSS: {rss_before / 2**20:.1f} MiB with all connected, peak {peak / 2**20:.1f} MiB during"
          f" the broadcast (+{(peak - rss_before) / 2**20:.1f} MiB; queued bytes for the stuck readers are"
          f" bounded by {bound / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
