-- limit-conn, a connection is over. Returns the count left.
local n = redis.call('decr', KEYS[1])
if n <= 0 then redis.call('del', KEYS[1]) end
return n
