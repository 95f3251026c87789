# bench/canned-upstream.sh — sourced by the bench/ scripts: the canned upstream
# they all measure against, the proxy config they all run, nginx as a plain
# proxy, and the set-up, waiting and CPU accounting they share.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# nginx reads NGINX from its environment as sockets inherited from an old
# master (binary upgrade) and then does not start as asked: the scripts'
# own NGINX (nginx's path in run.sh and pgo.sh, compare.sh's switch) stays
# a shell variable, never passed on.
export -n NGINX
#
# canned_upstream_server PORT [H2C_PORT [PORT...]]: the nginx `server`
# block of the canned upstream, answering the current API's shapes (no
# signature checks), on HTTP/1.1 at PORT (and at each further PORT, so that
# several clients' connections can be counted apart) and, with an H2C_PORT
# other than 0, over HTTP/2 with prior knowledge (h2c) there:
#   POST /apps/{id}/events                 → {}
#   GET  /apps/{id}/channels/presence-…    → {"occupied":true,"user_count":3}
#   GET  /apps/{id}/channels/…             → {"occupied":true,"subscription_count":3}
#   anything else                          → {}
canned_upstream_server() {
  local listens="        listen 127.0.0.1:$1 backlog=4096;" p
  if [ -n "${2:-}" ] && [ "$2" != 0 ]; then listens+=$'\n'"        listen 127.0.0.1:$2 backlog=4096 http2;"; fi
  for p in "${@:3}"; do listens+=$'\n'"        listen 127.0.0.1:$p backlog=4096;"; done
  cat <<EOF
    default_type application/json;
    server {
$listens
        location ~ ^/apps/[^/]+/events\$ { return 200 '{}'; }
        location ~ ^/apps/[^/]+/channels/presence-[^/]+\$ { return 200 '{"occupied":true,"user_count":3}'; }
        location ~ ^/apps/[^/]+/channels/[^/]+\$ { return 200 '{"occupied":true,"subscription_count":3}'; }
        location / { return 200 '{}'; }
    }
EOF
}

# start_canned_upstream DIR PORT [H2C_PORT]: the canned upstream as a
# one-worker nginx on 127.0.0.1:PORT (and over h2c on H2C_PORT, if given),
# its config, pid file and error log in DIR.
start_canned_upstream() {
  cat > "$1/up.conf" <<CONF
worker_processes 1;
pid $1/up.pid;
error_log $1/up.err;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 100000000;
$(canned_upstream_server "$2" "${3:-0}")
}
CONF
  nginx -p "$1/" -c "$1/up.conf" -e "$1/up.err"
}

# stop_canned_upstream DIR: stops what start_canned_upstream DIR started.
stop_canned_upstream() {
  if [ -f "$1/up.pid" ]; then kill "$(cat "$1/up.pid")" 2>/dev/null || true; fi
}

# bench_proxy_config LISTEN ADMIN UPSTREAM [DATA_DIR]: pusher-cutover's
# config for the benchmark app (4242) on loopback ports, in front of the
# canned upstream; with a [telemetry] data_dir when DATA_DIR is given.
bench_proxy_config() {
  cat <<CONF
listen = "127.0.0.1:$1"

[admin]
listen = "127.0.0.1:$2"

[upstream]
url = "http://127.0.0.1:$3"

[[apps]]
id = "4242"
key = "bench-app-key"
secret = "bench-app-secret"
subscription_count = "on"
CONF
  if [ -n "${4:-}" ]; then printf '\n[telemetry]\ndata_dir = "%s"\n' "$4"; fi
}

# nginx_proxy_server LISTEN UPSTREAM: the nginx `upstream` and `server`
# blocks of nginx as a plain reverse proxy on 127.0.0.1:LISTEN to the canned
# upstream on 127.0.0.1:UPSTREAM, with upstream keep-alive.
nginx_proxy_server() {
  cat <<EOF
    upstream canned {
        server 127.0.0.1:$2;
        keepalive 1024;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            proxy_pass http://canned;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }
    }
EOF
}

# nginx_common DIR / nginx_http_common DIR: the top-level and `http`
# settings of the benchmark's nginx instances (pid, logs and temp files in
# DIR; keep-alive without limits; many connections).
nginx_common() {
  cat <<EOF
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; multi_accept on; }
EOF
}
nginx_http_common() {
  cat <<EOF
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
EOF
}

# nginx_proxy_conf DIR LISTEN UPSTREAM: the whole config of nginx as the
# benchmark's plain proxy (2 workers), its files in DIR (pid: DIR/nginx.pid).
nginx_proxy_conf() {
  echo "# plain reverse proxy to the canned upstream, upstream keepalive"
  echo "worker_processes 2;"
  nginx_common "$1"
  echo "http {"
  nginx_http_common "$1"
  nginx_proxy_server "$2" "$3"
  echo "}"
}

# bench_begin N: a fresh temp dir in $WORK, N free loopback ports in
# $PORTS (the first one the canned upstream's, started on it), $PIDS for
# the processes the script starts, and an EXIT trap (bench_end) that stops
# those and the upstream and removes $WORK. `bench_begin N h2c`: the
# canned upstream also speaks h2c on the last of the N ports.
bench_begin() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/pusher-cutover-bench.XXXXXX")
  PIDS=()
  trap bench_end EXIT
  mapfile -t PORTS < <(python3 "$BENCH_DIR/bench.py" ports "$1")
  if [ "${2:-}" = h2c ]; then
    start_canned_upstream "$WORK" "${PORTS[0]}" "${PORTS[$1 - 1]}"
  else
    start_canned_upstream "$WORK" "${PORTS[0]}"
  fi
}

bench_end() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_canned_upstream "$WORK"
  rm -rf "$WORK"
}

# wait_ready URL PID [SECONDS]: waits until URL answers (at most SECONDS,
# default 30); fails at once if PID exits first.
wait_ready() {
  local limit=${3:-30}
  local deadline=$(( SECONDS + limit ))
  until curl -s -o /dev/null --max-time 2 "$1"; do
    kill -0 "$2" 2>/dev/null || { echo "process $2 exited before $1 answered" >&2; return 1; }
    [ $SECONDS -lt $deadline ] || { echo "$1 did not answer within $limit s" >&2; return 1; }
    sleep 0.2
  done
}

# proxy_requests ADMIN_PORT: the requests pusher-cutover has counted so far
# (pusher_cutover_requests_total, every series summed).
proxy_requests() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^pusher_cutover_requests_total/ {s+=$2} END {print s+0}'
}

# ticks_of PID...: the processes' user+system CPU time (all threads), in
# clock ticks (getconf CLK_TCK per second).
ticks_of() {
  local total=0 pid f
  for pid in "$@"; do
    f=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
    # shellcheck disable=SC2086
    set -- $f   # after "pid (comm)": state=1 ... utime=12 stime=13
    total=$(( total + ${12} + ${13} ))
  done
  echo "$total"
}

# find_bin NAME: NAME's path on PATH or in /usr/sbin (where Debian puts
# nginx and haproxy), or nothing.
find_bin() { command -v "$1" 2>/dev/null || { [ -x "/usr/sbin/$1" ] && echo "/usr/sbin/$1"; } || true; }

# machine_line: the "machine:" line of a summary: cores, the CPU's model
# name and model number (VMs of one model name differ by it), the kernel.
machine_line() {
  echo "machine:  $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') (model $(awk -F': ' '/^model\t/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r)"
}

# apt_install PKG...: installs Debian packages (as root, or with sudo) with
# the packages' own services kept from starting (the standard policy-rc.d
# hook; POLICY_CREATED=1 while it is ours, for a caller's cleanup). Where a
# release no longer has nginx-light, installs nginx instead.
POLICY_CREATED=0
apt_install() {
  local sudo="" rc=0
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    $sudo sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
    POLICY_CREATED=1
  fi
  $sudo timeout 300 apt-get update -q >&2 || echo "apt-get update failed; trying the install anyway" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends "$@" >&2 \
    || $sudo env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q --no-install-recommends \
         "${@/nginx-light/nginx}" >&2 \
    || rc=$?
  if [ "$POLICY_CREATED" -eq 1 ]; then $sudo rm -f /usr/sbin/policy-rc.d; POLICY_CREATED=0; fi
  return "$rc"
}

# nginx_module PATH_OR_NAME: the `load_module` line for a dynamic module of
# Debian's nginx (libnginx-mod-http-echo: ngx_http_echo_module.so,
# libnginx-mod-http-js: ngx_http_js_module.so), from nginx's own
# --modules-path; nothing when the module is built in or absent (nginx -t
# then says which directive it does not know).
nginx_module() {
  local dir
  dir=$(nginx -V 2>&1 | tr ' ' '\n' | sed -n 's/^--modules-path=//p')
  [ -f "${dir:-/usr/lib/nginx/modules}/$1" ] && echo "load_module ${dir:-/usr/lib/nginx/modules}/$1;"
  return 0
}

# remote_upstream_server SLEEP STATUS_PORT H2C_PORT H1_PORT...: the
# canned upstream of the remote scenario: the same answer shapes as
# canned_upstream_server (and `POST /apps/{id}/batch_events` → {}), each
# after SLEEP seconds (echo_sleep, from libnginx-mod-http-echo: a timer, no
# worker blocked), on one HTTP/1.1 listener per H1_PORT (one per target,
# so that each target's upstream connections can be counted apart) and an
# HTTP/2 listener with prior knowledge (h2c) on H2C_PORT (0: none); nginx's
# stub_status on STATUS_PORT counts the requests the upstream served.
remote_upstream_server() {
  local sleep=$1 status=$2 h2=$3 p listens=""
  shift 3
  for p in "$@"; do listens+="        listen 127.0.0.1:$p backlog=4096;"$'\n'; done
  # nginx 1.25.1+ spells h2c `http2 on;`; older ones, `listen … http2`.
  [ "$h2" != 0 ] && listens+="        listen 127.0.0.1:$h2 backlog=4096 http2;"$'\n'
  cat <<EOT
    default_type application/json;
    http2_max_concurrent_streams 1024;
    server {
$listens
        location ~ ^/apps/[^/]+/(events|batch_events)\$ { echo_sleep $sleep; echo -n '{}'; }
        location ~ ^/apps/[^/]+/channels/presence-[^/]+\$ { echo_sleep $sleep; echo -n '{"occupied":true,"user_count":3}'; }
        location ~ ^/apps/[^/]+/channels/[^/]+\$ { echo_sleep $sleep; echo -n '{"occupied":true,"subscription_count":3}'; }
        location / { echo_sleep $sleep; echo -n '{}'; }
    }
    server {
        listen 127.0.0.1:$status;
        location / { stub_status; }
    }
EOT
}

# upstream_requests STATUS_PORT: the requests nginx's stub_status has
# counted so far (its own queries included: one per call).
upstream_requests() {
  curl -s --max-time 5 "http://127.0.0.1:$1/" | awk 'NR == 3 { print $3 }'
}

# peak_connections PORT FILE [PIDS]: until killed, samples every 0.1 s the
# established TCP connections to 127.0.0.1:PORT (the connecting side's
# sockets only: `ss … dport = :PORT`) and keeps the largest count in FILE
# (written aside and renamed, so that FILE is whole whenever it is killed).
# With PIDS (space-separated), only the connections those processes hold
# (`ss -p`, as root): one of several clients of the same port.
peak_connections() {
  local peak=0 n owners=""
  [ -z "${3:-}" ] || owners="pid=($(tr ' ' '|' <<<"$3")),"
  echo 0 > "$2"
  while :; do
    if [ -n "$owners" ]; then
      n=$(ss -Htnp state established "( dport = :$1 )" 2>/dev/null | grep -cE "$owners" || true)
    else
      n=$(ss -Htn state established "( dport = :$1 )" 2>/dev/null | wc -l)
    fi
    if [ "$n" -gt "$peak" ]; then peak=$n; echo "$peak" > "$2.new" && mv -f "$2.new" "$2"; fi
    sleep 0.1
  done
}
