package tokencache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/url"
	"time"
)

// Grant type names of the grants that need a person.
const (
	GrantAuthorizationCode = "authorization_code"
	GrantDeviceCode        = "device_code"
)

// AuthorizationCode is the authorization code grant (RFC 6749 §4.1) with
// PKCE S256 (RFC 7636): a person signs in once through the admin
// listener's login page or `oauthproxy login`, and from then on tokens
// come from the stored refresh token. Without one, requests need a
// sign-in (*LoginRequiredError).
type AuthorizationCode struct {
	AuthURL     string
	RedirectURL string
	ClientID    string
	// Scope is the space-separated scope list of the request.
	Scope  string
	Prompt string // consent | login | select_account | none; empty: none sent
	// Extra are further parameters of the authorization request:
	// audience, resource, and the entry's params (Google's access_type).
	Extra Form
}

func (AuthorizationCode) Type() string { return GrantAuthorizationCode }
func (AuthorizationCode) Params(context.Context) (Form, error) {
	return nil, &LoginRequiredError{}
}
func (AuthorizationCode) KeepsRefreshToken() bool { return true }

// Authorization is one sign-in under way: where to send the person, and
// what the callback needs to finish it. State and Verifier are single-use
// secrets of the login page; they never reach a log.
type Authorization struct {
	// URL is the authorization request as a redirect: AuthURL with the
	// query. Query holds the same parameters, for a POST form.
	URL      string
	Query    url.Values
	State    string
	Verifier Secret
}

// Begin starts a sign-in: a fresh state and PKCE verifier, and the
// authorization request that carries the state and the challenge.
func (g AuthorizationCode) Begin() (Authorization, error) {
	state, err := randomString(32)
	if err != nil {
		return Authorization{}, err
	}
	verifier, err := randomString(32) // 43 characters, RFC 7636 §4.1
	if err != nil {
		return Authorization{}, err
	}
	sum := sha256.Sum256([]byte(verifier))
	q := url.Values{}
	q.Set("response_type", "code")
	q.Set("client_id", g.ClientID)
	q.Set("redirect_uri", g.RedirectURL)
	if g.Scope != "" {
		q.Set("scope", g.Scope)
	}
	q.Set("state", state)
	q.Set("code_challenge", base64.RawURLEncoding.EncodeToString(sum[:]))
	q.Set("code_challenge_method", "S256")
	if g.Prompt != "" {
		q.Set("prompt", g.Prompt)
	}
	for _, p := range g.Extra {
		q.Add(p.Key, p.Value.Reveal())
	}
	u, err := url.Parse(g.AuthURL)
	if err != nil {
		return Authorization{}, fmt.Errorf("auth_url: %w", err)
	}
	merged := u.Query() // keep what auth_url itself carries (tenant, policy)
	for k, v := range q {
		merged[k] = v
	}
	u.RawQuery = merged.Encode()
	return Authorization{URL: u.String(), Query: q, State: state, Verifier: Secret(verifier)}, nil
}

// CodeParams are the parameters of the token request that exchanges code
// (RFC 6749 §4.1.3, RFC 7636 §4.5).
func (g AuthorizationCode) CodeParams(code string, verifier Secret) Form {
	return Form{{"grant_type", GrantAuthorizationCode}, {"code", Secret(code)},
		{"redirect_uri", Secret(g.RedirectURL)}, {"code_verifier", verifier}}
}

func randomString(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// SignedIn is what a finished sign-in shows the person: who, and until
// when the token lasts. Never a token.
type SignedIn struct {
	Subject      string
	Expiry       time.Time
	Scopes       []string
	RefreshToken bool // a refresh token came and is stored
}

// SignIn finishes a sign-in: it sends a token request with grant (the
// code exchange, or a device code's), stores the refresh token that comes
// back before anything else, and caches the access token. An answer
// without a refresh token still gives a token, until it expires.
func (s *Source) SignIn(ctx context.Context, grant Form) (_ SignedIn, err error) {
	s.signMu.Lock()
	defer s.signMu.Unlock()
	ctx, span := s.startFetch(ctx, "oauth2 sign-in")
	defer func() { endSpan(span, err) }()
	start := s.now()
	tok, r, err := s.request(ctx, grant, start, true)
	d := s.now().Sub(start)
	if err != nil {
		s.met.record(err, d)
		return SignedIn{}, err
	}
	s.met.record(nil, d)
	subject := subjectOf(r.IDToken, tok.value)
	s.mu.Lock()
	s.rec.Subject = subject
	s.mu.Unlock()
	if r.RefreshToken != "" {
		if err := s.keep(ctx, Secret(r.RefreshToken), tok); err != nil {
			return SignedIn{}, err
		}
	} else {
		s.log.Warn("the sign-in gave no refresh token: the token works until it expires, then sign-in is required again (ask for offline_access, or see docs/grants.md)")
	}
	s.succeeded(tok, s.logAttrs(ctx, d)...)
	s.log.Info("signed in", "subject", subject, "refresh_token_stored", r.RefreshToken != "")
	return SignedIn{Subject: subject, Expiry: tok.Expiry, Scopes: tok.Scopes, RefreshToken: r.RefreshToken != ""}, nil
}

// subjectOf names who signed in, from the ID token's claims or else the
// access token's (unverified: it is shown, never trusted).
func subjectOf(idToken, accessToken string) string {
	claims, ok := JWTClaims(idToken)
	if !ok {
		if claims, ok = JWTClaims(accessToken); !ok {
			return ""
		}
	}
	str := func(k string) string {
		v, _ := claims[k].(string)
		return sanitize(v, 100)
	}
	name := str("name")
	if name == "" {
		name = str("preferred_username")
	}
	email := str("email")
	switch {
	case name != "" && email != "" && name != email:
		return name + " <" + email + ">"
	case email != "":
		return email
	case name != "":
		return name
	}
	return str("sub")
}
