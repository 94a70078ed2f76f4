package tokencache

import (
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// Renewal defaults.
const (
	DefaultRefreshBefore = 60 * time.Second
	// DefaultForceInterval is how often at most an upstream's rejection
	// (a 401) may force a new token.
	DefaultForceInterval = 5 * time.Second
	// loginRecheck is how often an entry waiting for a sign-in looks at
	// its store again (a sign-in by `oauthproxy login` in another process).
	loginRecheck = 10 * time.Second
)

// Backoff after failed token requests: transient failures (5xx, 429,
// network, garbage) start short; refusals (invalid_client...) start long.
const (
	transientBackoff    = time.Second
	transientBackoffMax = 2 * time.Minute
	permanentBackoff    = 30 * time.Second
	permanentBackoffMax = 10 * time.Minute
	retryAfterMax       = 15 * time.Minute
)

// schedule decides when a Source asks its token endpoint: a floor between
// requests, backoff after failures, and renewal ahead of expiry. It keeps
// the outcome of the last attempts for Status. Safe for concurrent use.
type schedule struct {
	mu          sync.Mutex
	lastAttempt time.Time
	lastOK      time.Time
	lastErr     error
	lastErrAt   time.Time
	failures    int
	retryAt     time.Time
}

// pause is how long to wait before the next request may be sent.
func (s *schedule) pause(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastAttempt.Add(minFetchInterval).Sub(now)
}

func (s *schedule) attempt(now time.Time) {
	s.mu.Lock()
	s.lastAttempt = now
	s.mu.Unlock()
}

// blocked returns the last error while backing off from it.
func (s *schedule) blocked(now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr != nil && now.Before(s.retryAt) {
		return s.lastErr
	}
	return nil
}

// succeeded records a token obtained; it reports whether it ends failures.
func (s *schedule) succeeded(now time.Time) (recovered bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	recovered = s.lastErr != nil
	s.lastOK, s.lastErr, s.failures, s.retryAt = now, nil, 0, time.Time{}
	return recovered
}

// succeededLogin clears a login_required condition without a token: a
// person asked to sign in again, so the next attempt is due now.
func (s *schedule) succeededLogin() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lr *LoginRequiredError
	if errors.As(s.lastErr, &lr) {
		s.retryAt = time.Time{}
	}
}

// failed records a failure and returns the backoff before the next
// attempt and how many failures in a row this makes.
func (s *schedule) failed(err error, now time.Time) (time.Duration, int) {
	var te *Error
	errors.As(err, &te)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures++
	s.lastErr, s.lastErrAt = err, now
	d := backoff(s.failures, te)
	var lr *LoginRequiredError
	if errors.As(err, &lr) {
		d = loginRecheck // no request was made: look at the store again soon
	}
	s.retryAt = now.Add(d)
	return d, s.failures
}

// due is when the background loop should fetch next, given the current
// token (nil: none).
func (s *schedule) due(t *Token, now time.Time) time.Time {
	due := now
	if t != nil {
		due = t.refreshAt
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastErr != nil && s.retryAt.After(due) {
		due = s.retryAt
	}
	return due
}

// snapshot is the schedule's part of a Status.
type snapshot struct {
	lastOK, lastErrAt, retryAt time.Time
	lastErr                    error
	failures                   int
}

func (s *schedule) snapshot() snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return snapshot{s.lastOK, s.lastErrAt, s.retryAt, s.lastErr, s.failures}
}

// backoff returns how long to wait after the n-th consecutive failure:
// exponential, with jitter so that many proxies do not retry in step, and
// never sooner than the server's Retry-After.
func backoff(n int, te *Error) time.Duration {
	base, ceil := transientBackoff, transientBackoffMax
	if te != nil && te.Permanent {
		base, ceil = permanentBackoff, permanentBackoffMax
	}
	d := base << min(n-1, 20)
	if d > ceil || d <= 0 {
		d = ceil
	}
	d = d/2 + rand.N(d/2+1) // jitter in [d/2, d]
	if te != nil && te.RetryAfter > d {
		d = min(te.RetryAfter, retryAfterMax)
	}
	return d
}
