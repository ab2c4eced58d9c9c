-- Shared by record and purge (prepended by conn.rs, after clock.lua).
-- The purge hash (KEY x) and the key-mark hash (KEY k) carry the epoch
-- they belong to; a lookup trusts nothing while they do not match it. If
-- either was lost (evicted, deleted) while the epoch stood, marks may be
-- gone: bump the epoch and raise the purge floor to now, so nothing
-- validated before (or within the guard after) is trusted. `s` is a fresh
-- stamp; returns the epoch in force.
local function purge_state(meta, x, k, epoch, s, ttl)
  local xe = redis.call('HGET', x, 'e')
  local ke = redis.call('HGET', k, 'e')
  if xe == epoch and ke == epoch then
    -- Refreshed only past half the TTL: each write pushes an invalidation.
    for _, key in ipairs({ x, k }) do
      if redis.call('PTTL', key) < ttl / 2 then
        redis.call('PEXPIRE', key, ttl)
      end
    end
    return epoch
  end
  if epoch ~= s then
    epoch = s
    redis.call('HSET', meta, 'epoch', s)
    redis.call('PEXPIRE', meta, ttl)
    redis.call('HSET', x, 'f', s)
  end
  redis.call('HSET', x, 'e', epoch)
  redis.call('HSET', k, 'e', epoch)
  redis.call('PEXPIRE', x, ttl)
  redis.call('PEXPIRE', k, ttl)
  return epoch
end
