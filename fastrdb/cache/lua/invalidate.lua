-- Drop the cache entries a committed change made stale, atomically, on one Redis.
-- KEYS[1..m]       the sets of published patterns the keys were computed from
-- KEYS[m+1..m+n]   single-row keys; each goes with its lease and its set of derived keys
-- KEYS[m+n+1..]    registries of list keys; each member goes with its lease
-- ARGV[1], ARGV[2] m, n
-- ARGV[3..2+m]     the size each pattern set had when the keys were computed: if one grew
--                  since, nothing is done and -1 returned (the caller re-reads and retries)
-- ARGV[3+m..2+m+n] per single-row key, the token of a lease the committing writer holds
--                  itself (kept so its write-through can land), or '' for none
-- The script is atomic, so deleting a registry here removes exactly the members it read.
local m = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 1, m do
  if redis.call('SCARD', KEYS[i]) ~= tonumber(ARGV[2 + i]) then
    return -1
  end
end
local dropped = 0

local function drop(key)
  dropped = dropped + redis.call('DEL', key, '{' .. key .. '}:lease')
end

for i = 1, n do
  local key = KEYS[m + i]
  local lease = '{' .. key .. '}:lease'
  local deps = '{' .. key .. '}:deps'
  dropped = dropped + redis.call('DEL', key)
  local own = ARGV[2 + m + i]
  if own == '' or redis.call('GET', lease) ~= own then
    redis.call('DEL', lease)
  end
  local derived = redis.call('SMEMBERS', deps)
  for _, member in ipairs(derived) do
    drop(member)
  end
  redis.call('DEL', deps)
end

for i = m + n + 1, #KEYS do
  local members = redis.call('SMEMBERS', KEYS[i])
  for _, member in ipairs(members) do
    drop(member)
  end
  redis.call('DEL', KEYS[i])
end

return dropped
