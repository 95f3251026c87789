#!/usr/bin/env python3
"""Helpers for bench/run.sh (Python 3 standard library only).

Subcommands:
  ports N                 print N free loopback TCP ports, one a line
  gen ...                 write a file of freshly signed raw HTTP requests
                          for bench/requests.lua (length-prefixed records)
  probe FILE PORT [K]     send the first K requests of FILE to 127.0.0.1:PORT,
                          print each answer's status (and a short body)
  outcomes BEFORE AFTER   difference of pusher_cutover_requests_total between
                          two /metrics snapshots, as route/outcome=N,...
  summarize RESULTS       print the report table from run.sh's results file
  sign METHOD PATH        print a signed URL query for a current-API call
  metric-sum FILE NAME    sum of a metric's samples in a /metrics snapshot
  design RESULTS          print bench/throughput.sh's tables, ratios and targets

Signing follows spec A.2 (the same rules as
pusher_cutover::pusher::signature::Signer): string to sign =
METHOD \n PATH \n sorted lower-case key=value pairs (unescaped) joined by &,
HMAC-SHA256 with the app secret, lower-case hex; body_md5 = MD5 of the raw
body for POSTs.
"""

import argparse
import hashlib
import hmac
import http.client
import re
import socket
import statistics
import sys
import time
import urllib.parse

SCENARIOS = ("legacy_trigger", "legacy_stats", "current_trigger")


def sign_query(key, secret, method, path, timestamp, body, extra):
    params = {
        "auth_key": key,
        "auth_timestamp": str(timestamp),
        "auth_version": "1.0",
    }
    if body is not None:
        params["body_md5"] = hashlib.md5(body).hexdigest()
    params.update(extra)
    canonical = "&".join(f"{k.lower()}={v}" for k, v in sorted(params.items(), key=lambda kv: kv[0].lower()))
    to_sign = f"{method}\n{path}\n{canonical}"
    signature = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    pairs = sorted(params.items()) + [("auth_signature", signature)]
    # RFC 3986 unreserved-only encoding, like the crate's signed_query.
    return "&".join(
        f"{urllib.parse.quote(k, safe='-._~')}={urllib.parse.quote(v, safe='-._~')}" for k, v in pairs
    )


def raw_request(method, target, user_agent, body):
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: 127.0.0.1",
        f"User-Agent: {user_agent}",
    ]
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + (body or b"")


def cmd_gen(a):
    ts = int(time.time()) + a.ts_offset
    out = bytearray()
    for i in range(a.n):
        ua = f"{a.ua_prefix}/{i % a.user_agents}"
        chan = f"bench-{i % 100}"
        if a.scenario == "legacy_trigger":
            path = f"/apps/{a.app_id}/channels/{chan}/events"
            body = f'{{"n":{i},"message":"hello from the benchmark"}}'.encode()
            extra = {"name": "bench-event"}
            if i % 2:
                extra["socket_id"] = f"{1000 + i % 997}.{i % 9973}"
            q = sign_query(a.key, a.secret, "POST", path, ts, body, extra)
            req = raw_request("POST", f"{path}?{q}", ua, body)
        elif a.scenario == "legacy_stats":
            if i % 4 == 3:
                chan = f"presence-{chan}"
            path = f"/apps/{a.app_id}/channels/{chan}/stats"
            q = sign_query(a.key, a.secret, "GET", path, ts, None, {})
            req = raw_request("GET", f"{path}?{q}", ua, None)
        elif a.scenario == "current_trigger":
            path = f"/apps/{a.app_id}/events"
            body = (
                '{"name":"bench-event","channels":["%s"],"data":"{\\"n\\":%d,\\"message\\":\\"hello from the benchmark\\"}"}'
                % (chan, i)
            ).encode()
            q = sign_query(a.key, a.secret, "POST", path, ts, body, {})
            req = raw_request("POST", f"{path}?{q}", ua, body)
        else:
            raise SystemExit(f"unknown scenario {a.scenario}")
        out += f"{len(req)}\n".encode()
        out += req
    with open(a.out, "wb") as f:
        f.write(out)


def read_records(path):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        n = int(data[pos:nl])
        yield data[nl + 1 : nl + 1 + n]
        pos = nl + 1 + n


def tamper(req, how):
    """The request with one thing changed after signing, the length kept:
    `body` changes a byte of the body (body_md5 no longer matches),
    `query` a byte of the event name (the signature no longer matches)."""
    head, sep, body = req.partition(b"\r\n\r\n")
    if how == "body":
        if b"hello" not in body:
            raise SystemExit("--tamper body needs a request whose body says hello")
        return head + sep + body.replace(b"hello", b"jello", 1)
    if how == "query":
        if b"name=bench-event" not in head:
            raise SystemExit("--tamper query needs a request with name=bench-event")
        return head.replace(b"name=bench-event", b"name=bench-evenT", 1) + sep + body
    raise SystemExit(f"unknown --tamper {how}")


def cmd_probe(a):
    statuses, shown = [], []
    for i, req in enumerate(read_records(a.file)):
        if i >= a.count:
            break
        if a.tamper:
            req = tamper(req, a.tamper)
        with socket.create_connection(("127.0.0.1", a.port), timeout=10) as s:
            s.sendall(req)
            resp = http.client.HTTPResponse(s)
            resp.begin()
            body = resp.read()
            statuses.append(resp.status)
            shown.append(f"{resp.status} {body[:48]!r}")
    print("; ".join(shown))
    if a.expect and any(s != a.expect for s in statuses):
        return 1
    return 0


METRIC_RE = re.compile(r'^pusher_cutover_requests_total\{([^}]*)\}\s+([0-9.eE+]+)')


def parse_outcomes(path):
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        k = f"{labels.get('route', '?')}/{labels.get('outcome', '?')}"
        out[k] = out.get(k, 0) + float(m.group(2))
    return out


def cmd_outcomes(a):
    before, after = parse_outcomes(a.before), parse_outcomes(a.after)
    parts = []
    for k in sorted(after):
        d = int(after[k] - before.get(k, 0))
        if d:
            parts.append(f"{k}={d}")
    print(",".join(parts) or "-")


def cmd_ports(a):
    socks = []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    print("\n".join(map(str, ports)))


# ---------------------------------------------------------------- summarize

def load_results(path):
    rows = []
    for line in open(path):
        if not line.strip() or line.startswith("#"):
            continue
        f = line.rstrip("\n").split("\t")
        r = dict(zip(
            ["kind", "round", "target", "scenario", "conns", "rps", "p50_us", "p99_us",
             "non2xx", "sockerr", "rss_kb", "outcomes", "statuses", "cpu_us"], f))
        r.setdefault("statuses", "-")
        r.setdefault("cpu_us", "0")
        for k in ("round", "conns", "non2xx", "sockerr"):
            r[k] = int(r[k])
        for k in ("rps", "p50_us", "p99_us", "cpu_us"):
            r[k] = float(r[k])
        r["rss_kb"] = int(r["rss_kb"]) if r["rss_kb"] not in ("", "-") else None
        rows.append(r)
    return rows


def fmt_lat(us):
    if us >= 1000:
        return f"{us / 1000:.2f}ms"
    return f"{us:.0f}us"


def group(rows, kind):
    g = {}
    for r in rows:
        if r["kind"] == kind:
            g.setdefault((r["scenario"], r["target"]), []).append(r)
    return g


def med(rs, k):
    return statistics.median([r[k] for r in rs])


def line_for(label, scenario, rs):
    per = " ".join(f"{r['rps']:.0f}" for r in sorted(rs, key=lambda r: r["round"]))
    return (f"{scenario:<16} {label:<28} {med(rs, 'rps'):>9.0f} {fmt_lat(med(rs, 'p50_us')):>9} "
            f"{fmt_lat(med(rs, 'p99_us')):>9} {med(rs, 'cpu_us'):>8.1f} {sum(r['non2xx'] for r in rs):>8} "
            f"{sum(r['sockerr'] for r in rs):>7}   {per}")


HEADER = (f"{'scenario':<16} {'target':<28} {'req/s':>9} {'p50':>9} {'p99':>9} {'CPU/req':>8} {'non-2xx':>8} "
          f"{'sockerr':>7}   req/s per round")


def per_round(subject_rows, other_rows, metric):
    """`metric`'s ratio in each round both were measured in, in round order:
    targets run back to back within a round, so these show how far the
    machine's drift moves a ratio."""
    other = {r["round"]: r[metric] for r in other_rows}
    return [r[metric] / other[r["round"]] for r in sorted(subject_rows, key=lambda r: r["round"])
            if other.get(r["round"])]


def paired_ratio(subject_rows, other_rows, metric):
    """The median of `metric`'s per-round ratios ([`per_round`]): each
    round's two figures were measured back to back, so its ratio is the
    pair's, and the median is of pairs. (A ratio of the two medians may
    take them from different rounds.) The ratio of the medians only when
    no round has both; None when that is undefined."""
    rs = per_round(subject_rows, other_rows, metric)
    if rs:
        return statistics.median(rs)
    o = med(other_rows, metric)
    return med(subject_rows, metric) / o if o else None


def ratio_table(p, main, metric, label, columns, subject="pusher-cutover", metrics=None,
                rounds_of=None):
    """One row per scenario: `subject`'s `metric` over each column's
    target's, the median of the per-round ratios ([`paired_ratio`]);
    columns are (title, target, width); `metrics`, if given, is the metric
    of each column instead; `rounds_of`, a target whose ratio is also given
    round by round."""
    p(f"{label:<16} " + " ".join(f"{title:>{w}}" for title, _, w in columns)
      + (f"   per round, vs {rounds_of}" if rounds_of else ""))
    for sc in SCENARIOS:
        pc = main.get((sc, subject))
        if not pc:
            continue
        cells = []
        for i, (_, t, w) in enumerate(columns):
            m = metrics[i] if metrics else metric
            o = main.get((sc, t))
            r = paired_ratio(pc, o, m) if o else None
            v = f"{r:.2f}" if r is not None else "n/a"
            cells.append(f"{v:>{w}}")
        if rounds_of and main.get((sc, rounds_of)):
            cells.append("  " + " ".join(f"{x:.2f}" for x in per_round(pc, main[(sc, rounds_of)], metric)))
        p(f"{sc:<16} " + " ".join(cells))


def cmd_summarize(a):
    rows = load_results(a.results)
    main = group(rows, "main")
    rounds = max((r["round"] for r in rows if r["kind"] == "main"), default=0)
    conns = next((r["conns"] for r in rows if r["kind"] == "main"), 0)
    p = print
    p(f"== Throughput, {conns} connections, wrk -t2; median of {rounds} round(s); "
      "non-2xx and socket errors summed over rounds ==")
    p("   CPU/req: the target's own user+system CPU time per completed request, in us "
      "(proxies: without the upstream's; nginx: master + workers)")
    p(HEADER)
    order = ["upstream-direct", "nginx", "haproxy", "hyper-floor", "pusher-cutover"]
    for sc in SCENARIOS:
        for t in order:
            if (sc, t) in main:
                p(line_for(t, sc, main[(sc, t)]))
    p("")
    p("== Ratios (req/s; the median of the per-round ratios, each round's pair measured back to back; "
      ">1 means pusher-cutover is faster) ==")
    ratio_table(p, main, "rps", "scenario",
                [("pc/nginx", "nginx", 9), ("pc/haproxy", "haproxy", 11),
                 ("pc/upstream-direct", "upstream-direct", 19), ("pc/hyper-floor", "hyper-floor", 15)],
                rounds_of="nginx")
    p("")
    ratio_table(p, main, "p99_us", "",
                [("pc p99/nginx p99", "nginx", 16), ("pc p99/haproxy p99", "haproxy", 19)],
                rounds_of="nginx")
    p("")
    ratio_table(p, main, "cpu_us", "",
                [("pc CPU/req / nginx", "nginx", 19), ("pc CPU/req / haproxy", "haproxy", 21),
                 ("pc CPU/req / hyper-floor", "hyper-floor", 25)], rounds_of="nginx")
    if any(t == "hyper-floor" for _, t in main):
        p("")
        p("== The floor: hyper-floor (a bare hyper server -> hyper client forwarder, none of the proxy's work) "
          "against nginx and HAProxy ==")
        ratio_table(p, main, "rps", "scenario",
                    [("floor/nginx req/s", "nginx", 17), ("floor/haproxy req/s", "haproxy", 19),
                     ("floor/nginx p99", "nginx", 15), ("floor/nginx CPU/req", "nginx", 19)],
                    subject="hyper-floor", metrics=["rps", "rps", "p99_us", "cpu_us"])

    acc = group(rows, "accesslog")
    floor = main.get(("current_trigger", "hyper-floor"))
    if acc and floor:
        p("")
        p("== Passthrough CPU per request against hyper-floor (current_trigger), pusher-cutover's access log "
          "for current-API calls on (its default) and off (RUST_LOG=info,pusher_cutover::request=warn; "
          "nginx and HAProxy run with access_log off here, hyper-floor logs nothing) ==")
        p(HEADER)
        for (sc, t), rs in sorted(acc.items()):
            p(line_for(t, sc, rs))
        p(f"{'access log':<16} {'CPU/req / hyper-floor':>22}   per round")
        for label, rs in [("on", main.get(("current_trigger", "pusher-cutover"))),
                          ("off", acc.get(("current_trigger", "pusher-cutover access-log-off")))]:
            ratio = paired_ratio(rs, floor, "cpu_us") if rs else None
            if ratio is not None:
                rounds_ = " ".join(f"{x:.2f}" for x in per_round(rs, floor, "cpu_us"))
                p(f"{label:<16} {ratio:>22.2f}   {rounds_}")

    tel = group(rows, "telemetry")
    if tel:
        p("")
        p("== Telemetry: pusher-cutover with vs without [telemetry] data_dir "
          "(in-memory ledger and metrics are always on) ==")
        p(HEADER)
        for (sc, t), rs in sorted(tel.items(), key=lambda kv: kv[0][1]):
            p(line_for(t, sc, rs))
        on = [rs for (sc, t), rs in tel.items() if "with-data_dir" in t]
        off = [rs for (sc, t), rs in tel.items() if "no-data_dir" in t]
        if on and off:
            p(f"ratio with/without data_dir: req/s {med(on[0], 'rps') / med(off[0], 'rps'):.2f}, "
              f"CPU/req {med(on[0], 'cpu_us') / med(off[0], 'cpu_us'):.2f}" if med(off[0], 'cpu_us') else
              f"ratio with/without data_dir: req/s {med(on[0], 'rps') / med(off[0], 'rps'):.2f}")

    lg = group(rows, "logging")
    if lg:
        p("")
        p("== Logging: pusher-cutover (with data_dir) with its default per-request log lines (info) "
          "vs RUST_LOG=error (log to a file in the temp dir) ==")
        p(HEADER)
        for (sc, t), rs in sorted(lg.items(), key=lambda kv: kv[0][1]):
            p(line_for(t, sc, rs))
        on = [rs for (sc, t), rs in lg.items() if t.endswith("log=info")]
        off = [rs for (sc, t), rs in lg.items() if t.endswith("RUST_LOG=error")]
        if on and off:
            p(f"ratio RUST_LOG=error/info: req/s {med(off[0], 'rps') / med(on[0], 'rps'):.2f}, "
              f"CPU/req {med(off[0], 'cpu_us') / med(on[0], 'cpu_us'):.2f}")

    dist = group(rows, "callers")
    if dist:
        p("")
        p("== Distinct callers: pusher-cutover, legacy_trigger, 10 vs 100,000 distinct User-Agent values ==")
        p(HEADER)
        for (sc, t), rs in sorted(dist.items(), key=lambda kv: int(kv[0][1].split("-")[0].replace(",", ""))):
            p(line_for(t, sc, rs))
        ks = sorted(dist, key=lambda k: int(k[1].split("-")[0].replace(",", "")))
        if len(ks) == 2:
            a_, b_ = dist[ks[1]], dist[ks[0]]
            cpu = (f", CPU/req {med(a_, 'cpu_us') / med(b_, 'cpu_us'):.2f}" if med(b_, "cpu_us") else "")
            p(f"ratio {ks[1][1]}/{ks[0][1]}: req/s {med(a_, 'rps') / med(b_, 'rps'):.2f}{cpu}")

    big = group(rows, "c1000")
    if big:
        bconns = next(r["conns"] for r in rows if r["kind"] == "c1000")
        p("")
        p(f"== {bconns} connections, one run per target; peak RSS (VmHWM) read right after it ==")
        p(HEADER + "   VmHWM")
        for sc in SCENARIOS:
            for t in order:
                rs = big.get((sc, t))
                if rs:
                    rss = rs[-1]["rss_kb"]
                    p(line_for(t, sc, rs) + (f"   {rss / 1024:.1f} MiB" if rss else ""))

    pcs = [r for r in rows if r["target"].startswith("pusher-cutover") or r["target"].endswith("distinct-UAs")]
    if pcs:
        p("")
        p("== pusher-cutover: its answers' statuses (from its per-request log) and outcomes "
          "(pusher_cutover_requests_total deltas), summed over runs ==")
        p("   (499 = wrk closed the connection with the call in flight when a run ended: at most one per connection per run;")
        p("    RUST_LOG=error and the access-log-off target write no INFO lines, so they have (almost) no statuses)")
        agg, sts = {}, {}
        for r in pcs:
            key = (r["kind"], r["scenario"], r["target"])
            for part in r["outcomes"].split(","):
                if "=" in part:
                    k, v = part.split("=")
                    agg.setdefault(key, {}).setdefault(k, 0)
                    agg[key][k] += int(v)
            for part in r.get("statuses", "-").split(","):
                if ":" in part:
                    k, v = part.split(":")
                    sts.setdefault(key, {}).setdefault(k, 0)
                    sts[key][k] += int(v)
        for key in sorted(set(agg) | set(sts)):
            st = " ".join(f"{k}:{v}" for k, v in sorted(sts.get(key, {}).items()))
            parts = ", ".join(f"{k}={v}" for k, v in sorted(agg.get(key, {}).items()))
            p(f"{key[0]:<9} {key[1]:<16} {key[2]:<28} statuses {st:<24} outcomes {parts}")


def cmd_metric_sum(a):
    """The sum of every sample of metric `name` (any labels) in a /metrics
    snapshot; nothing printed when it has none (a build without it)."""
    total, seen = 0.0, False
    try:
        text = open(a.file).read()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(a.name) and line[len(a.name):len(a.name) + 1] in ("{", " "):
            total += float(line.rsplit(None, 1)[1])
            seen = True
    if seen:
        print(f"{total:.0f}")
    return 0


def metric_value(text, name, labels=""):
    """The value of the sample `name{labels}` (labels as printed, without
    braces; "" for none) in a /metrics snapshot, or None."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(None, 1)[1])
    return None


def cmd_ceiling(a):
    """pusher-cutover's stream-budget ceiling over one run, from /metrics
    snapshots taken before and after it: every upstream request holds one
    of `max_connections` streams (or connections) for its upstream time,
    so at most max_connections x (events per upstream request) / (upstream
    time per request) legacy triggers a second can pass. Prints the
    ceiling in req/s, the mean upstream time per request in ms and the
    mean events per upstream request; nothing when the build lacks the
    metrics or the run sent no triggers upstream."""
    try:
        before, after = open(a.before).read(), open(a.after).read()
    except OSError:
        return 0
    route = 'route="legacy_trigger"'
    names = [("pusher_cutover_upstream_duration_seconds_sum", route),
             ("pusher_cutover_upstream_duration_seconds_count", route),
             ("pusher_cutover_upstream_batch_events_sum", ""),
             ("pusher_cutover_upstream_batch_events_count", "")]
    deltas = []
    for name, labels in names:
        b, f = metric_value(before, name, labels), metric_value(after, name, labels)
        if b is None or f is None:
            return 0
        deltas.append(f - b)
    seconds, events_timed, events, requests = deltas
    if events_timed <= 0 or requests <= 0:
        return 0
    # each event records its upstream request's time: the mean over events
    # weights a request by its events, close to the mean per request when
    # (as here) nearly every request is full
    per_request = seconds / events_timed
    per = events / requests
    if per_request <= 0:
        return 0
    print(f"{a.max_connections * per / per_request:.0f} {per_request * 1e3:.2f} {per:.2f}")
    return 0


def cmd_sign(a):
    body = a.body.encode() if a.body is not None else None
    print(sign_query(a.key, a.secret, a.method, a.path, int(time.time()), body, {}))


# ------------------------------------------------------- throughput.sh

DESIGN_FIELDS = ["scenario", "round", "target", "request", "conns", "rps", "p50_us", "p99_us",
                 "non2xx", "sockerr", "cpu_us", "peak_up", "up_per_req", "rss_kb", "ceiling",
                 "up_ms"]

# Per scenario: the targets in the order printed, then the ratio lines:
# (label, subject, reference, metric, target comparison, target value);
# metric "peak_up" is the subject's own value, not a ratio (reference None).
DESIGN = {
    # pc-legacy-10: pc-legacy's pusher-cutover with Pusher's batch_max = 10
    # (throughput.sh runs it when pc-legacy's batch_max is larger).
    "sockudo": (["direct", "pc-legacy", "pc-legacy-10", "pc-passthrough"], [
        ("legacy via pc / direct, req/s", "pc-legacy", "direct", "rps", ">=", 1.5),
        ("passthrough via pc / direct, req/s", "pc-passthrough", "direct", "rps", ">=", 1.2),
        ("pc-legacy-10 / direct, req/s", "pc-legacy-10", "direct", "rps", None, None),
        ("pc-legacy / pc-legacy-10, req/s", "pc-legacy", "pc-legacy-10", "rps", None, None),
        ("legacy via pc / direct, p99", "pc-legacy", "direct", "p99_us", None, None),
        ("pc-legacy-10 / direct, p99", "pc-legacy-10", "direct", "p99_us", None, None),
        ("passthrough via pc / direct, p99", "pc-passthrough", "direct", "p99_us", None, None),
    ]),
    "remote": (["nginx", "pusher-cutover"], [
        ("legacy via pc / nginx, req/s", "pusher-cutover", "nginx", "rps", ">=", 0.8),
        ("legacy via pc / nginx, p99", "pusher-cutover", "nginx", "p99_us", "<=", 1.5),
        ("pc peak upstream connections", "pusher-cutover", None, "peak_up", "<=", 64),
        ("pc upstream time per request, ms", "pusher-cutover", None, "up_ms", None, None),
        ("pc stream-budget ceiling, req/s", "pusher-cutover", None, "ceiling", None, None),
        ("legacy via pc / its ceiling, req/s", "pusher-cutover", None, "of_ceiling", None, None),
        ("nginx peak upstream connections", "nginx", None, "peak_up", None, None),
        ("pc peak RSS (VmHWM, MB)", "pusher-cutover", None, "rss_mb", "<=", 30),
    ]),
    "njs": (["njs", "pusher-cutover"], [
        ("legacy via pc / via njs, req/s", "pusher-cutover", "njs", "rps", ">=", 1.5),
        ("legacy via pc / via njs, p99", "pusher-cutover", "njs", "p99_us", None, None),
        ("legacy via pc / via njs, CPU/req", "pusher-cutover", "njs", "cpu_us", None, None),
    ]),
}


# Values of the subject's own (reference None): peaks take the largest
# round, the others the median; how each is printed.
PEAKS = ("peak_up", "rss_mb")
VALUE_FORMAT = {"peak_up": "{:.0f}", "ceiling": "{:.0f}", "up_ms": "{:.2f}", "of_ceiling": "{:.2f}"}


def load_design(path):
    rows = []
    for line in open(path):
        if not line.strip():
            continue
        r = dict(zip(DESIGN_FIELDS, line.rstrip("\n").split("\t")))
        for k in ("round", "conns", "non2xx", "sockerr"):
            r[k] = int(r[k])
        for k in ("rps", "p50_us", "p99_us", "cpu_us"):
            r[k] = float(r[k])
        for k in ("peak_up", "up_per_req", "rss_kb", "ceiling", "up_ms"):
            r[k] = float(r[k]) if r.get(k) not in (None, "", "-") else None
        r["of_ceiling"] = r["rps"] / r["ceiling"] if r["ceiling"] else None
        r["rss_mib"] = r["rss_kb"] / 1024 if r["rss_kb"] is not None else None
        r["rss_mb"] = r["rss_kb"] * 1024 / 1e6 if r["rss_kb"] is not None else None  # VmHWM is in KiB
        rows.append(r)
    return rows


def cmd_design(a):
    rows = load_design(a.results)
    p = print
    for sc, (order, ratios) in DESIGN.items():
        rs = [r for r in rows if r["scenario"] == sc]
        if not rs:
            continue
        by = {}
        for r in rs:
            by.setdefault(r["target"], []).append(r)
        rounds = max(r["round"] for r in rs)
        conns = rs[0]["conns"]
        p(f"== {sc}: {conns} connections, wrk -t2; median of {rounds} round(s); "
          "non-2xx and socket errors summed over rounds ==")
        p(f"{'target':<16} {'request':<16} {'req/s':>9} {'p50':>9} {'p99':>9} {'CPU/req':>8} {'non-2xx':>8} "
          f"{'sockerr':>7} {'peak up':>8} {'up/req':>7} {'VmHWM':>9}   req/s per round")
        for t in order + sorted(set(by) - set(order)):
            if t not in by:
                continue
            g = sorted(by[t], key=lambda r: r["round"])
            peaks = [r["peak_up"] for r in g if r["peak_up"] is not None]
            ups = [r["up_per_req"] for r in g if r["up_per_req"] is not None]
            rss = [r["rss_mib"] for r in g if r["rss_mib"] is not None]
            p(f"{t:<16} {g[0]['request']:<16} {med(g, 'rps'):>9.0f} {fmt_lat(med(g, 'p50_us')):>9} "
              f"{fmt_lat(med(g, 'p99_us')):>9} {med(g, 'cpu_us'):>7.1f}us {sum(r['non2xx'] for r in g):>8} "
              f"{sum(r['sockerr'] for r in g):>7} {(f'{max(peaks):.0f}' if peaks else '-'):>8} "
              f"{(f'{statistics.median(ups):.2f}' if ups else '-'):>7} "
              f"{(f'{max(rss):.1f} MiB' if rss else '-'):>9}   "
              + " ".join(f"{r['rps']:.0f}" for r in g))
        p("")
        p(f"{'':<38} {'value':>8} {'target':>8}  {'':<8}  per round")
        for label, subj, ref, metric, cmp, want in ratios:
            s_rows = by.get(subj)
            if not s_rows:
                continue
            if ref is None:
                vals = [r[metric] for r in s_rows if r[metric] is not None]
                if not vals:
                    continue
                # a peak is the largest of the rounds; anything else their median
                v = max(vals) if metric in PEAKS else statistics.median(vals)
                form = VALUE_FORMAT.get(metric, "{:.1f}")
                per = " ".join(form.format(x) for x in
                               (r[metric] for r in sorted(s_rows, key=lambda r: r["round"])) if x is not None)
                shown = form.format(v)
            else:
                o_rows = by.get(ref)
                v = paired_ratio(s_rows, o_rows, metric) if o_rows else None
                if v is None:
                    continue
                per = " ".join(f"{x:.2f}" for x in per_round(s_rows, o_rows, metric))
                shown = f"{v:.2f}"
            if cmp is None:
                verdict, tgt = "", ""
            else:
                ok = v >= want if cmp == ">=" else v <= want
                verdict, tgt = ("met" if ok else "NOT MET"), f"{cmp} {want:g}"
            p(f"{label:<38} {shown:>8} {tgt:>8}  {verdict:<8}  {per}")
        p("")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--scenario", required=True, choices=SCENARIOS)
    g.add_argument("--n", type=int, default=20000)
    g.add_argument("--out", required=True)
    g.add_argument("--app-id", default="4242")
    g.add_argument("--key", default="bench-app-key")
    g.add_argument("--secret", default="bench-app-secret")
    g.add_argument("--user-agents", type=int, default=10, help="distinct User-Agent values")
    g.add_argument("--ua-prefix", default="pusher-php-server/2.1.2 bench")
    g.add_argument("--ts-offset", type=int, default=0, help="seconds added to now in auth_timestamp")
    c = sub.add_parser("ceiling", help="pusher-cutover's stream-budget ceiling over a run")
    c.add_argument("before")
    c.add_argument("after")
    c.add_argument("max_connections", type=int)
    pr = sub.add_parser("probe")
    pr.add_argument("file")
    pr.add_argument("port", type=int)
    pr.add_argument("count", type=int, nargs="?", default=3)
    pr.add_argument("--expect", type=int, default=0, help="exit 1 unless every status is this")
    pr.add_argument("--tamper", choices=("body", "query"), help="change the request after signing")
    sg = sub.add_parser("sign")
    sg.add_argument("method")
    sg.add_argument("path")
    sg.add_argument("--body")
    sg.add_argument("--key", default="bench-app-key")
    sg.add_argument("--secret", default="bench-app-secret")
    ms = sub.add_parser("metric-sum")
    ms.add_argument("file")
    ms.add_argument("name")
    de = sub.add_parser("design")
    de.add_argument("results")
    o = sub.add_parser("outcomes")
    o.add_argument("before")
    o.add_argument("after")
    po = sub.add_parser("ports")
    po.add_argument("n", type=int)
    s = sub.add_parser("summarize")
    s.add_argument("results")
    a = ap.parse_args()
    return {"gen": cmd_gen, "probe": cmd_probe, "outcomes": cmd_outcomes, "ports": cmd_ports,
     "summarize": cmd_summarize, "sign": cmd_sign, "design": cmd_design,
     "metric-sum": cmd_metric_sum, "ceiling": cmd_ceiling}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
