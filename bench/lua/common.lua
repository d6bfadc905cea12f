-- Shared by the benchmark's wrk scripts: keeps the thread handles and prints one
-- machine-readable summary line (BENCH_JSON {...}) that bench/wrk.py reads.
local M = {}

M.threads = {}

function M.setup(thread)
  table.insert(M.threads, thread)
end

-- The sum over wrk threads of a global counter each thread keeps.
function M.sum(name)
  local total = 0
  for _, thread in ipairs(M.threads) do
    total = total + (thread:get(name) or 0)
  end
  return total
end

function M.report(summary, latency, fields)
  local e = summary.errors
  local parts = {
    string.format('"requests":%.0f,"duration_us":%.0f', summary.requests, summary.duration),
    string.format('"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f',
                  e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"p50_us":%.0f,"p99_us":%.0f,"max_us":%.0f',
                  latency:percentile(50), latency:percentile(99), latency.max),
  }
  for name, value in pairs(fields or {}) do
    table.insert(parts, string.format('"%s":%.0f', name, value))
  end
  io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end

return M
