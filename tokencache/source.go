package tokencache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// Grant types a Source speaks.
const (
	GrantClientCredentials = "client_credentials"
	GrantPassword          = "password"
	GrantRefreshToken      = "refresh_token"
)

// Grant is how a Source obtains tokens (RFC 6749 §4.4, §4.3, §6).
type Grant struct {
	Type     string // one of the Grant* constants
	Username string // password grant
	Password Secret // password grant
	// RefreshToken starts a refresh_token grant. A rotated refresh token in
	// a response replaces it (in memory) for the next request. A password
	// grant that is given a refresh token uses it too, and falls back to
	// the password when the IdP refuses it.
	RefreshToken Secret
}

// Defaults for a Config's zero fields.
const (
	DefaultRefreshBefore = 60 * time.Second
	// DefaultForceInterval is how often at most an upstream's rejection
	// (a 401) may force a new token: an upstream that rejects every token
	// must not turn into a storm on the token endpoint.
	DefaultForceInterval = 5 * time.Second
	// minFetchInterval paces token requests, however short-lived the tokens.
	minFetchInterval = time.Second
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

// Config configures a Source.
type Config struct {
	Endpoint Endpoint
	Grant    Grant
	// RefreshBefore renews a token this long before it expires (default
	// 60s). A token living less than twice that is renewed at half-life.
	RefreshBefore time.Duration
	// ForceInterval rate-limits Invalidate (default DefaultForceInterval).
	ForceInterval time.Duration
	// ReloadSecret, when set, is called once after an invalid_client answer
	// to re-read a client secret kept in a file; a changed secret is tried
	// at once (rotation).
	ReloadSecret func() (Secret, error)
	Logger       *slog.Logger // nil: slog.Default()
	Metrics      *Metrics     // nil: none
	Now          func() time.Time
}

// Token is an access token and what is known of it. Tokens are immutable.
type Token struct {
	AccessToken Secret
	Type        string
	Scopes      []string
	Obtained    time.Time // when the request for it was sent
	Expiry      time.Time
	// ExpirySource says where Expiry came from: "expires_in", "jwt exp" or "default_ttl".
	ExpirySource string

	refreshAt   time.Time // renew in the background from then on
	usableUntil time.Time // never used after this: Expiry minus a margin
	value       string
}

// Source obtains, caches and renews the tokens of one oauth2 entry. It is
// safe for concurrent use. Token takes no lock when a cached token is fresh.
type Source struct {
	name   string
	grant  Grant
	log    *slog.Logger
	now    func() time.Time
	met    *sourceMetrics
	before time.Duration
	force  time.Duration
	reload func() (Secret, error)

	cur atomic.Pointer[Token]
	sf  singleflight.Group

	mu          sync.Mutex // guards the fields below; never held across I/O
	req         *request
	refresh     Secret // current refresh token, if any
	lastOK      time.Time
	lastErr     error
	lastErrAt   time.Time
	failures    int
	retryAt     time.Time
	lastAttempt time.Time
	lastForced  time.Time

	wake      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	startOnce sync.Once
	stopOnce  sync.Once
	started   atomic.Bool
}

// New returns a Source for cfg. It fetches nothing until asked (Token,
// Fetch) or started (Start).
func New(cfg Config) (*Source, error) {
	switch cfg.Grant.Type {
	case GrantClientCredentials:
	case GrantPassword:
		if cfg.Grant.Username == "" {
			return nil, fmt.Errorf("oauth2 %q: the password grant needs a username", cfg.Endpoint.Name)
		}
	case GrantRefreshToken:
		if cfg.Grant.RefreshToken == "" {
			return nil, fmt.Errorf("oauth2 %q: the refresh_token grant needs a refresh token", cfg.Endpoint.Name)
		}
	default:
		return nil, fmt.Errorf("oauth2 %q: grant_type %q is not supported", cfg.Endpoint.Name, cfg.Grant.Type)
	}
	ep := cfg.Endpoint
	req, err := newRequest(&ep)
	if err != nil {
		return nil, err
	}
	s := &Source{
		name:    ep.Name,
		grant:   cfg.Grant,
		log:     cfg.Logger,
		now:     cfg.Now,
		before:  cfg.RefreshBefore,
		force:   cfg.ForceInterval,
		reload:  cfg.ReloadSecret,
		req:     req,
		refresh: cfg.Grant.RefreshToken,
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("oauth2", s.name)
	if s.now == nil {
		s.now = time.Now
	}
	if s.before <= 0 {
		s.before = DefaultRefreshBefore
	}
	if s.force <= 0 {
		s.force = DefaultForceInterval
	}
	if cfg.Metrics != nil {
		s.met = cfg.Metrics.register(s)
	}
	return s, nil
}

// Token returns a usable access token, fetching one if none is cached. While
// the token endpoint is backing off after failures it returns the last
// error at once rather than waiting. It returns when ctx ends even if the
// fetch goes on for the other waiters.
func (s *Source) Token(ctx context.Context) (string, error) {
	if t := s.cur.Load(); t != nil && s.now().Before(t.usableUntil) {
		return t.value, nil
	}
	t, err := s.wait(ctx, false)
	if err != nil {
		return "", err
	}
	return t.value, nil
}

// Fetch asks the token endpoint for a new token now, whatever is cached or
// however the endpoint failed before, and caches the result.
func (s *Source) Fetch(ctx context.Context) (*Token, error) {
	return s.wait(ctx, true)
}

// Invalidate drops token if it is still the current one, so that the next
// Token call fetches a new one: an upstream rejected it. N callers with the
// same rejected token cause one fetch. Forced renewals are rate-limited to
// one per ForceInterval; within it the token is kept.
func (s *Source) Invalidate(token string) {
	t := s.cur.Load()
	if t == nil || t.value != token {
		return // already replaced
	}
	now := s.now()
	s.mu.Lock()
	if !s.lastForced.IsZero() && now.Sub(s.lastForced) < s.force {
		s.mu.Unlock()
		s.log.Debug("upstream rejected the token; not renewing it again so soon", "interval", s.force)
		return
	}
	s.lastForced = now
	s.mu.Unlock()
	if s.cur.CompareAndSwap(t, nil) {
		s.log.Info("upstream rejected the token; fetching a new one")
	}
}

// wait joins (or starts) the one fetch in flight.
func (s *Source) wait(ctx context.Context, force bool) (*Token, error) {
	if !force {
		s.mu.Lock()
		err, retryAt := s.lastErr, s.retryAt
		s.mu.Unlock()
		if err != nil && s.now().Before(retryAt) {
			return nil, err
		}
	}
	// The fetch must not end when this caller gives up: others wait on it.
	fctx := context.WithoutCancel(ctx)
	ch := s.sf.DoChan("token", func() (any, error) { return s.fetch(fctx) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Token), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fetch makes the token request. Only one runs at a time (single flight).
func (s *Source) fetch(ctx context.Context) (*Token, error) {
	s.mu.Lock()
	pause := s.lastAttempt.Add(minFetchInterval).Sub(s.now())
	s.mu.Unlock()
	if pause > 0 {
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
			return nil, errors.New("token source closed")
		}
	}

	start := s.now()
	s.mu.Lock()
	s.lastAttempt = start
	req, refresh := s.req, s.refresh
	s.mu.Unlock()

	resp, tok, err := s.attempt(ctx, req, refresh, start)
	if err != nil {
		resp, tok, err = s.fallback(ctx, err, req, refresh, start)
	}
	elapsed := s.now().Sub(start)
	s.met.record(err, elapsed)
	if err != nil {
		s.failed(err)
		return nil, err
	}
	s.succeeded(tok, resp.RefreshToken)
	return tok, nil
}

// attempt sends one token request and checks the answer.
func (s *Source) attempt(ctx context.Context, req *request, refresh Secret, start time.Time) (*response, *Token, error) {
	resp, err := s.request(ctx, req, refresh)
	if err != nil {
		return nil, nil, err
	}
	tok, err := s.newToken(resp, start)
	if err != nil {
		return nil, nil, err
	}
	return resp, tok, nil
}

// request sends the grant's request: a refresh token when one is known.
func (s *Source) request(ctx context.Context, req *request, refresh Secret) (*response, error) {
	if refresh != "" {
		return req.do(ctx, []param{{"grant_type", GrantRefreshToken}, {"refresh_token", refresh}}, refresh)
	}
	switch s.grant.Type {
	case GrantPassword:
		return req.do(ctx, []param{{"grant_type", GrantPassword}, {"username", Secret(s.grant.Username)}, {"password", s.grant.Password}}, s.grant.Password)
	case GrantRefreshToken:
		return nil, &Error{OAuth2: s.name, Endpoint: req.endpoint, Permanent: true,
			Err: errors.New("no refresh token: the IdP refused the last one; configure a new refresh_token")}
	default:
		return req.do(ctx, []param{{"grant_type", GrantClientCredentials}})
	}
}

// fallback retries once where a second try can succeed at once: a password
// grant whose refresh token was refused, or a client secret file that was
// rotated after an invalid_client answer.
func (s *Source) fallback(ctx context.Context, err error, req *request, refresh Secret, start time.Time) (*response, *Token, error) {
	var te *Error
	if !errors.As(err, &te) {
		return nil, nil, err
	}
	switch {
	case refresh != "" && te.Permanent:
		// The refresh token is dead (invalid_grant): forget it.
		s.mu.Lock()
		if s.refresh == refresh {
			s.refresh = ""
		}
		s.mu.Unlock()
		if s.grant.Type == GrantPassword {
			s.log.Info("the IdP refused the refresh token; signing in with the password", "error", te.Detail())
			return s.attempt(ctx, req, "", start)
		}
	case te.Code == "invalid_client" && s.reload != nil:
		secret, rerr := s.reload()
		if rerr != nil {
			s.log.Warn("re-reading the client secret after invalid_client failed", "error", rerr)
			return nil, nil, err
		}
		if secret == req.ep.ClientSecret {
			return nil, nil, err
		}
		ep := *req.ep
		ep.ClientSecret = secret
		nreq, nerr := newRequest(&ep)
		if nerr != nil {
			return nil, nil, err
		}
		s.mu.Lock()
		s.req = nreq
		s.mu.Unlock()
		s.log.Info("the client secret changed on disk; trying the new one")
		return s.attempt(ctx, nreq, refresh, start)
	}
	return nil, nil, err
}

// newToken checks a response and works out when to renew the token.
func (s *Source) newToken(r *response, obtained time.Time) (*Token, error) {
	req := s.currentRequest()
	if r.TokenType != "" && !strings.EqualFold(r.TokenType, "bearer") && !req.ep.AnyTokenType {
		return nil, &Error{OAuth2: s.name, Endpoint: req.endpoint, Status: 200,
			Err: fmt.Errorf("token_type %q is not Bearer (set inject.format for another scheme)", sanitize(r.TokenType, 32))}
	}
	t := &Token{
		AccessToken: Secret(r.AccessToken),
		Type:        r.TokenType,
		Scopes:      r.Scope,
		Obtained:    obtained,
		value:       r.AccessToken,
	}
	if t.Type == "" {
		t.Type = "Bearer"
	}
	ttl := req.ep.DefaultTTL
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	switch exp, ok := jwtExpiry(r.AccessToken); {
	case r.ExpiresIn > 0:
		t.Expiry, t.ExpirySource = obtained.Add(r.ExpiresIn), "expires_in"
	case ok && exp.After(obtained):
		t.Expiry, t.ExpirySource = exp, "jwt exp"
		if t.Expiry.Sub(obtained) > MaxTokenLifetime {
			t.Expiry = obtained.Add(MaxTokenLifetime)
		}
	default:
		t.Expiry, t.ExpirySource = obtained.Add(ttl), "default_ttl"
	}
	life := t.Expiry.Sub(obtained)
	// Stop using a token a little before it expires, for clock skew and
	// the time the request takes to reach the upstream.
	t.usableUntil = t.Expiry.Add(-min(10*time.Second, life/10))
	t.refreshAt = t.Expiry.Add(-s.before)
	if half := obtained.Add(life / 2); t.refreshAt.Before(half) {
		t.refreshAt = half
	}
	if floor := obtained.Add(minFetchInterval); t.refreshAt.Before(floor) {
		t.refreshAt = floor
	}
	return t, nil
}

func (s *Source) currentRequest() *request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.req
}

func (s *Source) succeeded(t *Token, refresh string) {
	now := s.now()
	s.mu.Lock()
	recovered := s.lastErr != nil
	s.lastOK, s.lastErr, s.failures, s.retryAt = now, nil, 0, time.Time{}
	if refresh != "" && s.grant.Type != GrantClientCredentials {
		s.refresh = Secret(refresh) // a rotated refresh token replaces the old one
	}
	s.mu.Unlock()
	s.cur.Store(t)
	s.met.setExpiry(t.Expiry)
	attrs := []any{"token_type", t.Type, "expires_in", t.Expiry.Sub(t.Obtained).Round(time.Second).String(),
		"expiry_from", t.ExpirySource, "renew_in", t.refreshAt.Sub(now).Round(time.Second).String()}
	if len(t.Scopes) > 0 {
		attrs = append(attrs, "scopes", strings.Join(t.Scopes, " "))
	}
	if recovered {
		s.log.Info("token endpoint recovered; token obtained", attrs...)
	} else {
		s.log.Info("token obtained", attrs...)
	}
	s.poke()
}

func (s *Source) failed(err error) {
	now := s.now()
	var te *Error
	errors.As(err, &te)
	s.mu.Lock()
	s.failures++
	s.lastErr, s.lastErrAt = err, now
	d := backoff(s.failures, te)
	s.retryAt = now.Add(d)
	n := s.failures
	s.mu.Unlock()

	attrs := []any{"error", err.Error(), "attempt", n, "retry_in", d.Round(time.Millisecond).String()}
	if te != nil {
		if te.Description != "" {
			attrs = append(attrs, "error_description", te.Description)
		}
		attrs = append(attrs, "permanent", te.Permanent)
	}
	if t := s.cur.Load(); t != nil && now.Before(t.usableUntil) {
		attrs = append(attrs, "cached_token_valid_for", t.usableUntil.Sub(now).Round(time.Second).String())
	}
	s.log.Warn("token request failed", attrs...)
	s.poke()
}

// backoff returns how long to wait after the n-th consecutive failure:
// exponential, with jitter so that many proxies do not retry in step, and
// never sooner than the IdP's Retry-After.
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

// poke wakes the renewal loop to reschedule.
func (s *Source) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Start renews the token in the background from now until Close: at once,
// then before each expiry, and after failures with backoff.
func (s *Source) Start() {
	s.startOnce.Do(func() {
		s.started.Store(true)
		go s.run()
	})
}

// Close stops the background renewal. Token keeps working.
func (s *Source) Close() {
	s.stopOnce.Do(func() { close(s.stop) })
	if s.started.Load() {
		<-s.done
	}
	s.met.unregister(s)
}

func (s *Source) run() {
	defer close(s.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-timer.C:
		case <-s.wake:
		}
		if s.untilDue() <= 0 {
			ch := s.sf.DoChan("token", func() (any, error) { return s.fetch(ctx) })
			select {
			case <-ch:
			case <-s.stop:
				return
			}
		}
		timer.Reset(max(s.untilDue(), minFetchInterval/10))
	}
}

// untilDue is the time left before the background loop should fetch.
func (s *Source) untilDue() time.Duration {
	now := s.now()
	due := now
	if t := s.cur.Load(); t != nil {
		due = t.refreshAt
	}
	s.mu.Lock()
	if s.lastErr != nil && s.retryAt.After(due) {
		due = s.retryAt
	}
	s.mu.Unlock()
	return due.Sub(now)
}

// Status is what /tokens and /readyz show of a Source: never the token.
type Status struct {
	OAuth2    string     `json:"oauth2"`
	GrantType string     `json:"grant_type"`
	TokenURL  string     `json:"token_url"`
	State     string     `json:"state"` // pending | valid | refresh_failing | failing | expired
	TokenType string     `json:"token_type,omitempty"`
	Scopes    []string   `json:"scopes,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// ExpiryFrom is where the expiry came from: expires_in, jwt exp, default_ttl.
	ExpiryFrom  string     `json:"expiry_from,omitempty"`
	RenewAt     *time.Time `json:"renew_at,omitempty"`
	LastRefresh *time.Time `json:"last_refresh,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
	Failures    int        `json:"consecutive_failures"`
	NextAttempt *time.Time `json:"next_attempt,omitempty"`
}

// Ready reports whether the Source holds a usable token.
func (st Status) Ready() bool { return st.State == "valid" || st.State == "refresh_failing" }

// Status returns a snapshot of the Source's state.
func (s *Source) Status() Status {
	now := s.now()
	ptr := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC().Truncate(time.Second)
		return &t
	}
	s.mu.Lock()
	st := Status{
		OAuth2:      s.name,
		GrantType:   s.grant.Type,
		TokenURL:    s.req.endpoint,
		LastRefresh: ptr(s.lastOK),
		Failures:    s.failures,
	}
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
		st.LastErrorAt = ptr(s.lastErrAt)
		st.NextAttempt = ptr(s.retryAt)
	}
	s.mu.Unlock()
	t := s.cur.Load()
	usable := t != nil && now.Before(t.usableUntil)
	switch {
	case usable && st.LastError == "":
		st.State = "valid"
	case usable:
		st.State = "refresh_failing"
	case st.LastError != "":
		st.State = "failing"
	case t != nil:
		st.State = "expired"
	default:
		st.State = "pending"
	}
	if usable {
		st.TokenType, st.Scopes = t.Type, t.Scopes
		st.ExpiresAt, st.RenewAt, st.ExpiryFrom = ptr(t.Expiry), ptr(t.refreshAt), t.ExpirySource
	}
	return st
}
