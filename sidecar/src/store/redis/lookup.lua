-- lookup: the read key's hash, the store's meta hash, the path hash, the
-- purge hash and the marks of the resource's labels, read atomically.
-- KEYS: 1 resource hash, 2 meta hash, 3 path hash, 4 purge hash, 5 key
-- marks. Read-only.
local res = redis.call('HGETALL', KEYS[1])
return { res, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3]),
         redis.call('HGETALL', KEYS[4]), label_marks(res, KEYS[5]) }
