-- Shared by every writing script (prepended by scripts.rs).
-- A hybrid clock: max(last + 1, Redis TIME in microseconds). Strictly
-- increasing per store, close to wall time, and still increasing after the
-- clock key is evicted (it restarts from TIME, which is past every earlier
-- stamp). Stamps travel as decimal strings: Lua 5.1's tostring() would print
-- 16-digit numbers in exponent form.
local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
end

local function stamp(clock_key, ttl_ms)
  local now = now_us()
  local last = redis.call('GET', clock_key)
  local s
  if last and tonumber(last) >= tonumber(now) then
    s = string.format('%d', redis.call('INCR', clock_key))
  else
    s = now
    redis.call('SET', clock_key, s)
  end
  redis.call('PEXPIRE', clock_key, ttl_ms)
  return s
end
