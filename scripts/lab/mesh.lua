-- wirespan lab haproxy action for the mTLS mesh scenarios (scripts/lab/mtls.py).
-- lab_delay_hdr(HEADER): sleep the number of ms found in request header HEADER (each proxy of
-- the mesh reads its own header, so the delay injected at each proxy is known). The sleep as
-- executed, measured with core.now() (wall clock, us), goes to txn.slept_us (logged); the
-- asked value to txn.dly.
-- Like lab.lua's lab_delay: sleep all but the last 2 ms with core.msleep (which wakes on
-- haproxy's ms poller timeout, often 1-2 ms late), then yield to the scheduler until the
-- exact time, so the delay is accurate to the scheduler's latency rather than the timer tick.

core.register_action("lab_delay_hdr", { "http-req" }, function(txn, hdr)
  local h = txn.http:req_get_headers()[hdr]
  if not (h and h[0]) then
    return
  end
  txn:set_var("txn.dly", h[0])
  local ms = tonumber(h[0])
  if not (ms and ms > 0) then
    txn:set_var("txn.slept_us", 0)
    return
  end
  local t0 = core.now()
  local target = t0.sec * 1000000 + t0.usec + math.floor(ms * 1000)
  if ms > 3 then core.msleep(math.floor(ms) - 2) end
  local t1 = core.now()
  while t1.sec * 1000000 + t1.usec < target do
    core.yield()
    t1 = core.now()
  end
  txn:set_var("txn.slept_us", (t1.sec - t0.sec) * 1000000 + (t1.usec - t0.usec))
end, 1)
