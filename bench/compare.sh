#!/usr/bin/env bash
# bench/compare.sh — throughput and CPU per request of several pusher-cutover
# builds (and nginx as a plain proxy, for scale), measured in alternation in
# one run: the quick companion of bench/run.sh for "did this change help?".
#
#   bench/compare.sh OLD_BIN NEW_BIN [...]
#   DURATION=5 ROUNDS=3 CONNECTIONS=64 bench/compare.sh a/pusher-cutover b/pusher-cutover
#   SCENARIOS="legacy_trigger current_trigger" NGINX=0 bench/compare.sh ...
#   FLOOR=target/release/examples/hyper_floor bench/compare.sh ...   # adds the bare hyper forwarder
#   FLOOR="…/hyper_floor …/httparse_floor" bench/compare.sh ...       # several (examples/*_floor.rs)
#
# Each build runs on loopback in front of the canned nginx upstream of
# bench/canned-upstream.sh (with a [telemetry] data_dir, like bench/run.sh),
# all at once; each round drives every scenario against every target in
# turn (the order rotating between rounds) with wrk -t2 through
# bench/requests.lua, on requests signed right before. Prints, per scenario
# and target, the median req/s and CPU/req (user+system time of the target's
# processes per completed request) and each median against the first
# build's. Needs nginx and wrk (bench/run.sh installs them), python3, curl.
# Stops only what it started.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/canned-upstream.sh
. "$HERE/canned-upstream.sh"
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
SCENARIOS=${SCENARIOS:-"legacy_trigger legacy_stats current_trigger"}
NGINX=${NGINX:-1}
read -r -a FLOORS <<<"${FLOOR:-}"
for v in DURATION ROUNDS CONNECTIONS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
[ $# -gt 0 ] || { sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
for b in "$@"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
for tool in nginx wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (bench/run.sh installs nginx and wrk)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_begin $(( 2 * $# + 2 + ${#FLOORS[@]} ))
UP=${PORTS[0]}
NAMES=() TPORTS=() TPIDS=()
NGX_DIR=$WORK/nginx-proxy
if [ "$NGINX" = 1 ]; then
  mkdir -p "$NGX_DIR"
  nginx_proxy_conf "$NGX_DIR" "${PORTS[1]}" "$UP" > "$NGX_DIR/nginx.conf"
  nginx -p "$NGX_DIR/" -c "$NGX_DIR/nginx.conf" -e "$NGX_DIR/error.log"
  PIDS+=("$(cat "$NGX_DIR/nginx.pid")")
  NAMES+=(nginx) TPORTS+=("${PORTS[1]}") TPIDS+=(nginx)
fi
# The floors (examples/*_floor.rs: LISTEN UPSTREAM), named after their file.
for (( f = 0; f < ${#FLOORS[@]}; f++ )); do
  floor=${FLOORS[$f]}
  [ -x "$floor" ] || { echo "FLOOR: not an executable: $floor" >&2; exit 2; }
  port=${PORTS[$(( 2 * $# + 2 + f ))]}
  "$floor" "127.0.0.1:$port" "127.0.0.1:$UP" > "$WORK/floor$f.log" 2>&1 &
  PIDS+=($!)
  wait_ready "http://127.0.0.1:$port/" "${PIDS[-1]}" || { tail -n 5 "$WORK/floor$f.log" >&2; exit 1; }
  NAMES+=("$(basename "$floor")") TPORTS+=("$port") TPIDS+=("${PIDS[-1]}")
done
i=0
for b in "$@"; do
  port=${PORTS[$(( 2 + 2 * i ))]} admin=${PORTS[$(( 3 + 2 * i ))]}
  mkdir -p "$WORK/data$i"
  bench_proxy_config "$port" "$admin" "$UP" "$WORK/data$i" > "$WORK/pc$i.toml"
  "$b" serve --config "$WORK/pc$i.toml" > "$WORK/pc$i.log" 2>&1 &
  PIDS+=($!)
  wait_ready "http://127.0.0.1:$admin/readyz" "${PIDS[-1]}" || { tail -n 5 "$WORK/pc$i.log" >&2; exit 1; }
  NAMES+=("#$((i + 1)) $b") TPORTS+=("$port") TPIDS+=("${PIDS[-1]}")
  i=$(( i + 1 ))
done

HZ=$(getconf CLK_TCK)
ticks() { # a target's CPU ticks (nginx: master and workers)
  if [ "$1" = nginx ]; then
    local master; master=$(cat "$NGX_DIR/nginx.pid")
    # shellcheck disable=SC2046
    ticks_of "$master" $(pgrep -P "$master" || true)
  else
    ticks_of "$1"
  fi
}

: > "$WORK/rows"
for (( r = 1; r <= ROUNDS; r++ )); do
  for sc in $SCENARIOS; do
    python3 "$HERE/bench.py" gen --scenario "$sc" --n 20000 --out "$WORK/$sc.reqs" >/dev/null
    k=${#NAMES[@]}
    for (( j = 0; j < k; j++ )); do
      t=$(( (j + r) % k ))
      c0=$(ticks "${TPIDS[$t]}")
      line=$(timeout $(( DURATION + 60 )) wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s \
        -s "$HERE/requests.lua" "http://127.0.0.1:${TPORTS[$t]}/" -- "$WORK/$sc.reqs" 2>&1 | grep '^BENCH_RESULT' || true)
      c1=$(ticks "${TPIDS[$t]}")
      [ -n "$line" ] || { echo "no result from wrk against ${NAMES[$t]} ($sc)" >&2; exit 1; }
      printf '%s\t%s\t%s\t%s\t%s\n' "$sc" "$t" "$line" "$(( c1 - c0 ))" "$r" >> "$WORK/rows"
      echo "round $r $sc ${NAMES[$t]}: $line" >&2
    done
  done
done

python3 - "$WORK/rows" "$HZ" "${NAMES[@]}" <<'PYEOF'
import statistics, sys
rows, hz, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
res = {}
for line in open(rows):
    sc, t, wrk, ticks, _ = line.rstrip("\n").split("\t")
    f = dict(kv.split("=") for kv in wrk.split()[1:])
    n, us = int(f["requests"]), int(f["duration_us"])
    bad = int(f["status"]) + sum(int(f[k]) for k in ("connect", "read", "write", "timeout"))
    r = res.setdefault((sc, int(t)), {"rps": [], "cpu": [], "bad": 0})
    r["rps"].append(n / (us / 1e6))
    r["cpu"].append(int(ticks) / hz * 1e6 / max(n, 1))
    r["bad"] += bad
first = next(i for i, n in enumerate(names) if n.startswith("#1 "))
print(f"{'scenario':16} {'target':40} {'req/s':>8} {'CPU/req':>8} {'req/s vs #1':>12} {'CPU vs #1':>10} {'errors':>7}  req/s per round")
for sc in dict.fromkeys(k[0] for k in res):
    base = res.get((sc, first))
    for t, name in enumerate(names):
        r = res[(sc, t)]
        rps, cpu = statistics.median(r["rps"]), statistics.median(r["cpu"])
        # Against #1: the median of the per-round ratios (each round's pair
        # run back to back), not the ratio of the medians.
        paired = lambda k: statistics.median(a / b for a, b in zip(r[k], base[k]) if b)
        rel = f"{paired('rps'):12.2f} {paired('cpu'):10.2f}"
        print(f"{sc:16} {name[-40:]:40} {rps:8.0f} {cpu:7.1f}us {rel} {r['bad']:7d}  "
              + " ".join(f"{x:.0f}" for x in r["rps"]))
PYEOF
