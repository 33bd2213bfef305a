-- Store a value only while the caller still holds the fill lease, then drop the lease.
-- KEYS[1] the cache key, KEYS[2] its lease
-- ARGV[1] the lease token, ARGV[2] the value, ARGV[3] the expiry in seconds
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
