#!/usr/bin/env bash
# bench/rss.sh — peak resident set of a fresh pusher-cutover under many
# busy connections, for one build or several compared in alternation: the
# companion of bench/run.sh's peak RSS (which reads it from an instance
# that has served the whole benchmark first) and of bench/massif.sh (heap
# bytes by allocation site, not pages).
#
#   bench/rss.sh [BIN...]            default: target/release/pusher-cutover
#   CONNECTIONS=1000 DURATION=10 ROUNDS=3 bench/rss.sh old/pusher-cutover new/pusher-cutover
#   PRELOAD=30 bench/rss.sh          first 30 s per scenario at 64 connections
#   MAPPINGS=1 bench/rss.sh          also the resident set by mapping
#   A BIN may be a script that execs a build with an environment of its own
#   (`MIMALLOC_PURGE_DELAY=1000 exec target/release/pusher-cutover "$@"`):
#   the process it becomes is the one measured.
#
# For each round and each build: starts the build on loopback in front of
# the canned nginx upstream (with a [telemetry] data_dir, like bench/run.sh),
# optionally preloads it, drives legacy triggers from CONNECTIONS
# connections for DURATION seconds with wrk, and prints VmHWM, RssAnon and
# RssFile read right after, and the CPU time and minor page faults per
# request of that run (an allocator that gives memory back sooner faults
# it in again). Runs of one build spread by about 0.8 MiB on a
# shared machine: compare builds within one invocation.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/canned-upstream.sh
. "$HERE/canned-upstream.sh"
CONNECTIONS=${CONNECTIONS:-1000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
PRELOAD=${PRELOAD:-0}
for v in CONNECTIONS DURATION ROUNDS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
[[ $PRELOAD =~ ^[0-9]+$ ]] || { echo "PRELOAD must be a number of seconds" >&2; exit 2; }
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (bench/run.sh installs nginx and wrk)" >&2; exit 1; }
done
BINS=("$@")
if [ ${#BINS[@]} -eq 0 ]; then
  BINS=("$ROOT/target/release/pusher-cutover")
  [ -x "${BINS[0]}" ] || (cd "$ROOT" && cargo build --release --locked)
fi
for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_begin 3
UP=${PORTS[0]} PC=${PORTS[1]} ADMIN=${PORTS[2]}
python3 "$HERE/bench.py" gen --scenario legacy_trigger --n 20000 --out "$WORK/legacy_trigger.reqs" >/dev/null
if [ "$PRELOAD" -gt 0 ]; then
  for sc in legacy_stats current_trigger; do
    python3 "$HERE/bench.py" gen --scenario "$sc" --n 20000 --out "$WORK/$sc.reqs" >/dev/null
  done
fi

# counters PID: requests served, minor page faults, user+system CPU ticks
# (ticks_of); the fields are counted after "pid (comm)", as ticks_of does.
counters() {
  local pid=$1 f
  f=$(cut -d')' -f2- "/proc/$pid/stat")
  # shellcheck disable=SC2086
  set -- $f   # state=1 ... minflt=8
  echo "$(proxy_requests "$ADMIN") $8 $(ticks_of "$pid")"
}
# per_request BEFORE AFTER: CPU time and minor page faults per request between them.
per_request() {
  awk -v b="$1" -v a="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN {
    split(b, x, " "); split(a, y, " "); n = y[1] - x[1]
    if (n <= 0) { printf "cpu ?  faults ?  "; exit }
    printf "cpu %5.1f us/req  faults %.3f/req  ", (y[3] - x[3]) / hz * 1e6 / n, (y[2] - x[2]) / n }'
}
status() { grep -E '^(VmHWM|RssAnon|RssFile):' "/proc/$1/status" | awk '{printf "%s %6.1f MiB  ", $1, $2 / 1024}'; }

echo "bench/rss.sh: $CONNECTIONS connections, legacy_trigger for ${DURATION}s, ${PRELOAD}s preload per scenario, $ROUNDS round(s)"
for (( r=1; r<=ROUNDS; r++ )); do
  for i in "${!BINS[@]}"; do
    rm -rf "$WORK/data" && mkdir -p "$WORK/data"
    bench_proxy_config "$PC" "$ADMIN" "$UP" "$WORK/data" > "$WORK/pc.toml"
    "${BINS[$i]}" serve --config "$WORK/pc.toml" 2>"$WORK/pc.log" &
    PID=$!
    PIDS=("$PID")
    wait_ready "http://127.0.0.1:$ADMIN/readyz" "$PID"
    if [ "$PRELOAD" -gt 0 ]; then
      for sc in legacy_trigger legacy_stats current_trigger; do
        timeout $(( PRELOAD + 30 )) wrk -t2 -c64 -d"${PRELOAD}s" -s "$HERE/requests.lua" \
          "http://127.0.0.1:$PC/" -- "$WORK/$sc.reqs" >/dev/null
      done
    fi
    before=$(counters "$PID")
    timeout $(( DURATION + 60 )) wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -s "$HERE/requests.lua" \
      "http://127.0.0.1:$PC/" -- "$WORK/legacy_trigger.reqs" >"$WORK/wrk.out" 2>&1 || true
    after=$(counters "$PID")
    rps=$(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$WORK/wrk.out")
    printf 'round %d  build %d  %7s req/s  %s %s %s\n' "$r" "$((i + 1))" "${rps:-?}" "$(status "$PID")" \
      "$(per_request "$before" "$after")" "${BINS[$i]}"
    if [ -n "${MAPPINGS:-}" ]; then
      awk '/^[0-9a-f]+-[0-9a-f]+ / {name = $6; if (name == "") name = "[anon]"}
           /^Rss:/ {rss[name] += $2}
           END {for (n in rss) if (rss[n] >= 100) printf "    %8d kB  %s\n", rss[n], n}' "/proc/$PID/smaps" | sort -nr | head -8
    fi
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PIDS=()
  done
done
