#!/usr/bin/env bash
# bench/throughput.sh — throughput by design: pusher-cutover against a real
# Sockudo, a remote (20 ms) upstream and the do-it-yourself nginx + njs
# peer, each scenario printing its ratios from one run (issue 19's targets).
#
#   bench/throughput.sh                    all three scenarios: 3 rounds of 10 s per target (~8 min after the build)
#   bench/throughput.sh --quick            3 rounds of 3 s (~4 min)
#   bench/throughput.sh --scenario sockudo|remote|njs|all [--scenario …]
#   bench/throughput.sh --duration S --rounds N [--connections C] [--remote-connections C]
#                       [--bin PATH | --pgo] [--no-build] [--out FILE] [--keep] [--label TEXT]
#   bench/run.sh --scenario sockudo|remote|njs|all …   the same, from bench/run.sh
#
#   --bin PATH: measure that pusher-cutover binary (no build); default
#   target/release/pusher-cutover, built first with `cargo build --release
#   --locked` (--no-build: as it is); --pgo: bench/pgo.sh's
#   target/pgo/release/pusher-cutover, built first unless --no-build.
#   --out FILE: where the summary goes (default bench/last-throughput.txt,
#   raw rows beside it as .tsv; --out "" for none). --keep keeps the temp
#   dir (configs, logs). --label TEXT: printed in the summary as what the
#   binary is (e.g. the commit it was built from, for a --bin build).
#
# Environment:
#   SOCKUDO_BIN            Sockudo 5.2.0 (default: `sockudo` on PATH, else ~/.cargo/bin/sockudo)
#   PC_PROTOCOL            upstream.protocol for every scenario (auto|h2c|http1); default: h2c for
#                          sockudo and remote, the binary's default (auto: HTTP/1.1 on http://) for njs;
#                          a binary without upstream.protocol runs without it (HTTP/1.1)
#   PC_BATCH_IN_FLIGHT     upstream.batch_in_flight for every scenario; default: the binary's default
#                          for sockudo and njs, upstream.max_connections for remote (see below)
#   PC_BATCH_MAX           upstream.batch_max for every scenario; default: 50 for sockudo (config/
#                          sockudo-local.toml's; its app's max_event_batch_size is config/sockudo-
#                          server.toml's, raised to a larger PC_BATCH_MAX; with a second pusher-cutover
#                          at 10 beside it whenever the first's is above 10), the binary's default (10)
#                          for the others
#   PC_MAX_CONNECTIONS     upstream.max_connections in every scenario (default 64)
#   REMOTE_SLEEP           the remote upstream's added latency in seconds (default 0.02)
#   NREQ                   signed requests per run, cycled through by wrk (default 20000)
# Settings the binary does not know (it refuses unknown keys) are detected
# with `pusher-cutover validate` and left out; an explicit PC_* the binary
# refuses stops the run. The summary prints the settings used.
#
# Scenarios, all on 127.0.0.1, each target driven by wrk -t2 through
# bench/requests.lua on requests bench/bench.py signs right before each run
# (auth_timestamp = now + half the run), the targets' order rotating
# between rounds, medians over the rounds:
#  sockudo  Sockudo 5.2.0 (one app, in-memory everything, rate limiter off).
#           direct: current-API triggers (POST /apps/{id}/events) to Sockudo
#           over HTTP/1.1, the reference (Sockudo closes every HTTP/1.1
#           connection); pc-legacy: legacy triggers through pusher-cutover to
#           Sockudo, with the example configs' batch_max = 50 (the app's
#           max_event_batch_size); pc-legacy-10: the same through a second
#           pusher-cutover with Pusher's batch_max = 10 (the default);
#           pc-passthrough: current-API triggers through the first.
#           peak up counts the target's own connections to Sockudo
#           (`ss -p`), not the other proxy's running beside it.
#           up/req: the proxy's upstream requests per client request
#           (pusher_cutover_upstream_requests_total, when the build has it).
#           Targets: legacy ≥ 1.5 × direct, passthrough ≥ 1.2 × direct.
#  remote   the canned upstream of bench/canned-upstream.sh answering after
#           REMOTE_SLEEP (echo_sleep, Debian libnginx-mod-http-echo), on an
#           HTTP/1.1 listener per target and an h2c one; --remote-connections
#           (default 1,000) client connections of legacy triggers to nginx
#           (proxy_pass, upstream keepalive 1024: one upstream connection per
#           client in flight, no cap) and to pusher-cutover
#           (upstream.max_connections = 64). The peak number of established
#           upstream connections of each target is sampled every 0.1 s (ss),
#           the upstream's requests counted by its stub_status (up/req: how
#           many upstream requests each client request cost; calls in
#           flight when wrk stops, at most one per connection, reach the
#           upstream but are not counted by wrk, so up/req is high by up to
#           connections / requests: 1,000 / 30,000 at 3,000/s for 10 s).
#           Targets: req/s ≥ 0.8 × nginx, p99 ≤ 1.5 × nginx's, peak upstream
#           connections ≤ 64, pusher-cutover's VmHWM ≤ 30 MB (10^6 bytes).
#           Arithmetic: a request holds an upstream stream or connection for
#           REMOTE_SLEEP, so pusher-cutover carries at most
#           max_connections / REMOTE_SLEEP upstream requests a second
#           (64 / 20 ms = 3,200/s), times the events per request when
#           legacy triggers are coalesced into batch_events (batch_max 10:
#           32,000/s), and at most batch_in_flight batches per app are on
#           the wire: one app here, so batch_in_flight defaults to
#           max_connections in this scenario (2 would allow 2 × 10 / 20 ms
#           = 1,000 events/s). The same arithmetic on what each run
#           measured (pusher-cutover's /metrics before and after it):
#           its upstream time per request (REMOTE_SLEEP plus the
#           upstream's and the proxy's own delays), its events per
#           upstream request, the ceiling they set (max_connections ×
#           events per request / upstream time) and its req/s as a share
#           of that ceiling: how close it came to what its stream budget
#           allows, whatever nginx's req/s was in that round.
#  njs      nginx with njs (Debian libnginx-mod-http-js) running
#           bench/njs/legacy_trigger.js: it verifies the legacy trigger,
#           translates it into POST /apps/{id}/events, re-signs it and
#           forwards it to the canned loopback upstream (subrequest to a
#           proxy_pass location with upstream keep-alive), answering 202
#           `202 ACCEPTED\n`, against pusher-cutover in front of the same
#           upstream (a listener each, so that their upstream connections
#           are counted apart; stub_status counts the upstream's requests).
#           Before measuring, both get a correctly signed trigger
#           (202 expected), one with the body changed and one with the
#           event name changed after signing (401 expected); with Sockudo
#           available, the njs peer's translation is also sent to Sockudo,
#           which checks its signature and body (202 expected).
#           Target: pusher-cutover ≥ 1.5 × njs.
# Also printed for each target: CPU/req (the target's own user+system CPU
# per completed request; nginx: master and workers) and VmHWM (peak RSS)
# read after each run. Needs nginx with the echo and njs modules, wrk, ss,
# python3, curl; Sockudo for the sockudo scenario. Stops only the processes
# it started (by pid, trap on EXIT); every wait has a timeout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
# shellcheck source=bench/canned-upstream.sh
. "$HERE/canned-upstream.sh"

DURATION=10
ROUNDS=3
CONNS=64
REMOTE_CONNS=1000
NREQ=${NREQ:-20000}
OUT="$HERE/last-throughput.txt"
KEEP=0
BUILD=1
QUICK=0
PGO=0
BIN=""
SCENARIOS=()
LABEL=""
UPSTREAM_MAX=${PC_MAX_CONNECTIONS:-64}
REMOTE_SLEEP=${REMOTE_SLEEP:-0.02}
# The command as the summary prints it: a --bin or --out path outside the
# tree by its file name only (the summary speaks of builds, not machine paths).
CMDLINE="bench/throughput.sh"
shown_path() { case "$1" in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; /*) basename "$1" ;; *) echo "$1" ;; esac; }
prev=""
for a in "$@"; do
  if [ "$prev" = --bin ] || [ "$prev" = --out ]; then CMDLINE+=" $(shown_path "$a")"; else CMDLINE+=" $a"; fi
  prev=$a
done

usage() { sed -n '2,/^[^#]/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) SCENARIOS+=("$2"); shift 2 ;;
    --quick) QUICK=1; DURATION=3; shift ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --remote-connections) REMOTE_CONNS=$2; shift 2 ;;
    --bin) BIN=$2; BUILD=0; shift 2 ;;
    --pgo) PGO=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --out) OUT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --label) LABEL=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(all)
if [[ " ${SCENARIOS[*]} " == *" all "* ]]; then SCENARIOS=(sockudo remote njs); fi
for s in "${SCENARIOS[@]}"; do
  case "$s" in sockudo|remote|njs) ;; *) echo "unknown scenario: $s (sockudo|remote|njs|all)" >&2; exit 2 ;; esac
done
for v in DURATION ROUNDS CONNS REMOTE_CONNS NREQ UPSTREAM_MAX; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer (got '${!v}')" >&2; exit 2; }
done
if [ "$DURATION" -gt 1100 ]; then echo "--duration must be at most 1100 s (±600 s timestamp window)" >&2; exit 2; fi
[[ $REMOTE_SLEEP =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "REMOTE_SLEEP must be a number of seconds" >&2; exit 2; }
TS_OFFSET=$(( DURATION / 2 ))

log() { printf '[throughput %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
FAILED=0
die() { log "ERROR: $*"; FAILED=1; exit 1; }

PIDS=()
WORK=""
cleanup() {
  local rc=$? i pid deadline
  set +e
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do kill -TERM "${PIDS[$i]}" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    deadline=$(( SECONDS + 10 ))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" -eq 1 ] || [ "$FAILED" -eq 1 ] || [ "$rc" -ne 0 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'FAILED=1; exit 130' INT TERM

# ------------------------------------------------------------------ tools
NGINX=$(find_bin nginx); WRK=$(find_bin wrk)
[ -n "$NGINX" ] && [ -n "$WRK" ] || die "needs nginx and wrk (bench/run.sh installs them)"
for tool in python3 curl ss; do command -v "$tool" >/dev/null || die "needs $tool"; done
PATH="$(dirname "$NGINX"):$PATH"   # canned-upstream.sh calls `nginx`
ECHO_MOD=$(nginx_module ngx_http_echo_module.so)
JS_MOD=$(nginx_module ngx_http_js_module.so)
SOCKUDO=${SOCKUDO_BIN:-$(command -v sockudo || echo "$HOME/.cargo/bin/sockudo")}
need_sockudo() {
  [ -x "$SOCKUDO" ] || die "the sockudo scenario needs Sockudo 5.2.0 (SOCKUDO_BIN, or sockudo on PATH; tests/install-parts.sh installs it)"
}
for s in "${SCENARIOS[@]}"; do [ "$s" = sockudo ] && need_sockudo; done

# The tree's commit as the run starts, before the build: the sources it
# builds from (edits and commits made while it runs are not in the binary).
GIT_REV=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(cd "$ROOT" && { git diff --quiet HEAD -- src Cargo.toml Cargo.lock tests/fixtures/sockudo-loopback.toml 2>/dev/null && echo clean || echo "src modified"; })
if [ -z "$BIN" ]; then
  if [ "$PGO" -eq 1 ]; then
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/pgo/release/pusher-cutover"
    if [ "$BUILD" -eq 1 ]; then
      log "bench/pgo.sh (profile-guided release build)"
      timeout 3600 bash "$HERE/pgo.sh" >/dev/null || die "bench/pgo.sh failed"
    fi
    BUILD_KIND="profile-guided (bench/pgo.sh)"
  else
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pusher-cutover"
    if [ "$BUILD" -eq 1 ]; then
      log "cargo build --release --locked --bin pusher-cutover"
      (cd "$ROOT" && timeout 1800 cargo build --release --locked --bin pusher-cutover >&2) || die "cargo build failed"
    fi
    BUILD_KIND="plain release"
  fi
else
  BUILD_KIND="given with --bin"
fi
[ -x "$BIN" ] || die "no binary at $BIN"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $(( REMOTE_CONNS * 3 + 100 )) ] \
  || log "warning: ulimit -n $(ulimit -n) may be too low for $REMOTE_CONNS connections"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pusher-cutover-throughput.XXXXXX")
chmod 755 "$WORK"
cp "$BIN" "$WORK/pusher-cutover"   # immune to concurrent rebuilds
PC="$WORK/pusher-cutover"
BIN_SUM=$(sha256sum "$PC" | cut -c1-12)
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
: > "$WORK/notes.txt"
PY="python3 $HERE/bench.py"
note() { echo "$*" >> "$WORK/notes.txt"; log "$*"; }

# ------------------------------------------------------------------ settings
# pc_config LISTEN ADMIN UPSTREAM_URL DATA_DIR [EXTRA_UPSTREAM_LINES]: the
# proxy's config for the benchmark app (4242), like bench_proxy_config's.
pc_config() {
  cat <<CONF
listen = "127.0.0.1:$1"
shutdown_grace_ms = 2000

[admin]
listen = "127.0.0.1:$2"

[upstream]
url = "$3"
max_connections = $UPSTREAM_MAX
${5:-}

[[apps]]
id = "4242"
key = "bench-app-key"
secret = "bench-app-secret"
subscription_count = "on"

[telemetry]
data_dir = "$4"
CONF
}
accepts() { # does the binary accept these [upstream] lines?
  mkdir -p "$WORK/probe-data"
  pc_config 1 2 "http://127.0.0.1:3" "$WORK/probe-data" "$1" > "$WORK/probe.toml"
  "$PC" validate --config "$WORK/probe.toml" >/dev/null 2>&1
}
HAS_PROTOCOL=0; HAS_BATCH_IN_FLIGHT=0; HAS_BATCH_MAX=0
accepts 'protocol = "h2c"' && HAS_PROTOCOL=1
accepts 'batch_in_flight = 2' && HAS_BATCH_IN_FLIGHT=1
accepts 'batch_max = 10' && HAS_BATCH_MAX=1
# The sockudo scenario's two batch sizes, each from its own example config:
# pusher-cutover's batch_max from config/sockudo-local.toml (50), used when
# the binary takes more than Pusher's 10 (a second pusher-cutover runs
# beside it with batch_max = 10), and the Sockudo app's limit on events per
# batch_events request from config/sockudo-server.toml's
# max_event_batch_size (50; a config test keeps the first within it). A
# larger PC_BATCH_MAX raises the app's limit with it (Sockudo refuses a
# batch above its limit whole).
SOCKUDO_BATCH=$(sed -n 's/^batch_max = \([0-9][0-9]*\).*/\1/p' "$ROOT/config/sockudo-local.toml")
[[ $SOCKUDO_BATCH =~ ^[0-9]+$ ]] || die "no batch_max in config/sockudo-local.toml"
SOCKUDO_APP_LIMIT=$(sed -n 's/^max_event_batch_size = \([0-9][0-9]*\).*/\1/p' "$ROOT/config/sockudo-server.toml")
[[ $SOCKUDO_APP_LIMIT =~ ^[0-9]+$ ]] || die "no max_event_batch_size in config/sockudo-server.toml"
HAS_BIG_BATCH=0
[ "$HAS_BATCH_MAX" -eq 1 ] && accepts "batch_max = $SOCKUDO_BATCH" && HAS_BIG_BATCH=1
if [[ "${PC_BATCH_MAX:-}" =~ ^[0-9]+$ ]] && [ "$PC_BATCH_MAX" -gt "$SOCKUDO_APP_LIMIT" ]; then SOCKUDO_APP_LIMIT=$PC_BATCH_MAX; fi
accepts '' || { "$PC" validate --config "$WORK/probe.toml" >&2 || true; die "the binary refuses the benchmark's config"; }
if [ -n "${PC_PROTOCOL:-}" ] && [ "$HAS_PROTOCOL" -eq 0 ]; then die "PC_PROTOCOL=$PC_PROTOCOL, but this binary has no upstream.protocol"; fi
if [ -n "${PC_PROTOCOL:-}" ] && ! accepts "protocol = \"$PC_PROTOCOL\""; then die "the binary refuses upstream.protocol = \"$PC_PROTOCOL\""; fi
if [ -n "${PC_BATCH_IN_FLIGHT:-}" ] && ! accepts "batch_in_flight = $PC_BATCH_IN_FLIGHT"; then die "the binary refuses upstream.batch_in_flight = $PC_BATCH_IN_FLIGHT"; fi
if [ -n "${PC_BATCH_MAX:-}" ] && ! accepts "batch_max = $PC_BATCH_MAX"; then die "the binary refuses upstream.batch_max = $PC_BATCH_MAX"; fi

# upstream_settings SCENARIO: the extra [upstream] lines of the scenario.
upstream_settings() {
  local proto="" bif="" bmax=""
  if [ "$HAS_PROTOCOL" -eq 1 ]; then
    proto=${PC_PROTOCOL:-}
    [ -n "$proto" ] || case "$1" in sockudo|remote) proto=h2c ;; esac
  fi
  if [ "$HAS_BATCH_IN_FLIGHT" -eq 1 ]; then
    bif=${PC_BATCH_IN_FLIGHT:-}
    [ -n "$bif" ] || { [ "$1" = remote ] && bif=$UPSTREAM_MAX; }
  fi
  if [ "$HAS_BATCH_MAX" -eq 1 ]; then
    bmax=${PC_BATCH_MAX:-}
    [ -n "$bmax" ] || { [ "$1" = sockudo ] && [ "$HAS_BIG_BATCH" -eq 1 ] && bmax=$SOCKUDO_BATCH; }
  fi
  [ -z "$proto" ] || echo "protocol = \"$proto\""
  [ -z "$bif" ] || echo "batch_in_flight = $bif"
  [ -z "$bmax" ] || echo "batch_max = $bmax"
}
# settings_line SCENARIO: what the summary says of them.
settings_line() {
  local extra
  extra=$(upstream_settings "$1" | tr '\n' ';' | sed 's/;$//; s/;/; /g')
  echo "max_connections = $UPSTREAM_MAX${extra:+; $extra}$( [ "$HAS_PROTOCOL" -eq 1 ] || echo '; (binary has no upstream.protocol: HTTP/1.1)')$( [ "$HAS_BATCH_IN_FLIGHT$HAS_BATCH_MAX" = 11 ] || echo '; (binary has no batch_in_flight/batch_max: no coalescing)')"
}
# the upstream URL port for pusher-cutover when it speaks h2c to a listener of its own
uses_h2c() { upstream_settings "$1" | grep -q 'protocol = "h2c"'; }

# ------------------------------------------------------------------ processes
start_bg() { # $1 name, rest: command; sets LAST_PID
  local name=$1; shift
  ( cd "$WORK" && exec "$@" ) >>"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
stop_pid() { # stops one process this script started, and forgets it
  local pid=$1 deadline=$(( SECONDS + 10 )) keep=() p
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
wait_http() { # $1 url, $2 pid, $3 name
  wait_ready "$1" "$2" 30 || { tail -n 20 "$WORK/$3.log" >&2; die "$3 did not start"; }
}
start_nginx() { # $1 name (config in $WORK/$1/nginx.conf); sets LAST_PID
  "$NGINX" -t -q -p "$WORK/$1/" -e "$WORK/$1/error.log" -c "$WORK/$1/nginx.conf" >&2 || die "$1: nginx config"
  start_bg "$1" "$NGINX" -p "$WORK/$1/" -e "$WORK/$1/error.log" -c "$WORK/$1/nginx.conf" -g 'daemon off;'
}
start_pc() { # $1 name, $2 listen port, $3 admin port, $4 upstream URL, $5 scenario[, $6 its [upstream] lines]; sets LAST_PID
  mkdir -p "$WORK/$1-data"
  pc_config "$2" "$3" "$4" "$WORK/$1-data" "${6-$(upstream_settings "$5")}" > "$WORK/$1.toml"
  "$PC" validate --config "$WORK/$1.toml" >&2 || die "$1: pusher-cutover config"
  start_bg "$1" "$PC" serve --config "$WORK/$1.toml"
  wait_http "http://127.0.0.1:$3/readyz" "$LAST_PID" "$1"
}
pids_with_children() { local p; for p in "$@"; do echo "$p" $(pgrep -P "$p" || true); done; }
hwm_kb() { local total=0 pid v; for pid in "$@"; do v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true); total=$(( total + ${v:-0} )); done; echo "$total"; }

REQS="$WORK/requests.bin"
gen() { # $1 request kind, [$2 count]
  timeout 300 $PY gen --scenario "$1" --n "${2:-$NREQ}" --out "$REQS" --ts-offset "$TS_OFFSET" \
    || die "request generation failed"
}
# probe NAME PORT KIND EXPECT [TAMPER]: one freshly signed request; dies unless answered EXPECT.
probe() {
  local out
  gen "$3" 1
  out=$(timeout 30 $PY probe "$REQS" "$2" 1 --expect "$4" ${5:+--tamper "$5"} 2>&1) \
    || die "$1 answered a${5:+ tampered ($5)} $3 with $out (expected $4)"
  printf '  %-22s %-16s %-8s %s\n' "$1" "$3" "${5:-signed}" "$out" | tee -a "$WORK/probes.txt" >&2
}

CLK_TCK=$(getconf CLK_TCK)
# The proxy's own count of its upstream requests (a build without that
# metric: none, and up/req stays "-" where the upstream cannot count).
UPSTREAM_METRIC=pusher_cutover_upstream_requests_total
pc_upstream_requests() { # ADMIN_PORT
  curl -s --max-time 5 "http://127.0.0.1:$1/metrics" > "$WORK/m.now" 2>/dev/null || true
  $PY metric-sum "$WORK/m.now" "$UPSTREAM_METRIC"
}
# run SCENARIO ROUND TARGET KIND CONNS PORT "PIDS" [PEAK_PORT] [STATUS_PORT] [ADMIN_PORT]
run() {
  local sc=$1 round=$2 target=$3 kind=$4 conns=$5 port=$6 pids=$7 peak_port=${8:-} status_port=${9:-} admin=${10:-}
  local out="$WORK/wrk.out" sampler="" peak="-" upr="-" u0=0 u1 c0 c1 line m0="" ceiling="-" up_ms="-"
  gen "$kind"
  # pusher-cutover's metrics around the run, for its stream-budget ceiling
  # (bench.py ceiling); legacy triggers only
  [ -z "$admin" ] || [ "$kind" != legacy_trigger ] \
    || curl -s --max-time 5 "http://127.0.0.1:$admin/metrics" > "$WORK/m.before" 2>/dev/null || true
  # (legacy triggers only: the counter may leave passthrough calls out)
  [ -z "$admin" ] || [ -n "$status_port" ] || [ "$kind" != legacy_trigger ] || m0=$(pc_upstream_requests "$admin")
  # shellcheck disable=SC2086
  c0=$(ticks_of $pids)
  [ -z "$status_port" ] || u0=$(upstream_requests "$status_port")
  if [ -n "$peak_port" ]; then
    # Sockudo's clients run side by side: each counts only its own.
    # shellcheck disable=SC2086
    peak_connections "$peak_port" "$WORK/peak" "$( [ "$sc" != sockudo ] || echo $pids)" &
    sampler=$!
  fi
  if ! timeout $(( DURATION + 120 )) "$WRK" -t2 -c"$conns" -d"${DURATION}s" --timeout 5s \
        -s "$HERE/requests.lua" "http://127.0.0.1:$port/" -- "$REQS" > "$out" 2>&1; then
    [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
    cat "$out" >&2; die "wrk failed against $target ($sc)"
  fi
  # shellcheck disable=SC2086
  c1=$(ticks_of $pids)
  if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; peak=$(cat "$WORK/peak"); [ -n "$peak" ] || peak=-; fi
  line=$(grep '^BENCH_RESULT' "$out" || true)
  [ -n "$line" ] || { cat "$out" >&2; die "no result from wrk against $target ($sc)"; }
  eval "$(echo "${line#BENCH_RESULT }" | tr ' ' '\n' | sed 's/^/local w_/')"
  if [ -n "$status_port" ]; then
    # Calls in flight when wrk stopped (at most one per connection) still
    # reach the upstream: wait until its count stops moving (10 s at most).
    local prev=-1 n=0 deadline=$(( SECONDS + 10 ))
    u1=$(upstream_requests "$status_port")
    while [ "$u1" != "$prev" ] && [ $SECONDS -lt $deadline ]; do
      sleep 0.5; prev=$u1; u1=$(upstream_requests "$status_port"); n=$(( n + 1 ))
    done
    # stub_status counts its own queries: the first one and the n + 1 since
    upr=$(awk -v a="$u0" -v b="$u1" -v q=$(( n + 1 )) -v r="$w_requests" 'BEGIN { printf "%.3f", (r > 0 ? (b - a - q) / r : 0) }')
  elif [ -n "$m0" ]; then
    sleep 0.5   # calls in flight when wrk stopped
    u1=$(pc_upstream_requests "$admin")
    [ -z "$u1" ] || upr=$(awk -v a="$m0" -v b="$u1" -v r="$w_requests" 'BEGIN { printf "%.3f", (r > 0 ? (b - a) / r : 0) }')
  fi
  if [ -n "$admin" ] && [ "$kind" = legacy_trigger ]; then
    [ -n "$status_port" ] || [ -n "$m0" ] || sleep 0.5   # calls in flight when wrk stopped
    curl -s --max-time 5 "http://127.0.0.1:$admin/metrics" > "$WORK/m.after" 2>/dev/null || true
    local c
    c=$($PY ceiling "$WORK/m.before" "$WORK/m.after" "$UPSTREAM_MAX")
    [ -z "$c" ] || read -r ceiling up_ms _ <<<"$c"
  fi
  local rps cpu_us sockerr rss
  rps=$(awk -v r="$w_requests" -v d="$w_duration_us" 'BEGIN { printf "%.1f", r / (d / 1e6) }')
  cpu_us=$(awk -v t=$(( c1 - c0 )) -v hz="$CLK_TCK" -v r="$w_requests" 'BEGIN { printf "%.1f", (r > 0 ? t / hz * 1e6 / r : 0) }')
  sockerr=$(( w_connect + w_read + w_write + w_timeout ))
  # shellcheck disable=SC2086
  rss=$(hwm_kb $pids)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$round" "$target" "$kind" "$conns" \
    "$rps" "$w_p50_us" "$w_p99_us" "$w_status" "$sockerr" "$cpu_us" "$peak" "$upr" "$rss" "$ceiling" "$up_ms" >> "$RESULTS"
  log "$(printf '%-8s r%s %-15s %-15s c=%-5s %9s req/s p50 %7sus p99 %8sus cpu %6sus/req non-2xx %s sockerr %s peak-up %s up/req %s' \
    "$sc" "$round" "$target" "$kind" "$conns" "$rps" "$w_p50_us" "$w_p99_us" "$cpu_us" "$w_status" "$sockerr" "$peak" "$upr")"
  sleep 1
}
# rounds SCENARIO CONNS SPEC...: each SPEC is "target|kind|port|pids|peak_port|status_port|admin_port";
# in round r the targets run in order starting at the r-th (rotating).
rounds() {
  local sc=$1 conns=$2 r j k t
  shift 2
  local specs=("$@")
  k=${#specs[@]}
  for (( r=1; r<=ROUNDS; r++ )); do
    for (( j=0; j<k; j++ )); do
      t=$(( (j + r - 1) % k ))
      IFS='|' read -r target kind port pids peak status admin <<<"${specs[$t]}"
      run "$sc" "$r" "$target" "$kind" "$conns" "$port" "$pids" "$peak" "$status" "$admin"
    done
  done
}
warm() { # PORT KIND CONNS: 2 s unmeasured
  gen "$2" 2000
  timeout 60 "$WRK" -t2 -c"$3" -d2s -s "$HERE/requests.lua" "http://127.0.0.1:$1/" -- "$REQS" >/dev/null 2>&1 \
    || log "warm-up of port $1 failed"
}

# ------------------------------------------------------------------ Sockudo
SOCKUDO_PID=""; SOCKUDO_PORT=""
start_sockudo() {
  local try out
  for try in 1 2 3; do
    SOCKUDO_PORT=$($PY ports 1)
    mkdir -p "$WORK/sockudo"
    # The end-to-end suite's config, for the bench's app.
    sed -e "s/@PORT@/$SOCKUDO_PORT/" -e 's/@APP_ID@/4242/' -e 's/@KEY@/bench-app-key/' \
      -e 's/@SECRET@/bench-app-secret/' -e "s/@MAX_EVENT_BATCH_SIZE@/$SOCKUDO_APP_LIMIT/" \
      "$ROOT/tests/fixtures/sockudo-loopback.toml" > "$WORK/sockudo/sockudo.toml"
    ! grep -q @ "$WORK/sockudo/sockudo.toml" || die "a field of tests/fixtures/sockudo-loopback.toml left unfilled"
    # A clean environment: Sockudo reads many variables (PORT, HOST, …) over its file.
    start_bg sockudo env -i PATH="$PATH" RUST_LOG=warn LOG_COLORS_ENABLED=false \
      "$SOCKUDO" --config "$WORK/sockudo/sockudo.toml"
    SOCKUDO_PID=$LAST_PID
    # Sockudo runs on its defaults when its config does not load: ready = a signed request for this app answered 200.
    local deadline=$(( SECONDS + 30 ))
    while kill -0 "$SOCKUDO_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
      out=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
        "http://127.0.0.1:$SOCKUDO_PORT/apps/4242/channels/readiness-probe?$($PY sign GET /apps/4242/channels/readiness-probe)" || true)
      [ "$out" = 200 ] && return 0
      sleep 0.3
    done
    stop_pid "$SOCKUDO_PID"
  done
  tail -n 20 "$WORK/sockudo.log" >&2
  die "Sockudo did not start"
}

scenario_sockudo() {
  log "== sockudo: $(settings_line sockudo)"
  start_sockudo
  mapfile -t P < <($PY ports 2)
  start_pc pc-sockudo "${P[0]}" "${P[1]}" "http://127.0.0.1:$SOCKUDO_PORT" sockudo
  local pc_pid=$LAST_PID pc10_pid="" extra=()
  probe direct "$SOCKUDO_PORT" current_trigger 200
  probe pc-legacy "${P[0]}" legacy_trigger 202
  probe pc-passthrough "${P[0]}" current_trigger 200
  warm "$SOCKUDO_PORT" current_trigger "$CONNS"
  warm "${P[0]}" legacy_trigger "$CONNS"
  # The same with Pusher's batch_max (the default), when pc-legacy's is larger.
  local bmax
  bmax=$(upstream_settings sockudo | sed -n 's/^batch_max = //p')
  if [ -n "$bmax" ] && [ "$bmax" -gt 10 ]; then
    mapfile -t Q < <($PY ports 2)
    start_pc pc-sockudo-10 "${Q[0]}" "${Q[1]}" "http://127.0.0.1:$SOCKUDO_PORT" sockudo \
      "$(upstream_settings sockudo | sed 's/^batch_max = .*/batch_max = 10/')"
    pc10_pid=$LAST_PID
    probe pc-legacy-10 "${Q[0]}" legacy_trigger 202
    warm "${Q[0]}" legacy_trigger "$CONNS"
    extra=("pc-legacy-10|legacy_trigger|${Q[0]}|$pc10_pid|$SOCKUDO_PORT||${Q[1]}")
  fi
  rounds sockudo "$CONNS" \
    "direct|current_trigger|$SOCKUDO_PORT|$SOCKUDO_PID||" \
    "pc-legacy|legacy_trigger|${P[0]}|$pc_pid|$SOCKUDO_PORT||${P[1]}" \
    "${extra[@]}" \
    "pc-passthrough|current_trigger|${P[0]}|$pc_pid|$SOCKUDO_PORT||${P[1]}"
  curl -s --max-time 5 "http://127.0.0.1:${P[1]}/metrics" > "$WORK/pc-sockudo.metrics" || true
  [ -z "$pc10_pid" ] || curl -s --max-time 5 "http://127.0.0.1:${Q[1]}/metrics" > "$WORK/pc-sockudo-10.metrics" || true
  [ -z "$pc10_pid" ] || stop_pid "$pc10_pid"
  stop_pid "$pc_pid"; stop_pid "$SOCKUDO_PID"
}

# ------------------------------------------------------------------ remote
scenario_remote() {
  log "== remote: $(settings_line remote); upstream latency ${REMOTE_SLEEP}s"
  [ -n "$ECHO_MOD" ] || log "warning: no ngx_http_echo_module.so (Debian libnginx-mod-http-echo); nginx -t will say"
  # ports: status, h2c, h1 for nginx, h1 for pusher-cutover, nginx proxy, pc, pc admin
  mapfile -t P < <($PY ports 7)
  local st=${P[0]} h2=${P[1]} h1n=${P[2]} h1p=${P[3]} ngx=${P[4]} pcp=${P[5]} pca=${P[6]}
  mkdir -p "$WORK/remote-up" "$WORK/remote-nginx"
  {
    echo "# canned upstream answering after ${REMOTE_SLEEP}s"
    echo "$ECHO_MOD"
    echo "worker_processes 1;"
    nginx_common "$WORK/remote-up"
    echo "http {"
    nginx_http_common "$WORK/remote-up"
    remote_upstream_server "$REMOTE_SLEEP" "$st" "$h2" "$h1n" "$h1p"
    echo "}"
  } > "$WORK/remote-up/nginx.conf"
  start_nginx remote-up
  local up_pid=$LAST_PID
  wait_http "http://127.0.0.1:$st/" "$up_pid" remote-up
  nginx_proxy_conf "$WORK/remote-nginx" "$ngx" "$h1n" > "$WORK/remote-nginx/nginx.conf"
  start_nginx remote-nginx
  local ngx_pid=$LAST_PID
  wait_http "http://127.0.0.1:$ngx/" "$ngx_pid" remote-nginx
  local pc_up=$h1p
  uses_h2c remote && pc_up=$h2
  start_pc pc-remote "$pcp" "$pca" "http://127.0.0.1:$pc_up" remote
  local pc_pid=$LAST_PID
  probe nginx "$ngx" legacy_trigger 200
  probe pusher-cutover "$pcp" legacy_trigger 202
  warm "$ngx" legacy_trigger "$REMOTE_CONNS"
  warm "$pcp" legacy_trigger "$REMOTE_CONNS"
  # shellcheck disable=SC2046
  rounds remote "$REMOTE_CONNS" \
    "nginx|legacy_trigger|$ngx|$(pids_with_children "$ngx_pid" | tr '\n' ' ')|$h1n|$st" \
    "pusher-cutover|legacy_trigger|$pcp|$pc_pid|$pc_up|$st|$pca"
  curl -s --max-time 5 "http://127.0.0.1:$pca/metrics" > "$WORK/pc-remote.metrics" || true
  stop_pid "$pc_pid"; stop_pid "$ngx_pid"; stop_pid "$up_pid"
}

# ------------------------------------------------------------------ njs
# njs_server LISTEN UPSTREAM_NAME: the njs peer's server block.
njs_server() {
  cat <<EOF
    server {
        listen 127.0.0.1:$1 backlog=4096;
        set \$app_id 4242;
        set \$app_key bench-app-key;
        set \$app_secret bench-app-secret;
        client_max_body_size 64k;
        client_body_buffer_size 64k;
        client_body_in_single_buffer on;
        location ~ ^/apps/[^/]+/channels/[^/]+/events\$ { js_content legacy.trigger; }
        location /_upstream/ {
            internal;
            proxy_pass http://$2/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Content-Type application/json;
        }
        location / {
            proxy_pass http://$2;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
EOF
}

scenario_njs() {
  log "== njs: $(settings_line njs)"
  [ -n "$JS_MOD" ] || log "warning: no ngx_http_js_module.so (Debian libnginx-mod-http-js); nginx -t will say"
  local check=0
  if [ -x "$SOCKUDO" ]; then check=1; start_sockudo; fi
  # ports: upstream h1 for njs, upstream h2c, njs, njs against Sockudo, pc, pc admin, upstream h1 for pc
  mapfile -t P < <($PY ports 8)
  local up=${P[0]} uph2=${P[1]} njs=${P[2]} njs_check=${P[3]} pcp=${P[4]} pca=${P[5]} uppc=${P[6]} st=${P[7]}
  mkdir -p "$WORK/njs-up" "$WORK/njs"
  cp "$HERE/njs/legacy_trigger.js" "$WORK/njs/"
  {
    echo "# canned upstream (bench/canned-upstream.sh), HTTP/1.1 and h2c"
    echo "worker_processes 1;"
    nginx_common "$WORK/njs-up"
    echo "http {"
    nginx_http_common "$WORK/njs-up"
    canned_upstream_server "$up" "$uph2" "$uppc"
    echo "    server { listen 127.0.0.1:$st; location / { stub_status; } }"
    echo "}"
  } > "$WORK/njs-up/nginx.conf"
  start_nginx njs-up
  local up_pid=$LAST_PID
  wait_http "http://127.0.0.1:$up/" "$up_pid" njs-up
  {
    echo "# the do-it-yourself peer: nginx + njs translating the legacy trigger"
    echo "$JS_MOD"
    echo "worker_processes 2;"
    nginx_common "$WORK/njs"
    echo "http {"
    nginx_http_common "$WORK/njs"
    echo "    js_path $WORK/njs;"
    echo "    js_import legacy from legacy_trigger.js;"
    echo "    upstream canned { server 127.0.0.1:$up; keepalive 1024; keepalive_requests 100000000; keepalive_timeout 300s; }"
    njs_server "$njs" canned
    if [ "$check" -eq 1 ]; then
      echo "    upstream sockudo { server 127.0.0.1:$SOCKUDO_PORT; }"
      njs_server "$njs_check" sockudo
    fi
    echo "}"
  } > "$WORK/njs/nginx.conf"
  start_nginx njs
  local njs_pid=$LAST_PID
  wait_http "http://127.0.0.1:$njs/" "$njs_pid" njs
  local pc_up=$uppc
  uses_h2c njs && pc_up=$uph2
  start_pc pc-njs "$pcp" "$pca" "http://127.0.0.1:$pc_up" njs
  local pc_pid=$LAST_PID
  local t port
  for t in njs pusher-cutover; do
    port=$njs; [ "$t" = njs ] || port=$pcp
    probe "$t" "$port" legacy_trigger 202
    probe "$t" "$port" legacy_trigger 401 body
    probe "$t" "$port" legacy_trigger 401 query
  done
  if [ "$check" -eq 1 ]; then
    probe "njs -> Sockudo" "$njs_check" legacy_trigger 202
    probe "njs -> Sockudo" "$njs_check" legacy_trigger 401 body
    stop_pid "$SOCKUDO_PID"
  else
    note "njs: no Sockudo, so the njs peer's re-signing was not checked against a real server"
  fi
  warm "$njs" legacy_trigger "$CONNS"
  warm "$pcp" legacy_trigger "$CONNS"
  rounds njs "$CONNS" \
    "njs|legacy_trigger|$njs|$(pids_with_children "$njs_pid" | tr '\n' ' ')|$up|$st" \
    "pusher-cutover|legacy_trigger|$pcp|$pc_pid|$pc_up|$st|$pca"
  stop_pid "$pc_pid"; stop_pid "$njs_pid"; stop_pid "$up_pid"
}

# ------------------------------------------------------------------ run
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$SECONDS
log "work dir $WORK; binary $BIN (sha256 $BIN_SUM); scenarios: ${SCENARIOS[*]}"
for s in "${SCENARIOS[@]}"; do "scenario_$s"; done
ELAPSED=$(( SECONDS - START ))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ report
ver() { "$@" 2>&1 | head -n 1; }
{
  echo "pusher-cutover throughput by design — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command:  $CMDLINE (duration ${DURATION}s, rounds $ROUNDS, $CONNS connections, remote $REMOTE_CONNS connections, $NREQ signed requests per run)"
  echo "commit:   $GIT_REV ($GIT_DIRTY) of the tree the script ran from; binary $(shown_path "$BIN") (sha256 $BIN_SUM), $BUILD_KIND"
  [ -z "$LABEL" ] || echo "build:    $LABEL"
  machine_line
  echo "versions: $(ver "$NGINX" -v) (njs $(dpkg-query -W -f '${Version}' libnginx-mod-http-js 2>/dev/null || echo ?), echo $(dpkg-query -W -f '${Version}' libnginx-mod-http-echo 2>/dev/null || echo ?)) | $( [ -x "$SOCKUDO" ] && ver "$SOCKUDO" --version || echo 'no sockudo') | $("$WRK" -v 2>&1 | head -n1 | cut -d' ' -f1-3)"
  echo "binary knows: upstream.protocol $( [ "$HAS_PROTOCOL" -eq 1 ] && echo yes || echo no), upstream.batch_in_flight $( [ "$HAS_BATCH_IN_FLIGHT" -eq 1 ] && echo yes || echo no), upstream.batch_max $( [ "$HAS_BATCH_MAX" -eq 1 ] && echo yes || echo no)"
  for s in "${SCENARIOS[@]}"; do echo "upstream settings, $s: $(settings_line "$s")"; done
  echo "correctness probes (one freshly signed request each, before the rounds):"
  cat "$WORK/probes.txt"
  [ ! -s "$WORK/notes.txt" ] || cat "$WORK/notes.txt"
  echo ""
  $PY design "$RESULTS"
  echo "measured runs took ${ELAPSED}s; load average before: $LOAD_BEFORE; at the end: $LOAD_AFTER (includes this benchmark's own load)"
} > "$WORK/summary.txt"
cat "$WORK/summary.txt"
if [ -n "$OUT" ]; then cp "$WORK/summary.txt" "$OUT"; cp "$RESULTS" "${OUT%.txt}.tsv"; log "summary written to $OUT"; fi
exit 0
