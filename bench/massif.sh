#!/usr/bin/env bash
# bench/massif.sh — where pusher-cutover's heap goes with many busy
# connections (valgrind's massif): the companion of bench/run.sh's peak RSS.
#
#   bench/massif.sh [CONNECTIONS]        default 1000; legacy_trigger for 10 s
#   PUSHER_CUTOVER_BIN=path bench/massif.sh   another build (default: target/release)
#
# Runs pusher-cutover under massif in front of the canned nginx upstream on
# loopback, drives it with wrk, stops it with SIGINT, and prints the peak
# snapshot's allocation tree (ms_print), largest first. massif counts heap
# bytes allocated, not pages touched, so its peak is above the RSS it causes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/canned-upstream.sh
. "$HERE/canned-upstream.sh"
CONNS=${1:-1000}
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || { echo "CONNECTIONS must be a positive integer" >&2; exit 2; }

for tool in valgrind ms_print nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (bench/run.sh installs nginx and wrk; valgrind from Debian)" >&2; exit 1; }
done
BIN=${PUSHER_CUTOVER_BIN:-"$ROOT/target/release/pusher-cutover"}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --locked)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_begin 3
UP=${PORTS[0]} PC=${PORTS[1]} ADMIN=${PORTS[2]}
mkdir -p "$WORK/data"
bench_proxy_config "$PC" "$ADMIN" "$UP" "$WORK/data" > "$WORK/pc.toml"

valgrind --tool=massif --threshold=0.5 --massif-out-file="$WORK/massif.out" \
  "$BIN" serve --config "$WORK/pc.toml" 2>"$WORK/pc.log" &
PID=$!
PIDS=("$PID")
# Under valgrind the start takes a while.
wait_ready "http://127.0.0.1:$ADMIN/readyz" "$PID" 60
python3 "$HERE/bench.py" gen --scenario legacy_trigger --n 20000 --out "$WORK/r.reqs" >/dev/null
timeout 120 wrk -t2 -c"$CONNS" -d10s -s "$HERE/requests.lua" "http://127.0.0.1:$PC/" -- "$WORK/r.reqs" \
  | grep BENCH_RESULT || true
kill -INT "$PID"
timeout 60 tail --pid="$PID" -f /dev/null || true
PIDS=()
# The peak snapshot: its totals, then its allocation tree two levels deep.
peak=$(ms_print "$WORK/massif.out" | grep -o '[0-9]* (peak)' | cut -d' ' -f1)
echo "peak snapshot (n, instructions, total B, useful heap B, extra heap B, stacks B):"
ms_print "$WORK/massif.out" | awk -v p="$peak" '
  $1 == p && $2 ~ /^[0-9,]+$/ && $3 ~ /^[0-9,]+$/ { on = 1; print; next }
  on && /^ *[0-9]+ +[0-9,]+ +[0-9,]+/ { exit }
  on && /^(\| )?->/ { print }' | cut -c1-160
