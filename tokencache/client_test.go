package tokencache

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestRequestEncoding(t *testing.T) {
	secret := func(s Secret) *ClientSecret { return NewClientSecret(s, nil) }
	tests := []struct {
		name  string
		mod   func(c *Config)
		check func(t *testing.T, s seen)
	}{
		{
			name: "basic auth form",
			mod: func(c *Config) {
				c.Client.Auth = ClientSecretBasic{ClientID: "my app", Secret: secret("p@ss:w/rd+")}
				c.Client.Headers = map[string]Secret{"X-Api-Version": "2"}
				c.Params = Form{{"scope", "a b"}, {"audience", "aud"}, {"resource", "https://api"}, {"tenant", "acme"}}
			},
			check: func(t *testing.T, s seen) {
				// RFC 6749 §2.3.1: form-urlencoded before Basic.
				if !s.basic || s.user != "my+app" || s.pass != "p%40ss%3Aw%2Frd%2B" {
					t.Errorf("basic = %v %q %q", s.basic, s.user, s.pass)
				}
				want := url.Values{"grant_type": {"client_credentials"}, "scope": {"a b"}, "audience": {"aud"}, "resource": {"https://api"}, "tenant": {"acme"}}
				if s.form.Encode() != want.Encode() {
					t.Errorf("form = %s, want %s", s.form.Encode(), want.Encode())
				}
				if s.header.Get("X-Api-Version") != "2" || s.header.Get("Accept") != "application/json" || s.method != "POST" {
					t.Errorf("%s with headers %v", s.method, s.header)
				}
			},
		},
		{
			name: "post auth",
			mod:  func(c *Config) { c.Client.Auth = ClientSecretPost{ClientID: "id", Secret: secret("sec")} },
			check: func(t *testing.T, s seen) {
				if s.basic {
					t.Error("client_secret_post also sent Basic credentials")
				}
				if s.form.Get("client_id") != "id" || s.form.Get("client_secret") != "sec" {
					t.Errorf("form = %v", s.form)
				}
			},
		},
		{
			name: "public client",
			mod:  func(c *Config) { c.Client.Auth = PublicClient{ClientID: "id"} },
			check: func(t *testing.T, s seen) {
				if s.basic || s.form.Has("client_secret") || s.form.Get("client_id") != "id" {
					t.Errorf("basic=%v form=%v", s.basic, s.form)
				}
			},
		},
		{
			name: "json body",
			mod: func(c *Config) {
				c.Client.Auth = ClientSecretPost{ClientID: "id", Secret: secret("sec")}
				c.Client.Format = JSONRequest
				c.Params = Form{{"scope", "x"}}
			},
			check: func(t *testing.T, s seen) {
				want := map[string]string{"grant_type": "client_credentials", "client_id": "id", "client_secret": "sec", "scope": "x"}
				if len(s.json) != len(want) {
					t.Errorf("json = %v, want %v", s.json, want)
				}
				for k, v := range want {
					if s.json[k] != v {
						t.Errorf("json[%q] = %q, want %q", k, s.json[k], v)
					}
				}
			},
		},
		{
			name: "GET keeps credentials in the header",
			mod:  func(c *Config) { c.TokenMethod = "GET"; c.TokenURL += "?fixed=1"; c.Params = Form{{"scope", "x y"}} },
			check: func(t *testing.T, s seen) {
				q := s.url.Query()
				if s.method != "GET" || q.Get("grant_type") != "client_credentials" || q.Get("scope") != "x y" || q.Get("fixed") != "1" {
					t.Errorf("%s %s", s.method, s.url)
				}
				if !s.basic || q.Has("client_secret") || strings.Contains(s.url.RawQuery, "secret") {
					t.Errorf("credentials: basic=%v query=%s", s.basic, s.url.RawQuery)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				idp := &fakeIdP{}
				s := newSource(t, idp, tc.mod)
				mustToken(t, s)
				tc.check(t, idp.requests()[0])
			})
		})
	}
}

func TestRequestErrors(t *testing.T) {
	const secret = "s3cr3t-canary"
	tests := []struct {
		name      string
		status    int
		header    map[string]string
		body      string
		hang      bool
		wantMsg   string
		wantCode  string
		wantDesc  string
		permanent bool
		retry     time.Duration
	}{
		{name: "invalid_client", status: 401, body: `{"error":"invalid_client","error_description":"client secret s3cr3t-canary is wrong AADSTS7000215"}`,
			wantMsg: "answered 401 invalid_client", wantCode: "invalid_client", wantDesc: "client secret [redacted] is wrong AADSTS7000215", permanent: true},
		{name: "html 500", status: 500, header: map[string]string{"Content-Type": "text/html"}, body: `<html><body>s3cr3t-canary stack trace</body></html>`,
			wantMsg: "answered 500"},
		{name: "html 200", status: 200, header: map[string]string{"Content-Type": "text/html; charset=utf-8"}, body: `<html>login page</html>`,
			wantMsg: "answered 200: the body is not a JSON token response (text/html)"},
		{name: "429 retry-after", status: 429, header: map[string]string{"Retry-After": "42"},
			wantMsg: "answered 429", retry: 42 * time.Second},
		{name: "redirect not followed", status: 307, header: map[string]string{"Location": "https://evil.example/steal"},
			wantMsg: "answered 307: redirect not followed", permanent: true},
		{name: "garbage error code", status: 400, body: `{"error":"<script>s3cr3t-canary</script>"}`,
			wantMsg: "answered 400 unrecognized_error", wantCode: "unrecognized_error", permanent: true},
		{name: "opaque echo masked", status: 400, body: `{"error":"invalid_request","error_description":"got dW5rbm93bi1zZWNyZXQtdmFsdWUtZWNob2Vk from you"}`,
			wantMsg: "answered 400 invalid_request", wantCode: "invalid_request", wantDesc: "got [redacted] from you", permanent: true},
		{name: "secret echoed as the code", status: 400, body: `{"error":"czNjcjN0LWNhbmFyeQ"}`,
			wantMsg: "answered 400 unrecognized_error", wantCode: "unrecognized_error", permanent: true},
		{name: "unknown token echoed as the code", status: 400, body: `{"error":"dW5rbm93bi1yZWZyZXNoLXRva2Vu"}`,
			wantMsg: "answered 400 unrecognized_error", wantCode: "unrecognized_error", permanent: true},
		{name: "long registered code kept", status: 400, body: `{"error":"unsupported_grant_type"}`,
			wantMsg: "answered 400 unsupported_grant_type", wantCode: "unsupported_grant_type", permanent: true},
		{name: "vendor code kept", status: 401, body: `{"error":"AADSTS700016"}`,
			wantMsg: "answered 401 AADSTS700016", wantCode: "AADSTS700016", permanent: true},
		{name: "slow", hang: true, wantMsg: "did not answer within 100ms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				idp := &fakeIdP{header: tc.header, reply: func(int64, seen) (int, string) { return tc.status, tc.body }}
				if tc.hang {
					idp.gate = make(chan struct{})
				}
				sc := NewScrubber(secret)
				s := newSource(t, idp, func(c *Config) {
					c.TokenURL += "?tenant=x"
					c.Client.Auth = ClientSecretBasic{ClientID: "id", Secret: NewClientSecret(secret, nil)}
					c.Client.Timeout = 100 * time.Millisecond
					c.Client.Scrub = sc
				})
				_, err := s.Token(context.Background())
				var te *Error
				if !errors.As(err, &te) {
					t.Fatalf("Token() error = %v, want *Error", err)
				}
				msg := te.Error()
				if !strings.Contains(msg, tc.wantMsg) {
					t.Errorf("Error() = %q, want containing %q", msg, tc.wantMsg)
				}
				if !strings.HasPrefix(msg, "token endpoint "+testTokenURL+" ") {
					t.Errorf("Error() = %q does not name the endpoint without its query", msg)
				}
				for _, s := range []string{msg, te.Detail()} {
					if strings.Contains(s, secret) || strings.Contains(s, "<html") || strings.Contains(s, "tenant=x") {
						t.Errorf("error leaks: %q", s)
					}
				}
				if te.Code != tc.wantCode || te.Permanent != tc.permanent || te.RetryAfter != tc.retry || te.Description != tc.wantDesc {
					t.Errorf("code=%q permanent=%v retry=%v desc=%q; want %q %v %v %q", te.Code, te.Permanent, te.RetryAfter, te.Description, tc.wantCode, tc.permanent, tc.retry, tc.wantDesc)
				}
			})
		})
	}
}

func TestSafeDescription(t *testing.T) {
	tests := []struct{ in, want string }{
		{"AADSTS7000215: Invalid client secret provided.", "AADSTS7000215: Invalid client secret provided."},
		{"bad token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "bad token [redacted]"},
		{"Trace ID: 4f3b2c1a-0000-4000-8000-0123456789ab", "Trace ID: [redacted]"},
		{"line\nbreak\x00and\ttab", "line breakand tab"},
		{strings.Repeat("word ", 100), strings.TrimSpace(strings.Repeat("word ", 40))},
	}
	for _, tc := range tests {
		if got := safeDescription(tc.in); got != tc.want {
			t.Errorf("safeDescription(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
