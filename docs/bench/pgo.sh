#!/usr/bin/env bash
# Regenerates cmd/oauthproxy/default.pgo, the CPU profile that profile-guided
# optimisation builds the binary with (go build uses it by default):
#
#   docs/bench/pgo.sh [seconds]          # from the repository root; default 30
#
# It builds oauthproxy with -tags pprof and without PGO (a profile of a
# PGO build would mostly confirm itself), runs it as docs/bench.yaml says
# in front of ../shared/bench's upstream, and profiles it under the load
# the benchmark measures: GET at 64 connections (wrk) for most of the time,
# 16 concurrent 1 MiB POSTs for the rest. Needs wrk, taskset and the
# shared bench directory beside the repository (SHARED_BENCH to override).
# Processes it starts are stopped by PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SECS=${1:-30}
SB=$(cd "${SHARED_BENCH:-../shared/bench}" && pwd)
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

go build -pgo=off -tags pprof -o "$TMP/oauthproxy" ./cmd/oauthproxy
(cd "$SB/upstream" && go build -o "$TMP/upstream" .)
(cd "$SB/load" && go build -o "$TMP/load" .)

export UPSTREAM_URL=http://127.0.0.1:18001 TOKEN_URL=http://127.0.0.1:18001/token
taskset -c 1 "$TMP/upstream" -listen 127.0.0.1:18001 -token-file "$SB/static-token.txt" > "$TMP/upstream.log" 2>&1 &
PIDS+=($!)
OAUTHPROXY_PPROF=127.0.0.1:6069 taskset -c 1 "$TMP/oauthproxy" run -config docs/bench.yaml > "$TMP/oauthproxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18060/api && break; sleep 0.1; done

get=$((SECS * 4 / 5)) post=$((SECS - SECS * 4 / 5))
curl -sf -o "$TMP/get.pprof" "http://127.0.0.1:6069/debug/pprof/profile?seconds=$get" &
c=$!
taskset -c 0 wrk -t1 -c64 -d"$((get + 1))s" http://127.0.0.1:18060/api > /dev/null
wait $c
curl -sf -o "$TMP/post.pprof" "http://127.0.0.1:6069/debug/pprof/profile?seconds=$post" &
c=$!
taskset -c 0 "$TMP/load" run -url http://127.0.0.1:18060/api -c 16 -method POST -body-size 1048576 \
  -d "$((post + 1))s" -warmup 0s > /dev/null
wait $c
go tool pprof -proto "$TMP/get.pprof" "$TMP/post.pprof" > cmd/oauthproxy/default.pgo 2> /dev/null
echo "wrote cmd/oauthproxy/default.pgo ($(wc -c < cmd/oauthproxy/default.pgo) bytes)"
