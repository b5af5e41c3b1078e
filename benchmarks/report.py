"""Markdown table from the JSON lines of ../shared/bench/compare (benchmarks/compare.sh writes them).

For each workload and server: the median figure over the rounds, its ratio to the baseline
(aiohttp, or aiohttp-tls in the TLS pass), each round, the server's own CPU per unit of work
(µs per message, ms per MB for 64 KiB messages, µs per handshake) with its ratio, and wsload's
CPU over the wall time of the measured window. Where wsload used more than 0.8 of it, the row
says "generator-bound": the throughput ratio is then a floor, and the server CPU column is the
figure that shows who is faster.

    python benchmarks/report.py                       # benchmarks/results/compare.jsonl and compare-tls.jsonl
    python benchmarks/report.py run1.jsonl run2.jsonl --baseline aiohttp,aiohttp-tls

Reads records of the shared wsload too (no server CPU there: those cells say n/a).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_FILES = [RESULTS / "compare.jsonl", RESULTS / "compare-tls.jsonl"]
GENERATOR_BOUND = 0.8  # wsload's CPU / wall of the window above which a throughput ratio is a floor

Record = dict[str, Any]


def lookup(record: Record, key: str) -> Any:
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True)
class Figure:
    """One column of the table: where it is in a record, how it reads, which way is better."""

    key: str
    label: str
    higher_is_better: bool
    fmt: str

    def value(self, record: Record) -> float | None:
        value = lookup(record, self.key)
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def heading(self) -> str:
        return f"{self.label} {'↑' if self.higher_is_better else '↓'}"


MSGS = Figure("result.msgs_per_s", "msgs/s", True, "{:,.0f}")
MBS = Figure("result.mb_per_s", "MB/s", True, "{:,.1f}")
P50 = Figure("result.lat_us.p50", "p50 µs", False, "{:,.1f}")
P99 = Figure("result.lat_us.p99", "p99 µs", False, "{:,.1f}")
HANDSHAKES = Figure("result.handshakes_per_s", "handshakes/s", True, "{:,.0f}")
RSS = Figure("rss_kib_per_conn", "KiB/conn", False, "{:,.1f}")
CPU_MSG = Figure("result.server_us_per_msg", "server µs/msg", False, "{:,.2f}")
CPU_MB = Figure("result.server_ms_per_mb", "server ms/MB", False, "{:,.2f}")
CPU_HANDSHAKE = Figure("result.server_us_per_handshake", "server µs/handshake", False, "{:,.1f}")

LARGE = 4096  # from this message size on, a throughput row is about bytes, not messages


def figures_for(records: list[Record]) -> tuple[list[Figure], Figure | None]:
    """The workload's figures and its server-CPU figure, from its mode and message size."""
    first = next((r for r in records if isinstance(r.get("result"), dict)), None)
    if first is None:
        return [], None
    mode = lookup(first, "result.mode")
    size = lookup(first, "result.size") or 0
    if mode == "throughput":
        return ([MBS], CPU_MB) if size >= LARGE else ([MSGS], CPU_MSG)
    if mode == "latency":
        return [P50, P99], CPU_MSG
    if mode == "connrate":
        return [HANDSHAKES], CPU_HANDSHAKE
    return [RSS], None


def generator_load(record: Record) -> float | None:
    """wsload's CPU / wall over the measured window (or over the whole run for the shared wsload)."""
    cpu, wall = lookup(record, "result.cpu_window_s"), lookup(record, "result.window_s")
    if not isinstance(cpu, (int, float)) or not wall:
        cpu, wall = lookup(record, "result.cpu_s"), lookup(record, "result.wall_s")
    if isinstance(cpu, (int, float)) and isinstance(wall, (int, float)) and wall > 0:
        return float(cpu) / float(wall)
    return None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(figure: Figure, value: float | None, failed: bool = False) -> str:
    if value is not None:
        return figure.fmt.format(value)
    return "failed" if failed else "n/a"


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "n/a"


def load_records(paths: list[Path]) -> list[Record]:
    """Every record, in order; a (workload, server, round) seen twice keeps the later run's record."""
    by_key: dict[tuple[str, str, int], Record] = {}
    duplicates = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            key = (record["workload"], record["server"], int(record.get("round", 1)))
            duplicates += key in by_key
            by_key.pop(key, None)  # re-insert: the order follows the latest run
            by_key[key] = record
    if duplicates:
        print(f"report: {duplicates} record(s) repeated an earlier (workload, server, round); "
              f"the later ones are used", file=sys.stderr)
    return list(by_key.values())


def pick_baseline(servers: list[str], candidates: list[str]) -> str:
    return next((c for c in candidates if c in servers), servers[0])


def table(records: list[Record], candidates: list[str]) -> str:
    workloads: dict[str, list[Record]] = {}
    for record in records:
        workloads.setdefault(record["workload"], []).append(record)
    rounds = len({int(r.get("round", 1)) for r in records})
    lines = [
        f"Median of {rounds} round(s); ratio = server / baseline (↑ higher is better, ↓ lower is better); "
        f"server CPU: utime+stime of the server's processes over the measured window, from /proc; "
        f"wsload CPU/wall over the same window, \"generator-bound\" above {GENERATOR_BOUND:g}.",
        "",
        "| workload | server | figure | median | ratio | each round | server CPU | CPU ratio | each round (CPU) "
        "| wsload CPU/wall | errors |",
        "|---|---|---|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    tls: dict[str, str] = {}
    for name, runs in workloads.items():
        servers = list(dict.fromkeys(r["server"] for r in runs))
        baseline = pick_baseline(servers, candidates)
        servers.remove(baseline)
        servers.insert(0, baseline)
        per_server = {s: sorted((r for r in runs if r["server"] == s), key=lambda r: int(r.get("round", 1)))
                      for s in servers}
        shown, cpu = figures_for(runs)

        def med(figure: Figure, server: str) -> float | None:
            return median([v for v in map(figure.value, per_server[server]) if v is not None])

        for server in servers:
            server_runs = per_server[server]
            for record in server_runs:
                if lookup(record, "result.tls"):
                    tls[server] = str(lookup(record, "result.tls"))
            errors = sum(int(lookup(r, "result.errors") or 0) + bool(r.get("error")) for r in server_runs)
            load = median([v for v in map(generator_load, server_runs) if v is not None])
            load_cell = "n/a" if load is None else f"{load:.2f}" + (" generator-bound" if load > GENERATOR_BOUND else "")
            cpu_cells = ["", "", ""]
            if cpu is not None:
                cpu_cells = [fmt(cpu, med(cpu, server)), ratio(med(cpu, server), med(cpu, baseline)),
                             " / ".join(fmt(cpu, cpu.value(r), bool(r.get("error"))) for r in server_runs)]
                cpu_cells[0] = f"{cpu_cells[0]} {cpu.label.split(' ', 1)[1]}" if cpu_cells[0] != "n/a" else "n/a"
            for i, figure in enumerate(shown):
                each = " / ".join(fmt(figure, figure.value(r), bool(r.get("error"))) for r in server_runs)
                row = [name, server, figure.heading, fmt(figure, med(figure, server)),
                       ratio(med(figure, server), med(figure, baseline)), each]
                # the CPU and generator columns once per server, on its first figure's row
                row += cpu_cells + [load_cell, str(errors)] if i == 0 else ["", "", "", "", ""]
                lines.append("| " + " | ".join(row) + " |")
    if tls:
        lines += ["", "TLS as negotiated with wsload: "
                  + "; ".join(f"`{server}` {desc}" for server, desc in tls.items()) + "."]
    commands: dict[str, str] = {}
    for record in records:
        # the port changes with every run: leave it out
        commands.setdefault(record["workload"], re.sub(r"-p \d+ ", "", str(record.get("wsload", ""))))
    lines += ["", "wsload runs: " + "; ".join(f"`{w}`: `wsload {c}`" for w, c in commands.items()) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="compare's JSON lines (default: %(default)s)",
                        default=DEFAULT_FILES)
    parser.add_argument("--baseline", default="aiohttp,aiohttp-tls",
                        help="comma-separated; per workload, the first of these that ran is the baseline")
    args = parser.parse_args(argv)
    records = load_records(args.files)
    if not records:
        print(f"report: no records in {', '.join(map(str, args.files))}", file=sys.stderr)
        return 1
    out(table(records, [c.strip() for c in args.baseline.split(",") if c.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
