-- bump_epoch: KEYS 1 meta hash, 2 clock; ARGV 1 meta ttl ms. Entries carry
-- the epoch they were validated in; a new epoch un-trusts all of them.
local s = stamp(KEYS[2], tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'epoch', s)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return s
