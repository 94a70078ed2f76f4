package tokencache

import (
	"sync"
	"sync/atomic"
	"time"
)

// cache is a Source's current token: read without a lock on every request,
// replaced by each fetch, dropped when an upstream rejects it.
type cache struct {
	cur atomic.Pointer[Token]
	// force rate-limits invalidation: an upstream that rejects every token
	// must not turn into a storm on the token endpoint.
	force      time.Duration
	mu         sync.Mutex
	lastForced time.Time
}

// usable returns the current token if it may still be used at now.
func (c *cache) usable(now time.Time) *Token {
	if t := c.cur.Load(); t != nil && now.Before(t.usableUntil) {
		return t
	}
	return nil
}

func (c *cache) set(t *Token) { c.cur.Store(t) }

func (c *cache) clear() { c.cur.Store(nil) }

// invalidate drops the token whose value is value, if it is still the
// current one and the last forced renewal is at least force ago. It
// reports whether it dropped it, and whether it kept it for the rate limit.
func (c *cache) invalidate(value string, now time.Time) (dropped, limited bool) {
	t := c.cur.Load()
	if t == nil || t.value != value {
		return false, false // already replaced
	}
	c.mu.Lock()
	if !c.lastForced.IsZero() && now.Sub(c.lastForced) < c.force {
		c.mu.Unlock()
		return false, true
	}
	c.lastForced = now
	c.mu.Unlock()
	return c.cur.CompareAndSwap(t, nil), false
}
