-- unlock: KEYS 1 lock key, 2 lock deadlines; ARGV 1 the holder's token
-- ('' when unknown), 2 the holder chosen at try_lock. Only the holder may
-- release; after its lease ended the key is gone or someone else's. The
-- holder alone releases a grant whose reply (and so token) was lost.
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local holder = string.match(cur, '^%d+ %d+ (%S+)$')
if string.match(cur, '^(%d+)') == ARGV[1] or (holder and holder == ARGV[2]) then
  redis.call('ZREM', KEYS[2], KEYS[1])
  return redis.call('DEL', KEYS[1])
end
return 0
