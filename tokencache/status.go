package tokencache

import (
	"errors"
	"time"
)

// State is an oauth2 entry's condition, as /tokens, /readyz and the admin
// page name it.
type State string

const (
	StatePending        State = "pending"         // no token yet, none asked for
	StateValid          State = "valid"           // a usable token
	StateRenewing       State = "renewing"        // a request is in flight and no usable token is held
	StateRefreshFailing State = "refresh_failing" // a usable token, but renewing it fails
	StateFailing        State = "failing"         // no usable token, and requests fail
	StateExpired        State = "expired"         // the last token expired and no renewal was asked for
	StateLoginRequired  State = "login_required"  // a person must sign in
	StateDevicePending  State = "device_pending"  // a device code waits for a person
)

// Ready reports whether an entry in this state can serve requests.
func (s State) Ready() bool { return s == StateValid || s == StateRefreshFailing }

// Status is what /tokens and /readyz show of a Source: never a token.
type Status struct {
	OAuth2    string     `json:"oauth2"`
	GrantType string     `json:"grant_type"`
	TokenURL  string     `json:"token_url"`
	State     State      `json:"state"`
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
	// RefreshToken says whether a refresh token is stored; never its value.
	RefreshToken bool `json:"refresh_token_stored"`
	// Subject names who signed in, for grants that need a person.
	Subject string `json:"subject,omitempty"`
	// LoginURL is where to sign in, while the state is login_required.
	LoginURL string `json:"login_url,omitempty"`
	// Device is the pending device code (device_pending): the user code
	// and where to enter it. Never the device code itself.
	Device *DeviceAuthorization `json:"device,omitempty"`
	// Cache is "shared" when replicas share the entry's tokens through
	// the cache (Redis), "degraded" while it is unreachable; empty when
	// the process keeps its own.
	Cache string `json:"cache,omitempty"`
	// Warnings are the entry's configuration warnings that matter while
	// it runs (insecure_skip_verify).
	Warnings []string `json:"warnings,omitempty"`
}

// Ready reports whether the Source holds a usable token.
func (st Status) Ready() bool { return st.State.Ready() }

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
	sn := s.sched.snapshot()
	s.mu.Lock()
	rec := s.rec
	s.mu.Unlock()
	st := Status{
		OAuth2:       s.name,
		GrantType:    s.grant.Type(),
		TokenURL:     SafeURL(s.cfg.TokenURL),
		LastRefresh:  ptr(sn.lastOK),
		Failures:     sn.failures,
		RefreshToken: rec.RefreshToken != "",
		Subject:      rec.Subject,
		Cache:        s.cacheMode(),
		Warnings:     s.cfg.Warnings,
	}
	var lr *LoginRequiredError
	if sn.lastErr != nil {
		st.LastError = sn.lastErr.Error()
		st.LastErrorAt = ptr(sn.lastErrAt)
		st.NextAttempt = ptr(sn.retryAt)
		errors.As(sn.lastErr, &lr)
	}
	t := s.cache.cur.Load()
	usable := t != nil && now.Before(t.usableUntil)
	switch {
	case usable && sn.lastErr == nil:
		st.State = StateValid
	case usable:
		st.State = StateRefreshFailing
	case lr != nil && lr.Device != nil && now.Before(lr.Device.ExpiresAt):
		st.State, st.LoginURL, st.Device = StateDevicePending, lr.LoginURL, lr.Device
		st.Failures = 0
	case lr != nil:
		st.State, st.LoginURL = StateLoginRequired, lr.LoginURL
		st.Failures = 0 // waiting for a person is no failure
	case s.renewing.Load():
		st.State = StateRenewing
	case sn.lastErr != nil:
		st.State = StateFailing
	case t != nil:
		st.State = StateExpired
	default:
		st.State = StatePending
	}
	if usable {
		st.TokenType, st.Scopes = t.Type, s.cfg.Scrub.ScrubFields(t.Scopes)
		st.ExpiresAt, st.RenewAt, st.ExpiryFrom = ptr(t.Expiry), ptr(t.refreshAt), t.ExpirySource
	}
	return st
}
