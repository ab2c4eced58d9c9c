-- unlock: KEYS 1 lock key; ARGV 1 the holder's token. Only the holder may
-- release; after its lease ended the key is gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
