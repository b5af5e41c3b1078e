#!/usr/bin/env bash
# Scaling with worker processes: crowtwist's echo under `twistd crow --workers 2` next to the same
# with one process, at 64 B (tp-64B), nothing pinned (`--pin none`: the two workers and the load
# generator share the machine's cores, as they would in production), ratio to one process.
#
#   benchmarks/workers.sh                    # 3 rounds of tp-64B (~2 min)
#   benchmarks/workers.sh --rounds 5 --workloads tp-64B,conn-c8
#
# The figures and wsload's own CPU time (cpu_s, which says whether the generator was the limit)
# go to benchmarks/results/workers.jsonl; the table to stdout and benchmarks/results/workers.md.
# Set-up as in benchmarks/compare.sh (the project venv, the C helper, the peers' venv).
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DIR:-../shared/bench}
[ -x .venv/bin/twistd ] || { python3 -m venv .venv && .venv/bin/pip install -q .; }
.venv/bin/python setup.py -q build_ext --inplace >/dev/null
mkdir -p benchmarks/results
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--rounds 3)
serve='PYTHONPATH=. .venv/bin/twistd -n --pidfile= crow --routes examples.echo --listen tcp:{port}:interface=127.0.0.1'
.venv/bin/python "$bench/compare" \
    --baseline crowtwist-1 \
    --path /echo \
    --pin none \
    --only crowtwist-1,crowtwist-2w \
    --workloads tp-64B \
    --json benchmarks/results/workers.jsonl \
    "${args[@]}" \
    "crowtwist-1=$serve" \
    "crowtwist-2w=$serve --workers 2" \
    | tee benchmarks/results/workers.md
