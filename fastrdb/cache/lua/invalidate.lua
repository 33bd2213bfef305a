-- Drop the cache entries a committed change made stale, atomically, on one Redis.
-- KEYS[1..m]       the sets of published patterns the keys were computed from
-- KEYS[m+1..m+n]   single-row keys; each goes with its lease and its set of derived keys
-- KEYS[m+n+1..]    registries of list keys; each member goes with its lease
-- ARGV[1], ARGV[2] m, n
-- then per pattern set: the number c of members the keys were computed from, then those c
--                  members: unless the set holds exactly them (by content, not only by size),
--                  nothing is done and -1 returned (the caller re-reads and retries)
-- then n tokens:   per single-row key, the token of a lease the committing writer holds
--                  itself (kept so its write-through can land), or '' for none
-- then f, and f triples (i, value, expiry in seconds): the committing writer's write-through
--                  of single-row key i (1-based), stored after every drop, and only while the
--                  writer's lease still holds (any other commit's invalidation deleted it);
--                  the lease goes either way (a lease not held was deleted above)
-- Returns {dropped, landed_1, ..., landed_f} (landed: 1 stored, 0 refused), or {-1}.
-- The script is atomic, so deleting a registry here removes exactly the members it read.
local m = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local at = 3
for i = 1, m do
  local count = tonumber(ARGV[at])
  if redis.call('SCARD', KEYS[i]) ~= count then
    return {-1}
  end
  for j = 1, count do
    if redis.call('SISMEMBER', KEYS[i], ARGV[at + j]) == 0 then
      return {-1}
    end
  end
  at = at + count + 1
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
  local own = ARGV[at + i - 1]
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

local result = {dropped}
local fill = at + n + 1
for j = 1, tonumber(ARGV[at + n]) do
  local i = tonumber(ARGV[fill])
  local key = KEYS[m + i]
  local lease = '{' .. key .. '}:lease'
  local own = ARGV[at + i - 1]
  local landed = 0
  if own ~= '' and redis.call('GET', lease) == own then
    redis.call('SET', key, ARGV[fill + 1], 'EX', ARGV[fill + 2])
    redis.call('DEL', lease)
    landed = 1
  end
  result[j + 1] = landed
  fill = fill + 3
end
return result
