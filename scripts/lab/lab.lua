-- wirespan lab haproxy actions.
-- lab_delay:   sleep the number of ms in the request's x-lab-delay-ms header (injected dwell).
-- lab_rewrite: replace the span id of traceparent / X-B3-SpanId / b3 with a fresh random one,
--              as Linkerd does with its tracing on; the old and new ids go to txn vars
--              (logged) and the mapping is echoed back in x-lab-rewrite (see lab_echo).
-- Our own PRNG (64-bit LCG, Lua 5.3 integers wrap), seeded from LAB_SEED: haproxy uses the
-- C library's random() itself, so math.random would not replay the same ids.
local state = math.tointeger(tonumber(os.getenv("LAB_SEED") or "1")) or 1

local function randbyte()
  state = state * 6364136223846793005 + 1442695040888963407
  return (state >> 56) & 0xff
end

local function randhex16()
  local t = {}
  for i = 1, 8 do t[i] = string.format("%02x", randbyte()) end
  return table.concat(t)
end

core.register_action("lab_delay", { "http-req" }, function(txn)
  local h = txn.http:req_get_headers()["x-lab-delay-ms"]
  if h and h[0] then
    local ms = tonumber(h[0])
    if ms and ms > 0 then
      -- the sleep as executed (core.now: wall clock, µs) goes to the log. msleep alone
      -- wakes on haproxy's millisecond poller timeout (often 1-2 ms late), so sleep all but
      -- the last 2 ms, then yield to the scheduler until the exact time: the delay is then
      -- accurate to the scheduler's latency (µs), not the timer's tick
      local t0 = core.now()
      local target = t0.sec * 1000000 + t0.usec + math.floor(ms * 1000)
      if ms > 3 then core.msleep(math.floor(ms) - 2) end
      local t1 = core.now()
      while t1.sec * 1000000 + t1.usec < target do
        core.yield()
        t1 = core.now()
      end
      txn:set_var("txn.slept_us", (t1.sec - t0.sec) * 1000000 + (t1.usec - t0.usec))
    else
      txn:set_var("txn.slept_us", 0)
    end
  end
end)

core.register_action("lab_rewrite", { "http-req" }, function(txn)
  local hs = txn.http:req_get_headers()
  local new = randhex16()
  local old = nil
  local tp = hs["traceparent"]
  if tp and tp[0] then
    local v, tid, sid, fl = string.match(tp[0], "^(%x%x)%-(%x+)%-(%x+)%-(%x%x)$")
    if sid then
      old = sid
      txn.http:req_set_header("traceparent", v .. "-" .. tid .. "-" .. new .. "-" .. fl)
    end
  end
  if not old then
    local m = hs["x-b3-spanid"]
    if m and m[0] then
      old = m[0]
      txn.http:req_set_header("x-b3-spanid", new)
    end
  end
  if not old then
    local s = hs["b3"]
    if s and s[0] then
      local tid, sid, rest = string.match(s[0], "^(%x+)%-(%x+)(.*)$")
      if sid then
        old = sid
        txn.http:req_set_header("b3", tid .. "-" .. new .. rest)
      end
    end
  end
  if old then
    txn:set_var("txn.orig_span", old)
    txn:set_var("txn.new_span", new)
  end
end)
