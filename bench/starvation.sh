#!/usr/bin/env bash
# bench/starvation.sh — legacy triggers under a starvation attack: 200
# slow-body passthrough clients (1,000-byte bodies at 1 byte/s) and 5,000
# idle TCP connections held open against one pusher-cutover, with its
# default limits (max_connections 4096, upstream.max_connections 64,
# body_timeout_ms and header_timeout_ms 10 s).
#
#   bench/starvation.sh                 release build, 3 rounds
#   ROUNDS=5 DURATION=30 bench/starvation.sh
#   bench/starvation.sh --no-build      use target/release/pusher-cutover as it is
#
# Each round starts a fresh proxy in front of the canned nginx upstream
# (bench/canned-upstream.sh) and bench/starvation.py's hostile load (a
# closed connection is opened again a second later, an answered slow
# client starts again), waits WARMUP seconds for it to build up, then for
# DURATION seconds measures:
#   - legacy triggers on 4 keep-alive connections (wrk, bench/requests.lua,
#     requests signed by bench/bench.py gen): p50 and p99;
#   - a legacy trigger on a fresh connection every 50 ms (what a new
#     client sees: connect to full answer): p50 and p99;
#   - the proxy's peak resident set (VmHWM) over the round.
# Prints each round, then the medians over the rounds.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/canned-upstream.sh
. "$HERE/canned-upstream.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-10}
IDLE=${IDLE:-5000}
SLOW=${SLOW:-200}
for v in ROUNDS DURATION WARMUP IDLE SLOW; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number" >&2; exit 2; }
done
BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (bench/run.sh installs nginx and wrk)" >&2; exit 1; }
done
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pusher-cutover"
if [ "$BUILD" -eq 1 ]; then
  (cd "$ROOT" && timeout 1800 cargo build --release --locked --bin pusher-cutover >&2)
fi
[ -x "$BIN" ] || { echo "no binary at $BIN (run without --no-build)" >&2; exit 1; }

# The proxy and the load each hold ~5,300 sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need=$(( IDLE + SLOW + 500 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "ulimit -n is $(ulimit -n), below the $need this needs (raise the hard limit)" >&2
  exit 1
fi

bench_begin 3
UP=${PORTS[0]} PC=${PORTS[1]} ADMIN=${PORTS[2]}
cp "$BIN" "$WORK/pusher-cutover"   # immune to concurrent rebuilds
python3 "$HERE/bench.py" gen --scenario legacy_trigger --n 20000 --out "$WORK/legacy_trigger.reqs" >/dev/null
bench_proxy_config "$PC" "$ADMIN" "$UP" > "$WORK/pc.toml"
# Short enough that a round ends promptly whatever is still open.
sed -i '1i shutdown_grace_ms = 2000' "$WORK/pc.toml"
"$WORK/pusher-cutover" validate --config "$WORK/pc.toml" >&2

metric() { # $1 metrics text file, $2 series prefix: the sum of its samples
  awk -v s="$2" 'index($0, s) == 1 {n += $NF} END {printf "%d", n}' "$1"
}

echo "bench/starvation.sh: $SLOW slow-body clients (1,000 B at 1 B/s) + $IDLE idle connections; legacy triggers measured ${DURATION}s after ${WARMUP}s of build-up; $ROUNDS round(s); $(nproc) cores"
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
for (( r=1; r<=ROUNDS; r++ )); do
  "$WORK/pusher-cutover" serve --config "$WORK/pc.toml" 2>"$WORK/pc.log" &
  PID=$!
  PIDS=("$PID")
  wait_ready "http://127.0.0.1:$ADMIN/readyz" "$PID"
  # The hostile load and the fresh-connection probes are two processes, so
  # that a probe never waits for the load's busy event loop.
  python3 "$HERE/starvation.py" "$PC" "$WORK/legacy_trigger.reqs" $(( WARMUP + DURATION )) \
    --idle "$IDLE" --slow "$SLOW" --warmup "$WARMUP" --role load > "$WORK/load.json" &
  LOAD=$!
  python3 "$HERE/starvation.py" "$PC" "$WORK/legacy_trigger.reqs" $(( WARMUP + DURATION )) \
    --warmup "$WARMUP" --role probe > "$WORK/probe.json" &
  PROBE=$!
  PIDS+=("$LOAD" "$PROBE")
  sleep "$WARMUP"
  timeout $(( DURATION + 60 )) wrk -t1 -c4 -d"${DURATION}s" --timeout 15s -s "$HERE/requests.lua" \
    "http://127.0.0.1:$PC/" -- "$WORK/legacy_trigger.reqs" > "$WORK/wrk.out" 2>&1 || true
  wait "$LOAD" || true
  wait "$PROBE" || true
  curl -s "http://127.0.0.1:$ADMIN/metrics" > "$WORK/metrics.txt" || true
  hwm=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$PID/status")
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PIDS=()
  result=$(grep '^BENCH_RESULT' "$WORK/wrk.out" || echo "BENCH_RESULT requests=0 status=0 p50_us=0 p99_us=0")
  field() { sed -n "s/.*[ ]$1=\([0-9]*\).*/\1/p" <<<"$result"; }
  python3 - "$r" "$hwm" "$(field requests)" "$(field status)" "$(field p50_us)" "$(field p99_us)" \
    "$(metric "$WORK/metrics.txt" 'pusher_cutover_connection_errors_total{kind="idle_evicted"}')" \
    "$(metric "$WORK/metrics.txt" 'pusher_cutover_requests_total{app_id="4242",route="passthrough",outcome="client_error"}')" \
    "$(metric "$WORK/metrics.txt" 'pusher_cutover_requests_total{app_id="4242",route="passthrough",outcome="upstream_error"}')" \
    "$WORK/load.json" "$WORK/probe.json" "$RESULTS" <<'PY'
import json, sys
r, hwm, reqs, bad, p50, p99, evicted, slow_4xx, slow_5xx, load, probe, results = sys.argv[1:]
l = {**json.load(open(load)), **json.load(open(probe))}
print(f"round {r}: keep-alive legacy triggers {int(reqs)} (non-2xx {bad}) p50 {int(p50)/1000:.2f} ms p99 {int(p99)/1000:.2f} ms | "
      f"fresh-connection triggers {l['probes']} {l['probe_statuses']} p50 {l['probe_p50_ms']:.2f} ms p99 {l['probe_p99_ms']:.2f} ms | "
      f"peak RSS {hwm} MiB | idle held (peak) {l['idle_peak']}, closed by the proxy {l['idle_closed_by_proxy']}, "
      f"evicted at the cap {evicted} | slow clients (peak) {l['slow_peak']}, answers {l['slow_answers']}, "
      f"passthrough client_error {slow_4xx} upstream_error {slow_5xx}")
with open(results, "a") as f:
    f.write(f"{int(p50)/1000}\t{int(p99)/1000}\t{l['probe_p50_ms']}\t{l['probe_p99_ms']}\t{hwm}\n")
PY
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = [list(map(float, line.split("\t"))) for line in open(sys.argv[1]) if line.strip()]
m = [statistics.median(c) for c in zip(*rows)]
print(f"median of {len(rows)} rounds: keep-alive legacy triggers p50 {m[0]:.2f} ms p99 {m[1]:.2f} ms | "
      f"fresh-connection legacy triggers p50 {m[2]:.2f} ms p99 {m[3]:.2f} ms | peak RSS {m[4]:.1f} MiB")
PY
