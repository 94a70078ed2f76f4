// Package redisstore is a tokencache.SharedStore on Redis, for replicas of
// oauthproxy that share one access token and one refresh token per entry.
//
// Every entry has three names, all under Options.Prefix and all with the
// entry's Cluster hash tag (see Store.EntryKey):
//
//	PREFIX{h}:rec    a hash: g (generation, clear), r (sealed record),
//	                 a (sealed access token and what is known of it),
//	                 d (keyed digest of the access token, for Invalidate)
//	PREFIX{h}:lease  the renewal lease: a random owner, with a TTL
//	PREFIX{h}:chg    the pub/sub channel; messages hold a generation,
//	                 "0" (deleted) or "released" (the lease), nothing else
//
// and PREFIX + "keycheck" (oauthproxy:keycheck) holds a known text sealed
// with the cache.key of the first replica, so that a replica with another
// key finds out before it writes anything (ErrKeyMismatch). Values are sealed with AES-256-GCM under
// a key derived from cache.key, with the format, the Redis key and the
// hash field as additional data; key names use an HMAC under another
// derived key. Nothing in Redis holds a token, client id or secret in the
// clear.
package redisstore

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// ErrKeyMismatch: a value in Redis does not decrypt with this process's
// cache.key, so other replicas use another key. From then on the Store
// refuses every read and write, so that it never overwrites or deletes
// the others' values; the process should serve with tokens of its own.
var ErrKeyMismatch = errors.New("cache.key differs from the one other replicas use")

// Options configure a Store. URL, Sentinel or Cluster names the servers;
// Key is required.
type Options struct {
	// URL is redis://[user:password@]host:port[/db] or rediss:// (TLS).
	// With Sentinel or Cluster it gives only the scheme, credentials and
	// database, and may be empty.
	URL string
	// Username and Password, when set, override the URL's.
	Username, Password string
	// Sentinel asks these Sentinels for the master's address. They are
	// asked without credentials (Username and Password are the master's)
	// but with TLS when the master is.
	Sentinel *Sentinel
	// Cluster is a seed list of Redis Cluster nodes.
	Cluster []string
	// TLS, when set, connects with TLS (also with redis://). Its
	// ServerName defaults to the URL's host.
	TLS *tls.Config
	// Key is cache.key: 32 bytes. Every value is sealed with a key
	// derived from it, and every key name is a keyed hash under another.
	Key []byte
	// PreviousKeys are the keys cache.key had before (32 bytes each,
	// newest first), for rotating it: a value sealed with one of them
	// still opens, and is sealed again with Key when read. Key names and
	// access-token digests come from the oldest key known (the last one
	// here, or Key when there is none), so that they stay the same across
	// rotations: keep the oldest key for as long as the records live.
	PreviousKeys [][]byte
	// Prefix starts every Redis key and channel; it may not hold { or }.
	// Default "oauthproxy:".
	Prefix string
	// CallTimeout bounds every call to Redis, dialling included, whatever
	// the caller's context says. Default 1s.
	CallTimeout time.Duration
	// Logger reports key mismatches and the change notifications going
	// down and up. Nil: slog.Default().
	Logger *slog.Logger
	// Observe, when set, is called once per operation with op one of
	// load, cas, delete, acquire, release, invalidate, rewrap (a value
	// sealed with a previous key sealed again) and result one of
	// ok, conflict, miss, held, key_mismatch, error: for
	// oauthproxy_cache_operations_total. It must not block.
	Observe func(op, result string)
}

// Sentinel names a master monitored by Redis Sentinels.
type Sentinel struct {
	Master string
	Addrs  []string
}

// DefaultPrefix is what Options.Prefix defaults to.
const DefaultPrefix = "oauthproxy:"

// DefaultCallTimeout is what Options.CallTimeout defaults to.
const DefaultCallTimeout = time.Second

// Store is a tokencache.SharedStore on Redis. Create it with New; it is
// safe for concurrent use. It does no I/O until first used: a Redis that
// is down when the process starts makes calls fail, not New.
type Store struct {
	client  redis.UniversalClient
	keys    *keys
	prefix  string
	timeout time.Duration
	log     *slog.Logger
	observe func(op, result string)

	checked  atomic.Bool // the key check passed
	mismatch atomic.Bool // a value did not decrypt: refuse everything
	warnOnce sync.Once

	hub *hub
}

var _ tokencache.SharedStore = (*Store)(nil)

// New returns a Store for opts. It checks the options but does not
// connect.
func New(opts Options) (*Store, error) {
	k, err := deriveKeys(opts.Key, opts.PreviousKeys...)
	if err != nil {
		return nil, fmt.Errorf("redis cache: %w", err)
	}
	uo, err := universalOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("redis cache: %w", err)
	}
	s := &Store{
		keys:    k,
		prefix:  opts.Prefix,
		timeout: opts.CallTimeout,
		log:     opts.Logger,
		observe: opts.Observe,
	}
	if s.prefix == "" {
		s.prefix = DefaultPrefix
	}
	if strings.ContainsAny(s.prefix, "{}") {
		// The first {...} of a key name is its Cluster hash tag: a brace
		// in the prefix would scatter an entry's keys over slots.
		return nil, fmt.Errorf("redis cache: prefix %q must not hold { or }", s.prefix)
	}
	if s.timeout <= 0 {
		s.timeout = DefaultCallTimeout
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.observe == nil {
		s.observe = func(string, string) {}
	}
	s.client = redis.NewUniversalClient(uo)
	s.hub = newHub(s)
	return s, nil
}

// universalOptions turns Options into go-redis's, with every timeout at
// most CallTimeout: go-redis's defaults (5 s reads, retries, dial retries)
// would let a hung Redis hold a request for many seconds.
func universalOptions(opts Options) (*redis.UniversalOptions, error) {
	timeout := opts.CallTimeout
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	uo := &redis.UniversalOptions{
		ContextTimeoutEnabled: true,
		DialTimeout:           timeout,
		DialerRetries:         1,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		PoolTimeout:           timeout,
		// No retries: a script that ran but whose reply was lost must not
		// run again, and the caller has a deadline to keep.
		MaxRetries:      -1,
		DisableIdentity: true,
		// Redis Cloud's maintenance notifications: plain Redis answers
		// the handshake with an error; skip the round trip.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	var host string
	if opts.URL != "" {
		u, err := url.Parse(opts.URL)
		if err != nil {
			// url.Error quotes the URL, password included.
			return nil, errors.New("the url is not valid: want redis://[user:password@]host:port[/db] or rediss://")
		}
		o, err := redis.ParseURL(opts.URL)
		if err != nil {
			msg := err.Error()
			if p, ok := u.User.Password(); ok && p != "" && strings.Contains(msg, p) {
				msg = "the url is not valid"
			}
			return nil, fmt.Errorf("url: %s", msg)
		}
		uo.Addrs = []string{o.Addr}
		uo.Username, uo.Password, uo.DB = o.Username, o.Password, o.DB
		uo.TLSConfig = o.TLSConfig
		host = u.Hostname()
	}
	if opts.Username != "" {
		uo.Username = opts.Username
	}
	if opts.Password != "" {
		uo.Password = opts.Password
	}
	if opts.TLS != nil {
		uo.TLSConfig = opts.TLS.Clone()
		if uo.TLSConfig.ServerName == "" && host != "" {
			uo.TLSConfig.ServerName = host
		}
	}
	switch {
	case opts.Sentinel != nil && len(opts.Cluster) > 0:
		return nil, errors.New("sentinel and cluster exclude each other")
	case opts.Sentinel != nil:
		if opts.Sentinel.Master == "" || len(opts.Sentinel.Addrs) == 0 {
			return nil, errors.New("sentinel needs master and addrs")
		}
		uo.MasterName = opts.Sentinel.Master
		uo.Addrs = opts.Sentinel.Addrs
	case len(opts.Cluster) > 0:
		if uo.DB != 0 {
			return nil, errors.New("redis cluster has only database 0")
		}
		uo.Addrs = opts.Cluster
		uo.IsClusterMode = true
	case opts.URL == "":
		return nil, errors.New("one of url, sentinel or cluster is required")
	}
	return uo, nil
}

// Close stops the change notifications (closing every channel Changes
// handed out) and the connections.
func (s *Store) Close() error {
	s.hub.close()
	if err := s.client.Close(); err != nil {
		return fmt.Errorf("closing the redis cache: %w", err)
	}
	return nil
}

// Ping checks that Redis answers and that this process's cache.key is the
// one the others use (ErrKeyMismatch). A circuit breaker can probe with it:
// it also claims the key-check record again, which Redis loses when it
// restarts without persistence.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.call(ctx)
	defer cancel()
	if err := s.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis cache: ping: %w", err)
	}
	if err := s.checkKey(ctx); err != nil {
		return fmt.Errorf("redis cache: ping: %w", err)
	}
	return nil
}

// EntryKey returns the key under which the Store keeps the entry whose
// effective settings are fingerprint: a keyed hash, so the name reveals
// nothing, wrapped in a Cluster hash tag. Only identical fingerprints
// share, and only with the same cache.key. The Store's methods accept no
// other keys.
func (s *Store) EntryKey(fingerprint []byte) string { return s.keys.entryKey(fingerprint) }

func (s *Store) recName(key string) string   { return s.prefix + key + ":rec" }
func (s *Store) leaseName(key string) string { return s.prefix + key + ":lease" }
func (s *Store) chgName(key string) string   { return s.prefix + key + ":chg" }
func (s *Store) keyCheckName() string        { return s.prefix + "keycheck" }

// call bounds ctx by CallTimeout.
func (s *Store) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

var errBadKey = errors.New("the key does not come from EntryKey")

// begin runs before every operation: it refuses keys that are not
// EntryKey's (so no entry name reaches Redis) and, until the key check
// has passed, runs it.
func (s *Store) begin(ctx context.Context, key string) error {
	if !validEntryKey(key) {
		return errBadKey
	}
	if s.mismatch.Load() {
		return ErrKeyMismatch
	}
	if s.checked.Load() {
		return nil
	}
	return s.checkKey(ctx)
}

// checkKey claims PREFIX:keycheck with a value sealed with this key, or
// opens the value another replica claimed it with.
func (s *Store) checkKey(ctx context.Context) error {
	if s.mismatch.Load() {
		return ErrKeyMismatch
	}
	name := s.keyCheckName()
	v, err := keyCheckScript.Run(ctx, s.client, []string{name}, s.keys.seal(name, "", []byte(keyCheckPlain))).Text()
	if err != nil {
		return fmt.Errorf("checking cache.key against %s: %w", name, err)
	}
	b, stale, err := s.keys.openAny(name, "", []byte(v))
	if err != nil || string(b) != keyCheckPlain {
		s.keyMismatch(name)
		return ErrKeyMismatch
	}
	if stale {
		// Claimed with a previous key: claim it with the current one, so
		// that a replica that knows only the current key finds its own.
		err := swapScript.Run(ctx, s.client, []string{name}, v, s.keys.seal(name, "", []byte(keyCheckPlain))).Err()
		s.observe("rewrap", result(err))
	}
	s.checked.Store(true)
	return nil
}

// result is Observe's result of an operation that only succeeds or fails.
func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// keyMismatch turns the Store off for good, and says so once: name is the
// Redis key whose value did not decrypt.
func (s *Store) keyMismatch(name string) {
	s.mismatch.Store(true)
	s.warnOnce.Do(func() {
		s.log.Error("cache.key differs from the one other replicas use: this process keeps tokens of its own and leaves the shared ones alone",
			"redis_key", name)
	})
}

// done reports an operation to Observe and wraps its error.
func (s *Store) done(op string, result string, err error, what string) error {
	if err != nil {
		switch {
		case errors.Is(err, ErrKeyMismatch):
			result = "key_mismatch"
		case errors.Is(err, tokencache.ErrConflict):
			result = "conflict"
		case errors.Is(err, tokencache.ErrNotFound):
			result = "miss"
		case errors.Is(err, tokencache.ErrLeaseHeld):
			result = "held"
		default:
			result = "error"
		}
		err = fmt.Errorf("redis cache: %s: %w", what, err)
	}
	s.observe(op, result)
	return err
}

// Load implements tokencache.Store. A record that does not decrypt is
// ErrKeyMismatch.
func (s *Store) Load(ctx context.Context, key string) (tokencache.Record, error) {
	rec, err := s.load(ctx, key)
	return rec, s.done("load", "ok", err, "loading the record")
}

func (s *Store) load(ctx context.Context, key string) (tokencache.Record, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	if err := s.begin(ctx, key); err != nil {
		return tokencache.Record{}, err
	}
	name := s.recName(key)
	h, err := s.client.HGetAll(ctx, name).Result()
	if err != nil {
		return tokencache.Record{}, err
	}
	if len(h) == 0 {
		return tokencache.Record{}, tokencache.ErrNotFound
	}
	gen, err := strconv.ParseUint(h[fieldGen], 10, 64)
	if err != nil || gen == 0 {
		return tokencache.Record{}, errors.New("the record has no generation")
	}
	r, ok := h[fieldRecord]
	if !ok {
		return tokencache.Record{}, errors.New("the record is incomplete")
	}
	var access []byte
	if a, ok := h[fieldAccess]; ok {
		access = []byte(a)
	}
	rec, stale, err := s.keys.openRecord(name, gen, []byte(r), access)
	if errors.Is(err, errOpen) {
		s.keyMismatch(name)
		return tokencache.Record{}, fmt.Errorf("%w (%w)", ErrKeyMismatch, err)
	}
	if err == nil && stale {
		s.rewrap(ctx, name, h, rec)
	}
	return rec, err
}

// rewrap seals a record read with a previous key again with the current
// one, in place: the same generation, no change announced (what it holds
// is the same), and only if nobody wrote it meanwhile. A failure is only
// counted: the next read tries again.
func (s *Store) rewrap(ctx context.Context, name string, h map[string]string, rec tokencache.Record) {
	sealed, err := s.keys.sealRecord(name, rec)
	var n int64
	if err == nil {
		n, err = rewrapScript.Run(ctx, s.client, []string{name},
			h[fieldGen], h[fieldRecord], sealed.record, h[fieldAccess], sealed.access).Int64()
	}
	switch {
	case err != nil:
		s.observe("rewrap", "error")
	case n == 0:
		s.observe("rewrap", "conflict") // written meanwhile, with the current key
	default:
		s.observe("rewrap", "ok")
	}
}

// CompareAndSwap implements tokencache.Store, and publishes the change. A
// record without a refresh token expires from Redis with its access
// token (or RetryAt, if later); one with a refresh token stays. A nil
// error is as durable as Redis's persistence settings make it.
func (s *Store) CompareAndSwap(ctx context.Context, key string, old uint64, rec tokencache.Record) (tokencache.Record, error) {
	out, err := s.cas(ctx, key, old, rec)
	return out, s.done("cas", "ok", err, "writing the record")
}

// minTTL keeps a record written after its deadline readable for a moment,
// so that the write is not gone before the writer returns.
const minTTL = time.Second

func (s *Store) cas(ctx context.Context, key string, old uint64, rec tokencache.Record) (tokencache.Record, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	if err := s.begin(ctx, key); err != nil {
		return tokencache.Record{}, err
	}
	name := s.recName(key)
	sealed, err := s.keys.sealRecord(name, rec)
	if err != nil {
		return tokencache.Record{}, err
	}
	expireAt := int64(0)
	if rec.RefreshToken == "" {
		deadline := rec.Expiry
		if rec.RetryAt.After(deadline) {
			deadline = rec.RetryAt
		}
		if !deadline.IsZero() {
			expireAt = max(deadline.UnixMilli(), time.Now().Add(minTTL).UnixMilli())
		}
	}
	n, err := casScript.Run(ctx, s.client, []string{name},
		strconv.FormatUint(old, 10), sealed.record, sealed.access, sealed.digest,
		strconv.FormatInt(expireAt, 10), s.chgName(key)).Int64()
	if err != nil {
		return tokencache.Record{}, err
	}
	if n < 0 {
		return tokencache.Record{}, tokencache.ErrConflict
	}
	out := rec.Clone()
	out.Generation = uint64(n)
	return out, nil
}

// Delete implements tokencache.Store, and publishes the change.
func (s *Store) Delete(ctx context.Context, key string, old uint64) error {
	return s.done("delete", "ok", s.delete(ctx, key, old), "deleting the record")
}

func (s *Store) delete(ctx context.Context, key string, old uint64) error {
	ctx, cancel := s.call(ctx)
	defer cancel()
	if err := s.begin(ctx, key); err != nil {
		return err
	}
	n, err := deleteScript.Run(ctx, s.client, []string{s.recName(key)}, strconv.FormatUint(old, 10), s.chgName(key)).Int64()
	if err != nil {
		return err
	}
	if n < 0 {
		return tokencache.ErrConflict
	}
	return nil
}

// Invalidate implements tokencache.SharedStore: it drops the access token
// only if its keyed digest is token's, bumps the generation and publishes
// the change. A token that is no longer current, or no record, is not an
// error (Observe sees conflict or miss).
func (s *Store) Invalidate(ctx context.Context, key string, token tokencache.Secret) error {
	result, err := s.invalidate(ctx, key, token)
	return s.done("invalidate", result, err, "invalidating the access token")
}

func (s *Store) invalidate(ctx context.Context, key string, token tokencache.Secret) (string, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	if err := s.begin(ctx, key); err != nil {
		return "", err
	}
	n, err := invalidateScript.Run(ctx, s.client, []string{s.recName(key)},
		s.keys.tokenDigest(token.Reveal()), s.chgName(key)).Int64()
	switch {
	case err != nil:
		return "", err
	case n > 0:
		return "ok", nil
	case n == 0:
		return "conflict", nil
	default:
		return "miss", nil
	}
}

// Acquire implements tokencache.SharedStore with SET NX PX and a random
// owner; release deletes the lease only while this owner holds it, and
// publishes that it did so waiters can take over without waiting to poll.
func (s *Store) Acquire(ctx context.Context, key string, ttl time.Duration) (func(context.Context) error, error) {
	release, err := s.acquire(ctx, key, ttl)
	return release, s.done("acquire", "ok", err, "taking the renewal lease")
}

func (s *Store) acquire(ctx context.Context, key string, ttl time.Duration) (func(context.Context) error, error) {
	if ttl < time.Millisecond {
		return nil, fmt.Errorf("lease ttl %v is too short", ttl)
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	if err := s.begin(ctx, key); err != nil {
		return nil, err
	}
	var b [16]byte
	rand.Read(b[:])
	owner := hex.EncodeToString(b[:])
	name := s.leaseName(key)
	err := s.client.SetArgs(ctx, name, owner, redis.SetArgs{Mode: "NX", TTL: ttl}).Err()
	if errors.Is(err, redis.Nil) {
		return nil, tokencache.ErrLeaseHeld
	}
	if err != nil {
		return nil, err
	}
	release := func(ctx context.Context) error {
		result, err := s.release(ctx, name, owner, s.chgName(key))
		return s.done("release", result, err, "releasing the renewal lease")
	}
	return release, nil
}

// release gives the lease back if owner still holds it. A lease that ran
// out or was given back already is not an error (Observe sees miss):
// there is nothing left to give back.
func (s *Store) release(ctx context.Context, name, owner, channel string) (string, error) {
	ctx, cancel := s.call(ctx)
	defer cancel()
	n, err := releaseScript.Run(ctx, s.client, []string{name}, owner, channel).Int64()
	if err != nil {
		return "", err
	}
	if n == 0 {
		return "miss", nil
	}
	return "ok", nil
}
