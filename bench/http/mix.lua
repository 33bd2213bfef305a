-- wrk script for bench/http: GET or PATCH /users/u{row}@bench.io, rows drawn from Zipf(s).
-- Every thread runs ONE connection (wrk -t N -c N), so a response always answers the request
-- made just before it on this thread: each line of the log is one exchange, timed with
-- CLOCK_MONOTONIC (the clock Python's time.monotonic reads). A PATCH is also logged as it is
-- sent (kind S), in case wrk stops before its answer arrives.
-- Environment: BENCH_ROWS, BENCH_WRITES (share of PATCH), BENCH_ZIPF, BENCH_SEED, BENCH_LOG,
-- BENCH_RUN (a tag that keeps PATCH names unique across runs).
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, clock)
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

local rows, writes, cdf, log, seq, run
local row, kind, started

function init(args)
  rows = tonumber(os.getenv("BENCH_ROWS") or "10000")
  run = os.getenv("BENCH_RUN") or "0" -- names stay unique across wrk runs
  writes = tonumber(os.getenv("BENCH_WRITES") or "0.05")
  local s = tonumber(os.getenv("BENCH_ZIPF") or "1.1")
  cdf = {}
  local total = 0
  for i = 1, rows do
    total = total + 1 / i ^ s
    cdf[i] = total
  end
  for i = 1, rows do
    cdf[i] = cdf[i] / total
  end
  math.randomseed(tonumber(os.getenv("BENCH_SEED") or "7") * 1000 + id)
  log = io.open(os.getenv("BENCH_LOG") .. "." .. id, "w")
  log:setvbuf("full", 65536) -- flushed when wrk exits
  seq = 0
end

local function pick()
  local r = math.random()
  local lo, hi = 1, rows
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < r then lo = mid + 1 else hi = mid end
  end
  return lo
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  row = pick()
  local path = "/users/u" .. row .. "@bench.io"
  if writes > 0 and math.random() < writes then
    seq = seq + 1
    kind = "P"
    local name = "w" .. run .. "-" .. id .. "-" .. seq
    started = now_us()
    -- logged when sent too: a PATCH still in flight when wrk stops may yet commit
    log:write(string.format("S %d 0 %.0f 0 %s\n", row, started, name))
    return wrk.format("PATCH", path, headers, '{"name":"' .. name .. '"}')
  end
  kind = "G"
  started = now_us()
  return wrk.format("GET", path)
end

function response(status, hdrs, body)
  local finished = now_us()
  local name = string.match(body, '"name":"([^"]*)"') or "-"
  log:write(string.format("%s %d %d %.0f %.0f %s\n", kind, row, status, started, finished, name))
end
