-- renew: KEYS 1 lock key; ARGV 1 the holder's token, 2 lease ms. Extends
-- the lease only for the holder; 0 when the lock is gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
