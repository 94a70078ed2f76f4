package tokencache

import (
	"context"
	"errors"
	"time"
)

// Sharing tokens between replicas (cache: redis). The request path reads
// the process's own copy; the shared store is asked on a miss, to renew and
// to invalidate. A renewal takes the store's lease, so that one replica at
// a time asks the token endpoint and spends a refresh token; the others
// wait for its change notification and adopt what it wrote. While the
// store is unreachable the Source is degraded: it keeps its tokens, and
// entries that can always get a fresh token without spending a rotating
// refresh token fetch their own.

// rejoinEvery is how often a degraded Source tries the shared store again.
const rejoinEvery = 5 * time.Second

// sharedState is a Source's view of its shared store.
type sharedState struct {
	store    SharedStore
	rotating bool // renewals spend a refresh token that only one may spend
	// under Source.mu:
	degradedUntil time.Time // try the store again from then on
	degraded      bool
	lastRejected  string // the last token an upstream rejected: never adopted again
}

// fetchShared obtains a token through the shared store. bg is a
// background renewal: it waits for another replica's renewal rather than
// returning a token that is due.
func (s *Source) fetchShared(ctx context.Context, start time.Time, bg bool) (*Token, error) {
	sh := s.shared
	if s.isDegraded(start) {
		return s.fetchDegraded(ctx, start)
	}
	changes, stop := sh.store.Changes(s.key)
	defer stop()
	budget := time.NewTimer(s.leaseTTL())
	defer budget.Stop()
	for {
		rec, err := sh.store.Load(ctx, s.key)
		if errors.Is(err, ErrNotFound) {
			rec, err = Record{}, nil
		}
		if err != nil {
			return s.storeDown(ctx, start, err)
		}
		s.rejoined()
		now := s.now()
		if rec.Failure != "" && now.Before(rec.RetryAt) && rec.AccessToken == "" {
			// Another replica failed just now: share its backoff.
			return nil, &Error{OAuth2: s.name, Endpoint: SafeURL(s.cfg.TokenURL), Err: errors.New(rec.Failure)}
		}
		t := s.adopt(rec)
		if t != nil && now.Before(t.refreshAt) {
			return t, nil
		}
		release, err := sh.store.Acquire(ctx, s.key, s.leaseTTL())
		switch {
		case errors.Is(err, ErrLeaseHeld):
			if t != nil && !bg {
				return t, nil // usable; the holder renews it
			}
			poll := time.NewTimer(250 * time.Millisecond) // notifications may be lost
			select {
			case <-changes:
			case <-poll.C:
			case <-budget.C:
				poll.Stop()
				return nil, &Error{OAuth2: s.name, Endpoint: SafeURL(s.cfg.TokenURL), Err: errors.New("another replica holds the renewal and has not finished it")}
			case <-s.stop:
				poll.Stop()
				return nil, errors.New("token source closed")
			}
			poll.Stop()
			continue
		case err != nil:
			return s.storeDown(ctx, start, err)
		}
		tok, err := s.renewShared(ctx, start)
		release(context.WithoutCancel(ctx))
		return tok, err
	}
}

// renewShared renews while holding the lease, and writes the outcome back
// for the other replicas.
func (s *Source) renewShared(ctx context.Context, start time.Time) (*Token, error) {
	// Another replica may have renewed between our look and our lease.
	if rec, err := s.shared.store.Load(ctx, s.key); err == nil {
		if t := s.adopt(rec); t != nil && s.now().Before(t.refreshAt) {
			return t, nil
		}
	}
	tok, err := s.obtain(ctx, start) // stores a rotated refresh token first
	s.mu.Lock()
	rec := s.rec
	s.mu.Unlock()
	if err != nil {
		var lr *LoginRequiredError
		if errors.As(err, &lr) {
			return nil, err
		}
		var te *Error
		errors.As(err, &te)
		rec.Failure = err.Error()
		rec.RetryAt = s.now().Add(backoff(s.sched.snapshot().failures+1, te))
		rec.AccessToken = ""
	} else {
		rec.AccessToken, rec.TokenType, rec.Scopes = tok.AccessToken, tok.Type, tok.Scopes
		rec.Obtained, rec.Expiry = tok.Obtained, tok.Expiry
		rec.Failure, rec.RetryAt = "", time.Time{}
	}
	rec.Updated = s.now()
	stored, werr := s.shared.store.CompareAndSwap(ctx, s.key, rec.Generation, rec)
	if werr != nil {
		s.log.Warn("writing the renewed token to the shared cache failed; the other replicas will renew on their own", "error", werr)
	} else {
		s.mu.Lock()
		s.rec = stored
		s.mu.Unlock()
	}
	return tok, err
}

// adopt returns the record's access token as a Token if it is usable and
// not the one an upstream rejected.
func (s *Source) adopt(rec Record) *Token {
	s.mu.Lock()
	s.rec = rec
	rejected := s.shared.lastRejected
	s.mu.Unlock()
	if rec.AccessToken == "" || rec.AccessToken.Reveal() == rejected || rec.Expiry.IsZero() {
		return nil
	}
	t := &Token{AccessToken: rec.AccessToken, Type: rec.TokenType, Scopes: rec.Scopes,
		Obtained: rec.Obtained, Expiry: rec.Expiry, ExpirySource: "shared cache", value: rec.AccessToken.Reveal()}
	t.schedule(rec.Obtained, s.life.refreshBefore)
	if !s.now().Before(t.usableUntil) {
		return nil
	}
	return t
}

// leaseTTL bounds one renewal: a token request with a retry, and a margin.
func (s *Source) leaseTTL() time.Duration {
	to := s.client.Timeout
	if to <= 0 {
		to = DefaultTimeout
	}
	return 2*to + 5*time.Second
}

// storeDown turns the Source degraded after a store error and answers as
// a degraded Source would.
func (s *Source) storeDown(ctx context.Context, start time.Time, err error) (*Token, error) {
	if s.markDegraded(err) {
		s.mu.Lock()
		rec := s.rec
		s.mu.Unlock()
		if rec.RefreshToken != "" && !s.shared.rotating {
			// refresh_token_rotation: false: the refresh token may be
			// used by several replicas; keep using it locally.
			s.local.CompareAndSwap(ctx, s.key, 0, Record{RefreshToken: rec.RefreshToken})
		}
	}
	return s.fetchDegraded(ctx, start)
}

// isDegraded reports whether the store is to be left alone at now.
func (s *Source) isDegraded(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shared.degraded && now.Before(s.shared.degradedUntil)
}

// fetchDegraded gets a token without the shared store, where that is
// safe: never by spending a rotating refresh token another replica may
// spend too.
func (s *Source) fetchDegraded(ctx context.Context, start time.Time) (*Token, error) {
	if s.grant.KeepsRefreshToken() && s.shared.rotating {
		if _, isPassword := s.grant.(Password); !isPassword {
			return nil, &Error{OAuth2: s.name, Endpoint: SafeURL(s.cfg.TokenURL),
				Err: errors.New("the shared token cache is unreachable, and renewing would spend a refresh token other replicas may spend too (set refresh_token_rotation: false if the server does not rotate them)")}
		}
	}
	return s.obtain(ctx, start) // activeStore is the local store while degraded
}

// probeShared looks at the shared store between renewals, so that an
// outage shows (and the end of one is noticed) within rejoinEvery even
// when no request needs the store: /tokens, /readyz and the rejoin.
func (s *Source) probeShared(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := s.shared.store.Load(ctx, s.key)
	if err == nil || errors.Is(err, ErrNotFound) {
		s.rejoined()
		return
	}
	s.markDegraded(err)
}

// markDegraded leaves the shared store alone for rejoinEvery after err,
// and reports whether this starts the outage (it is logged once).
func (s *Source) markDegraded(err error) bool {
	s.mu.Lock()
	was := s.shared.degraded
	s.shared.degraded = true
	s.shared.degradedUntil = s.now().Add(rejoinEvery)
	s.mu.Unlock()
	if !was {
		s.log.Error("the shared token cache cannot be used: serving with this process's own tokens until it can", "error", err)
	}
	return !was
}

// rejoined is called after the shared store answered again.
func (s *Source) rejoined() {
	s.mu.Lock()
	was := s.shared.degraded
	s.shared.degraded = false
	s.mu.Unlock()
	if was {
		s.log.Info("the shared token cache is back; sharing tokens again")
	}
}

// invalidateShared drops a rejected token from the shared store, if it is
// still the current one there: N replicas seeing N rejections cause one
// renewal.
func (s *Source) invalidateShared(token string) {
	s.mu.Lock()
	s.shared.lastRejected = token
	degraded := s.shared.degraded
	s.mu.Unlock()
	if degraded {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.shared.store.Invalidate(ctx, s.key, Secret(token)); err != nil {
		s.log.Warn("dropping the rejected token from the shared cache failed", "error", err)
	}
}

// CacheMode says how the Source keeps tokens: "" (its own), "shared" or
// "degraded" (shared, but the store is unreachable).
func (s *Source) cacheMode() string {
	if s.shared == nil {
		return ""
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shared.degraded {
		return "degraded"
	}
	return "shared"
}
