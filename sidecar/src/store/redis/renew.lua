-- renew: KEYS 1 lock key, 2 lock deadlines; ARGV 1 the holder's token, 2
-- lease ms. Extends the lease only for the holder whose lease has not
-- ended; 0 when the lock is gone, someone else's or its lease is over.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local token, d, rest = string.match(cur, '^(%d+) (%d+)(.*)$')
if token ~= ARGV[1] or tonumber(d) <= now then return 0 end
local deadline = string.format('%d', now + tonumber(ARGV[2]))
redis.call('SET', KEYS[1], token .. ' ' .. deadline .. rest)
redis.call('ZADD', KEYS[2], deadline, KEYS[1])
return 1
