#!/usr/bin/env bash
# Echo benchmark: crowtwist's echo route (served by `twistd crow`) next to plain autobahn
# (WebSocketServerFactory) and autobahn's WebSocketResource, in one run of ../shared/bench/compare.
#
#   benchmarks/echo.sh                          # 64 B throughput, 50 connections, 3 rounds
#   benchmarks/echo.sh --workloads tp-64B,lat-c1,lat-c50,conn-c8,idle-5000 --rounds 3
#
# Needs the project venv (.venv, from the README) and ../shared/bench; PYTHONPATH=. makes twistd
# serve this working tree rather than the copy pip installed. Writes the Markdown
# table to stdout and one JSON line per run to benchmarks/results/echo.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DIR:-../shared/bench}
mkdir -p benchmarks/results
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--workloads tp-64B --rounds 3)
exec .venv/bin/python "$bench/compare" \
    --only crowtwist,autobahn_factory,autobahn_resource \
    --path /echo \
    --json benchmarks/results/echo.jsonl \
    "${args[@]}" \
    'crowtwist=PYTHONPATH=. .venv/bin/twistd -n --pidfile= crow --routes examples.echo --listen tcp:{port}:interface=127.0.0.1'
