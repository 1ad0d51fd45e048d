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

// slidingWindowScript keeps a log of allowed hits: KEYS[1] is a sorted set of
// entries "time:hits" scored by their time, and KEYS[2] a hash of the log's sum (n),
// the latest time decided at (t), and the newest entry's time and hits (l, c). A
// request is allowed when the hits logged in (now-window, now] plus its own are
// within the limit; only allowed hits are logged, merged into the newest entry when
// it has the same time. A request older than t is decided at t, so that a late
// request never finds hits gone that a later decision counted on. Every Redis call
// in a script costs a few microseconds, so the script makes as few as it can: in
// the steady state, the HMGET, a ZRANGEBYSCORE and ZREMRANGEBYSCORE of what left
// the window, the ZADD, the HSET and the two PEXPIREs of a new entry.
//
// ARGV: now (µs), window (µs), limit, hits, quantum (µs), slack (ms).
// Returns {allowed, sum after, resetAt, denyUntil}: resetAt is when (µs) a request of
// the same hits could be allowed, denyUntil the same for one hit, 0 meaning now.
const slidingWindowScript = `
local zkey, hkey = KEYS[1], KEYS[2]
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local hits, quantum, slack = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function int(x) return string.format('%.0f', x) end
local state = redis.call('HMGET', hkey, 'n', 't', 'l', 'c')
local sum = tonumber(state[1]) or 0
local last = tonumber(state[2]) or 0
local newest, newestHits = tonumber(state[3]), tonumber(state[4]) or 0
if last > now then now = last end
local cutoff = int(now - window)
local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', cutoff)
if #old > 0 then
	for i = 1, #old do
		sum = sum - tonumber(string.match(old[i], ':(%d+)$'))
	end
	redis.call('ZREMRANGEBYSCORE', zkey, '-inf', cutoff)
	if newest and newest <= now - window then newest, newestHits = nil, 0 end
end
if sum <= 0 then sum, newest, newestHits = 0, nil, 0 end
if sum > 0 and not newest then
	-- A hash without the newest entry (written by nothing but an old script): read it.
	local top = redis.call('ZRANGE', zkey, -1, -1)
	local at, c = string.match(top[1] or '', '^(%d+):(%d+)$')
	newest, newestHits = tonumber(at), tonumber(c) or 0
end
local allowed, created = 0, false
if hits <= limit and sum + hits <= limit then
	allowed = 1
	if hits > 0 then
		local at = now
		local r = math.fmod(now, quantum)
		if r ~= 0 then at = now - r + quantum end
		if newest and newest >= at then
			-- Replace the newest entry; adding first keeps the set (and its
			-- expiry) from vanishing with its only member.
			local was = int(newest) .. ':' .. int(newestHits)
			newestHits = newestHits + hits
			redis.call('ZADD', zkey, int(newest), int(newest) .. ':' .. int(newestHits))
			redis.call('ZREM', zkey, was)
		else
			newest, newestHits, created = at, hits, true
			redis.call('ZADD', zkey, int(newest), int(newest) .. ':' .. int(newestHits))
		end
		sum = sum + hits
	end
end
local function expiry(need)
	local acc, first = 0, 0
	while true do
		local batch = redis.call('ZRANGE', zkey, first, first + 127)
		if #batch == 0 then return now + window end
		for i = 1, #batch do
			local at, c = string.match(batch[i], '^(%d+):(%d+)$')
			acc = acc + tonumber(c)
			if acc >= need then return tonumber(at) + window end
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
	redis.call('HSET', hkey, 'n', int(sum), 't', int(now), 'l', int(newest), 'c', int(newestHits))
	if created then
		-- A merged entry keeps the expiry its creation gave both keys.
		local ttl = int(math.ceil((newest + window - now) / 1000) + slack)
		redis.call('PEXPIRE', zkey, ttl)
		redis.call('PEXPIRE', hkey, ttl)
	end
end
return {allowed, sum, resetAt, denyUntil}
`

// tokenBucketScript keeps a bucket in exact scaled integers (see
// quotakit.TokenScale, whose Refill this is, answer for answer): KEYS[1] is a hash
// of the tokens (k) and the bucket's time (l, µs), up to which refills have been
// credited. A refill credits the whole units elapsed since l and advances l by
// them, carrying the rest of a unit; a full bucket is the same as none (full now),
// so it is deleted. Times stay below 2^53 µs, where doubles are exact, and the
// whole units are counted with math.fmod, which is exact, not a rounded division.
//
// Scripts before this one kept l in units, under keys of the prefix sluice:tb:;
// this one's keys have their own prefix (see bucketPrefix), so an old bucket is
// never read as µs: it is simply left to expire.
//
// ARGV: now (µs), capacity, refill per unit, window (units), cost, unit (µs),
// slack (ms). Returns {allowed, tokens left, the bucket's time (µs)}.
const tokenBucketScript = `
local now, cap, perUnit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, cost, unit, slack = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local state = redis.call('HMGET', KEYS[1], 'k', 'l')
local tokens, last = tonumber(state[1]), tonumber(state[2])
if tokens == nil or last == nil or tokens >= cap then
	tokens, last = cap, now
elseif now > last then
	local elapsed = now - last
	local units = (elapsed - math.fmod(elapsed, unit)) / unit
	if units >= window then
		tokens, last = cap, now
	else
		local add = units * perUnit
		if add >= cap - tokens then
			tokens, last = cap, now
		else
			tokens, last = tokens + add, last + units * unit
		end
	end
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
	-- Full again a whole number of units after its time.
	local full = last + math.ceil((cap - tokens) / perUnit) * unit
	local ttl = 0
	if full > now then ttl = math.ceil((full - now) / 1000) end
	redis.call('PEXPIRE', KEYS[1], string.format('%.0f', ttl + slack))
end
return {allowed, tokens, last}
`
