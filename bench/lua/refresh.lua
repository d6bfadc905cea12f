-- Rotating refresh chains: every request presents the refresh token the previous
-- response returned. A wrk thread's Lua state is shared by its connections, so run
-- one connection per thread (-t N -c N): each thread then holds exactly one chain,
-- seeded from its own line of BENCH_TOKENS (a file of login-obtained refresh tokens).
-- BENCH_AUTH is the client's Authorization header value.
package.path = "./?.lua;" .. package.path
local common = require("common")

local seeds = {}
local seeds_path = os.getenv("BENCH_TOKENS")
if seeds_path then
  for line in io.lines(seeds_path) do
    seeds[#seeds + 1] = line
  end
end
local seeded = 0

local request_headers = {
  ["Authorization"] = os.getenv("BENCH_AUTH") or "",
  ["Content-Type"] = "application/x-www-form-urlencoded",
}

token = nil      -- this thread's chain head
rotations = 0    -- 200 answers that carried a new refresh token
failures = 0     -- anything else: the chain is broken from here on

function setup(thread)
  seeded = seeded + 1
  assert(seeds[seeded], "fewer refresh tokens in BENCH_TOKENS than wrk threads")
  thread:set("token", seeds[seeded])
  common.setup(thread)
end

function request()
  -- wrk also calls this once in its main state to check the script: no token there.
  return wrk.format("POST", nil, request_headers,
                    "grant_type=refresh_token&refresh_token=" .. (token or "none"))
end

function response(status, headers, body)
  local newer = status == 200 and body:match('"refresh_token":"([^"]+)"')
  if newer then
    token = newer
    rotations = rotations + 1
  else
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  local idle = 0
  for _, thread in ipairs(common.threads) do
    if (thread:get("rotations") or 0) == 0 then
      idle = idle + 1
    end
  end
  common.report(summary, latency, {
    rotations = common.sum("rotations"),
    failures = common.sum("failures"),
    chains_without_rotation = idle,
  })
end
