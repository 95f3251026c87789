#!/usr/bin/env python3
"""The hostile load of bench/starvation.sh (Python 3 standard library only).

    starvation.py PORT REQUESTS_FILE SECONDS [--idle N] [--slow N] [--probe-every S]
                  [--role all|load|probe]

Against the proxy on 127.0.0.1:PORT, for SECONDS:
  - holds N idle TCP connections open (they send nothing); one the proxy
    closes is opened again a second later, so the pressure stays on;
  - runs N slow-body passthrough clients: each sends
    `POST /apps/4242/events` announcing a 1,000-byte body, then one byte a
    second; when the proxy answers (or closes), it starts again a second
    later;
  - meanwhile opens a fresh connection every S seconds and sends one signed
    legacy trigger from REQUESTS_FILE (written by `bench.py gen`), timing
    connect to full answer: what a new client sees.

Prints one line of JSON: connections held (peak), closed by the proxy,
slow clients' answers by status, and the probes' latency percentiles.

`--role load` runs only the hostile clients and `--role probe` only the
probes. bench/starvation.sh runs them as two processes: in one, a probe's
time would include waiting for an event loop busy with thousands of
hostile connections, which is the load generator's delay, not the proxy's.
"""

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (read_records: the signed requests' file format)

SLOW_HEAD = (
    b"POST /apps/4242/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
)
PROBE_TIMEOUT = 15.0


class Stats:
    def __init__(self):
        self.idle_open = 0
        self.idle_peak = 0
        self.idle_closed = 0
        self.idle_connect_failed = 0
        self.slow_open = 0
        self.slow_peak = 0
        self.slow_answers = {}
        self.probe_ms = []
        self.probe_statuses = {}


async def read_answer(reader):
    """Reads one HTTP/1.1 answer; its status, or None if the peer closed."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def idle_client(port, stats, until):
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats.idle_connect_failed += 1
            await asyncio.sleep(1)
            continue
        stats.idle_open += 1
        stats.idle_peak = max(stats.idle_peak, stats.idle_open)
        try:
            left = until - time.monotonic()
            if left > 0:
                data = await asyncio.wait_for(reader.read(1), left)
                if data == b"":
                    stats.idle_closed += 1
        except (asyncio.TimeoutError, OSError):
            pass
        finally:
            stats.idle_open -= 1
            writer.close()
        await asyncio.sleep(1)


async def slow_client(port, stats, until):
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(1)
            continue
        stats.slow_open += 1
        stats.slow_peak = max(stats.slow_peak, stats.slow_open)
        answer = asyncio.ensure_future(read_answer(reader))
        try:
            writer.write(SLOW_HEAD)
            for _ in range(1000):
                if answer.done() or time.monotonic() >= until:
                    break
                writer.write(b"x")
                await writer.drain()
                await asyncio.wait([answer], timeout=1)
            if not answer.done():
                await asyncio.wait([answer], timeout=max(0.0, until - time.monotonic()))
            if answer.done() and not answer.cancelled():
                try:
                    key = str(answer.result())
                except (asyncio.IncompleteReadError, OSError, ValueError, IndexError):
                    key = "closed"
                stats.slow_answers[key] = stats.slow_answers.get(key, 0) + 1
        except OSError:
            stats.slow_answers["closed"] = stats.slow_answers.get("closed", 0) + 1
        finally:
            answer.cancel()
            stats.slow_open -= 1
            writer.close()
        await asyncio.sleep(1)


async def probe_once(port, request, stats):
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), PROBE_TIMEOUT)
        try:
            writer.write(request)
            status = await asyncio.wait_for(read_answer(reader), PROBE_TIMEOUT)
        finally:
            writer.close()
        key = str(status)
    except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError):
        key = "failed"
    stats.probe_ms.append((time.monotonic() - started) * 1000)
    stats.probe_statuses[key] = stats.probe_statuses.get(key, 0) + 1


async def prober(port, requests, every, stats, start_at, until):
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    tasks, i = [], 0
    while time.monotonic() < until:
        tasks.append(asyncio.ensure_future(probe_once(port, requests[i % len(requests)], stats)))
        i += 1
        await asyncio.sleep(every)
    await asyncio.gather(*tasks)


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def main_async(a):
    stats = Stats()
    requests = list(bench.read_records(a.requests))
    now = time.monotonic()
    until = now + a.seconds
    tasks = []
    if a.role in ("all", "load"):
        tasks += [asyncio.ensure_future(idle_client(a.port, stats, until)) for _ in range(a.idle)]
        tasks += [asyncio.ensure_future(slow_client(a.port, stats, until)) for _ in range(a.slow)]
    if a.role in ("all", "probe"):
        tasks.append(asyncio.ensure_future(prober(a.port, requests, a.probe_every, stats, now + a.warmup, until)))
    await asyncio.gather(*tasks)
    out = {}
    if a.role in ("all", "load"):
        out.update(
            {
                "idle_peak": stats.idle_peak,
                "idle_closed_by_proxy": stats.idle_closed,
                "idle_connect_failed": stats.idle_connect_failed,
                "slow_peak": stats.slow_peak,
                "slow_answers": stats.slow_answers,
            }
        )
    if a.role in ("all", "probe"):
        out.update(
            {
                "probes": len(stats.probe_ms),
                "probe_statuses": stats.probe_statuses,
                "probe_p50_ms": percentile(stats.probe_ms, 50),
                "probe_p99_ms": percentile(stats.probe_ms, 99),
            }
        )
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("requests")
    ap.add_argument("seconds", type=float)
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--slow", type=int, default=200)
    ap.add_argument("--probe-every", type=float, default=0.05)
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before the first probe")
    ap.add_argument("--role", choices=("all", "load", "probe"), default="all")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.idle + a.slow + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
