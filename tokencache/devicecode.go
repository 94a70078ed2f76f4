package tokencache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// DeviceCode is the device authorization grant (RFC 8628): the headless
// sidecar's way to sign in. With no refresh token stored, the Source asks
// the device authorization endpoint for a user code, shows it (log,
// /tokens) and polls the token endpoint until a person approves it on
// another device; the refresh token is then stored as the authorization
// code grant's is. A denied code stops until Restart; an expired one is
// replaced, with backoff.
type DeviceCode struct {
	DeviceAuthURL string
	// Request goes with the device authorization request: scope,
	// audience, resource, the entry's params.
	Request Form

	mu       sync.Mutex
	src      *Source
	cur      *DeviceAuthorization
	denied   string    // the error that ended the last code; "" while none
	nextCode time.Time // an expired code is replaced no sooner than this
	expiries int
	polling  bool
}

// DeviceAuthorization is a user code waiting for a person: what the log,
// /tokens and the admin page show. The device code itself stays inside.
type DeviceAuthorization struct {
	UserCode                string    `json:"user_code"`
	VerificationURI         string    `json:"verification_uri"`
	VerificationURIComplete string    `json:"verification_uri_complete,omitempty"`
	ExpiresAt               time.Time `json:"expires_at"`

	deviceCode Secret
	interval   time.Duration
}

func (*DeviceCode) Type() string            { return GrantDeviceCode }
func (*DeviceCode) KeepsRefreshToken() bool { return true }

// attach lets the grant finish sign-ins through its Source.
func (g *DeviceCode) attach(s *Source) {
	g.mu.Lock()
	g.src = s
	g.mu.Unlock()
}

// Params starts a device authorization when none is pending, and answers
// that a person must approve it: the token comes from the poller.
func (g *DeviceCode) Params(ctx context.Context) (Form, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.src
	if s == nil {
		return nil, errors.New("device code grant used without its Source")
	}
	now := s.now()
	switch {
	case g.denied != "":
		return nil, &LoginRequiredError{Reason: g.denied + "; sign in again to start a new device code"}
	case g.cur != nil && now.Before(g.cur.ExpiresAt):
		return nil, g.pending()
	case now.Before(g.nextCode):
		return nil, &LoginRequiredError{Reason: "the device code expired; a new one at " + g.nextCode.UTC().Format(time.RFC3339)}
	}
	d, err := g.authorize(ctx, s)
	if err != nil {
		return nil, err
	}
	g.cur = d
	s.log.Warn("sign-in required: open the verification URL on any device and enter the code",
		"verification_uri", d.VerificationURI, "user_code", d.UserCode,
		"expires_at", d.ExpiresAt.UTC().Format(time.RFC3339))
	if !g.polling {
		g.polling = true
		go g.poll(s)
	}
	return nil, g.pending()
}

func (g *DeviceCode) pending() *LoginRequiredError {
	d := *g.cur
	url := d.VerificationURIComplete
	if url == "" {
		url = d.VerificationURI
	}
	return &LoginRequiredError{Reason: "device code pending: enter " + d.UserCode + " at " + d.VerificationURI, LoginURL: url, Device: &d}
}

// Restart forgets a denied or expired code, so that the next token request
// starts a new one at once: a person asked to sign in again.
func (g *DeviceCode) Restart() {
	g.mu.Lock()
	g.denied, g.nextCode, g.expiries = "", time.Time{}, 0
	if g.cur != nil && !g.polling {
		g.cur = nil
	}
	s := g.src
	g.mu.Unlock()
	if s != nil {
		s.sched.succeededLogin()
		s.poke()
	}
}

// authorize asks the device authorization endpoint for a code (RFC 8628
// §3.1, §3.2).
func (g *DeviceCode) authorize(ctx context.Context, s *Source) (*DeviceAuthorization, error) {
	a, err := s.client.Send(ctx, Request{URL: g.DeviceAuthURL, Form: g.Request})
	if err != nil {
		return nil, err
	}
	if e := s.client.Refusal(a); e != nil {
		return nil, e
	}
	var body struct {
		DeviceCode              string          `json:"device_code"`
		UserCode                string          `json:"user_code"`
		VerificationURI         string          `json:"verification_uri"`
		VerificationURL         string          `json:"verification_url"` // Google's spelling
		VerificationURIComplete string          `json:"verification_uri_complete"`
		ExpiresIn               json.RawMessage `json:"expires_in"`
		Interval                json.RawMessage `json:"interval"`
	}
	bad := func(why string) error {
		return &Error{OAuth2: s.name, Endpoint: a.Endpoint, Status: a.Status, Err: errors.New(why)}
	}
	if json.Unmarshal(a.Body, &body) != nil {
		return nil, bad("the body is not a JSON device authorization response")
	}
	if body.VerificationURI == "" {
		body.VerificationURI = body.VerificationURL
	}
	if body.DeviceCode == "" || body.UserCode == "" || body.VerificationURI == "" {
		return nil, bad("the answer lacks device_code, user_code or verification_uri")
	}
	if _, err := safeEndpoint(body.VerificationURI); err != nil {
		return nil, bad("verification_uri is not an http(s) URL")
	}
	if body.VerificationURIComplete != "" {
		if _, err := safeEndpoint(body.VerificationURIComplete); err != nil {
			body.VerificationURIComplete = ""
		}
	}
	expires := seconds(body.ExpiresIn, 0)
	if expires <= 0 {
		expires = 5 * time.Minute
	}
	s.cfg.Scrub.Add(Secret(body.DeviceCode))
	return &DeviceAuthorization{
		UserCode:                sanitize(body.UserCode, 64),
		VerificationURI:         body.VerificationURI,
		VerificationURIComplete: body.VerificationURIComplete,
		ExpiresAt:               s.now().Add(expires),
		deviceCode:              Secret(body.DeviceCode),
		interval:                max(seconds(body.Interval, 5*time.Second), time.Second),
	}, nil
}

// seconds reads a JSON number (or numeric string) of seconds.
func seconds(raw json.RawMessage, def time.Duration) time.Duration {
	var n json.Number
	if json.Unmarshal(raw, &n) != nil {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return def
		}
		n = json.Number(s)
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || f <= 0 || f > 86400 {
		return def
	}
	return time.Duration(f * float64(time.Second))
}

// poll asks the token endpoint for the pending code's token (RFC 8628
// §3.4, §3.5) at its interval, until it is approved, denied or expired, or
// the Source closes.
func (g *DeviceCode) poll(s *Source) {
	defer func() {
		g.mu.Lock()
		g.polling = false
		g.mu.Unlock()
	}()
	for {
		g.mu.Lock()
		d := g.cur
		g.mu.Unlock()
		if d == nil {
			return
		}
		t := time.NewTimer(d.interval)
		select {
		case <-s.stop:
			t.Stop()
			return
		case <-t.C:
		}
		if !s.now().Before(d.ExpiresAt) {
			g.expired(s)
			return
		}
		form := Form{{"grant_type", "urn:ietf:params:oauth:grant-type:device_code"}, {"device_code", d.deviceCode}}
		ctx, cancel := context.WithTimeout(context.Background(), max(s.client.Timeout, 10*time.Second))
		_, err := s.SignIn(ctx, form)
		cancel()
		var te *Error
		errors.As(err, &te)
		switch {
		case err == nil:
			g.mu.Lock()
			g.cur, g.expiries = nil, 0
			g.mu.Unlock()
			return
		case te != nil && te.Code == "authorization_pending":
		case te != nil && te.Code == "slow_down":
			g.mu.Lock()
			d.interval += 5 * time.Second
			g.mu.Unlock()
		case te != nil && te.Code == "expired_token":
			g.expired(s)
			return
		case te != nil && te.Permanent: // access_denied, invalid_client...
			g.mu.Lock()
			g.cur, g.denied = nil, te.Code
			if g.denied == "" {
				g.denied = te.Error()
			}
			g.mu.Unlock()
			s.log.Warn("the device code was refused; sign in again to start a new one", "error", te.Error())
			s.failed(&LoginRequiredError{OAuth2: s.name, LoginURL: s.cfg.LoginURL, Reason: g.deniedReason()})
			return
		default: // a transient failure: keep polling, a little slower
			s.log.Warn("polling for the device code's token failed; trying again", "error", err.Error())
			g.mu.Lock()
			d.interval = min(2*d.interval, time.Minute)
			g.mu.Unlock()
		}
	}
}

func (g *DeviceCode) deniedReason() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.denied
}

// expired drops the pending code and schedules a new one, backing off
// when nobody signs in time after time.
func (g *DeviceCode) expired(s *Source) {
	g.mu.Lock()
	g.cur = nil
	g.expiries++
	wait := min(time.Duration(1<<min(g.expiries-1, 6))*time.Minute/2, 30*time.Minute)
	g.nextCode = s.now().Add(wait)
	next := g.nextCode
	g.mu.Unlock()
	s.log.Warn("the device code expired before anyone signed in; a new one follows", "in", wait.String())
	// Say so at once: /tokens and 503s must not name the dead code.
	s.failed(&LoginRequiredError{OAuth2: s.name, LoginURL: s.cfg.LoginURL,
		Reason: "the device code expired; a new one at " + next.UTC().Format(time.RFC3339)})
}

// String keeps the device code out of anything that prints the grant.
func (g *DeviceCode) String() string { return fmt.Sprintf("device_code(%s)", SafeURL(g.DeviceAuthURL)) }
