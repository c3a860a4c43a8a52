-- wrk script for the benchmarks: one Gemini call per request, and a machine-readable summary.
--
-- compare.py sets the request through the environment, so one script serves every target:
--   BENCH_BODY     the JSON body to POST
--   BENCH_API_KEY  sent as x-goog-api-key when set (LiteLLM's key travels in the URL instead)
-- done() prints one line, "WRK_JSON {...}", that compare.py parses; wrk's own report stays
-- above it for a reader.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_API_KEY")
if key and key ~= "" then
  wrk.headers["x-goog-api-key"] = key
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %.0f, "p99_us": %.0f,'
      .. ' "max_us": %.0f, "connect": %d, "read": %d, "write": %d, "status": %d,'
      .. ' "timeout": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
