-- record: the app produced ARGV[3] for variant ARGV[2] of resource KEYS[1].
-- KEYS: 1 resource hash, 2 meta hash, 3 clock, 4 path hash
-- ARGV: 1 vary (joined), 2 variant, 3 tag, 4 trust ('1'/'0'), 5 ttl ms,
--       6 meta ttl ms, 7 max variants, 8 guard us, 9 '1' when the watched
--       globs are unknown (then any glob invalidation counts), 10.. globs
-- Returns { last_modified_secs, validated_stamp|false, epoch|false,
--           resource hash (flat), meta hash (flat), path hash (flat) } so
--           the caller can
--           cache the state (kept only if no write follows: see cache.rs).
local r, meta, clock, path = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local vary, v, tag = ARGV[1], ARGV[2], ARGV[3]
local trust = ARGV[4] == '1'
local ttl, meta_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local max_variants, guard = tonumber(ARGV[7]), tonumber(ARGV[8])
local ft, fm, fa, fe, fp = 't|' .. v, 'm|' .. v, 'a|' .. v, 'e|' .. v, 'p|' .. v

local cur = redis.call('HMGET', r, 'vary', ft, fm, 'lmx')
local changed = false
if cur[1] ~= vary then
  if cur[1] then
    -- The secondary key changed: variants keyed by the old names mean
    -- nothing now. Keep what orders time for the resource.
    local keep = redis.call('HGET', r, 'lmx')
    redis.call('DEL', r)
    if keep then redis.call('HSET', r, 'lmx', keep) end
    cur[2] = false
    cur[3] = false
  end
  redis.call('HSET', r, 'vary', vary)
  changed = true
end

local lm
if cur[2] == tag and cur[3] then
  -- Set-if-absent: the first replica to see this tag fixed its date.
  lm = cur[3]
else
  local now = tonumber(redis.call('TIME')[1])
  local lmx = tonumber(cur[4] or '0')
  -- Strictly increasing per resource, so a date-only client never gets a
  -- 304 for a change within the same second.
  if now <= lmx then now = lmx + 1 end
  lm = string.format('%d', now)
  redis.call('HSET', r, ft, tag, fm, lm, 'lmx', lm)
  redis.call('HDEL', r, fa, fe, fp)
  changed = true
  if redis.call('HLEN', r) > 5 * max_variants + 2 then
    for _, f in ipairs(redis.call('HKEYS', r)) do
      local p = string.sub(f, 1, 2)
      if (p == 't|' or p == 'm|' or p == 'a|' or p == 'e|' or p == 'p|') and string.sub(f, 3) ~= v then
        redis.call('HDEL', r, f)
      end
    end
  end
end

local va, ve = false, false
if trust then
  local now = tonumber(now_us())
  -- A GET that overlapped a write may have read the old representation:
  -- refuse to trust anything recorded shortly after an invalidation of the
  -- path or of a watched glob (the guard covers the app's latency).
  local recent = false
  local pg = redis.call('HMGET', path, 'g', 'inv')
  if pg[2] and now - tonumber(pg[2]) < guard then recent = true end
  local marks = {}
  if ARGV[9] == '1' then
    marks[1] = 'gl'
  end
  for i = 10, #ARGV do
    marks[#marks + 1] = 'g|' .. ARGV[i]
  end
  for _, f in ipairs(marks) do
    local g = redis.call('HGET', meta, f)
    if g and now - tonumber(g) < guard then recent = true end
  end
  if not recent then
    local epoch = redis.call('HGET', meta, 'epoch')
    local s = stamp(clock, meta_ttl)
    if not epoch then
      epoch = s
      redis.call('HSET', meta, 'epoch', epoch)
      redis.call('PEXPIRE', meta, meta_ttl)
    elseif redis.call('PTTL', meta) < meta_ttl / 2 then
      redis.call('PEXPIRE', meta, meta_ttl)
    end
    -- The path's generation: a validation stays trusted only while it is
    -- current. A path never invalidated (or whose hash was evicted) gets a
    -- fresh one, newer than any an older validation can carry.
    local g = pg[1]
    if not g then
      g = s
      redis.call('HSET', path, 'g', g)
      redis.call('PEXPIRE', path, meta_ttl)
    elseif redis.call('PTTL', path) < meta_ttl / 2 then
      redis.call('PEXPIRE', path, meta_ttl)
    end
    redis.call('HSET', r, fa, s, fe, epoch, fp, g)
    va, ve = s, epoch
    changed = true
  end
end

if changed or redis.call('PTTL', r) < ttl / 2 then
  redis.call('PEXPIRE', r, ttl)
end
return { lm, va, ve, redis.call('HGETALL', r), redis.call('HGETALL', meta),
         redis.call('HGETALL', path) }
