-- wrk script for bench/run.sh: cycles through pre-built raw HTTP requests.
--
--   wrk ... -s bench/requests.lua -- REQUEST_FILE
--
-- REQUEST_FILE is written by `bench/bench.py gen`: records of
-- "<byte length>\n<raw request bytes>". Each thread loads the whole file and
-- starts at its own offset; request() hands out the next record, so every
-- request on the wire is one of the freshly signed ones.
-- done() prints one machine-readable BENCH_RESULT line (latencies in us).

local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

function init(args)
   local path = args[1]
   local f = assert(io.open(path, "rb"))
   local data = f:read("*a")
   f:close()
   reqs = {}
   local pos, len = 1, #data
   while pos <= len do
      local nl = string.find(data, "\n", pos, true)
      local n = tonumber(string.sub(data, pos, nl - 1))
      reqs[#reqs + 1] = string.sub(data, nl + 1, nl + n)
      pos = nl + 1 + n
   end
   assert(#reqs > 0, "no requests in " .. path)
   idx = ((tid or 0) * 7919) % #reqs
end

function request()
   idx = idx + 1
   if idx > #reqs then
      idx = 1
   end
   return reqs[idx]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d\n",
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
