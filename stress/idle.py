"""Soak: 10,000 idle WebSocket connections held for 60 s with keepalive on.

Reports server RSS per connection, server CPU while idle (keepalive pings every 20 s), and
whether every connection closed cleanly at the end. Uses ../shared/bench's wsload (idle mode).

    .venv/bin/python stress/idle.py [--conns 10000] [--hold 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
from pathlib import Path

from _harness import ROOT, Server, raise_fd_limit

WSLOAD_SRC = ROOT.parent / "shared" / "bench" / "wsload.c"


def wsload() -> str:
    binary = Path("/tmp/crowtwist-wsload")
    if not binary.exists():
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(WSLOAD_SRC)], check=True)
    return str(binary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=10000)
    parser.add_argument("--hold", type=float, default=60)
    args = parser.parse_args()
    raise_fd_limit()
    server = Server("examples.echo", "--keepalive-interval", "20", "--keepalive-timeout", "20")
    time.sleep(1)
    rss_before = server.rss()
    load = subprocess.Popen(
        [wsload(), "idle", "-p", str(server.port), "-u", "/echo", "-c", str(args.conns),
         "-H", str(args.hold), "-P", "-T", "30", "-B", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    figures: dict[str, float] = {}
    lines: list[str] = []

    def read() -> None:
        assert load.stdout is not None
        for line in load.stdout:
            lines.append(line)
            if line.startswith("ESTABLISHED"):
                figures["up_at"] = time.monotonic()
                figures["cpu_up"] = server.cpu()
                time.sleep(min(5.0, args.hold / 4))
                figures["rss_held"] = server.rss()

    reader = threading.Thread(target=read)
    reader.start()
    started = time.monotonic()
    while "up_at" not in figures and load.poll() is None:
        time.sleep(0.1)
    # CPU while idle: measured over the hold, pings included, until just before the closes.
    time.sleep(max(0.0, args.hold - 2))
    cpu_idle = server.cpu() - figures.get("cpu_up", 0.0)
    idle_for = time.monotonic() - figures.get("up_at", started)
    rss_peak = server.rss()
    load.wait(timeout=args.hold + 300)
    reader.join()
    result = json.loads(next(line for line in lines if line.startswith("JSON ")).split(" ", 1)[1])
    time.sleep(1)
    rss_after = server.rss()
    status = server.stop()
    per_conn = (figures.get("rss_held", rss_peak) - rss_before) / args.conns
    print(f"connections up: {result['established']} of {args.conns} in {result['setup_s']:.1f} s")
    print(f"server RSS: {rss_before / 2**20:.1f} MiB before, {figures.get('rss_held', 0) / 2**20:.1f} MiB held, "
          f"{rss_peak / 2**20:.1f} MiB at the end of the hold, {rss_after / 2**20:.1f} MiB after closing")
    print(f"RSS per idle connection: {per_conn / 1024:.1f} KiB")
    print(f"server CPU while idle: {cpu_idle:.2f} s over {idle_for:.0f} s ({100 * cpu_idle / idle_for:.1f} %),"
          f" keepalive pings every 20 s")
    print(f"clean closes: {result['clean_closes']} of {result['established']}; wsload errors: {result['errors']}"
          f"; pings answered: {result['pongs']} of {result['pings']}")
    print(f"server exit status after SIGTERM: {status}")


if __name__ == "__main__":
    main()
