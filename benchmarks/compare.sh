#!/usr/bin/env bash
# The side-by-side comparison of issues #7 and #17, in one command: crowtwist's echo route served by
# `twistd crow`, next to the peers in ../shared/bench/peers, ratios to aiohttp, in two passes:
#
#   plain  every peer (autobahn's factory and WebSocketResource, aiohttp, websockets, starlette on
#          uvicorn) and crowtwist; tp-64B, tp-64KiB, tp-64KiB-bin, lat-c1, lat-c50, conn-c8, idle-5000
#   tls    crowtwist-tls (its ssl: endpoint, pyOpenSSL) and aiohttp-tls (benchmarks/peers/
#          aiohttp_echo_tls.py, the standard library's ssl), one certificate for both (ECDSA P-256,
#          made once in benchmarks/results/tls/); tls-64B, tls-64KiB, tls-64KiB-bin, tls-lat-c1,
#          tls-lat-c50, tls-conn-c8 (every connrate cycle a full handshake, no resumption)
#
# The load generator is benchmarks/wsload.c (the shared wsload plus --tls and the server's own CPU,
# found by the port it listens on): every row carries the server's CPU per message, per MB or per
# handshake, and wsload's own CPU, which benchmarks/report.py turns into the table of both passes.
#
#   benchmarks/compare.sh                                  # both passes, 3 rounds (~30 min)
#   benchmarks/compare.sh --only crowtwist,aiohttp --rounds 1
#   benchmarks/compare.sh --pass tls --workloads tls-64B,tls-conn-c8
#
# Options: --rounds N (default 3), --only NAMES (plain names; the TLS pass runs NAME-tls of those
# it has), --workloads NAMES (tls-* go to the TLS pass, the rest to the plain one; NAME=MODE ARGS
# works too), --pass plain|tls|both (default both); anything else goes to ../shared/bench/compare
# as it is (--duration, --warmup, --pin, --logs, ...).
#
# Set-up it does itself: the project venv ($CROW_VENV, default .venv, with the tls extra), the C
# helper built next to the sources (PYTHONPATH=. makes twistd serve this working tree, not the copy
# pip installed), the peers' pinned packages in $WSBENCH_VENV (default /tmp/wsbench), libssl-dev
# (apt-get, as ci/system-packages does) and wsload, built into benchmarks/results/. Writes
# benchmarks/results/compare{,-tls}.md and .jsonl (the previous run's renamed to *.prev), and
# the combined table to stdout and benchmarks/results/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DIR:-../shared/bench}
peers_venv=${WSBENCH_VENV:-/tmp/wsbench}
venv=${CROW_VENV:-.venv}
results=benchmarks/results

rounds=3 only="" workloads="" pass=both
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --rounds=*) rounds=${1#*=}; shift ;;
        --only) only=$2; shift 2 ;;
        --only=*) only=${1#*=}; shift ;;
        --workloads) workloads=$2; shift 2 ;;
        --workloads=*) workloads=${1#*=}; shift ;;
        --pass) pass=$2; shift 2 ;;
        --pass=*) pass=${1#*=}; shift ;;
        *) extra+=("$1"); shift ;;
    esac
done
case "$pass" in plain|tls|both) ;; *) echo "compare.sh: --pass plain, tls or both" >&2; exit 2 ;; esac

# ---- set-up ----
[ -x "$venv/bin/twistd" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q '.[tls]'; }
if [ "$pass" != plain ] && ! "$venv/bin/python" -c 'import OpenSSL' 2>/dev/null; then
    "$venv/bin/pip" install -q '.[tls]'
fi
"$venv/bin/python" setup.py -q build_ext --inplace >/dev/null
if [ ! -x "$peers_venv/bin/python" ] || ! "$peers_venv/bin/python" -c 'import aiohttp, websockets, uvicorn' 2>/dev/null; then
    python3 -m venv "$peers_venv"
    "$peers_venv/bin/pip" install -q -r "$bench/peers/requirements.txt"
fi
if [ ! -e /usr/include/openssl/ssl.h ] || ! command -v openssl >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev openssl >/dev/null
fi
mkdir -p "$results/tls"
wsload=$results/wsload
if [ ! -x "$wsload" ] || [ benchmarks/wsload.c -nt "$wsload" ]; then
    gcc -O2 -Wall -o "$wsload.$$" benchmarks/wsload.c -lssl -lcrypto -pthread
    mv "$wsload.$$" "$wsload"
fi
cert=$results/tls/cert.pem key=$results/tls/key.pem
if [ ! -s "$cert" ] || [ ! -s "$key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -keyout "$key" -out "$cert" -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi

# ---- what each pass runs ----
declare -A tls_defs=(
    [tls-64B]="throughput -c 50 -k 16 -s 64 --tls"
    [tls-64KiB]="throughput -c 8 -k 4 -s 64k --tls"
    [tls-64KiB-bin]="throughput -c 8 -k 4 -s 64k -b --tls"
    [tls-lat-c1]="latency -c 1 --tls"
    [tls-lat-c50]="latency -c 50 --tls"
    [tls-conn-c8]="connrate -c 8 --tls"
)
tls_order=(tls-64B tls-64KiB tls-64KiB-bin tls-lat-c1 tls-lat-c50 tls-conn-c8)
plain_wl="" tls_wl=""
if [ -z "$workloads" ]; then
    plain_wl=tp-64B,tp-64KiB,tp-64KiB-bin,lat-c1,lat-c50,conn-c8,idle-5000
    for name in "${tls_order[@]}"; do tls_wl+="${tls_wl:+,}$name=${tls_defs[$name]}"; done
else
    IFS=, read -ra asked <<<"$workloads"
    for spec in "${asked[@]}"; do
        name=${spec%%=*}
        if [[ $name == tls-* ]]; then
            if [[ $spec == *=* ]]; then tls_wl+="${tls_wl:+,}$spec"
            elif [ -n "${tls_defs[$name]:-}" ]; then tls_wl+="${tls_wl:+,}$name=${tls_defs[$name]}"
            else echo "compare.sh: unknown TLS workload $name (${tls_order[*]})" >&2; exit 2
            fi
        else
            plain_wl+="${plain_wl:+,}$spec"
        fi
    done
fi
plain_only=() tls_only=(--only crowtwist-tls,aiohttp-tls)
if [ -n "$only" ]; then
    IFS=, read -ra names <<<"$only"
    p="" t=""
    for name in "${names[@]}"; do
        base=${name%-tls}
        case "$base" in crowtwist|aiohttp) t+="${t:+,}$base-tls" ;; esac
        [ "$name" != "$base" ] || p+="${p:+,}$name"
    done
    plain_only=(--only "${p:-none}")
    if [ -n "$t" ]; then tls_only=(--only "$t"); else tls_wl=""; fi
    [ -n "$p" ] || plain_wl=""
fi

run_pass() { # NAME JSONL MD -- compare arguments...
    local label=$1 jsonl=$2 md=$3
    shift 4
    [ ! -e "$jsonl" ] || mv "$jsonl" "$jsonl.prev"
    echo "compare.sh: $label pass" >&2
    "$peers_venv/bin/python" "$bench/compare" --wsload "$wsload" --path /echo --rounds "$rounds" \
        --json "$jsonl" "$@" ${extra[@]+"${extra[@]}"} > "$md"
}

crow="PYTHONPATH=. $venv/bin/twistd -n --pidfile= crow --routes examples.echo"
files=()
if [ "$pass" != tls ] && [ -n "$plain_wl" ]; then
    run_pass plain "$results/compare.jsonl" "$results/compare.md" -- \
        --baseline aiohttp --workloads "$plain_wl" ${plain_only[@]+"${plain_only[@]}"} \
        "crowtwist=$crow --listen tcp:{port}:interface=127.0.0.1"
    files+=("$results/compare.jsonl")
fi
if [ "$pass" != plain ] && [ -n "$tls_wl" ]; then
    run_pass TLS "$results/compare-tls.jsonl" "$results/compare-tls.md" -- \
        --baseline aiohttp-tls --workloads "$tls_wl" "${tls_only[@]}" \
        "crowtwist-tls=$crow --listen ssl:{port}:privateKey=$key:certKey=$cert:interface=127.0.0.1" \
        "aiohttp-tls={python} benchmarks/peers/aiohttp_echo_tls.py --port {port} --cert $cert --key $key"
    files+=("$results/compare-tls.jsonl")
fi
[ ${#files[@]} -gt 0 ] || { echo "compare.sh: nothing to run" >&2; exit 2; }
"$peers_venv/bin/python" benchmarks/report.py "${files[@]}" | tee "$results/report.md"
