package tokencache

import (
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseTokenResponse(t *testing.T) {
	std := ResponseFields{}.withDefaults()
	nested := ResponseFields{AccessToken: "data.token", ExpiresIn: "data.ttl", TokenType: "data.kind", RefreshToken: "data.rt", Scope: "data.scopes"}.withDefaults()
	tests := []struct {
		name    string
		body    string
		fields  ResponseFields
		want    response
		wantErr string
	}{
		{name: "standard", body: `{"access_token":"abc","token_type":"Bearer","expires_in":3600,"refresh_token":"r1","scope":"a b"}`,
			fields: std, want: response{AccessToken: "abc", TokenType: "Bearer", ExpiresIn: time.Hour, RefreshToken: "r1", Scope: []string{"a", "b"}}},
		{name: "expires_in as string", body: `{"access_token":"abc","expires_in":"120"}`,
			fields: std, want: response{AccessToken: "abc", ExpiresIn: 2 * time.Minute}},
		{name: "expires_in as float", body: `{"access_token":"abc","expires_in":1.5}`,
			fields: std, want: response{AccessToken: "abc", ExpiresIn: 1500 * time.Millisecond}},
		{name: "no expires_in", body: `{"access_token":"abc"}`, fields: std, want: response{AccessToken: "abc"}},
		{name: "expires_in zero", body: `{"access_token":"abc","expires_in":0}`, fields: std, want: response{AccessToken: "abc"}},
		{name: "capped at a day", body: `{"access_token":"abc","expires_in":999999999}`,
			fields: std, want: response{AccessToken: "abc", ExpiresIn: MaxTokenLifetime}},
		{name: "negative", body: `{"access_token":"abc","expires_in":-5}`, fields: std, wantErr: "expires_in is negative"},
		{name: "expires_in not a number", body: `{"access_token":"abc","expires_in":"soon"}`, fields: std, wantErr: "expires_in is not a number"},
		{name: "expires_in object", body: `{"access_token":"abc","expires_in":{}}`, fields: std, wantErr: "is not a number"},
		{name: "scope as list", body: `{"access_token":"abc","scope":["x","y"]}`, fields: std, want: response{AccessToken: "abc", Scope: []string{"x", "y"}}},
		{name: "nested fields", body: `{"data":{"token":"t","ttl":"60","kind":"bearer","rt":"r","scopes":"s"}}`,
			fields: nested, want: response{AccessToken: "t", ExpiresIn: time.Minute, TokenType: "bearer", RefreshToken: "r", Scope: []string{"s"}}},
		{name: "literal dotted key wins", body: `{"data.token":"lit","data":{"token":"nested"}}`,
			fields: nested, want: response{AccessToken: "lit"}},
		{name: "missing token", body: `{"token_type":"Bearer"}`, fields: std, wantErr: "no access_token"},
		{name: "empty token", body: `{"access_token":""}`, fields: std, wantErr: "no access_token"},
		{name: "token not a string", body: `{"access_token":42}`, fields: std, wantErr: "no access_token"},
		{name: "nested path through a string", body: `{"data":"x"}`, fields: nested, wantErr: "no data.token"},
		{name: "html", body: `<html>oops</html>`, fields: std, wantErr: "invalid character"},
		{name: "array", body: `[1,2]`, fields: std, wantErr: errNotObject.Error()},
		{name: "empty body", body: ``, fields: std, wantErr: errNotObject.Error()},
		{name: "token_type number", body: `{"access_token":"a","token_type":1}`, fields: std, wantErr: "token_type is not a string"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseTokenResponse([]byte(tc.body), tc.fields)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseTokenResponse(%s) error = %v, want containing %q", tc.body, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseTokenResponse(%s): %v", tc.body, err)
			}
			if got.AccessToken != tc.want.AccessToken || got.TokenType != tc.want.TokenType || got.ExpiresIn != tc.want.ExpiresIn ||
				got.RefreshToken != tc.want.RefreshToken || !slices.Equal(got.Scope, tc.want.Scope) {
				t.Errorf("parseTokenResponse(%s) = %+v, want %+v", tc.body, *got, tc.want)
			}
		})
	}
}

func jwt(claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none"}`)) + "." + enc([]byte(claims)) + ".sig"
}

func TestJWTExpiry(t *testing.T) {
	tests := []struct {
		tok  string
		want int64
		ok   bool
	}{
		{jwt(`{"exp":1700000000}`), 1700000000, true},
		{jwt(`{"exp":"1700000000"}`), 0, false},
		{jwt(`{"sub":"x"}`), 0, false},
		{"opaque-token", 0, false},
		{"a.b.c", 0, false},
		{jwt(`[1]`), 0, false},
	}
	for _, tc := range tests {
		got, ok := jwtExpiry(tc.tok)
		if ok != tc.ok || (ok && got.Unix() != tc.want) {
			t.Errorf("jwtExpiry(%q) = %v, %v; want %d, %v", tc.tok, got.Unix(), ok, tc.want, tc.ok)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{" 30 ", 30 * time.Second, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"99999999999", 0, false},
		{"Fri, 02 Jan 2026 03:05:05 GMT", time.Minute, true},
		{"Fri, 02 Jan 2026 03:00:00 GMT", 0, true},
		{"tomorrow", 0, false},
	}
	for _, tc := range tests {
		got, ok := ParseRetryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestErrorMessages(t *testing.T) {
	tests := []struct {
		err  *Error
		want string
	}{
		{&Error{Endpoint: "https://idp/t", Status: 401, Code: "invalid_client", Description: "bad secret"}, "token endpoint https://idp/t answered 401 invalid_client"},
		{&Error{Endpoint: "https://idp/t", Status: 500}, "token endpoint https://idp/t answered 500"},
		{&Error{Endpoint: "https://idp/t", Timeout: 2 * time.Second, Err: errors.New("x")}, "token endpoint https://idp/t did not answer within 2s"},
		{&Error{Endpoint: "https://idp/t", Err: errors.New("connection refused")}, "token endpoint https://idp/t unreachable: connection refused"},
	}
	for _, tc := range tests {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}
