#!/usr/bin/env bash
# bench/instructions.sh — instructions per request (valgrind callgrind), the
# repeatable companion of bench/run.sh: instruction counts do not depend on
# what else the machine is doing, so two builds can be compared exactly.
#
#   bench/instructions.sh [SCENARIO...]   default: legacy_trigger legacy_stats current_trigger
#   RUST_LOG=warn bench/instructions.sh current_trigger   # without the per-request INFO lines
#   bench/instructions.sh --data-dir legacy_trigger        # each scenario without, then with [telemetry] data_dir
#   PUSHER_CUTOVER_BIN=path/to/build bench/instructions.sh # another build (default: target/release)
#   HYPER_FLOOR_BIN=path/to/build bench/instructions.sh --floor   # another hyper-floor build
#                                                          # (default: target/release/examples/hyper_floor)
#   KEEP=dir bench/instructions.sh legacy_stats            # also keeps each callgrind profile (dir/SCENARIO.cg)
#   bench/instructions.sh --floor                          # current_trigger, then the same through hyper-floor
#                                                          # (examples/hyper_floor.rs, built if missing)
#   bench/instructions.sh --h2c current_trigger            # pusher-cutover speaking h2c (upstream.protocol = "h2c")
#                                                          # to the canned upstream's HTTP/2 listener, as to Sockudo
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
DATA_DIR_TOO=0 FLOOR=0 H2C=0
while :; do
  case "${1:-}" in
    --data-dir) DATA_DIR_TOO=1; shift ;;
    --floor) FLOOR=1; shift ;;
    --h2c) H2C=1; shift ;;
    *) break ;;
  esac
done
SCENARIOS=("$@")
if [ "$FLOOR" -eq 1 ] && [ "$H2C" -eq 1 ]; then
  echo "--floor measures hyper-floor, which speaks HTTP/1.1 only; it takes no --h2c" >&2; exit 2
fi
if [ "$FLOOR" -eq 1 ]; then
  [ ${#SCENARIOS[@]} -eq 0 ] || { echo "--floor measures current_trigger only; it takes no scenarios" >&2; exit 2; }
  SCENARIOS=(current_trigger)
elif [ ${#SCENARIOS[@]} -eq 0 ]; then SCENARIOS=(legacy_trigger legacy_stats current_trigger); fi

for tool in valgrind callgrind_control callgrind_annotate nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (bench/run.sh installs nginx and wrk; valgrind from Debian)" >&2; exit 1; }
done
BIN=${PUSHER_CUTOVER_BIN:-"$ROOT/target/release/pusher-cutover"}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --locked)
FLOOR_BIN=${HYPER_FLOOR_BIN:-"${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/hyper_floor"}
if [ "$FLOOR" -eq 1 ] && [ ! -x "$FLOOR_BIN" ]; then
  (cd "$ROOT" && cargo build --release --locked --example hyper_floor)
fi

if [ "$H2C" -eq 1 ]; then bench_begin 4 h2c; else bench_begin 3; fi
UP=${PORTS[0]} PC=${PORTS[1]} ADMIN=${PORTS[2]}
VARIANTS=("")
[ "$DATA_DIR_TOO" -eq 0 ] || VARIANTS=("" "$WORK/data")
mkdir -p "$WORK/data"

# warm_up SCENARIO: 3 s of SCENARIO's requests to 127.0.0.1:$PC.
warm_up() {
  timeout 60 wrk -t1 -c8 -d3s -s "$HERE/requests.lua" "http://127.0.0.1:$PC/" -- "$WORK/$1.reqs" >/dev/null 2>&1
}

# measure PID SCENARIO: zeroes PID's counters, drives 6 s of SCENARIO's
# requests to 127.0.0.1:$PC (wrk's output in $WORK/wrk.out) and dumps its
# profile.
measure() {
  callgrind_control -z "$1" >/dev/null 2>&1
  timeout 60 wrk -t1 -c8 -d6s -s "$HERE/requests.lua" "http://127.0.0.1:$PC/" -- "$WORK/$2.reqs" >"$WORK/wrk.out" 2>&1
  callgrind_control -d "$1" >/dev/null 2>&1
  sleep 1
}

# report LABEL PID REQUESTS: prints the instructions per request of PID's
# profile (kept in $KEEP if set), then stops PID.
report() {
  local ir
  ir=$(callgrind_annotate "$WORK/cg.$2.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$WORK/cg.$2.1" "$KEEP/${1//[ ()]/_}.cg"; }
  printf '%-34s %6d requests  %12d Ir  %8d Ir/request\n' "$1" "$3" "$ir" $((ir / $3))
  kill "$2" 2>/dev/null || true
  wait "$2" 2>/dev/null || true
  PIDS=()
}

for sc in "${SCENARIOS[@]}"; do
 for data_dir in "${VARIANTS[@]}"; do
  bench_proxy_config "$PC" "$ADMIN" "$UP" "$data_dir" > "$WORK/pc.toml"
  label=$sc
  if [ "$H2C" -eq 1 ]; then
    sed -i "s|^url = .*|url = \"http://127.0.0.1:${PORTS[3]}\"\nprotocol = \"h2c\"|" "$WORK/pc.toml"
    label="$sc (h2c)"
  fi
  if [ "$DATA_DIR_TOO" -eq 1 ]; then
    if [ -n "$data_dir" ]; then label="$sc with data_dir"; else label="$sc without data_dir"; fi
  fi
  RUST_LOG=${RUST_LOG:-info} valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
    "$BIN" serve --config "$WORK/pc.toml" 2>"$WORK/pc.log" &
  PID=$!
  PIDS=("$PID")
  wait_ready "http://127.0.0.1:$ADMIN/healthz" "$PID" 60
  python3 "$HERE/bench.py" gen --scenario "$sc" --n 3000 --out "$WORK/$sc.reqs" >/dev/null
  warm_up "$sc"
  before=$(proxy_requests "$ADMIN")
  measure "$PID" "$sc"
  after=$(proxy_requests "$ADMIN")
  report "$label" "$PID" $((after - before))
 done
done

# hyper-floor counts nothing itself: its requests are the ones wrk saw
# answered, with no error of any kind allowed.
if [ "$FLOOR" -eq 1 ]; then
  sc=current_trigger
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" \
    "$FLOOR_BIN" "127.0.0.1:$PC" "127.0.0.1:$UP" 2>"$WORK/floor.log" &
  PID=$!
  PIDS=("$PID")
  wait_ready "http://127.0.0.1:$PC/" "$PID" 60
  warm_up "$sc"
  measure "$PID" "$sc"
  bad=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {print "socket errors"}' "$WORK/wrk.out")
  [ -z "$bad" ] || { echo "hyper-floor: wrk saw $bad" >&2; exit 1; }
  report "hyper-floor ($sc)" "$PID" "$(awk '/requests in/ {print $1}' "$WORK/wrk.out")"
fi
