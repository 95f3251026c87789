#!/usr/bin/env bash
# bench/run.sh — pusher-cutover vs nginx vs HAProxy on loopback (issue 7).
#
#   bench/run.sh                 default: 3 rounds of 10 s runs (~22-28 minutes on 2 cores, the profile-guided builds included)
#   bench/run.sh --quick         smoke test: 1 round of 3 s runs (~2 minutes after the build; --no-build reuses the last one)
#   bench/run.sh --scenario canned                      these canned-upstream scenarios (the default)
#   bench/run.sh --scenario sockudo|remote|njs|all ...  bench/throughput.sh instead, with the same arguments
#                (real Sockudo upstream, remote 20 ms upstream, the nginx + njs peer; see its header)
#   bench/run.sh --duration S --rounds N [--connections C] [--big-connections C]
#                [--requests N] [--out FILE] [--keep] [--no-install] [--no-build]
#                [--log-compare]   (adds: legacy_trigger with default logging vs RUST_LOG=error, ~1.5 min)
#                [--no-pgo]        (measure the plain release build instead of bench/pgo.sh's)
#                [--no-instructions | --instructions]
#   --no-instructions: skip the counts under callgrind (bench/instructions.sh --data-dir and --floor,
#   ~5 min; on by default when valgrind is installed, off with --quick unless --instructions).
#   --out FILE: where the summary goes (default bench/last-run.txt, raw rows beside it as .tsv;
#   --out "" for none). --keep keeps the temp dir (configs, logs).
#
# What it does, all on 127.0.0.1 and all in a fresh temp dir:
#  1. installs nginx (nginx-light), haproxy and wrk from Debian if missing;
#     builds the profile-guided release binary with bench/pgo.sh --floor
#     (~13 minutes: an instrumented build, 30 s of training on the three
#     scenarios, the optimised build; the same for examples/hyper_floor.rs;
#     --no-pgo: `cargo build --release --locked`) and copies the binaries
#     aside;
#  2. starts a canned upstream (nginx answering the current API's shapes,
#     signatures not checked), nginx as a plain proxy_pass reverse proxy with
#     upstream keepalive, HAProxy in mode http, hyper-floor (the bare hyper
#     forwarder of examples/hyper_floor.rs: what any proxy built on hyper
#     costs before doing anything) and pusher-cutover three times (with and
#     without [telemetry] data_dir, and with data_dir but its access log for
#     current-API calls off, for the passthrough CPU comparison with
#     hyper-floor), each on a free high port;
#  3. drives each target with wrk (-t2) through bench/requests.lua, which
#     cycles through requests signed by bench/bench.py right before each run
#     (legacy trigger, legacy stats, current-API trigger);
#  4. runs the targets in rounds, their order rotated by one place each
#     round and reversed every other round, and prints medians, the ratios pusher-cutover/nginx and
#     pusher-cutover/HAProxy (each the median of the per-round ratios: a
#     round's two figures were measured minutes apart at most), a 1,000-connection run
#     with peak RSS, a with/without data_dir run, and 10 vs 100,000 distinct
#     User-Agent values;
#  5. counts instructions per request under callgrind, comparisons the
#     machine's load does not move: with and without [telemetry] data_dir
#     (bench/instructions.sh --data-dir), and a passthrough call with the
#     access log off against hyper-floor (bench/instructions.sh --floor,
#     both builds the ones measured above).
# It stops only the processes it started (by pid, trap on EXIT). Every wait
# has a timeout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/canned-upstream.sh
. "$HERE/canned-upstream.sh"

# --scenario other than canned: the throughput-by-design scenarios of
# bench/throughput.sh, which takes the rest of the arguments itself.
for (( i=1; i<=$#; i++ )); do
  if [ "${!i}" = --scenario ]; then
    j=$(( i + 1 ))
    if [ "${!j:-}" != canned ]; then exec bash "$HERE/throughput.sh" "$@"; fi
    set -- "${@:1:i-1}" "${@:j+1}"
    break
  fi
done

DURATION=10
ROUNDS=3
CONNS=64
BIG_CONNS=1000
NREQ=20000
DISTINCT=100000
WARMUP=2
OUT="$HERE/last-run.txt"
KEEP=0
INSTALL=1
BUILD=1
QUICK=0
LOG_COMPARE=0
PGO=1
INSTR=auto

usage() { sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; DURATION=3; ROUNDS=1; WARMUP=1; shift ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --big-connections) BIG_CONNS=$2; shift 2 ;;
    --requests) NREQ=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --log-compare) LOG_COMPARE=1; shift ;;
    --no-pgo) PGO=0; shift ;;
    --instructions) INSTR=1; shift ;;
    --no-instructions) INSTR=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in DURATION ROUNDS CONNS BIG_CONNS NREQ; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer (got '${!v}')" >&2; exit 2; }
done
# Requests are signed once per run with auth_timestamp = start + min(duration/2, 500);
# the proxy accepts ±600 s, so a run may last up to ~1100 s.
if [ "$DURATION" -gt 1100 ]; then echo "--duration must be at most 1100 s (±600 s timestamp window)" >&2; exit 2; fi
TS_OFFSET=$(( DURATION / 2 < 500 ? DURATION / 2 : 500 ))

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; FAILED=1; exit 1; }

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
PIDS=()
FAILED=0
POLICY_CREATED=0
WORK=""

cleanup() {
  local rc=$?
  set +e
  # Stop what we started, newest first, by pid only.
  local i pid deadline
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do
    pid=${PIDS[$i]}
    kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    deadline=$(( SECONDS + 10 ))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; fi
    wait "$pid" 2>/dev/null
  done
  if [ "$POLICY_CREATED" -eq 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" -eq 1 ] || [ "$FAILED" -eq 1 ] || [ "$rc" -ne 0 ]; then
      log "work dir kept: $WORK"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'FAILED=1; exit 130' INT TERM
trap 'log "ERROR: command failed at line $LINENO: $BASH_COMMAND"' ERR

# ------------------------------------------------------------------ 1. tools
if [ "$INSTALL" -eq 1 ]; then
  need=()
  [ -n "$(find_bin nginx)" ] || need+=(nginx-light)
  [ -n "$(find_bin haproxy)" ] || need+=(haproxy)
  [ -n "$(find_bin wrk)" ] || need+=(wrk)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing from Debian: ${need[*]}"
    apt_install "${need[@]}" || die "apt-get install ${need[*]} failed"
  fi
fi
NGINX=$(find_bin nginx); HAPROXY=$(find_bin haproxy); WRK=$(find_bin wrk)
if [ "$INSTR" = auto ]; then
  if [ "$QUICK" -eq 0 ] && command -v valgrind >/dev/null; then INSTR=1; else INSTR=0; fi
fi
if [ "$INSTR" -eq 1 ] && ! command -v valgrind >/dev/null; then die "--instructions needs valgrind (Debian package valgrind)"; fi
[ -n "$NGINX" ] && [ -n "$HAPROXY" ] && [ -n "$WRK" ] || die "need nginx, haproxy and wrk (run without --no-install)"
command -v python3 >/dev/null || die "need python3"
command -v curl >/dev/null || die "need curl"

# The tree's commit as the run starts, before the build: the sources it
# builds from (edits and commits made while it runs are not in the binary).
GIT_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(cd "$ROOT" && { git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null && echo clean || echo "src modified"; })
if [ "$PGO" -eq 1 ]; then
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/pgo/release/pusher-cutover"
  FLOOR_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/pgo-floor/release/examples/hyper_floor"
  if [ "$BUILD" -eq 1 ]; then
    log "bench/pgo.sh (profile-guided release build)"
    # shellcheck disable=SC2046
    timeout 3600 bash "$HERE/pgo.sh" --floor $( [ "$INSTALL" -eq 1 ] || echo --no-install) >/dev/null \
      || die "bench/pgo.sh failed"
  fi
  BUILD_KIND="profile-guided (bench/pgo.sh)"
else
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pusher-cutover"
  FLOOR_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/hyper_floor"
  if [ "$BUILD" -eq 1 ]; then
    log "cargo build --release --locked (and --example hyper_floor)"
    (cd "$ROOT" && timeout 1800 cargo build --release --locked --bin pusher-cutover --example hyper_floor >&2) \
      || die "cargo build failed"
  fi
  BUILD_KIND="plain release (--no-pgo)"
fi
[ -x "$BIN" ] || die "no binary at $BIN"
[ -x "$FLOOR_BIN" ] || die "no binary at $FLOOR_BIN (run without --no-build)"

# Allow 1,000+ connections per process (wrk, the proxies, the upstream).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $(( BIG_CONNS * 3 + 100 )) ] \
  || log "warning: ulimit -n $(ulimit -n) may be too low for $BIG_CONNS connections"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pusher-cutover-bench.XXXXXX")
chmod 755 "$WORK"
cp "$BIN" "$WORK/pusher-cutover"   # immune to concurrent rebuilds
cp "$FLOOR_BIN" "$WORK/hyper_floor"
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
PY="python3 $HERE/bench.py"

mapfile -t P < <($PY ports 12)
UP_PORT=${P[0]}; NGX_PORT=${P[1]}; HAP_PORT=${P[2]}
PC_PORT=${P[3]}; PC_ADMIN=${P[4]}; PC2_PORT=${P[5]}; PC2_ADMIN=${P[6]}
PC3_PORT=${P[7]}; PC3_ADMIN=${P[8]}; PC3_PID=""; FLOOR_PORT=${P[9]}
PC4_PORT=${P[10]}; PC4_ADMIN=${P[11]}
log "work dir $WORK; ports: upstream $UP_PORT nginx $NGX_PORT haproxy $HAP_PORT pusher-cutover $PC_PORT (admin $PC_ADMIN), without data_dir $PC2_PORT (admin $PC2_ADMIN), access log off $PC4_PORT (admin $PC4_ADMIN)"

# ------------------------------------------------------------------ 2. configs
mkdir -p "$WORK/nginx-up" "$WORK/nginx-proxy" "$WORK/haproxy" "$WORK/pc-data"
{
  echo "# canned upstream: the current API's answer shapes, no signature checks"
  echo "worker_processes 1;"
  nginx_common "$WORK/nginx-up"
  echo "http {"
  nginx_http_common "$WORK/nginx-up"
  canned_upstream_server "$UP_PORT"
  echo "}"
} > "$WORK/nginx-up/nginx.conf"

nginx_proxy_conf "$WORK/nginx-proxy" "$NGX_PORT" "$UP_PORT" > "$WORK/nginx-proxy/nginx.conf"

cat > "$WORK/haproxy/haproxy.cfg" <<EOF
# plain HTTP proxy to the canned upstream, keep-alive both sides
global
    nbthread 2
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind 127.0.0.1:$HAP_PORT
    default_backend canned
backend canned
    server up 127.0.0.1:$UP_PORT
EOF

pc_config() { # $1 listen, $2 admin, $3 data_dir or empty; stopped within 2 s
  echo "shutdown_grace_ms = 2000"
  bench_proxy_config "$1" "$2" "$UP_PORT" "$3"
}
pc_config "$PC_PORT" "$PC_ADMIN" "$WORK/pc-data" > "$WORK/pc.toml"
pc_config "$PC2_PORT" "$PC2_ADMIN" "" > "$WORK/pc-nodata.toml"
mkdir -p "$WORK/pc-quiet-data"
pc_config "$PC3_PORT" "$PC3_ADMIN" "$WORK/pc-quiet-data" > "$WORK/pc-quiet.toml"
mkdir -p "$WORK/pc-nolog-data"
pc_config "$PC4_PORT" "$PC4_ADMIN" "$WORK/pc-nolog-data" > "$WORK/pc-nolog.toml"

"$NGINX" -t -q -p "$WORK/nginx-up/" -e "$WORK/nginx-up/error.log" -c "$WORK/nginx-up/nginx.conf" >&2 || die "canned upstream config"
"$NGINX" -t -q -p "$WORK/nginx-proxy/" -e "$WORK/nginx-proxy/error.log" -c "$WORK/nginx-proxy/nginx.conf" >&2 || die "nginx proxy config"
"$HAPROXY" -c -q -f "$WORK/haproxy/haproxy.cfg" >&2 || die "haproxy config"
"$WORK/pusher-cutover" validate --config "$WORK/pc.toml" >&2 || die "pusher-cutover config"
"$WORK/pusher-cutover" validate --config "$WORK/pc-nodata.toml" >&2 || die "pusher-cutover config (no data_dir)"
"$WORK/pusher-cutover" validate --config "$WORK/pc-nolog.toml" >&2 || die "pusher-cutover config (access log off)"

# ------------------------------------------------------------------ 3. start
start_bg() { # $1 name, rest: command; sets LAST_PID
  local name=$1; shift
  ( cd "$WORK" && exec "$@" ) >>"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  echo "$LAST_PID" > "$WORK/$name.pid"
}
wait_http() { # $1 url, $2 pid, $3 name; 30 s bound
  wait_ready "$1" "$2" || { tail -n 20 "$WORK/$3.log" >&2; die "$3 did not start"; }
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
start_bg nginx-up "$NGINX" -p "$WORK/nginx-up/" -e "$WORK/nginx-up/error.log" -c "$WORK/nginx-up/nginx.conf" -g 'daemon off;'
UP_PID=$LAST_PID
wait_http "http://127.0.0.1:$UP_PORT/" "$UP_PID" nginx-up
start_bg nginx-proxy "$NGINX" -p "$WORK/nginx-proxy/" -e "$WORK/nginx-proxy/error.log" -c "$WORK/nginx-proxy/nginx.conf" -g 'daemon off;'
NGX_PID=$LAST_PID
wait_http "http://127.0.0.1:$NGX_PORT/" "$NGX_PID" nginx-proxy
start_bg haproxy "$HAPROXY" -db -f "$WORK/haproxy/haproxy.cfg"
HAP_PID=$LAST_PID
wait_http "http://127.0.0.1:$HAP_PORT/" "$HAP_PID" haproxy
start_bg hyper-floor "$WORK/hyper_floor" "127.0.0.1:$FLOOR_PORT" "127.0.0.1:$UP_PORT"
FLOOR_PID=$LAST_PID
wait_http "http://127.0.0.1:$FLOOR_PORT/" "$FLOOR_PID" hyper-floor
start_bg pc "$WORK/pusher-cutover" serve --config "$WORK/pc.toml"
PC_PID=$LAST_PID
wait_http "http://127.0.0.1:$PC_ADMIN/readyz" "$PC_PID" pc
start_bg pc-nodata "$WORK/pusher-cutover" serve --config "$WORK/pc-nodata.toml"
PC2_PID=$LAST_PID
wait_http "http://127.0.0.1:$PC2_ADMIN/readyz" "$PC2_PID" pc-nodata
# Its access log off for current-API calls (README: legacy calls still
# logged), as nginx and HAProxy run here: the passthrough CPU comparison
# with hyper-floor, which logs nothing either.
LOG_OFF="info,pusher_cutover::request=warn"
start_bg pc-nolog env RUST_LOG="$LOG_OFF" "$WORK/pusher-cutover" serve --config "$WORK/pc-nolog.toml"
PC4_PID=$LAST_PID
wait_http "http://127.0.0.1:$PC4_ADMIN/readyz" "$PC4_PID" pc-nolog
EXTRA_TARGETS=("pusher-cutover no-data_dir" "pusher-cutover access-log-off")
if [ "$LOG_COMPARE" -eq 1 ]; then
  start_bg pc-quiet env RUST_LOG=error "$WORK/pusher-cutover" serve --config "$WORK/pc-quiet.toml"
  PC3_PID=$LAST_PID
  wait_http "http://127.0.0.1:$PC3_ADMIN/readyz" "$PC3_PID" pc-quiet
  EXTRA_TARGETS+=("pusher-cutover RUST_LOG=error")
fi
log "all targets up (pids: upstream $UP_PID nginx $NGX_PID haproxy $HAP_PID hyper-floor $FLOOR_PID pusher-cutover $PC_PID / $PC2_PID / $PC4_PID)"

port_of() {
  case "$1" in
    upstream-direct) echo "$UP_PORT" ;;
    nginx) echo "$NGX_PORT" ;;
    haproxy) echo "$HAP_PORT" ;;
    hyper-floor) echo "$FLOOR_PORT" ;;
    pusher-cutover|pusher-cutover*with-data_dir|*distinct-UAs|*log=info) echo "$PC_PORT" ;;
    pusher-cutover*no-data_dir) echo "$PC2_PORT" ;;
    *RUST_LOG=error) echo "$PC3_PORT" ;;
    *access-log-off) echo "$PC4_PORT" ;;
  esac
}
admin_of() {
  case "$1" in
    pusher-cutover|pusher-cutover*with-data_dir|*distinct-UAs|*log=info) echo "$PC_ADMIN" ;;
    pusher-cutover*no-data_dir) echo "$PC2_ADMIN" ;;
    *RUST_LOG=error) echo "$PC3_ADMIN" ;;
    *access-log-off) echo "$PC4_ADMIN" ;;
    *) echo "" ;;
  esac
}
pids_of() { # the target's processes (nginx: master and its workers)
  case "$1" in
    upstream-direct) echo "$UP_PID" $(pgrep -P "$UP_PID" || true) ;;
    nginx) echo "$NGX_PID" $(pgrep -P "$NGX_PID" || true) ;;
    haproxy) echo "$HAP_PID" ;;
    hyper-floor) echo "$FLOOR_PID" ;;
    pusher-cutover|pusher-cutover*with-data_dir|*distinct-UAs|*log=info) echo "$PC_PID" ;;
    pusher-cutover*no-data_dir) echo "$PC2_PID" ;;
    *RUST_LOG=error) echo "$PC3_PID" ;;
    *access-log-off) echo "$PC4_PID" ;;
  esac
}
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # user+system CPU ticks of the target's processes (all threads)
  # shellcheck disable=SC2046
  ticks_of $(pids_of "$1")
}
hwm_kb() { # sum of VmHWM over the target's processes
  local total=0 pid v
  for pid in $(pids_of "$1"); do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    total=$(( total + ${v:-0} ))
  done
  echo "$total"
}

# ------------------------------------------------------------------ 4. runs
REQS="$WORK/requests.bin"
gen() { # $1 scenario, $2 count, $3 distinct user agents, [$4 UA prefix]
  timeout 300 $PY gen --scenario "$1" --n "$2" --user-agents "$3" --out "$REQS" \
    --ts-offset "$TS_OFFSET" ${4:+--ua-prefix "$4"} || die "request generation failed"
}

# run KIND ROUND TARGET SCENARIO CONNS DURATION [N] [UAS] [UA_PREFIX]
run() {
  local kind=$1 round=$2 target=$3 sc=$4 conns=$5 dur=$6 n=${7:-$NREQ} uas=${8:-10} uap=${9:-}
  local port admin out line lf=""
  port=$(port_of "$target"); admin=$(admin_of "$target")
  gen "$sc" "$n" "$uas" "$uap"
  if [ -n "$admin" ]; then
    curl -s --max-time 5 "http://127.0.0.1:$admin/metrics" > "$WORK/m.before" || true
    # keep the proxy's log bounded (it logs every request): keep a tail, truncate
    lf="$WORK/pc.log"; [[ $target == *no-data_dir ]] && lf="$WORK/pc-nodata.log"
    [[ $target == *RUST_LOG=error ]] && lf="$WORK/pc-quiet.log"
    [[ $target == *access-log-off ]] && lf="$WORK/pc-nolog.log"
    tail -n 5 "$lf" >> "$lf.tails" 2>/dev/null || true; : > "$lf"
  fi
  out="$WORK/wrk.out"
  local cpu0; cpu0=$(cpu_ticks "$target")
  if ! timeout $(( dur + 120 )) "$WRK" -t2 -c"$conns" -d"${dur}s" --timeout 5s \
        -s "$HERE/requests.lua" "http://127.0.0.1:$port/" -- "$REQS" > "$out" 2>&1; then
    cat "$out" >&2; die "wrk failed against $target ($sc)"
  fi
  # Work the load left (a log line held for its batch, a request cut when
  # wrk stopped) is the target's too: read a moment after wrk exits.
  sleep 0.1
  local cpu1; cpu1=$(cpu_ticks "$target")
  line=$(grep '^BENCH_RESULT' "$out" || true)
  [ -n "$line" ] || { cat "$out" >&2; die "no result from wrk against $target ($sc)"; }
  local outcomes="-" statuses="-"
  if [ -n "$admin" ]; then
    sleep 0.5   # let calls whose client left at the end of the run finish and be logged
    curl -s --max-time 5 "http://127.0.0.1:$admin/metrics" > "$WORK/m.after" || true
    outcomes=$($PY outcomes "$WORK/m.before" "$WORK/m.after")
    # the proxy's own answers, from its per-request log lines
    statuses=$( { grep -o ' status=[0-9]*' "$lf" || true; } | sort | uniq -c \
      | awk '{ printf "%s%s:%s", sep, substr($2, 8), $1; sep = "," }')
    [ -n "$statuses" ] || statuses="-"
  fi
  local rss; rss=$(hwm_kb "$target")
  # shellcheck disable=SC2086
  eval "$(echo "${line#BENCH_RESULT }" | tr ' ' '\n' | sed 's/^/local w_/')"
  local rps; rps=$(awk -v r="$w_requests" -v d="$w_duration_us" 'BEGIN { printf "%.1f", r / (d / 1e6) }')
  local sockerr=$(( w_connect + w_read + w_write + w_timeout ))
  local cpu_us; cpu_us=$(awk -v t=$(( cpu1 - cpu0 )) -v hz="$CLK_TCK" -v r="$w_requests" \
    'BEGIN { printf "%.1f", (r > 0 ? t / hz * 1e6 / r : 0) }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$round" "$target" "$sc" "$conns" \
    "$rps" "$w_p50_us" "$w_p99_us" "$w_status" "$sockerr" "$rss" "$outcomes" "$statuses" "$cpu_us" >> "$RESULTS"
  log "$(printf '%-8s r%s %-28s %-15s c=%-5s %9s req/s p50 %6sus p99 %7sus cpu %6sus/req non-2xx %s sockerr %s %s %s' \
    "$kind" "$round" "$target" "$sc" "$conns" "$rps" "$w_p50_us" "$w_p99_us" "$cpu_us" "$w_status" "$sockerr" "$outcomes" "$statuses")"
  sleep 1
}

SCENARIOS=(legacy_trigger legacy_stats current_trigger)
TARGETS=(upstream-direct nginx haproxy hyper-floor pusher-cutover)

log "probing each target (first 2 requests of each scenario)"
PROBE_BAD=0
for sc in "${SCENARIOS[@]}"; do
  gen "$sc" 2 1
  for t in "${TARGETS[@]}" "${EXTRA_TARGETS[@]}"; do
    expect=200
    [[ $t == pusher-cutover* && $sc == legacy_trigger ]] && expect=202
    printf '%-16s %-28s %s\n' "$sc" "$t" "$(timeout 30 $PY probe "$REQS" "$(port_of "$t")" 2 --expect "$expect" 2>&1 || echo " UNEXPECTED (expected $expect)")" \
      | tee -a "$WORK/probe.txt" >&2
  done
done
grep -q UNEXPECTED "$WORK/probe.txt" && log "WARNING: some target answered with an unexpected status (see above)"

log "warm-up: ${WARMUP}s per target"
for t in "${TARGETS[@]}" "${EXTRA_TARGETS[@]}"; do
  gen legacy_trigger 2000 10
  timeout $(( WARMUP + 60 )) "$WRK" -t2 -c"$CONNS" -d"${WARMUP}s" -s "$HERE/requests.lua" \
    "http://127.0.0.1:$(port_of "$t")/" -- "$REQS" > /dev/null 2>&1 || log "warm-up of $t failed"
done

START=$SECONDS
for (( r=1; r<=ROUNDS; r++ )); do
  log "round $r/$ROUNDS"
  for sc in "${SCENARIOS[@]}"; do
    # KIND:TARGET, in an order that rotates by one place each round and
    # runs backwards every other round, so that no target always runs
    # first, and of two neighbours (hyper-floor and pusher-cutover) each
    # runs first in every other round (the machine drifts within a round);
    # with current_trigger, the pusher-cutover without its access log too,
    # against hyper-floor
    entries=()
    for t in "${TARGETS[@]}"; do entries+=("main:$t"); done
    [ "$sc" = current_trigger ] && entries+=("accesslog:pusher-cutover access-log-off")
    n=${#entries[@]}
    for (( i = 0; i < n; i++ )); do
      if (( r % 2 )); then k=$(( (i + r - 1) % n )); else k=$(( (n - 1 - i + r - 1) % n )); fi
      e=${entries[$k]}
      run "${e%%:*}" "$r" "${e#*:}" "$sc" "$CONNS" "$DURATION"
    done
  done
  # with vs without data_dir; the order alternates between rounds
  if (( r % 2 )); then tel=("pusher-cutover with-data_dir" "pusher-cutover no-data_dir")
  else tel=("pusher-cutover no-data_dir" "pusher-cutover with-data_dir"); fi
  for t in "${tel[@]}"; do run telemetry "$r" "$t" legacy_trigger "$CONNS" "$DURATION"; done
  # distinct callers: same request count, 10 vs DISTINCT user agents
  if (( r % 2 )); then dc=(10 "$DISTINCT"); else dc=("$DISTINCT" 10); fi
  for u in "${dc[@]}"; do
    run callers "$r" "$u-distinct-UAs" legacy_trigger "$CONNS" "$DURATION" "$DISTINCT" "$u" "bench-caller r$r"
  done
  if [ "$LOG_COMPARE" -eq 1 ]; then
    if (( r % 2 )); then lg=("pusher-cutover log=info" "pusher-cutover RUST_LOG=error")
    else lg=("pusher-cutover RUST_LOG=error" "pusher-cutover log=info"); fi
    for t in "${lg[@]}"; do run logging "$r" "$t" legacy_trigger "$CONNS" "$DURATION"; done
  fi
done

PC_HWM_BEFORE_BIG=$(hwm_kb pusher-cutover)
log "$BIG_CONNS connections, legacy_trigger, one run per target"
for t in nginx haproxy pusher-cutover; do
  run c1000 1 "$t" legacy_trigger "$BIG_CONNS" "$DURATION"
done
ELAPSED=$(( SECONDS - START ))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

: > "$WORK/instructions.txt"
if [ "$INSTR" -eq 1 ]; then
  log "telemetry pair under callgrind: bench/instructions.sh --data-dir legacy_trigger current_trigger"
  if ! PATH="$(dirname "$NGINX"):$PATH" PUSHER_CUTOVER_BIN="$WORK/pusher-cutover" timeout 900 \
      bash "$HERE/instructions.sh" --data-dir legacy_trigger current_trigger \
      > "$WORK/instructions.txt" 2> "$WORK/instructions.err"; then
    log "bench/instructions.sh failed; its output:"
    cat "$WORK/instructions.err" >&2
    : > "$WORK/instructions.txt"
  fi
  # The passthrough CPU target's repeatable companion: the same call
  # through pusher-cutover with its access log off and through hyper-floor,
  # both the builds measured above (the access log on is the telemetry
  # pair's current_trigger without data_dir).
  log "passthrough against hyper-floor under callgrind: bench/instructions.sh --floor, access log off"
  if ! PATH="$(dirname "$NGINX"):$PATH" PUSHER_CUTOVER_BIN="$WORK/pusher-cutover" \
      HYPER_FLOOR_BIN="$WORK/hyper_floor" RUST_LOG="$LOG_OFF" timeout 900 \
      bash "$HERE/instructions.sh" --floor \
      > "$WORK/floor-instructions.txt" 2> "$WORK/floor-instructions.err"; then
    log "bench/instructions.sh --floor failed; its output:"
    cat "$WORK/floor-instructions.err" >&2
    : > "$WORK/floor-instructions.txt"
  fi
fi

# ------------------------------------------------------------------ 5. report
ver() { "$@" 2>&1 | head -n 1; }
{
  echo "pusher-cutover benchmark — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command:  bench/run.sh$( [ $QUICK -eq 1 ] && echo " --quick")$( [ $LOG_COMPARE -eq 1 ] && echo " --log-compare")$( [ $PGO -eq 1 ] || echo " --no-pgo") (duration ${DURATION}s, rounds $ROUNDS, $CONNS connections, $NREQ signed requests per run)"
  echo "commit:   $GIT_REV ($GIT_DIRTY); build: $BUILD_KIND"
  machine_line
  echo "versions: $(ver "$NGINX" -v) | $(ver "$HAPROXY" -v) | $("$WRK" -v 2>&1 | head -n1 | cut -d' ' -f1-3) | $(rustc --version 2>/dev/null || echo rustc ?)"
  echo "setup:    canned upstream nginx (1 worker); nginx proxy (2 workers, keepalive 1024); haproxy (nbthread 2,"
  echo "          http-reuse always); hyper-floor (examples/hyper_floor.rs, built like pusher-cutover: hyper server -> hyper"
  echo "          client, nothing else); pusher-cutover (workers = 0: one worker thread per core); wrk -t2; all on one 2-core box"
  echo ""
  $PY summarize "$RESULTS"
  echo ""
  if [ -s "$WORK/instructions.txt" ]; then
    echo "== Telemetry, instructions per request with vs without [telemetry] data_dir (callgrind, bench/instructions.sh --data-dir;"
    echo "   repeatable whatever the machine's load; 6 s of requests per line, so each with-data_dir line includes a 5 s ledger write) =="
    cat "$WORK/instructions.txt"
    awk '$3 == "data_dir" { ir[$1 " " $2] = $(NF - 1); sc[$1] = 1 }
         END { for (s in sc) if ((s " with") in ir && (s " without") in ir)
                 printf "ratio with/without data_dir, %s: %.3f\n", s, ir[s " with"] / ir[s " without"] }' \
      "$WORK/instructions.txt" | sort
    echo ""
  fi
  if [ -s "$WORK/floor-instructions.txt" ]; then
    echo "== Passthrough instructions per request against hyper-floor (callgrind, bench/instructions.sh --floor with"
    echo "   RUST_LOG=$LOG_OFF; the access log on is the line current_trigger without data_dir above) =="
    sed -E 's/^current_trigger {9}/current_trigger, log off/' "$WORK/floor-instructions.txt"
    awk '$1 == "current_trigger" && $2 == "without" { on = $(NF - 1) }
         FILENAME ~ /floor/ && $1 == "current_trigger" { off = $(NF - 1) }
         FILENAME ~ /floor/ && $1 == "hyper-floor" { floor = $(NF - 1) }
         END { if (floor > 0) {
                 if (on > 0) printf "instructions / hyper-floor'"'"'s, access log on:  %.2f\n", on / floor
                 if (off > 0) printf "instructions / hyper-floor'"'"'s, access log off: %.2f\n", off / floor } }' \
      "$WORK/instructions.txt" "$WORK/floor-instructions.txt"
    echo ""
  fi
  echo "pusher-cutover VmHWM before the $BIG_CONNS-connection run: $(awk -v k="$PC_HWM_BEFORE_BIG" 'BEGIN { printf "%.1f MiB", k / 1024 }')"
  echo "measured runs took ${ELAPSED}s; load average before the targets started: $LOAD_BEFORE; at the end: $LOAD_AFTER (includes this benchmark's own load)"
} > "$WORK/summary.txt"
cat "$WORK/summary.txt"
if [ -n "$OUT" ]; then cp "$WORK/summary.txt" "$OUT"; cp "$RESULTS" "${OUT%.txt}.tsv"; log "summary written to $OUT"; fi
