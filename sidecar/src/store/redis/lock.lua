-- try_lock: KEYS 1 lock key, 2 clock; ARGV 1 lease ms, 2 clock ttl ms.
-- Returns the fencing token (a clock stamp: strictly increasing per store,
-- even across evictions of the clock key) or false when held.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local token = stamp(KEYS[2], tonumber(ARGV[2]))
redis.call('SET', KEYS[1], token, 'PX', tonumber(ARGV[1]))
return token
