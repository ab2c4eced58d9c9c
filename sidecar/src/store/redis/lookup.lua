-- lookup: the read key's hash, the store's meta hash and the path hash, read
-- atomically. KEYS[1] resource hash, KEYS[2] meta hash, KEYS[3] path hash.
-- Read-only.
return { redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
         redis.call('HGETALL', KEYS[3]) }
