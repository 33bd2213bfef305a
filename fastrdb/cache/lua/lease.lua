-- Take the fill lease of a key, publishing its patterns first and registering it after,
-- atomically (one Redis; a cluster publishes and registers in separate single-slot calls and
-- runs this with KEYS[1..2] only).
-- KEYS[1]     the key, KEYS[2] its lease
-- KEYS[3]     the table's set of published patterns
-- KEYS[4]     the index of tables that have entries (for an operator's tools)
-- KEYS[5]     the set of published inheritance hierarchies (for capture)
-- KEYS[6..]   registries the key joins (list entries, extra-filter variants)
-- ARGV[1]     the lease token, ARGV[2] its time to live in milliseconds
-- ARGV[3]     '1': if the key holds a value, return it and do nothing else (a reader whose
--             GET missed just before another reader's fill takes that fill, not a lease)
-- ARGV[4]     the table's member of the index
-- ARGV[5]     the number n of patterns to publish, ARGV[6..5+n] the patterns
-- ARGV[6+n]   the model's inheritance hierarchy to publish in KEYS[5], or '' for none
-- Returns 1 (taken), 0 (held by another) or the key's value.
if ARGV[3] == '1' then
  local value = redis.call('GET', KEYS[1])
  if value then
    return value
  end
end
if #KEYS > 2 then
  local n = tonumber(ARGV[5])
  if n > 0 then
    redis.call('SADD', KEYS[3], unpack(ARGV, 6, 5 + n))
  end
  redis.call('SADD', KEYS[4], ARGV[4])
  if ARGV[6 + n] ~= '' then
    redis.call('SADD', KEYS[5], ARGV[6 + n])
  end
end
local taken = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
for i = 6, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
end
if taken then
  return 1
end
return 0
