package tokencache

import (
	"testing"
	"time"
)

func FuzzParseTokenResponse(f *testing.F) {
	for _, s := range []string{
		`{"access_token":"abc","token_type":"Bearer","expires_in":3600}`,
		`{"access_token":"abc","expires_in":"3600","scope":["a"]}`,
		`{"data":{"token":"t","ttl":-1}}`,
		`{"access_token":"a","expires_in":1e400}`,
		`<html></html>`, `[]`, `null`, ``,
	} {
		f.Add([]byte(s), "data.token")
	}
	f.Fuzz(func(t *testing.T, body []byte, path string) {
		fields := ResponseFields{AccessToken: path}.withDefaults()
		r, err := parseTokenResponse(body, fields)
		if err != nil {
			return
		}
		if r.AccessToken == "" {
			t.Fatalf("accepted a response without a token: %q", body)
		}
		if r.ExpiresIn < 0 || r.ExpiresIn > MaxTokenLifetime {
			t.Fatalf("lifetime %v out of range for %q", r.ExpiresIn, body)
		}
	})
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Wed, 21 Oct 2015 07:28:00 GMT", "-1", "1e3", "Sunday"} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := ParseRetryAfter(v, now)
		if d < 0 {
			t.Fatalf("ParseRetryAfter(%q) = %v, negative", v, d)
		}
		if !ok && d != 0 {
			t.Fatalf("ParseRetryAfter(%q) = %v but not ok", v, d)
		}
	})
}
