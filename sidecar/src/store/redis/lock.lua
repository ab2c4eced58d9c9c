-- try_lock: KEYS 1 lock key, 2 clock, 3 lock deadlines (sorted set);
-- ARGV 1 lease ms, 2 clock ttl ms, 3 the holder (chosen by the caller
-- before asking, so a grant whose reply was lost can still be released).
-- Returns the fencing token (a clock stamp: strictly increasing per store,
-- even across evictions of the clock key) or false when held.
--
-- A lock key has no TTL: under the managed store's volatile-lru policy
-- Redis evicts only keys with a TTL (tag state), never a held lock, however
-- many unique URLs fill memory. The lease is in the value ("token
-- deadline_ms holder", Redis time) and in the deadlines set, from which leases a
-- crashed holder left behind are swept here, a few per call. A value
-- without a deadline is an older sidecar's lock leased by its key TTL:
-- held while it exists.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function held(v)
  local d = string.match(v, '^%d+ (%d+)')
  return d == nil or tonumber(d) > now
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 8)) do
  local v = redis.call('GET', k)
  if not v or not held(v) then
    redis.call('DEL', k)
  end
  redis.call('ZREM', KEYS[3], k)
end
local cur = redis.call('GET', KEYS[1])
if cur and held(cur) then
  return false
end
local token = stamp(KEYS[2], tonumber(ARGV[2]))
local deadline = string.format('%d', now + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], token .. ' ' .. deadline .. ' ' .. ARGV[3])
redis.call('ZADD', KEYS[3], deadline, KEYS[1])
return token
