-- limit-conn, a connection starts. ARGV: the most allowed (conn + burst).
-- Returns the count including this connection, or -1: rejected. The key expires after an
-- hour without traffic, so a node that died holding connections cannot block it forever.
local n = redis.call('incr', KEYS[1])
redis.call('expire', KEYS[1], 3600)
if n > tonumber(ARGV[1]) then
  redis.call('decr', KEYS[1])
  return -1
end
return n
