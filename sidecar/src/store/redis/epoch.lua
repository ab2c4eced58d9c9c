-- bump_epoch: KEYS 1 meta hash, 2 clock, 3 purge hash, 4 key marks; ARGV 1
-- meta ttl ms. Entries carry the epoch they were validated in; a new epoch
-- un-trusts all of them. The purge state moves to the new epoch with it.
local s = stamp(KEYS[2], tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'epoch', s)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
for i = 3, 4 do
  redis.call('HSET', KEYS[i], 'e', s)
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[1]))
end
return s
