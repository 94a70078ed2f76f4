package tokencache

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

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

// Limits on token lifetimes.
const (
	DefaultTokenTTL  = 5 * time.Minute
	MinDefaultTTL    = time.Second
	MaxTokenLifetime = 24 * time.Hour // longer lifetimes are capped: refresh at least daily
	// minFetchInterval paces token requests, however short-lived the tokens.
	minFetchInterval = time.Second
)

// lifetime is how a Source turns an answer into a Token.
type lifetime struct {
	defaultTTL    time.Duration
	refreshBefore time.Duration
	anyType       bool // accept a token_type other than Bearer
}

// newToken checks an answer's token and works out when to renew it. A token
// the proxy could not put in a header is refused here, as garbage from the
// token endpoint, rather than cached to fail every request of its route.
func (l lifetime) newToken(r *response, obtained time.Time) (*Token, error) {
	if err := checkToken(r); err != nil {
		return nil, err
	}
	if r.TokenType != "" && !strings.EqualFold(r.TokenType, "bearer") && !l.anyType {
		return nil, fmt.Errorf("token_type %s is not Bearer (set inject.format for another scheme)", shownTokenType(r.TokenType))
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
	ttl := l.defaultTTL
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
	t.schedule(obtained, l.refreshBefore)
	return t, nil
}

// schedule sets when to stop using the token and when to renew it.
func (t *Token) schedule(obtained time.Time, before time.Duration) {
	if before <= 0 {
		before = DefaultRefreshBefore
	}
	life := t.Expiry.Sub(obtained)
	// Stop using a token a little before it expires, for clock skew and
	// the time the request takes to reach the upstream.
	t.usableUntil = t.Expiry.Add(-min(10*time.Second, life/10))
	t.refreshAt = t.Expiry.Add(-before)
	if half := obtained.Add(life / 2); t.refreshAt.Before(half) {
		t.refreshAt = half
	}
	if floor := obtained.Add(minFetchInterval); t.refreshAt.Before(floor) {
		t.refreshAt = floor
	}
}

// checkToken holds tokens to their grammar: an access or refresh token is
// 1*VSCHAR (RFC 6749 A.12, A.17: printable ASCII and space) and a
// token_type 1*name-char (A.13). Anything else, CR and LF above all, would
// break or smuggle the header it is put in.
func checkToken(r *response) error {
	if !vschars(r.AccessToken) {
		return errors.New("the access_token holds characters a token cannot have (RFC 6749 A.12: printable ASCII only)")
	}
	if r.RefreshToken != "" && !vschars(r.RefreshToken) {
		return errors.New("the refresh_token holds characters a token cannot have (RFC 6749 A.17: printable ASCII only)")
	}
	if r.TokenType != "" && !nameChars(r.TokenType) {
		return errors.New("the token_type is not a type name (RFC 6749 A.13)")
	}
	return nil
}

func vschars(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	// Leading or trailing spaces would not survive a header.
	return s[0] != ' ' && s[len(s)-1] != ' '
}

func nameChars(s string) bool {
	if len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// shownTokenType names a token_type in a message: the registered and
// common ones as they are, anything else not at all (a server echoing
// what it received may put a secret there).
func shownTokenType(t string) string {
	switch strings.ToLower(t) {
	case "mac", "dpop", "pop", "n_a", "basic", "jwt", "token":
		return strconv.Quote(t)
	}
	return "(an unregistered value, not shown)"
}
