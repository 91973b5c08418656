-- limit-count, fixed window. KEYS[1] counter; ARGV: limit, window ms, cost.
-- Returns {remaining (negative: rejected), ms until reset}. A key that lost its TTL (a
-- failover, a manual SET) starts a new window rather than blocking its key forever.
local ttl = redis.call('pttl', KEYS[1])
if ttl < 0 then
  local left = tonumber(ARGV[1]) - tonumber(ARGV[3])
  redis.call('set', KEYS[1], left, 'PX', ARGV[2])
  return {left, tonumber(ARGV[2])}
end
return {redis.call('decrby', KEYS[1], ARGV[3]), ttl}
