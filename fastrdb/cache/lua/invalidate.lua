-- Drop the cache entries a committed change made stale, atomically, on one Redis.
-- KEYS[1..n]   single-row keys; each goes with its lease and its set of derived keys
-- KEYS[n+1..]  registries of list keys; each member goes with its lease
-- ARGV[1]      n
-- The script is atomic, so deleting a registry here removes exactly the members it read.
-- ARGV[2..n+1] per single-row key, the token of a lease the committing writer holds itself
--              (kept so its write-through can land), or '' for none
local n = tonumber(ARGV[1])
local dropped = 0

local function drop(key)
  dropped = dropped + redis.call('DEL', key, '{' .. key .. '}:lease')
end

for i = 1, n do
  local key = KEYS[i]
  local lease = '{' .. key .. '}:lease'
  local deps = '{' .. key .. '}:deps'
  dropped = dropped + redis.call('DEL', key)
  local own = ARGV[i + 1]
  if own == '' or redis.call('GET', lease) ~= own then
    redis.call('DEL', lease)
  end
  local derived = redis.call('SMEMBERS', deps)
  for _, member in ipairs(derived) do
    drop(member)
  end
  redis.call('DEL', deps)
end

for i = n + 1, #KEYS do
  local members = redis.call('SMEMBERS', KEYS[i])
  for _, member in ipairs(members) do
    drop(member)
  end
  redis.call('DEL', KEYS[i])
end

return dropped
