-- unlock: KEYS 1 lock key, 2 lock deadlines; ARGV 1 the holder's token.
-- Only the holder may release; after its lease ended the key is gone or
-- someone else's.
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(%d+)') == ARGV[1] then
  redis.call('ZREM', KEYS[2], KEYS[1])
  return redis.call('DEL', KEYS[1])
end
return 0
