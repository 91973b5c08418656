-- limit-req, leaky bucket in milli-units (resty.limit.req), clocked by the caller.
-- ARGV: rate (milli-requests/s), burst (milli-requests), now (ms).
-- Returns the excess (milli-requests; the caller delays excess / rate), or -1: rejected.
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('hmget', KEYS[1], 'excess', 'last')
local excess = 0
if v[1] and v[2] then
  local elapsed = math.abs(now - tonumber(v[2]))
  excess = math.max(tonumber(v[1]) - math.floor(rate * elapsed / 1000) + 1000, 0)
end
if excess > burst then
  return -1
end
redis.call('hset', KEYS[1], 'excess', excess, 'last', now)
redis.call('pexpire', KEYS[1], math.ceil((excess + 1000) * 1000 / rate) + 1000)
return excess
