#!/usr/bin/env bash
# bench/syscalls.sh — system calls per request (strace -c): which calls,
# and how many of each, a request costs the proxy, e.g. wake-ups of
# another thread (`futex`, eventfd `write`) or mappings (`mmap`).
#
#   bench/syscalls.sh [SCENARIO]              default current_trigger (legacy_trigger, legacy_stats)
#   PUSHER_CUTOVER_BIN=path bench/syscalls.sh legacy_trigger   another build (default: target/release)
#   DURATION=4 CONNECTIONS=8 bench/syscalls.sh
#
# Runs pusher-cutover in front of the canned nginx upstream on loopback,
# warms it up with wrk for 2 s, then attaches `strace -f -c` for DURATION
# seconds of wrk load and divides each call's count by the requests the
# proxy counted meanwhile (pusher_cutover_requests_total). strace slows
# the proxy down; the counts per request, not its speed, are the result.
# PUSHER_CUTOVER_BIN may be a wrapper script that execs the binary (to set
# its environment): strace follows the process the script becomes.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/canned-upstream.sh
. "$HERE/canned-upstream.sh"
SC=${1:-current_trigger}
DURATION=${DURATION:-4}
CONNECTIONS=${CONNECTIONS:-8}
for v in DURATION CONNECTIONS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
for tool in strace nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (bench/run.sh installs nginx and wrk; strace from Debian)" >&2; exit 1; }
done
BIN=${PUSHER_CUTOVER_BIN:-"$ROOT/target/release/pusher-cutover"}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --locked --bin pusher-cutover)

bench_begin 3
UP=${PORTS[0]} PC=${PORTS[1]} ADMIN=${PORTS[2]}
bench_proxy_config "$PC" "$ADMIN" "$UP" "" > "$WORK/pc.toml"
"$BIN" serve --config "$WORK/pc.toml" 2>"$WORK/pc.log" &
PID=$!
PIDS=("$PID")
wait_ready "http://127.0.0.1:$ADMIN/healthz" "$PID" 60
python3 "$HERE/bench.py" gen --scenario "$SC" --n 3000 --out "$WORK/r.reqs" >/dev/null
timeout 60 wrk -t1 -c"$CONNECTIONS" -d2s -s "$HERE/requests.lua" "http://127.0.0.1:$PC/" -- "$WORK/r.reqs" >/dev/null 2>&1
before=$(proxy_requests "$ADMIN")
timeout $(( DURATION + 30 )) strace -f -c -p "$PID" -o "$WORK/strace.txt" 2>/dev/null &
ST=$!
PIDS+=("$ST")
sleep 1
timeout $(( DURATION + 60 )) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$HERE/requests.lua" \
  "http://127.0.0.1:$PC/" -- "$WORK/r.reqs" >/dev/null 2>&1
kill -INT "$ST" 2>/dev/null || true
wait "$ST" 2>/dev/null || true
n=$(( $(proxy_requests "$ADMIN") - before ))
[ "$n" -gt 0 ] || { echo "no requests counted" >&2; exit 1; }
echo "bench/syscalls.sh: $SC, $CONNECTIONS connections, ${DURATION}s under strace; $n requests; $BIN"
# strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
awk -v n="$n" '$NF != "total" && $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ {
  printf "%-20s %8.2f per request\n", $NF, $4 / n }' "$WORK/strace.txt" | sort -k2 -nr
