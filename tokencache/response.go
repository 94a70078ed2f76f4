package tokencache

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"mime"
	"strconv"
	"strings"
	"time"
)

// ResponseFields names where a token response keeps each field. A dotted
// path reaches into nested objects ("data.token"); a key that itself holds
// a dot is found first. Empty fields take the RFC 6749 §5.1 names.
type ResponseFields struct {
	AccessToken  string
	ExpiresIn    string
	RefreshToken string
	TokenType    string
	Scope        string
}

func (f ResponseFields) withDefaults() ResponseFields {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&f.AccessToken, "access_token")
	def(&f.ExpiresIn, "expires_in")
	def(&f.RefreshToken, "refresh_token")
	def(&f.TokenType, "token_type")
	def(&f.Scope, "scope")
	return f
}

// describeBadBody says what a 2xx answer that is no token response was.
func describeBadBody(err error, ctype string) error {
	var syn *json.SyntaxError
	if errors.As(err, &syn) || errors.Is(err, errNotObject) {
		mt, _, _ := mime.ParseMediaType(ctype)
		switch mt {
		case "":
			mt = "no content type"
		case "text/html", "text/plain", "text/xml", "application/xml", "application/json",
			"application/x-www-form-urlencoded", "application/octet-stream", "application/problem+json":
		default:
			// Only well-known types are named: a server echoing what
			// it received may put a secret there.
			mt = "another content type"
		}
		return fmt.Errorf("the body is not a JSON token response (%s)", mt)
	}
	return err
}

// response is a parsed successful token response.
type response struct {
	AccessToken  string
	TokenType    string
	RefreshToken string
	Scope        []string
	ExpiresIn    time.Duration // 0 when the response gives none
	IDToken      string        // OpenID Connect; names who signed in
}

var errNotObject = errors.New("not a JSON object")

// parseTokenResponse reads a token response (RFC 6749 §5.1) whose fields
// live where f says. It accepts expires_in as a number or a numeric string.
func parseTokenResponse(raw []byte, f ResponseFields) (*response, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		if _, ok := err.(*json.SyntaxError); ok {
			return nil, err
		}
		return nil, errNotObject
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return nil, errNotObject
	}
	var r response
	at, ok := lookup(obj, f.AccessToken).(string)
	if !ok || at == "" {
		return nil, fmt.Errorf("the response has no %s", f.AccessToken)
	}
	r.AccessToken = at
	switch v := lookup(obj, f.TokenType).(type) {
	case nil:
	case string:
		r.TokenType = v
	default:
		return nil, fmt.Errorf("%s is not a string", f.TokenType)
	}
	switch v := lookup(obj, f.RefreshToken).(type) {
	case nil:
	case string:
		r.RefreshToken = v
	default:
		return nil, fmt.Errorf("%s is not a string", f.RefreshToken)
	}
	switch v := lookup(obj, f.Scope).(type) {
	case string:
		r.Scope = strings.Fields(v)
	case []any: // some servers send a list
		for _, s := range v {
			if s, ok := s.(string); ok {
				r.Scope = append(r.Scope, s)
			}
		}
	}
	r.IDToken, _ = obj["id_token"].(string)
	exp, err := expiresIn(lookup(obj, f.ExpiresIn))
	if err != nil {
		return nil, fmt.Errorf("%s %w", f.ExpiresIn, err)
	}
	r.ExpiresIn = exp
	return &r, nil
}

// expiresIn reads a lifetime in seconds from a JSON number or numeric string.
func expiresIn(v any) (time.Duration, error) {
	var s string
	switch v := v.(type) {
	case nil:
		return 0, nil
	case json.Number:
		s = v.String()
	case string:
		s = strings.TrimSpace(v)
	default:
		return 0, errors.New("is not a number")
	}
	n, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(n) || math.IsInf(n, 0) {
		return 0, errors.New("is not a number")
	}
	if n < 0 {
		return 0, fmt.Errorf("is negative (%s)", sanitize(s, 20))
	}
	if n > MaxTokenLifetime.Seconds() {
		return MaxTokenLifetime, nil
	}
	return time.Duration(n * float64(time.Second)), nil
}

// lookup finds path in obj: first as a literal key, then as dotted steps.
func lookup(obj map[string]any, path string) any {
	if v, ok := obj[path]; ok {
		return v
	}
	cur := any(obj)
	for part := range strings.SplitSeq(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		if cur, ok = m[part]; !ok {
			return nil
		}
	}
	return cur
}

// jwtExpiry returns the exp claim of a JWT access token, unverified: it only
// serves to guess a lifetime when the response gives none.
func jwtExpiry(tok string) (time.Time, bool) {
	claims, ok := JWTClaims(tok)
	if !ok {
		return time.Time{}, false
	}
	n, ok := claims["exp"].(json.Number)
	if !ok {
		return time.Time{}, false
	}
	sec, err := n.Int64()
	if err != nil || sec <= 0 {
		return time.Time{}, false
	}
	return time.Unix(sec, 0), true
}

// JWTClaims decodes the claims of a JWT without verifying it. It reports
// false for anything that is not a three-part JWS with a JSON object payload.
func JWTClaims(tok string) (map[string]any, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var claims map[string]any
	if dec.Decode(&claims) != nil || claims == nil {
		return nil, false
	}
	return claims, true
}
