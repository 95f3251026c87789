# bench/canned-upstream.sh — sourced by the bench/ scripts: the canned upstream
# they all measure against, and the proxy config they all run.
#
# canned_upstream_server PORT: the nginx `server` block of the canned
# upstream, answering the current API's shapes (no signature checks):
#   POST /apps/{id}/events                 → {}
#   GET  /apps/{id}/channels/presence-…    → {"occupied":true,"user_count":3}
#   GET  /apps/{id}/channels/…             → {"occupied":true,"subscription_count":3}
#   anything else                          → {}
canned_upstream_server() {
  cat <<EOF
    default_type application/json;
    server {
        listen 127.0.0.1:$1 backlog=4096;
        location ~ ^/apps/[^/]+/events\$ { return 200 '{}'; }
        location ~ ^/apps/[^/]+/channels/presence-[^/]+\$ { return 200 '{"occupied":true,"user_count":3}'; }
        location ~ ^/apps/[^/]+/channels/[^/]+\$ { return 200 '{"occupied":true,"subscription_count":3}'; }
        location / { return 200 '{}'; }
    }
EOF
}

# start_canned_upstream DIR PORT: the canned upstream as a one-worker nginx
# on 127.0.0.1:PORT, its config, pid file and error log in DIR.
start_canned_upstream() {
  cat > "$1/up.conf" <<CONF
worker_processes 1;
pid $1/up.pid;
error_log $1/up.err;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 100000000;
$(canned_upstream_server "$2")
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
