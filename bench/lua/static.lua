-- The same request over and over: BENCH_METHOD (GET), BENCH_BODY (a form body, POST),
-- BENCH_HEADERS ("Name: value" lines). With BENCH_EXPECT (a status code), responses
-- with another status are counted as "unexpected" (e.g. 200 where 304 was asked for);
-- without it no response() is defined, so wrk's Lua does no work per response.
package.path = "./?.lua;" .. package.path
local common = require("common")

wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.body = os.getenv("BENCH_BODY")
if wrk.body then
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
end
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end

local expect = tonumber(os.getenv("BENCH_EXPECT") or "")
unexpected = 0
if expect then
  function response(status, headers, body)
    if status ~= expect then
      unexpected = unexpected + 1
    end
  end
end

setup = common.setup

function done(summary, latency, requests)
  local fields = {}
  if expect then
    fields.unexpected = common.sum("unexpected")
  end
  common.report(summary, latency, fields)
end
