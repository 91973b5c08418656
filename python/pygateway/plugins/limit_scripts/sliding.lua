-- limit-count, sliding window over two aligned windows: KEYS[1] current, KEYS[2] previous
-- (one hash tag, so a cluster keeps them on one node). ARGV: limit, window ms, cost, ms
-- elapsed in the current window. Returns {remaining (negative: rejected), ms until reset}.
local limit, window, cost, elapsed = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local cur = tonumber(redis.call('get', KEYS[1]) or '0')
local prev = tonumber(redis.call('get', KEYS[2]) or '0')
local used = prev * (window - elapsed) / window + cur
if used + cost > limit then
  return {-1, window - elapsed}
end
redis.call('incrby', KEYS[1], cost)
redis.call('pexpire', KEYS[1], window * 2)
return {math.floor(limit - used - cost), window - elapsed}
