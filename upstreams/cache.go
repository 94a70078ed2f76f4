package upstreams

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"reflect"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache/redisstore"
)

// Cache is the cache: section: replicas share tokens through Redis.
type Cache struct {
	Redis *RedisCache `yaml:"redis"`
	// Key (32 bytes, base64) seals every value stored and keys every name.
	Key Secret `yaml:"key"`
	// PreviousKeys are the keys Key replaced, newest first: values sealed
	// with them are still read (and sealed again with Key). The last one,
	// the oldest, keys the names, which must not change with the key.
	PreviousKeys []Secret  `yaml:"previous_keys"`
	Prefix       string    `yaml:"prefix"` // default "oauthproxy:"
	Pos          Positions `yaml:"-"`
}

// RedisCache says how to reach Redis.
type RedisCache struct {
	URL      Secret         `yaml:"url"` // redis:// or rediss://; may hold user:password@
	Username string         `yaml:"username"`
	Password Secret         `yaml:"password"`
	Sentinel *RedisSentinel `yaml:"sentinel"`
	Cluster  []string       `yaml:"cluster"`
	TLS      *RedisTLS      `yaml:"tls"`
	// Timeout bounds every call to Redis (default 1s): a hung Redis must
	// not hold requests.
	Timeout time.Duration `yaml:"timeout"`
	Pos     Positions     `yaml:"-"`
}

// RedisSentinel names a master watched by Sentinels.
type RedisSentinel struct {
	Master string    `yaml:"master"`
	Addrs  []string  `yaml:"addrs"`
	Pos    Positions `yaml:"-"`
}

// RedisTLS is the TLS towards Redis.
type RedisTLS struct {
	CAFile     string    `yaml:"ca_file"`     // added to the system roots
	ServerName string    `yaml:"server_name"` // default: the host of url
	Pos        Positions `yaml:"-"`
}

// validate checks the cache section.
func (v *validator) cache() {
	c := v.cfg.Cache
	if c == nil {
		return
	}
	path := "cache"
	if c.Redis == nil {
		v.addAt(at(c.Pos, "redis"), path, "missing redis")
	} else {
		r := c.Redis
		set := 0
		if r.URL.IsSet() {
			set++
			if u, err := url.Parse(r.URL.Reveal()); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
				v.addAt(at(r.Pos, "url"), "cache.redis.url", "want redis://host:port/db or rediss://... (the value is not shown: it may hold a password)")
			}
		}
		if r.Sentinel != nil {
			set++
			if r.Sentinel.Master == "" || len(r.Sentinel.Addrs) == 0 {
				v.addAt(at(r.Pos, "sentinel"), "cache.redis.sentinel", "needs master and addrs")
			}
		}
		if len(r.Cluster) > 0 {
			set++
		}
		if set != 1 {
			v.addAt(r.Pos[""], "cache.redis", "set exactly one of url, sentinel, cluster")
		}
		if r.TLS != nil && r.TLS.CAFile != "" {
			if _, err := os.Stat(r.TLS.CAFile); err != nil {
				v.addAt(at(r.TLS.Pos, "ca_file"), "cache.redis.tls.ca_file", "%v", err)
			}
		}
	}
	if !c.Key.IsSet() {
		v.missing(c.Pos, path, "key", "", " (32 bytes, base64: every value stored is encrypted with it)")
	} else if _, err := ParseStoreKey(c.Key.Reveal()); err != nil {
		v.addAt(at(c.Pos, "key"), "cache.key", "%v", err)
	}
	for i, k := range c.PreviousKeys {
		if _, err := ParseStoreKey(k.Reveal()); err != nil {
			v.addAt(at(c.Pos, "previous_keys"), fmt.Sprintf("cache.previous_keys[%d]", i), "%v", err)
		}
	}
	if c.Prefix == "" {
		c.Prefix = redisstore.DefaultPrefix
	}
}

// openCache connects the cache section's store, or takes prev's when its
// settings are the same.
func openCache(c *Cache, prev *sharedCache, log *slog.Logger, observe func(op, result string)) (*sharedCache, error) {
	if c == nil {
		return nil, nil
	}
	id := cacheDigest(c)
	if prev != nil && prev.id == id {
		return prev, nil
	}
	key, err := ParseStoreKey(c.Key.Reveal())
	if err != nil {
		return nil, fmt.Errorf("cache.key: %w", err)
	}
	var previous [][]byte
	for i, k := range c.PreviousKeys {
		b, err := ParseStoreKey(k.Reveal())
		if err != nil {
			return nil, fmt.Errorf("cache.previous_keys[%d]: %w", i, err)
		}
		previous = append(previous, b)
	}
	r := c.Redis
	opts := redisstore.Options{URL: r.URL.Reveal(), Username: r.Username, Password: r.Password.Reveal(),
		Cluster: r.Cluster, Key: key, PreviousKeys: previous, Prefix: c.Prefix, CallTimeout: r.Timeout, Logger: log, Observe: observe}
	if r.Sentinel != nil {
		opts.Sentinel = &redisstore.Sentinel{Master: r.Sentinel.Master, Addrs: r.Sentinel.Addrs}
	}
	if r.TLS != nil {
		tc := &tls.Config{ServerName: r.TLS.ServerName, MinVersion: tls.VersionTLS12}
		if r.TLS.CAFile != "" {
			pem, err := os.ReadFile(r.TLS.CAFile)
			if err != nil {
				return nil, fmt.Errorf("cache.redis.tls.ca_file: %w", err)
			}
			pool, err := x509.SystemCertPool()
			if err != nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("cache.redis.tls.ca_file %s: no PEM certificate in it", r.TLS.CAFile)
			}
			tc.RootCAs = pool
		}
		opts.TLS = tc
	}
	st, err := redisstore.New(opts)
	if err != nil {
		return nil, err
	}
	return &sharedCache{id: id, store: st}, nil
}

// sharedCache is a runtime's connection to the cache.
type sharedCache struct {
	id    string
	store *redisstore.Store
}

// cacheDigest identifies the cache settings, secrets as digests.
func cacheDigest(c *Cache) string {
	h := sha256.New()
	writeValue(h, reflect.ValueOf(*c))
	return hex.EncodeToString(h.Sum(nil))
}
