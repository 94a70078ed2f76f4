package redisstore

import "github.com/redis/go-redis/v9"

// The scripts compare and write in one step, which Redis runs atomically.
// Every key a script touches is in KEYS and carries the entry's hash tag,
// so they run on Cluster too; channels are not keys and come in ARGV.
// redis.Script runs EVALSHA and falls back to EVAL when Redis does not
// know the script yet (after a restart, say).

// casScript: KEYS[1] the record; ARGV: old generation, sealed record,
// sealed access fields ("" for none), access-token digest ("" for none),
// expiry as Unix milliseconds ("0": none), channel.
// Returns the new generation, or -1 when the stored one is not old.
var casScript = redis.NewScript(`
local g = redis.call('HGET', KEYS[1], 'g') or '0'
if g ~= ARGV[1] then return -1 end
redis.call('HDEL', KEYS[1], 'a', 'd')
local n = redis.call('HINCRBY', KEYS[1], 'g', 1)
redis.call('HSET', KEYS[1], 'r', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'a', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'd', ARGV[4]) end
if ARGV[5] ~= '0' then
  redis.call('PEXPIREAT', KEYS[1], ARGV[5])
else
  redis.call('PERSIST', KEYS[1])
end
redis.call('PUBLISH', ARGV[6], n)
return n
`)

// deleteScript: KEYS[1] the record; ARGV: old generation, channel.
// Returns 1 when deleted, 0 when there was nothing, -1 on a conflict.
var deleteScript = redis.NewScript(`
local g = redis.call('HGET', KEYS[1], 'g')
if not g then return 0 end
if g ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], '0')
return 1
`)

// invalidateScript: KEYS[1] the record; ARGV: the digest of the token to
// drop, channel. Drops the access-token fields only if their digest is
// the one given, keeping the refresh token, and counts a generation so
// that a writer that read the record before cannot put the token back.
// Returns 1 when dropped, 0 when the stored token is another (or none),
// -1 when there is no record.
var invalidateScript = redis.NewScript(`
local d = redis.call('HGET', KEYS[1], 'd')
if not d then
  if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
  return 0
end
if d ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'a', 'd')
local n = redis.call('HINCRBY', KEYS[1], 'g', 1)
redis.call('PUBLISH', ARGV[2], n)
return 1
`)

// releaseScript: KEYS[1] the lease; ARGV: owner, channel. Deletes the
// lease only if this owner still holds it, and says so on the channel so
// that waiters can take over at once instead of at their next poll.
// Returns 1 when released, 0 when the lease was not this owner's.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'released')
return 1
`)

// keyCheckScript: KEYS[1] the key-check record; ARGV[1] a sealed value to
// store if there is none. Returns the stored value, so that one round trip
// both claims the record and reads another replica's claim.
var keyCheckScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`)

// rewrapScript: KEYS[1] the record; ARGV: generation, sealed record as
// read, sealed record sealed again, sealed access fields as read ("" for
// none), the same sealed again. Replaces the sealed fields only if the
// record is still the one read: same generation, same values. It keeps
// the generation and the expiry, and announces nothing: what the record
// holds did not change. Returns 1 when replaced, 0 otherwise.
var rewrapScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'g') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'r') ~= ARGV[2] then return 0 end
if (redis.call('HGET', KEYS[1], 'a') or '') ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'r', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'a', ARGV[5]) end
return 1
`)

// swapScript: KEYS[1] a string; ARGV: the value read, the new value.
// Sets the new value only if the key still holds the one read (the
// key-check record, claimed again with the current key), keeping its
// expiry. Returns 1 when set, 0 otherwise.
var swapScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
`)
