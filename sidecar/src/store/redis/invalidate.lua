-- invalidate: a write to a path is about to be forwarded, or was. Give the
-- path a new generation (every read key's validation of the path, under any
-- Host, query or user, carries the generation it saw, so all of them end
-- here) and mark each glob with the same fresh stamp.
-- KEYS: 1 path hash, 2 meta hash, 3 clock
-- ARGV: 1 meta ttl ms, 2.. globs
local s = stamp(KEYS[3], tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'g', s, 'inv', s)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
if #ARGV >= 2 then
  for i = 2, #ARGV do
    redis.call('HSET', KEYS[2], 'g|' .. ARGV[i], s)
  end
  redis.call('HSET', KEYS[2], 'gl', s)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
end
return s
