# bench/canned-upstream.sh — sourced by bench/run.sh and bench/instructions.sh.
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
