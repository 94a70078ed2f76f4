package tokencache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/singleflight"
)

// Config configures a Source.
type Config struct {
	// Name is the oauth2 entry's name; errors, logs and metrics carry it.
	Name string
	// Fingerprint identifies the entry's effective settings (secrets as
	// digests); Status shows it so that a reload can tell entries apart.
	Fingerprint string
	// Client reaches the authorization server and authenticates there.
	Client *Client
	// TokenURL is the token endpoint; TokenMethod is POST (default) or GET.
	TokenURL    string
	TokenMethod string
	// Params go with every token request: scope, audience, resource and
	// the entry's extra parameters.
	Params Form
	// Fields says where the token response keeps each field.
	Fields ResponseFields
	Grant  Grant
	// Store keeps refresh tokens under StoreKey (default Name). Nil is a
	// MemoryStore of the Source's own.
	Store    Store
	StoreKey string
	// Shared, when set, is the store replicas share tokens through (the
	// cache: key): access tokens, refresh tokens, a renewal lease. Store is
	// then not used, and StoreKey should name the entry's settings, not
	// its name (replicas may call it differently).
	Shared SharedStore
	// NoRefreshTokenRotation says the server does not rotate refresh
	// tokens (refresh_token_rotation: false), so that replicas cut off
	// from the shared store may keep renewing with the one they hold.
	NoRefreshTokenRotation bool
	// LoginURL is where a person signs in for this entry (the admin
	// listener's login page), named by login_required errors.
	LoginURL string
	// Revocation is where tokens are revoked; an empty URL: nowhere.
	Revocation Revocation
	// Warnings are said about the entry on /tokens at every look
	// (insecure_skip_verify, plain http).
	Warnings []string

	// DefaultTTL is the lifetime of a token whose response gives none (no
	// expires_in, or 0) and that is not a JWT with an exp claim.
	DefaultTTL time.Duration
	// AnyTokenType accepts a token_type other than Bearer; set it when the
	// token is not injected as "Bearer {token}".
	AnyTokenType bool
	// RefreshBefore renews a token this long before it expires (default
	// 60s). A token living less than twice that is renewed at half-life.
	RefreshBefore time.Duration
	// ForceInterval rate-limits Invalidate (default DefaultForceInterval).
	ForceInterval time.Duration

	Logger  *slog.Logger // nil: slog.Default()
	Metrics *Metrics     // nil: none
	// Scrub learns the entry's refresh and access tokens as they arrive,
	// so that no log line can hold them.
	Scrub *Scrubber
	Now   func() time.Time
	// TracerProvider traces token fetches that no traced request started
	// (start-up, background renewals) as root spans. Nil is
	// OpenTelemetry's global provider, a no-op unless the process set
	// one. A fetch that a traced request started uses the request's.
	TracerProvider trace.TracerProvider
}

// Source obtains, caches and renews the tokens of one oauth2 entry. It is
// made of three parts that can be read on their own: the cache (the current
// token, invalidation), the schedule (pacing, backoff, renewal times) and
// the grant (what a token request sends). It is safe for concurrent use;
// Token takes no lock when a cached token is fresh.
type Source struct {
	name     string
	cfg      Config
	client   *Client
	grant    Grant
	store    Store
	local    Store        // a shared Source's own store while the shared one is down
	shared   *sharedState // nil: tokens are this process's own
	key      string
	life     lifetime
	log      *slog.Logger
	now      func() time.Time
	met      *sourceMetrics
	cache    cache
	sched    schedule
	sf       singleflight.Group
	renewing atomic.Bool

	mu  sync.Mutex // guards rec; never held across I/O
	rec Record     // the stored record as last read or written

	signMu sync.Mutex // one sign-in or revocation at a time
	// seedRT is a configured refresh token that could not be stored in
	// the shared cache at start: used while the cache holds none.
	seedRT Secret

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
	if cfg.Client == nil || cfg.Grant == nil {
		return nil, fmt.Errorf("oauth2 %q: no client or grant", cfg.Name)
	}
	if _, err := safeEndpoint(cfg.TokenURL); err != nil {
		return nil, fmt.Errorf("oauth2 %q: token_url: %w", cfg.Name, err)
	}
	s := &Source{
		name:   cfg.Name,
		cfg:    cfg,
		client: cfg.Client,
		grant:  cfg.Grant,
		store:  cfg.Store,
		key:    cfg.StoreKey,
		life:   lifetime{defaultTTL: cfg.DefaultTTL, refreshBefore: cfg.RefreshBefore, anyType: cfg.AnyTokenType},
		log:    cfg.Logger,
		now:    cfg.Now,
		wake:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	s.cache.force = cfg.ForceInterval
	if s.cache.force <= 0 {
		s.cache.force = DefaultForceInterval
	}
	if s.store == nil {
		s.store = &MemoryStore{}
	}
	if cfg.Shared != nil {
		s.store, s.local = cfg.Shared, &MemoryStore{}
		s.shared = &sharedState{store: cfg.Shared, rotating: !cfg.NoRefreshTokenRotation}
	}
	if s.key == "" {
		s.key = cfg.Name
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("oauth2", s.name)
	if s.now == nil {
		s.now = time.Now
	}
	if seeder, ok := s.grant.(Seeder); ok && seeder.Seed() != "" {
		if err := s.seed(seeder.Seed()); err != nil {
			if s.shared == nil {
				return nil, err
			}
			// Replicas start while Redis is down, or all at once: the
			// configured token is used when the shared record has none.
			s.log.Warn("the configured refresh token could not be stored in the shared cache yet; it is used when the cache holds none", "error", err)
			s.seedRT = seeder.Seed()
		}
	}
	if a, ok := s.grant.(interface{ attach(*Source) }); ok {
		a.attach(s)
	}
	if cfg.Metrics != nil {
		s.met = cfg.Metrics.register(s)
	}
	return s, nil
}

// seed stores a configured refresh token unless the store holds one (a
// rotated successor is newer than the config's).
func (s *Source) seed(rt Secret) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rec, err := s.store.Load(ctx, s.key)
	switch {
	case err == nil && rec.RefreshToken != "":
		s.rec = rec
		return nil
	case err != nil && !errors.Is(err, ErrNotFound):
		return fmt.Errorf("oauth2 %q: reading the store: %w", s.name, err)
	}
	rec.RefreshToken, rec.Updated = rt, s.now()
	stored, err := s.store.CompareAndSwap(ctx, s.key, rec.Generation, rec)
	if errors.Is(err, ErrConflict) { // another replica seeded it first
		if cur, lerr := s.store.Load(ctx, s.key); lerr == nil && cur.RefreshToken != "" {
			s.rec = cur
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("oauth2 %q: storing the refresh token: %w", s.name, err)
	}
	s.rec = stored
	s.cfg.Scrub.Set(s.name, rt)
	return nil
}

// Name is the oauth2 entry's name.
func (s *Source) Name() string { return s.name }

// Grant is the entry's grant: the login page needs the authorization code
// grant's Begin, a sign-in on the page a device code's Restart.
func (s *Source) Grant() Grant { return s.grant }

// Token returns a usable access token, fetching one if none is cached. While
// the token endpoint is backing off after failures it returns the last
// error at once rather than waiting. It returns when ctx ends even if the
// fetch goes on for the other waiters.
func (s *Source) Token(ctx context.Context) (string, error) {
	if t := s.cache.usable(s.now()); t != nil {
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
	switch dropped, limited := s.cache.invalidate(token, s.now()); {
	case dropped:
		s.log.Info("upstream rejected the token; fetching a new one")
		if s.shared != nil {
			s.invalidateShared(token)
		}
	case limited:
		s.log.Debug("upstream rejected the token; not renewing it again so soon", "interval", s.cache.force)
	}
}

// wait joins (or starts) the one fetch in flight.
func (s *Source) wait(ctx context.Context, force bool) (*Token, error) {
	if !force {
		if err := s.sched.blocked(s.now()); err != nil {
			return nil, err
		}
	}
	ctx, span := s.startWait(ctx)
	// The fetch must not end when this caller gives up: others wait on it.
	fctx := context.WithoutCancel(ctx)
	led := false // this caller's function ran (read only once ch has answered)
	ch := s.sf.DoChan("token", func() (any, error) { led = true; return s.fetch(fctx, false) })
	select {
	case r := <-ch:
		f, _ := r.Val.(fetched)
		endWait(span, !led, f.span, r.Err)
		if r.Err != nil {
			return nil, r.Err
		}
		return f.tok, nil
	case <-ctx.Done():
		if span != nil { // whether it led is not known yet: no link
			endSpan(span, ctx.Err())
		}
		return nil, ctx.Err()
	}
}

// fetched is what the single flight hands its waiters: the token and the
// fetch's span, which the waiters that did not start it link to.
type fetched struct {
	tok  *Token
	span trace.SpanContext
}

// fetch obtains a token and caches it. Only one runs at a time (single
// flight). Its span is a child of ctx's: the traced request that started
// it, or a root for the background loop. bg marks the background renewal.
func (s *Source) fetch(ctx context.Context, bg bool) (fetched, error) {
	if pause := s.sched.pause(s.now()); pause > 0 {
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
			return fetched{}, errors.New("token source closed")
		}
	}
	s.renewing.Store(true)
	defer s.renewing.Store(false)
	ctx, span := s.startFetch(ctx, "oauth2 token fetch")
	start := s.now()
	s.sched.attempt(start)
	var tok *Token
	var err error
	if s.shared != nil {
		tok, err = s.fetchShared(ctx, start, bg)
	} else {
		tok, err = s.obtain(ctx, start)
	}
	d := s.now().Sub(start)
	var lr *LoginRequiredError
	if !errors.As(err, &lr) { // waiting for a person is not a token request
		s.met.record(err, d)
	}
	endSpan(span, err)
	f := fetched{tok: tok, span: span.SpanContext()}
	if err != nil {
		s.failed(err, s.logAttrs(ctx, d)...)
		return f, err
	}
	s.succeeded(tok, s.logAttrs(ctx, d)...)
	return f, nil
}

// obtain renews with the stored refresh token when there is one, and
// otherwise asks with the grant. A refresh token the server refuses
// (invalid_grant) is forgotten, and the grant decides what comes next.
func (s *Source) obtain(ctx context.Context, start time.Time) (*Token, error) {
	if s.grant.KeepsRefreshToken() {
		rec, err := s.record(ctx)
		if err != nil {
			return nil, err
		}
		if rec.RefreshToken == "" && s.seedRT != "" {
			rec.RefreshToken = s.seedRT
		}
		if rec.RefreshToken != "" {
			tok, err := s.exchange(ctx, refreshParams(rec.RefreshToken), start)
			var te *Error
			if err == nil || !errors.As(err, &te) || te.Code != "invalid_grant" {
				return tok, err
			}
			s.forget(ctx, rec, te)
		}
	}
	params, err := s.grant.Params(ctx)
	switch {
	case errors.Is(err, ErrNoRefreshToken):
		return nil, &Error{OAuth2: s.name, Endpoint: SafeURL(s.cfg.TokenURL), Permanent: true, Err: err}
	case err != nil:
		var lr *LoginRequiredError
		if errors.As(err, &lr) {
			lr.OAuth2 = s.name
			if lr.LoginURL == "" {
				lr.LoginURL = s.cfg.LoginURL
			}
		}
		return nil, err
	}
	return s.exchange(ctx, params, start)
}

// activeStore is where refresh tokens go: the configured store, or a
// shared Source's own while the shared one is unreachable.
func (s *Source) activeStore() Store {
	if s.shared != nil && s.isDegraded(s.now()) {
		return s.local
	}
	return s.store
}

// record returns the stored record, reading the store again so that a
// refresh token stored by another process (`oauthproxy login`) is seen.
func (s *Source) record(ctx context.Context) (Record, error) {
	rec, err := s.activeStore().Load(ctx, s.key)
	if errors.Is(err, ErrNotFound) {
		rec, err = Record{}, nil
	}
	if err != nil {
		return Record{}, &Error{OAuth2: s.name, Endpoint: SafeURL(s.cfg.TokenURL), Err: fmt.Errorf("reading the token store: %w", err)}
	}
	s.mu.Lock()
	s.rec = rec
	s.mu.Unlock()
	return rec, nil
}

// forget deletes a refresh token the server refused.
func (s *Source) forget(ctx context.Context, rec Record, why *Error) {
	s.log.Warn("the server refused the stored refresh token; it is dropped", "error", why.Error())
	err := s.activeStore().Delete(ctx, s.key, rec.Generation)
	if err != nil && !errors.Is(err, ErrConflict) {
		s.log.Error("deleting the refused refresh token from the store failed", "error", err)
	}
	s.mu.Lock()
	s.rec = Record{}
	s.mu.Unlock()
	s.cfg.Scrub.Set(s.name)
}

// exchange sends one token request (retrying once with a rotated client
// secret after invalid_client) and turns the answer into a Token. A new
// refresh token is stored before the token is returned.
func (s *Source) exchange(ctx context.Context, grant Form, start time.Time) (*Token, error) {
	tok, r, err := s.request(ctx, grant, start, false)
	if err != nil {
		return nil, err
	}
	if r.RefreshToken != "" && s.grant.KeepsRefreshToken() {
		s.keep(ctx, Secret(r.RefreshToken), tok) // a failure is logged; the token is still good
	}
	return tok, nil
}

// request sends the token request (once more with re-read client
// credentials after invalid_client) and checks the answer. A sign-in's
// exchange (the code's, a device code's) carries no scope: the
// authorization request had it.
func (s *Source) request(ctx context.Context, grant Form, start time.Time, signIn bool) (*Token, *response, error) {
	tok, r, err := s.send(ctx, grant, start, signIn)
	var te *Error
	if errors.As(err, &te) && te.Code == "invalid_client" {
		switch changed, rerr := s.client.Auth.Rotate(); {
		case rerr != nil:
			s.log.Warn("re-reading the client credentials after invalid_client failed", "error", rerr)
		case changed:
			s.log.Info("the client credentials changed on disk; trying the new ones")
			tok, r, err = s.send(ctx, grant, start, signIn)
		}
	}
	return tok, r, err
}

func (s *Source) send(ctx context.Context, grant Form, start time.Time, signIn bool) (*Token, *response, error) {
	form := make(Form, 0, len(grant)+len(s.cfg.Params))
	form = append(form, grant...)
	for _, p := range s.cfg.Params {
		if !signIn || p.Key != "scope" {
			form = append(form, p)
		}
	}
	a, err := s.client.Send(ctx, Request{Method: s.cfg.TokenMethod, URL: s.cfg.TokenURL, Form: form})
	if err != nil {
		return nil, nil, err
	}
	if e := s.client.Refusal(a); e != nil {
		return nil, nil, e
	}
	garbage := func(err error) error {
		return &Error{OAuth2: s.name, Endpoint: a.Endpoint, Status: a.Status, Err: err}
	}
	r, err := parseTokenResponse(a.Body, s.cfg.Fields.withDefaults())
	if err != nil {
		return nil, nil, garbage(describeBadBody(err, a.Header.Get("Content-Type")))
	}
	tok, err := s.life.newToken(r, start)
	if err != nil {
		return nil, nil, garbage(err)
	}
	return tok, r, nil
}

// keep stores a new refresh token, before its access token is used: a
// rotated refresh token spent on the server and lost here would end the
// grant (RFC 9700 §4.14.2). A store that cannot write keeps it in memory
// and says so loudly; the next renewal tries again.
func (s *Source) keep(ctx context.Context, rt Secret, tok *Token) error {
	s.cfg.Scrub.Set(s.name, rt, tok.AccessToken)
	s.mu.Lock()
	rec := s.rec
	s.mu.Unlock()
	if rec.RefreshToken == rt {
		return nil
	}
	rec.RefreshToken, rec.Updated = rt, s.now()
	st := s.activeStore()
	stored, err := st.CompareAndSwap(ctx, s.key, rec.Generation, rec)
	if errors.Is(err, ErrConflict) { // another process wrote meanwhile; ours is the newest
		if cur, lerr := st.Load(ctx, s.key); lerr == nil || errors.Is(lerr, ErrNotFound) {
			rec.Generation = cur.Generation
			stored, err = st.CompareAndSwap(ctx, s.key, cur.Generation, rec)
		}
	}
	if err != nil {
		s.log.Error("storing the new refresh token failed; it is kept in memory only", "error", err)
		stored = rec
		err = fmt.Errorf("oauth2 %q: storing the refresh token: %w", s.name, err)
	}
	s.mu.Lock()
	s.rec = stored
	s.mu.Unlock()
	return err
}

// succeeded caches t and logs it, with extra key-value pairs.
func (s *Source) succeeded(t *Token, extra ...any) {
	now := s.now()
	recovered := s.sched.succeeded(now)
	s.cache.set(t)
	s.met.setExpiry(t.Expiry)
	s.mu.Lock()
	rt := s.rec.RefreshToken
	s.mu.Unlock()
	s.cfg.Scrub.Set(s.name, rt, t.AccessToken)
	attrs := []any{"token_type", t.Type, "expires_in", t.Expiry.Sub(t.Obtained).Round(time.Second).String(),
		"expiry_from", t.ExpirySource, "renew_in", t.refreshAt.Sub(now).Round(time.Second).String()}
	if len(t.Scopes) > 0 {
		attrs = append(attrs, "scopes", strings.Join(t.Scopes, " "))
	}
	attrs = append(attrs, extra...)
	if recovered {
		s.log.Info("token endpoint recovered; token obtained", attrs...)
	} else {
		s.log.Info("token obtained", attrs...)
	}
	s.poke()
}

// failed schedules the next attempt after err and logs it, with extra
// key-value pairs.
func (s *Source) failed(err error, extra ...any) {
	now := s.now()
	d, n := s.sched.failed(err, now)
	var lr *LoginRequiredError
	if errors.As(err, &lr) {
		if n == 1 {
			s.log.Warn("sign-in required", "reason", lr.Error())
		}
		s.poke()
		return
	}
	attrs := []any{"error", err.Error(), "attempt", n, "retry_in", d.Round(time.Millisecond).String()}
	var te *Error
	if errors.As(err, &te) {
		if te.Description != "" {
			attrs = append(attrs, "idp_description", te.Description)
		}
		attrs = append(attrs, "permanent", te.Permanent)
	}
	if t := s.cache.usable(now); t != nil {
		attrs = append(attrs, "cached_token_valid_for", t.usableUntil.Sub(now).Round(time.Second).String())
	}
	attrs = append(attrs, extra...)
	s.log.Warn("token request failed", attrs...)
	s.poke()
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
	var probe <-chan time.Time // a shared Source looks at its store on its own
	if s.shared != nil {
		t := time.NewTicker(rejoinEvery)
		defer t.Stop()
		probe = t.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-probe:
			s.probeShared(ctx)
			continue
		case <-timer.C:
		case <-s.wake:
		}
		if s.untilDue() <= 0 {
			ch := s.sf.DoChan("token", func() (any, error) { return s.fetch(ctx, true) })
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
	return s.sched.due(s.cache.cur.Load(), now).Sub(now)
}
