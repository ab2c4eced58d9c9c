-- record: the app produced ARGV[3] for variant ARGV[2] of resource KEYS[1].
-- KEYS: 1 resource hash, 2 meta hash, 3 clock, 4 path hash, 5 purge hash,
--       6 key marks
-- ARGV: 1 vary (joined), 2 variant, 3 tag, 4 trust ('1'/'0'), 5 ttl ms,
--       6 meta ttl ms, 7 max variants, 8 guard us, 9 '1' when the watched
--       globs are unknown (then any glob invalidation counts), 10 the
--       response's surrogate key ids (space-separated; '*': too many, the
--       validation is dropped instead), 11.. globs
-- Returns { last_modified_secs, validated_stamp|false, epoch|false,
--           resource hash, meta hash, path hash, purge hash (flat),
--           label marks } so the caller can cache the state (kept only if
--           no write follows: see cache.rs).
local r, meta, clock, path = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local purge, key_marks = KEYS[5], KEYS[6]
local labels = ARGV[10]
local vary, v, tag = ARGV[1], ARGV[2], ARGV[3]
local trust = ARGV[4] == '1'
local ttl, meta_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local max_variants, guard = tonumber(ARGV[7]), tonumber(ARGV[8])
-- Field `field` of hash `key`, set to `value` if absent. The hash is kept
-- alive for `ttl`, refreshed only past half of it: every write to a tracked
-- key pushes an invalidation to every replica's cache.
local function get_or_set(key, field, value, ttl)
  local cur = redis.call('HGET', key, field)
  if not cur then
    redis.call('HSET', key, field, value)
    redis.call('PEXPIRE', key, ttl)
    return value
  end
  if redis.call('PTTL', key) < ttl / 2 then
    redis.call('PEXPIRE', key, ttl)
  end
  return cur
end

local ft, fm, fa, fe, fp = 't|' .. v, 'm|' .. v, 'a|' .. v, 'e|' .. v, 'p|' .. v
local fk = 'k|' .. v

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
  redis.call('HDEL', r, fa, fe, fp, fk)
  changed = true
  if redis.call('HLEN', r) > 6 * max_variants + 2 then
    for _, f in ipairs(redis.call('HKEYS', r)) do
      local p = string.sub(f, 1, 2)
      if (p == 't|' or p == 'm|' or p == 'a|' or p == 'e|' or p == 'p|' or p == 'k|') and string.sub(f, 3) ~= v then
        redis.call('HDEL', r, f)
      end
    end
  end
end

local va, ve = false, false
if trust and labels == '*' then
  -- More labels than a purge could be matched against: never trusted.
  if redis.call('HEXISTS', r, fa) == 1 then
    redis.call('HDEL', r, fa, fe, fp, fk)
    changed = true
  end
elseif trust then
  local now = tonumber(now_us())
  -- A GET that overlapped a write may have read the old representation:
  -- refuse to trust anything recorded shortly after an invalidation of the
  -- path or of a watched glob (the guard covers the app's latency).
  local recent = false
  local inv = redis.call('HGET', path, 'inv')
  if inv and now - tonumber(inv) < guard then recent = true end
  local marks = {}
  if ARGV[9] == '1' then
    marks[1] = 'gl'
  end
  for i = 11, #ARGV do
    marks[#marks + 1] = 'g|' .. ARGV[i]
  end
  for _, f in ipairs(marks) do
    local g = redis.call('HGET', meta, f)
    if g and now - tonumber(g) < guard then recent = true end
  end
  if not recent then
    local s = stamp(clock, meta_ttl)
    local epoch = get_or_set(meta, 'epoch', s, meta_ttl)
    epoch = purge_state(meta, purge, key_marks, epoch, s, meta_ttl)
    -- The path's generation: a validation stays trusted only while it is
    -- current. A path never invalidated (or whose hash was evicted) gets a
    -- fresh one, newer than any an older validation can carry.
    local g = get_or_set(path, 'g', s, meta_ttl)
    redis.call('HSET', r, fa, s, fe, epoch, fp, g, fk, labels)
    va, ve = s, epoch
    changed = true
  end
end

if changed or redis.call('PTTL', r) < ttl / 2 then
  redis.call('PEXPIRE', r, ttl)
end
local res = redis.call('HGETALL', r)
return { lm, va, ve, res, redis.call('HGETALL', meta), redis.call('HGETALL', path),
         redis.call('HGETALL', purge), label_marks(res, key_marks) }
