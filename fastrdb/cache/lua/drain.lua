-- Take the members out of a registry (Redis Cluster: the drops that follow are other calls),
-- noting them as being dropped by this invalidation until it has dropped them.
-- KEYS[1] the registry, KEYS[2] its set of members being dropped, as 'token|member' (one slot)
-- ARGV[1] this invalidation's token
-- Returns {the members taken, every 'token|member' being dropped}: an invalidation that finds
-- a member taken by another, not yet dropped, drops it too (its commit may not return first).
local taken = redis.call('SMEMBERS', KEYS[1])
for i = 1, #taken do
  redis.call('SREM', KEYS[1], taken[i])
  redis.call('SADD', KEYS[2], ARGV[1] .. '|' .. taken[i])
end
return {taken, redis.call('SMEMBERS', KEYS[2])}
