-- invalidate: a write to KEYS[1] succeeded; mark it and each glob with a
-- fresh stamp. Validations older than a mark are no longer trusted.
-- KEYS: 1 resource hash, 2 meta hash, 3 clock
-- ARGV: 1 ttl ms, 2 meta ttl ms, 3.. globs
local s = stamp(KEYS[3], tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'inv', s)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
if #ARGV >= 3 then
  for i = 3, #ARGV do
    redis.call('HSET', KEYS[2], 'g|' .. ARGV[i], s)
  end
  redis.call('HSET', KEYS[2], 'gl', s)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]))
end
return s
