// Package demo is the other half of `oauthproxy demo`: a tiny OAuth2
// authorization server (client credentials, ES256-signed JWT access
// tokens, a JWKS) and an API that refuses any request without one of its
// tokens. Enough to watch the proxy work with nothing installed; not a
// server for anything else.
package demo

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"
	"time"
)

// Audience is the aud claim of the tokens, which the echo API requires.
const Audience = "demo-api"

// IdP issues and verifies the demo's access tokens. Safe for concurrent use.
type IdP struct {
	ClientID string
	secret   string
	TTL      time.Duration
	key      *ecdsa.PrivateKey
	kid      string
	issued   atomic.Int64
}

// NewIdP returns an authorization server for one client.
func NewIdP(clientID, secret string, ttl time.Duration) (*IdP, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	var kid [6]byte
	rand.Read(kid[:])
	return &IdP{ClientID: clientID, secret: secret, TTL: ttl, key: key, kid: base64.RawURLEncoding.EncodeToString(kid[:])}, nil
}

// Handler serves POST /token (client credentials, RFC 6749 §4.4; client
// secret as Basic or in the body) and GET /jwks.json. issuer is its URL.
func (i *IdP) Handler(issuer string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		id, secret, basic := r.BasicAuth()
		if basic { // RFC 6749 §2.3.1: Basic credentials are form-urlencoded first
			id, _ = url.QueryUnescape(id)
			secret, _ = url.QueryUnescape(secret)
		} else {
			id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		}
		if subtle.ConstantTimeCompare([]byte(id), []byte(i.ClientID)) != 1 || subtle.ConstantTimeCompare([]byte(secret), []byte(i.secret)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="demo"`)
			oauthError(w, http.StatusUnauthorized, "invalid_client", "unknown client or wrong secret")
			return
		}
		if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
			oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "this server speaks client_credentials only")
			return
		}
		scope := r.PostForm.Get("scope")
		tok, err := i.sign(issuer, scope, time.Now())
		if err != nil {
			oauthError(w, http.StatusInternalServerError, "server_error", "signing failed")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(map[string]any{
			"access_token": tok, "token_type": "Bearer", "expires_in": int(i.TTL.Seconds()), "scope": scope,
		})
	})
	mux.HandleFunc("GET /jwks.json", func(w http.ResponseWriter, r *http.Request) {
		pad := func(b *big.Int) string { return base64.RawURLEncoding.EncodeToString(b.FillBytes(make([]byte, 32))) }
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{{
			"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": i.kid,
			"x": pad(i.key.X), "y": pad(i.key.Y),
		}}})
	})
	return mux
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

var b64 = base64.RawURLEncoding

func (i *IdP) sign(issuer, scope string, now time.Time) (string, error) {
	n := i.issued.Add(1)
	header, _ := json.Marshal(map[string]string{"alg": "ES256", "typ": "at+jwt", "kid": i.kid})
	claims, _ := json.Marshal(map[string]any{
		"iss": issuer, "sub": i.ClientID, "client_id": i.ClientID, "aud": Audience, "scope": scope,
		"iat": now.Unix(), "exp": now.Add(i.TTL).Unix(), "jti": fmt.Sprintf("demo-%d", n),
	})
	input := b64.EncodeToString(header) + "." + b64.EncodeToString(claims)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, i.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	return input + "." + b64.EncodeToString(sig), nil
}

// Verify checks a token's signature, expiry and audience and returns its claims.
func (i *IdP) Verify(tok string, now time.Time) (map[string]any, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a JWT")
	}
	var header struct{ Alg, Kid string }
	if hb, err := b64.DecodeString(parts[0]); err != nil || json.Unmarshal(hb, &header) != nil {
		return nil, errors.New("malformed header")
	}
	if header.Alg != "ES256" || header.Kid != i.kid {
		return nil, errors.New("not signed by this server")
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, errors.New("malformed signature")
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(&i.key.PublicKey, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return nil, errors.New("bad signature")
	}
	var claims map[string]any
	cb, _ := b64.DecodeString(parts[1])
	if json.Unmarshal(cb, &claims) != nil {
		return nil, errors.New("malformed claims")
	}
	if exp, _ := claims["exp"].(float64); now.Unix() >= int64(exp) {
		return nil, errors.New("expired")
	}
	if claims["aud"] != Audience {
		return nil, errors.New("wrong audience")
	}
	return claims, nil
}

// EchoAPI answers every request that carries a valid bearer token from idp
// with what it received (the token itself only as its verified claims);
// anything else gets 401, as a real API would.
func EchoAPI(idp *IdP) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		claims, err := idp.Verify(tok, time.Now())
		if !ok || err != nil {
			reason := "no bearer token"
			if ok {
				reason = "invalid token: " + err.Error()
			}
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(map[string]string{"error": "unauthorized", "message": reason})
			return
		}
		headers := map[string]string{}
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if k != "Authorization" {
				headers[k] = strings.Join(r.Header[k], ", ")
			}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(map[string]any{
			"message": "hello from the echo API: your request carried a valid token",
			"method":  r.Method,
			"path":    r.URL.Path,
			"query":   r.URL.RawQuery,
			"headers": headers,
			"token": map[string]any{
				"client_id":  claims["client_id"],
				"scope":      claims["scope"],
				"jti":        claims["jti"],
				"expires_at": time.Unix(int64(claims["exp"].(float64)), 0).UTC().Format(time.RFC3339),
			},
		})
	})
}
