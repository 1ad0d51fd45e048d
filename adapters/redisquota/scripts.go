package redisquota

// The Lua scripts, one per algorithm; each decides one request atomically in Redis.
// Times come from the caller (the replica's clock, or a test's), never from Redis,
// so that replicas and tests agree on windows. Numbers handed back to Redis are
// formatted with %.0f: Lua prints large numbers in exponent form otherwise, which
// Redis does not take for an integer. Every count and time stays below 2^53, where
// Lua's doubles are exact (see quotakit.MaxRequests).

// fixedWindowScript is envoyproxy/ratelimit's fixed window: every request's hits
// are added to the window's counter, denied or not; the first hit of a window sets
// the counter's expiry. The caller decides from the count.
//
// KEYS[1] the window's counter. ARGV[1] hits, ARGV[2] time to live (ms).
// Returns the count after the increment.
const fixedWindowScript = `
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
`

// slidingWindowScript keeps a log of allowed hits: KEYS[1] is a sorted set of entry
// times (member and score alike) and KEYS[2] a hash of the hits at each entry time,
// with their sum (n) and the latest time decided at (t). A request is allowed when
// the hits logged in (now-window, now] plus its own are within the limit; only
// allowed hits are logged. A request older than t is decided at t, so that a late
// request never finds hits gone that a later decision counted on.
//
// ARGV: now (µs), window (µs), limit, hits, quantum (µs), slack (ms).
// Returns {allowed, sum after, resetAt, denyUntil}: resetAt is when (µs) a request of
// the same hits could be allowed, denyUntil the same for one hit, 0 meaning now.
const slidingWindowScript = `
local zkey, hkey = KEYS[1], KEYS[2]
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hits, quantum, slack = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local state = redis.call('HMGET', hkey, 'n', 't')
local sum = tonumber(state[1]) or 0
local last = tonumber(state[2]) or 0
if last > now then now = last end
local cutoff = now - window
while true do
	local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', string.format('%.0f', cutoff), 'LIMIT', 0, 256)
	if #old == 0 then break end
	local counts = redis.call('HMGET', hkey, unpack(old))
	for i = 1, #old do sum = sum - (tonumber(counts[i]) or 0) end
	redis.call('ZREM', zkey, unpack(old))
	redis.call('HDEL', hkey, unpack(old))
	if #old < 256 then break end
end
if sum < 0 then sum = 0 end
local allowed = 0
local added = nil
if hits <= limit and sum + hits <= limit then
	allowed = 1
	if hits > 0 then
		local at = now
		local r = math.fmod(now, quantum)
		if r ~= 0 then at = now - r + quantum end
		local newest = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
		if #newest > 0 and tonumber(newest[2]) >= at then at = tonumber(newest[2]) end
		local member = string.format('%.0f', at)
		redis.call('ZADD', zkey, member, member)
		redis.call('HINCRBY', hkey, member, string.format('%.0f', hits))
		sum = sum + hits
		added = at
	end
end
local function expiry(need)
	local acc, first = 0, 0
	while true do
		local batch = redis.call('ZRANGE', zkey, first, first + 127, 'WITHSCORES')
		if #batch == 0 then return now + window end
		local members = {}
		for i = 1, #batch, 2 do members[#members + 1] = batch[i] end
		local counts = redis.call('HMGET', hkey, unpack(members))
		for i = 1, #members do
			acc = acc + (tonumber(counts[i]) or 0)
			if acc >= need then return tonumber(batch[2 * i]) + window end
		end
		first = first + 128
	end
end
local resetAt = 0
if hits > limit then
	resetAt = now + window
elseif sum + hits > limit then
	resetAt = expiry(sum + hits - limit)
end
local denyUntil = 0
if limit == 0 then
	denyUntil = now + window
elseif sum + 1 > limit then
	denyUntil = expiry(sum + 1 - limit)
end
if sum == 0 then
	redis.call('DEL', zkey, hkey)
else
	redis.call('HSET', hkey, 'n', string.format('%.0f', sum), 't', string.format('%.0f', now))
	if added then
		local ttl = string.format('%.0f', math.ceil((added + window - now) / 1000) + slack)
		redis.call('PEXPIRE', zkey, ttl)
		redis.call('PEXPIRE', hkey, ttl)
	end
end
return {allowed, sum, resetAt, denyUntil}
`

// tokenBucketScript keeps a bucket in exact scaled integers (see
// quotakit.TokenScale): KEYS[1] is a hash of the tokens (k) at time l, in scale
// units. A full bucket is the same as none, so it is deleted.
//
// ARGV: now (units), capacity, refill per unit, window (units), cost, unit (µs),
// slack (ms). Returns {allowed, tokens left, the bucket's time}.
const tokenBucketScript = `
local now, cap, perUnit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, cost, unit, slack = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local state = redis.call('HMGET', KEYS[1], 'k', 'l')
local tokens, last = tonumber(state[1]), tonumber(state[2])
if tokens == nil or last == nil then
	tokens, last = cap, now
end
if now > last then
	if now - last >= window then
		tokens = cap
	else
		local add = (now - last) * perUnit
		if add >= cap - tokens then tokens = cap else tokens = tokens + add end
	end
	last = now
end
local allowed = 0
if cost <= tokens then
	tokens = tokens - cost
	allowed = 1
end
if tokens >= cap then
	redis.call('DEL', KEYS[1])
else
	redis.call('HSET', KEYS[1], 'k', string.format('%.0f', tokens), 'l', string.format('%.0f', last))
	local units = math.ceil((cap - tokens) / perUnit)
	redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(units * unit / 1000) + slack))
end
return {allowed, tokens, last}
`
