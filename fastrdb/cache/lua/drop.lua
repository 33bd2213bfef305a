-- Drop one cache key and its fill lease, keeping the lease if the caller holds it itself.
-- KEYS[1] the cache key, KEYS[2] its lease
-- ARGV[1] the token of a lease the committing writer holds itself, or ''
local dropped = redis.call('DEL', KEYS[1])
if ARGV[1] == '' or redis.call('GET', KEYS[2]) ~= ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return dropped
