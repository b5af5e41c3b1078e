#!/usr/bin/env bash
# The side-by-side comparison of issue #7, in one command: crowtwist's echo route served by
# `twistd crow`, next to every peer in ../shared/bench/peers (autobahn's factory and
# WebSocketResource, aiohttp, websockets, starlette on uvicorn), every workload, ratios to aiohttp.
#
#   benchmarks/compare.sh                                  # everything, 3 rounds (~20 min)
#   benchmarks/compare.sh --only crowtwist,aiohttp --workloads tp-64B,lat-c1 --rounds 1
#
# Set-up it does itself: the project venv (.venv, as in the README), the C helper built next to
# the sources (PYTHONPATH=. makes twistd serve this working tree, not the copy pip installed), and
# the peers' pinned packages in $WSBENCH_VENV (default /tmp/wsbench). Writes the Markdown table to
# stdout and to benchmarks/results/compare.md, one JSON line per run to benchmarks/results/compare.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DIR:-../shared/bench}
peers_venv=${WSBENCH_VENV:-/tmp/wsbench}
[ -x .venv/bin/twistd ] || { python3 -m venv .venv && .venv/bin/pip install -q .; }
.venv/bin/python setup.py -q build_ext --inplace >/dev/null
if [ ! -x "$peers_venv/bin/python" ] || ! "$peers_venv/bin/python" -c 'import aiohttp, websockets, uvicorn' 2>/dev/null; then
    python3 -m venv "$peers_venv"
    "$peers_venv/bin/pip" install -q -r "$bench/peers/requirements.txt"
fi
mkdir -p benchmarks/results
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--rounds 3)
"$peers_venv/bin/python" "$bench/compare" \
    --baseline aiohttp \
    --path /echo \
    --workloads tp-64B,tp-64KiB,tp-64KiB-bin,lat-c1,lat-c50,conn-c8,idle-5000 \
    --json benchmarks/results/compare.jsonl \
    "${args[@]}" \
    'crowtwist=PYTHONPATH=. .venv/bin/twistd -n --pidfile= crow --routes examples.echo --listen tcp:{port}:interface=127.0.0.1' \
    | tee benchmarks/results/compare.md
