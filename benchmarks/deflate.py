"""Echo throughput with permessage-deflate negotiated: crowtwist next to aiohttp.

wsload offers no extensions, so this uses the websockets client (which offers
permessage-deflate by default) from Python: the client's own zlib and framing
are in every figure, so read the ratio, not the absolutes. Each server is
started alone, pinned to CPU 0 (the client to CPU 1), as ../shared/bench/compare does.

    /tmp/wsbench/bin/python benchmarks/deflate.py            # after benchmarks/compare.sh set up /tmp/wsbench

Prints a Markdown table: messages/s for 1 KiB and 64 KiB JSON-like text, 8 connections x 4 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "bench" / "peers"
sys.path.insert(0, str(ROOT))

from stress._harness import free_port, wait_tcp  # after the project root is on the path


def servers(python: str) -> dict[str, str]:
    return {
        "crowtwist": "PYTHONPATH=. .venv/bin/twistd -n --pidfile= crow --routes examples.echo"
        " --listen tcp:{port}:interface=127.0.0.1",
        "aiohttp": f"{python} {PEERS}/aiohttp_echo.py --port {{port}}",
    }


def payload(size: int) -> str:
    record = {"id": 12345, "user": "crow", "tags": ["alpha", "beta"], "text": "the quick brown fox " * 2}
    text = ""
    i = 0
    while len(text) < size:
        record["id"] = i
        text += json.dumps(record)
        i += 1
    return text[:size]


async def run_load(port: int, size: int, conns: int, inflight: int, seconds: float) -> tuple[float, str]:
    message = payload(size)
    done = 0
    stop = time.monotonic() + seconds
    extension = ""

    async def one() -> None:
        nonlocal done, extension
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo", max_size=None) as ws:
            extension = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            for _ in range(inflight):
                await ws.send(message)
            while time.monotonic() < stop:
                assert await ws.recv() == message
                done += 1
                await ws.send(message)
            for _ in range(inflight):
                await ws.recv()

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(conns))), seconds + 30)
    return done / (time.monotonic() - started), extension


def measure(name: str, command: str, size: int, args: argparse.Namespace) -> tuple[float, str]:
    port = free_port()
    process = subprocess.Popen(
        ["taskset", "-c", "0", "/bin/sh", "-c", command.format(port=port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_tcp(port, 20)
        return asyncio.run(run_load(port, size, args.conns, args.inflight, args.duration))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--inflight", type=int, default=4)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    table = servers(sys.executable)
    results: dict[tuple[str, int], list[float]] = {}
    extensions: dict[str, str] = {}
    for round_ in range(args.rounds):
        for size in (1024, 65536):
            names = list(table)
            names = names[round_ % len(names):] + names[: round_ % len(names)]
            for name in names:
                rate, extension = measure(name, table[name], size, args)
                extensions[name] = extension
                results.setdefault((name, size), []).append(rate)
                print(f"[round {round_ + 1}] {name} {size} B: {rate:,.0f} msgs/s ({extension})", file=sys.stderr)
    print("| server | negotiated | 1 KiB msgs/s | ratio | 64 KiB msgs/s | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for name in table:
        cells = [name, f"`{extensions[name]}`"]
        for size in (1024, 65536):
            median = statistics.median(results[(name, size)])
            base = statistics.median(results[("aiohttp", size)])
            cells += [f"{median:,.0f}", f"{median / base:.2f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
