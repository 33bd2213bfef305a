-- Take the fill lease of a key, publishing its patterns first and registering it after,
-- atomically (one Redis; a cluster does the same in separate single-slot calls).
-- KEYS[1]     the lease, KEYS[2] the table's set of published patterns
-- KEYS[3]     the index of tables that have entries (for an operator's tools)
-- KEYS[4..]   registries the key joins (list entries, extra-filter variants)
-- ARGV[1]     the lease token, ARGV[2] its time to live in milliseconds
-- ARGV[3]     the number n of patterns to publish, ARGV[4..3+n] the patterns
-- ARGV[4+n]   the key itself, ARGV[5+n] the table's member of the index
local n = tonumber(ARGV[3])
if n > 0 then
  redis.call('SADD', KEYS[2], unpack(ARGV, 4, 3 + n))
end
redis.call('SADD', KEYS[3], ARGV[5 + n])
local taken = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local key = ARGV[4 + n]
for i = 4, #KEYS do
  redis.call('SADD', KEYS[i], key)
end
if taken then
  return 1
end
return 0
