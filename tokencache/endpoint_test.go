package tokencache

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// seen is what the fake IdP saw of one token request.
type seen struct {
	header http.Header
	form   url.Values
	json   map[string]string
	user   string
	pass   string
	basic  bool
}

func recordRequest(t *testing.T, r *http.Request) seen {
	t.Helper()
	s := seen{header: r.Header.Clone()}
	s.user, s.pass, s.basic = r.BasicAuth()
	body, _ := io.ReadAll(r.Body)
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(body, &s.json); err != nil {
			t.Errorf("JSON token request: %v", err)
		}
	} else {
		s.form, _ = url.ParseQuery(string(body))
	}
	return s
}

func TestRequestEncoding(t *testing.T) {
	tests := []struct {
		name  string
		ep    Endpoint
		check func(t *testing.T, s seen)
	}{
		{
			name: "basic auth form",
			ep:   Endpoint{ClientID: "my app", ClientSecret: "p@ss:w/rd+", Scopes: []string{"a", "b"}, Audience: "aud", Resource: "https://api", Params: map[string]Secret{"tenant": "acme"}, Headers: map[string]Secret{"X-Api-Version": "2"}},
			check: func(t *testing.T, s seen) {
				// RFC 6749 §2.3.1: form-urlencoded before Basic.
				if !s.basic || s.user != "my+app" || s.pass != "p%40ss%3Aw%2Frd%2B" {
					t.Errorf("basic = %v %q %q", s.basic, s.user, s.pass)
				}
				want := url.Values{"grant_type": {"client_credentials"}, "scope": {"a b"}, "audience": {"aud"}, "resource": {"https://api"}, "tenant": {"acme"}}
				if s.form.Encode() != want.Encode() {
					t.Errorf("form = %s, want %s", s.form.Encode(), want.Encode())
				}
				if s.header.Get("X-Api-Version") != "2" || s.header.Get("Accept") != "application/json" {
					t.Errorf("headers = %v", s.header)
				}
			},
		},
		{
			name: "post auth",
			ep:   Endpoint{ClientID: "id", ClientSecret: "sec", ClientAuth: ClientSecretPost},
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
			ep:   Endpoint{ClientID: "id", ClientSecret: "unused", ClientAuth: ClientAuthNone},
			check: func(t *testing.T, s seen) {
				if s.basic || s.form.Has("client_secret") || s.form.Get("client_id") != "id" {
					t.Errorf("basic=%v form=%v", s.basic, s.form)
				}
			},
		},
		{
			name: "json body",
			ep:   Endpoint{ClientID: "id", ClientSecret: "sec", ClientAuth: ClientSecretPost, Format: JSONRequest, Scopes: []string{"x"}},
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
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got seen
			idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = recordRequest(t, r)
				w.Header().Set("Content-Type", "application/json")
				io.WriteString(w, `{"access_token":"tok","token_type":"Bearer","expires_in":60}`)
			}))
			defer idp.Close()
			ep := tc.ep
			ep.Name, ep.TokenURL = "e", idp.URL
			src, err := New(Config{Endpoint: ep, Grant: Grant{Type: GrantClientCredentials}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := src.Token(context.Background()); err != nil {
				t.Fatal(err)
			}
			tc.check(t, got)
		})
	}
}

func TestRequestErrors(t *testing.T) {
	const secret = "s3cr3t-canary"
	tests := []struct {
		name      string
		handler   http.HandlerFunc
		timeout   time.Duration
		wantMsg   string
		wantCode  string
		permanent bool
		retry     time.Duration
	}{
		{
			name: "invalid_client",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(401)
				io.WriteString(w, `{"error":"invalid_client","error_description":"client secret s3cr3t-canary is wrong"}`)
			},
			wantMsg: "answered 401 invalid_client", wantCode: "invalid_client", permanent: true,
		},
		{
			name: "html 500",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html")
				w.WriteHeader(500)
				io.WriteString(w, `<html><body>s3cr3t-canary stack trace</body></html>`)
			},
			wantMsg: "answered 500",
		},
		{
			name: "html 200",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				io.WriteString(w, `<html>login page</html>`)
			},
			wantMsg: "answered 200: the body is not a JSON token response (text/html)",
		},
		{
			name: "429 retry-after",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Retry-After", "42")
				w.WriteHeader(429)
			},
			wantMsg: "answered 429", retry: 42 * time.Second,
		},
		{
			name: "redirect not followed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "https://evil.example/steal", http.StatusTemporaryRedirect)
			},
			wantMsg: "answered 307: redirect not followed", permanent: true,
		},
		{
			name: "garbage error code",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(400)
				io.WriteString(w, `{"error":"<script>s3cr3t-canary</script>"}`)
			},
			wantMsg: "answered 400 unrecognized_error", wantCode: "unrecognized_error", permanent: true,
		},
		{
			name: "slow",
			handler: func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-time.After(500 * time.Millisecond):
				case <-r.Context().Done():
				}
			},
			timeout: 100 * time.Millisecond,
			wantMsg: "did not answer within 100ms",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			idp := httptest.NewServer(tc.handler)
			defer idp.Close()
			src, err := New(Config{
				Endpoint: Endpoint{Name: "e", TokenURL: idp.URL + "/token?tenant=x", ClientID: "id", ClientSecret: secret, Timeout: tc.timeout},
				Grant:    Grant{Type: GrantClientCredentials},
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = src.Token(context.Background())
			var te *Error
			if !errors.As(err, &te) {
				t.Fatalf("Token() error = %v, want *Error", err)
			}
			msg := te.Error()
			if !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("Error() = %q, want containing %q", msg, tc.wantMsg)
			}
			if !strings.HasPrefix(msg, "token endpoint "+idp.URL+"/token ") {
				t.Errorf("Error() = %q does not name the endpoint without its query", msg)
			}
			for _, s := range []string{msg, te.Detail()} {
				if strings.Contains(s, secret) || strings.Contains(s, "<html") || strings.Contains(s, "tenant=x") {
					t.Errorf("error leaks: %q", s)
				}
			}
			if te.Code != tc.wantCode || te.Permanent != tc.permanent || te.RetryAfter != tc.retry {
				t.Errorf("code=%q permanent=%v retry=%v; want %q %v %v", te.Code, te.Permanent, te.RetryAfter, tc.wantCode, tc.permanent, tc.retry)
			}
		})
	}
}

// TestProxy: token requests go through proxy_url when one is set, and
// never through the environment's HTTP_PROXY.
func TestProxy(t *testing.T) {
	var proxied atomic.Int64
	fwd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		if r.URL.Host != "idp.invalid" { // a forward proxy sees the absolute URL
			t.Errorf("proxy got %s", r.URL)
		}
		io.WriteString(w, `{"access_token":"via-proxy","expires_in":60}`)
	}))
	defer fwd.Close()
	proxyURL, _ := url.Parse(fwd.URL)

	t.Setenv("HTTP_PROXY", fwd.URL)
	t.Setenv("http_proxy", fwd.URL)
	plain, _ := New(Config{Endpoint: Endpoint{Name: "e", TokenURL: "http://idp.invalid/token", ClientID: "i", ClientSecret: "s", Timeout: time.Second},
		Grant: Grant{Type: GrantClientCredentials}})
	if _, err := plain.Token(context.Background()); err == nil || proxied.Load() != 0 {
		t.Errorf("without proxy_url: err=%v, proxied=%d; HTTP_PROXY must be ignored", err, proxied.Load())
	}

	via, _ := New(Config{Endpoint: Endpoint{Name: "e", TokenURL: "http://idp.invalid/token", ClientID: "i", ClientSecret: "s", Proxy: proxyURL},
		Grant: Grant{Type: GrantClientCredentials}})
	if tok, err := via.Token(context.Background()); err != nil || tok != "via-proxy" || proxied.Load() != 1 {
		t.Errorf("with proxy_url: %q, %v, proxied=%d", tok, err, proxied.Load())
	}
}
