-- lookup: the resource hash and the store's meta hash, read atomically.
-- KEYS[1] resource hash, KEYS[2] meta hash. Read-only.
return { redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]) }
