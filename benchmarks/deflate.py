"""Echo throughput with permessage-deflate negotiated: crowtwist next to aiohttp.

wsload offers no extensions, so this uses the websockets client (which offers
permessage-deflate by default) from Python: the client's own zlib and framing
are in every figure, so read the ratio, not the absolutes. Each server is
started alone, pinned to CPU 0 (the client to CPU 1), as ../shared/bench/compare does.

    /tmp/wsbench/bin/python benchmarks/deflate.py            # after benchmarks/compare.sh set up /tmp/wsbench

Prints a Markdown table: messages/s for 1 KiB and 64 KiB JSON-like text, 8 connections x 4 in flight,
and beside each the server's own CPU per echoed message (utime + stime of the server's processes
from /proc/PID/stat over the run, divided by the messages): the robust figure when the client,
which compresses too, is the limit.  ``--baseline DIR`` adds another crowtwist tree (main, say)
served by the same twistd.
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


def twistd() -> Path:
    """This tree's venv's twistd, or else main's (a worktree has no venv of its own)."""
    for root in (ROOT, ROOT.parent / "main"):
        if (root / ".venv" / "bin" / "twistd").exists():
            return root / ".venv" / "bin" / "twistd"
    return Path("twistd")


def servers(python: str, baselines: list[str]) -> dict[str, tuple[str, Path]]:
    crow = (
        f"exec env PYTHONPATH=. {twistd()} -n --pidfile= crow --routes examples.echo"
        " --listen tcp:{port}:interface=127.0.0.1"
    )
    table = {"crowtwist": (crow, ROOT)}
    for directory in baselines:
        table[f"crowtwist ({Path(directory).name})"] = (crow, Path(directory))
    table["aiohttp"] = (f"exec {python} {PEERS}/aiohttp_echo.py --port {{port}}", ROOT)
    return table


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants (threads included), in seconds."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(cpu_seconds(int(child)) for child in f.read().split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def payload(size: int) -> str:
    record = {"id": 12345, "user": "crow", "tags": ["alpha", "beta"], "text": "the quick brown fox " * 2}
    text = ""
    i = 0
    while len(text) < size:
        record["id"] = i
        text += json.dumps(record)
        i += 1
    return text[:size]


async def run_load(
    port: int, size: int, conns: int, inflight: int, seconds: float, compression: str | None = "deflate"
) -> tuple[float, str, int]:
    message = payload(size)
    done = 0
    stop = time.monotonic() + seconds
    extension = ""

    async def one() -> None:
        nonlocal done, extension
        async with websockets.connect(f"ws://127.0.0.1:{port}/echo", max_size=None, compression=compression) as ws:
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
    # (each echoed message: the `done` counted, plus the in-flight ones drained at the end)
    return done / (time.monotonic() - started), extension, done + conns * inflight


def measure(name: str, server: tuple[str, Path], size: int, args: argparse.Namespace) -> tuple[float, float, str]:
    """msgs/s, server CPU µs per message, the negotiated extension."""
    command, cwd = server
    port = free_port()
    process = subprocess.Popen(
        ["taskset", "-c", "0", "/bin/sh", "-c", command.format(port=port)],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_tcp(port, 20)
        before = cpu_seconds(process.pid)
        rate, extension, messages = asyncio.run(
            run_load(port, size, args.conns, args.inflight, args.duration, None if args.plain else "deflate")
        )
        used = cpu_seconds(process.pid) - before
        return rate, used / max(messages, 1) * 1e6, extension
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
    parser.add_argument("--baseline", action="append", default=[], help="another crowtwist tree to serve")
    parser.add_argument("--sizes", default="1024,65536")
    parser.add_argument("--plain", action="store_true", help="offer no compression: the same load uncompressed")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    table = servers(sys.executable, args.baseline)
    sizes = [int(size) for size in args.sizes.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    extensions: dict[str, str] = {}
    for round_ in range(args.rounds):
        for size in sizes:
            names = list(table)
            names = names[round_ % len(names):] + names[: round_ % len(names)]
            for name in names:
                rate, per_message, extension = measure(name, table[name], size, args)
                extensions[name] = extension
                results.setdefault((name, size), []).append(rate)
                cpu.setdefault((name, size), []).append(per_message)
                print(
                    f"[round {round_ + 1}] {name} {size} B: {rate:,.0f} msgs/s, {per_message:,.1f} µs/msg"
                    f" server CPU ({extension})",
                    file=sys.stderr,
                )
    head = ["server", "negotiated"]
    for size in sizes:
        label = f"{size // 1024} KiB" if size >= 1024 else f"{size} B"
        head += [f"{label} msgs/s", "ratio", "server µs/msg", "CPU ratio"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|" + "---:|" * (len(head) - 2))
    for name in table:
        cells = [name, f"`{extensions[name]}`"]
        for size in sizes:
            median = statistics.median(results[(name, size)])
            base = statistics.median(results[("aiohttp", size)])
            used = statistics.median(cpu[(name, size)])
            base_used = statistics.median(cpu[("aiohttp", size)])
            # CPU ratio as a speed ratio: aiohttp's CPU per message over this server's (higher is better)
            cells += [f"{median:,.0f}", f"{median / base:.2f}", f"{used:,.1f}", f"{base_used / used:.2f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
