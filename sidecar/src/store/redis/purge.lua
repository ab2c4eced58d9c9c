-- purge: invalidation from outside HTTP. Exact paths get a new generation
-- (as a write's invalidation); globs and surrogate keys a mark with one
-- fresh stamp. Marks older than any trusted validation can be (plus the
-- guard) are forgotten; past the cap the oldest are dropped and the purge
-- floor raised to the newest dropped, un-trusting everything older.
-- KEYS: 1 meta, 2 clock, 3 purge hash, 4 key marks, 5 glob order, 6 key
--       order, 7.. path hashes
-- ARGV: 1 meta ttl ms, 2 max glob marks, 3 max key marks, 4 horizon us,
--       5 number of globs, then the globs, then the key ids
-- Returns { stamp, floor raised (0/1), marks held }
local meta, clock, x, k = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl = tonumber(ARGV[1])
local horizon, nglobs = tonumber(ARGV[4]), tonumber(ARGV[5])
local s = stamp(clock, ttl)
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  -- Nothing can be trusted without an epoch; start one.
  epoch = s
  redis.call('HSET', meta, 'epoch', s)
  redis.call('PEXPIRE', meta, ttl)
end

-- Each mark is in its hash and its order set. A hash holding marks its
-- order set cannot account for (the set was lost) could never be pruned:
-- start over, and purge_state bumps and raises the floor. (Members whose
-- hash was lost are harmless: that loss already bumped the epoch.)
local function fields(h)
  local n = redis.call('HLEN', h)
  for _, f in ipairs({ 'e', 'f' }) do
    n = n - redis.call('HEXISTS', h, f)
  end
  return n
end
if fields(x) > redis.call('ZCARD', KEYS[5]) or fields(k) > redis.call('ZCARD', KEYS[6]) then
  redis.call('DEL', x, k, KEYS[5], KEYS[6])
end
epoch = purge_state(meta, x, k, epoch, s, ttl)

for i = 7, #KEYS do
  redis.call('HSET', KEYS[i], 'g', s, 'inv', s)
  redis.call('PEXPIRE', KEYS[i], ttl)
end
for i = 6, 5 + nglobs do
  redis.call('HSET', x, 'x|' .. ARGV[i], s)
  redis.call('ZADD', KEYS[5], s, ARGV[i])
end
for i = 6 + nglobs, #ARGV do
  redis.call('HSET', k, ARGV[i], s)
  redis.call('ZADD', KEYS[6], s, ARGV[i])
end

local raised = 0
local held = 0
local old = string.format('%d', tonumber(s) - horizon)
for j, spec in ipairs({ { KEYS[5], 'x|', tonumber(ARGV[2]) }, { KEYS[6], '', tonumber(ARGV[3]) } }) do
  local order, prefix, cap = spec[1], spec[2], spec[3]
  local hash = (j == 1) and x or k
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', order, '-inf', '(' .. old)) do
    redis.call('HDEL', hash, prefix .. m)
  end
  redis.call('ZREMRANGEBYSCORE', order, '-inf', '(' .. old)
  local over = redis.call('ZCARD', order) - cap
  if over > 0 then
    local popped = redis.call('ZPOPMIN', order, over)
    local top = 0
    for i = 1, #popped, 2 do
      redis.call('HDEL', hash, prefix .. popped[i])
      local sc = tonumber(popped[i + 1])
      if sc > top then top = sc end
    end
    local floor = tonumber(redis.call('HGET', x, 'f') or '0')
    if top > floor then
      redis.call('HSET', x, 'f', string.format('%d', top))
      raised = 1
    end
  end
  held = held + redis.call('ZCARD', order)
  redis.call('PEXPIRE', order, ttl)
end
redis.call('PEXPIRE', x, ttl)
redis.call('PEXPIRE', k, ttl)
return { s, raised, held }
