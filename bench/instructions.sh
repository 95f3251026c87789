#!/usr/bin/env bash
# bench/instructions.sh — instructions per request (valgrind callgrind), the
# repeatable companion of bench/run.sh: instruction counts do not depend on
# what else the machine is doing, so two builds can be compared exactly.
#
#   bench/instructions.sh [SCENARIO...]   default: legacy_trigger legacy_stats current_trigger
#   RUST_LOG=warn bench/instructions.sh current_trigger   # without the per-request INFO lines
#   bench/instructions.sh --data-dir legacy_trigger        # each scenario without, then with [telemetry] data_dir
#   PUSHER_CUTOVER_BIN=path/to/build bench/instructions.sh # another build (default: target/release)
#   KEEP=dir bench/instructions.sh legacy_stats            # also keeps each callgrind profile (dir/SCENARIO.cg)
#   bench/instructions.sh --floor                          # current_trigger, then the same through hyper-floor
#                                                          # (examples/hyper_floor.rs, built if missing)
#
# Runs pusher-cutover (target/release, built if missing) under callgrind in
# front of a canned nginx upstream on loopback, warms up, zeroes the
# counters, drives a few thousand freshly signed requests with wrk, and
# prints Ir (instructions) per request. Note: under valgrind, SHA-256 runs
# its portable code instead of the SHA-NI instructions used natively, so
# signing weighs far more here than on real hardware.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/canned-upstream.sh
. "$HERE/canned-upstream.sh"
DATA_DIR_TOO=0 FLOOR=0
case "${1:-}" in
  --data-dir) DATA_DIR_TOO=1; shift ;;
  --floor) FLOOR=1; shift ;;
esac
SCENARIOS=("$@")
if [ "$FLOOR" -eq 1 ]; then
  [ ${#SCENARIOS[@]} -eq 0 ] || { echo "--floor measures current_trigger only; it takes no scenarios" >&2; exit 2; }
  SCENARIOS=(current_trigger)
elif [ ${#SCENARIOS[@]} -eq 0 ]; then SCENARIOS=(legacy_trigger legacy_stats current_trigger); fi

for tool in valgrind callgrind_control callgrind_annotate nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (bench/run.sh installs nginx and wrk; valgrind from Debian)" >&2; exit 1; }
done
BIN=${PUSHER_CUTOVER_BIN:-"$ROOT/target/release/pusher-cutover"}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --locked)
FLOOR_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/hyper_floor"
if [ "$FLOOR" -eq 1 ] && [ ! -x "$FLOOR_BIN" ]; then
  (cd "$ROOT" && cargo build --release --locked --example hyper_floor)
fi

bench_begin 3
UP=${PORTS[0]} PC=${PORTS[1]} ADMIN=${PORTS[2]}
VARIANTS=("")
[ "$DATA_DIR_TOO" -eq 0 ] || VARIANTS=("" "$WORK/data")
mkdir -p "$WORK/data"


for sc in "${SCENARIOS[@]}"; do
 for data_dir in "${VARIANTS[@]}"; do
  bench_proxy_config "$PC" "$ADMIN" "$UP" "$data_dir" > "$WORK/pc.toml"
  label=$sc
  if [ "$DATA_DIR_TOO" -eq 1 ]; then
    if [ -n "$data_dir" ]; then label="$sc with data_dir"; else label="$sc without data_dir"; fi
  fi
  RUST_LOG=${RUST_LOG:-info} valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
    "$BIN" serve --config "$WORK/pc.toml" 2>"$WORK/pc.log" &
  PID=$!
  PIDS=("$PID")
  wait_ready "http://127.0.0.1:$ADMIN/healthz" "$PID" 60
  python3 "$HERE/bench.py" gen --scenario "$sc" --n 3000 --out "$WORK/$sc.reqs" >/dev/null
  timeout 60 wrk -t1 -c8 -d3s -s "$HERE/requests.lua" "http://127.0.0.1:$PC/" -- "$WORK/$sc.reqs" >/dev/null 2>&1
  before=$(proxy_requests "$ADMIN")
  callgrind_control -z "$PID" >/dev/null 2>&1
  timeout 60 wrk -t1 -c8 -d6s -s "$HERE/requests.lua" "http://127.0.0.1:$PC/" -- "$WORK/$sc.reqs" >/dev/null 2>&1
  callgrind_control -d "$PID" >/dev/null 2>&1
  after=$(proxy_requests "$ADMIN")
  sleep 1
  ir=$(callgrind_annotate "$WORK/cg.$PID.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  n=$((after - before))
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$WORK/cg.$PID.1" "$KEEP/${label// /_}.cg"; }
  printf '%-34s %6d requests  %12d Ir  %8d Ir/request\n' "$label" "$n" "$ir" $((ir / n))
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PIDS=()
 done
done

# hyper-floor counts nothing itself: its requests are the ones wrk saw
# answered, less any it reports as errors.
if [ "$FLOOR" -eq 1 ]; then
  sc=current_trigger
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
    "$FLOOR_BIN" "127.0.0.1:$PC" "127.0.0.1:$UP" 2>"$WORK/floor.log" &
  PID=$!
  PIDS=("$PID")
  up=0
  for _ in $(seq 1 600); do
    if curl -s -o /dev/null "http://127.0.0.1:$PC/"; then up=1; break; fi
    kill -0 "$PID" 2>/dev/null || { echo "hyper-floor exited: $(cat "$WORK/floor.log")" >&2; exit 1; }
    sleep 0.1
  done
  [ "$up" -eq 1 ] || { echo "hyper-floor did not answer within 60 s" >&2; exit 1; }
  timeout 60 wrk -t1 -c8 -d3s -s "$HERE/requests.lua" "http://127.0.0.1:$PC/" -- "$WORK/$sc.reqs" >/dev/null 2>&1
  callgrind_control -z "$PID" >/dev/null 2>&1
  out=$(timeout 60 wrk -t1 -c8 -d6s -s "$HERE/requests.lua" "http://127.0.0.1:$PC/" -- "$WORK/$sc.reqs" 2>&1)
  callgrind_control -d "$PID" >/dev/null 2>&1
  sleep 1
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {print "socket errors"}' <<<"$out")
  [ -z "$bad" ] || { echo "hyper-floor: wrk saw $bad" >&2; exit 1; }
  ir=$(callgrind_annotate "$WORK/cg.$PID.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  [ -z "${KEEP:-}" ] || cp "$WORK/cg.$PID.1" "$KEEP/hyper_floor.cg"
  printf '%-34s %6d requests  %12d Ir  %8d Ir/request\n' "hyper-floor ($sc)" "$n" "$ir" $((ir / n))
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PIDS=()
fi
