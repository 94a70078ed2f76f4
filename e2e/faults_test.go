package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTokenEndpointFaults drives the built proxy against a token endpoint
// that fails in every way the issue lists: the client always gets a 502
// token_unavailable JSON error that names the endpoint and why, never the
// endpoint's body, and the upstream never sees a request.
func TestTokenEndpointFaults(t *testing.T) {
	secret := randomString("fault-cs-")
	addCanary(secret)
	const htmlCanary = "stack-trace-canary-d41d8cd9"
	tests := []struct {
		name    string
		reply   func(n int64, req tokenRequest) (int, map[string]string, string)
		delay   time.Duration
		extra   string
		wantMsg string
	}{
		{
			name: "500 with an HTML body",
			reply: func(int64, tokenRequest) (int, map[string]string, string) {
				return 500, map[string]string{"Content-Type": "text/html"}, "<html><body>" + htmlCanary + " " + secret + "</body></html>"
			},
			wantMsg: "answered 500",
		},
		{
			name: "200 with an HTML login page",
			reply: func(int64, tokenRequest) (int, map[string]string, string) {
				return 200, map[string]string{"Content-Type": "text/html"}, "<html>" + htmlCanary + "</html>"
			},
			wantMsg: "answered 200: the body is not a JSON token response (text/html)",
		},
		{
			name: "invalid_client",
			reply: func(int64, tokenRequest) (int, map[string]string, string) {
				return 401, nil, `{"error":"invalid_client","error_description":"secret ` + secret + ` is wrong"}`
			},
			wantMsg: "answered 401 invalid_client",
		},
		{
			name:    "slow past the timeout",
			delay:   3 * time.Second,
			extra:   "    timeout: 500ms",
			wantMsg: "did not answer within 500ms",
		},
		{
			name: "429 with Retry-After",
			reply: func(int64, tokenRequest) (int, map[string]string, string) {
				return 429, map[string]string{"Retry-After": "30"}, `{"error":"slow_down"}`
			},
			wantMsg: "answered 429 slow_down",
		},
		{
			name: "redirect",
			reply: func(int64, tokenRequest) (int, map[string]string, string) {
				return 307, map[string]string{"Location": "https://elsewhere.example/token"}, ""
			},
			wantMsg: "answered 307: redirect not followed",
		},
		{
			name: "token_type mac",
			reply: func(int64, tokenRequest) (int, map[string]string, string) {
				return 200, nil, `{"access_token":"mac-token-canary-0001","token_type":"mac","expires_in":60}`
			},
			wantMsg: `token_type "mac" is not Bearer`,
		},
		{
			name: "negative expires_in",
			reply: func(int64, tokenRequest) (int, map[string]string, string) {
				return 200, nil, `{"access_token":"neg-token-canary-0001","token_type":"Bearer","expires_in":-5}`
			},
			wantMsg: "expires_in is negative",
		},
		{
			name: "no access_token",
			reply: func(int64, tokenRequest) (int, map[string]string, string) {
				return 200, nil, `{"token":"x"}`
			},
			wantMsg: "the response has no access_token",
		},
	}
	addCanary("mac-token-canary-0001", "neg-token-canary-0001", htmlCanary)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			idp := newTokenServer(t, tc.reply)
			idp.delay = tc.delay
			up := newAPI(t, idp.verify)
			entry := fmt.Sprintf("    token_url: %s/oauth/token\n    client_id: app\n    client_secret: %s", idp.URL, secret)
			if tc.extra != "" {
				entry += "\n" + tc.extra
			}
			p := startProxy(t, config(up.URL, entry))
			start := time.Now()
			r := get(t, p.base+"/api/orders")
			if r.status != http.StatusBadGateway || r.errorCode() != "token_unavailable" {
				t.Fatalf("%d %q %s", r.status, r.errorCode(), r.body)
			}
			e := r.proxyError(t)
			wantPrefix := "token endpoint " + idp.URL + "/oauth/token "
			if !strings.HasPrefix(e["message"], wantPrefix) || !strings.Contains(e["message"], tc.wantMsg) {
				t.Errorf("message = %q, want %q... containing %q", e["message"], wantPrefix, tc.wantMsg)
			}
			if e["route"] != "/api/" || e["oauth2"] != "e2e" {
				t.Errorf("body = %s", r.body)
			}
			if strings.Contains(r.body, "<html") || strings.Contains(r.body, htmlCanary) {
				t.Errorf("the IdP's body reached the client: %s", r.body)
			}
			noLeak(t, "error body", r.body)
			if up.hits.Load() != 0 {
				t.Error("the upstream saw a request without a token")
			}
			if time.Since(start) > 2*time.Second {
				t.Errorf("the client waited %v: the timeout is 500ms or the failure immediate", time.Since(start))
			}
			// A second request during backoff is answered at once, without a new token request.
			n := idp.hits.Load()
			if r := get(t, p.base+"/api/orders"); r.status != 502 {
				t.Errorf("second request: %d", r.status)
			}
			if idp.hits.Load() != n {
				t.Errorf("a request during backoff went to the token endpoint again")
			}
			// /tokens says what failed, and /readyz is not ready.
			tokens := get(t, p.admin+"/tokens")
			var st []map[string]any
			json.Unmarshal([]byte(tokens.body), &st)
			if len(st) != 1 || st[0]["state"] != "failing" || !strings.Contains(fmt.Sprint(st[0]["last_error"]), tc.wantMsg) {
				t.Errorf("/tokens = %s", tokens.body)
			}
			noLeak(t, "/tokens", tokens.body)
			if rz := get(t, p.admin+"/readyz"); rz.status != 503 {
				t.Errorf("/readyz = %d %s", rz.status, rz.body)
			}
			metrics := get(t, p.admin+"/metrics").body
			if !strings.Contains(metrics, `oauthproxy_token_requests_total{oauth2="e2e",result="`) || !strings.Contains(metrics, `oauthproxy_requests_total{code="502",route="/api/"} 2`) {
				t.Errorf("metrics lack the failure:\n%s", grep(metrics, "oauthproxy_"))
			}
			noLeak(t, "/metrics", metrics)
		})
	}
}

func grep(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestTokenResponseShapes: responses without a lifetime, with custom field
// names, and token requests as JSON.
func TestTokenResponseShapes(t *testing.T) {
	t.Run("no expires_in: default_ttl", func(t *testing.T) {
		idp := newTokenServer(t, nil)
		idp.reply = func(n int64, req tokenRequest) (int, map[string]string, string) {
			return 200, nil, fmt.Sprintf(`{"access_token":%q,"token_type":"Bearer"}`, idp.issue())
		}
		up := newAPI(t, idp.verify)
		p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-")+"\n    default_ttl: 7m"))
		if r := get(t, p.base+"/api/x"); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		var st []struct {
			ExpiresAt  time.Time `json:"expires_at"`
			ExpiryFrom string    `json:"expiry_from"`
			State      string
		}
		json.Unmarshal([]byte(get(t, p.admin+"/tokens").body), &st)
		if len(st) != 1 || st[0].ExpiryFrom != "default_ttl" || st[0].State != "valid" {
			t.Fatalf("/tokens = %+v", st)
		}
		if left := time.Until(st[0].ExpiresAt); left < 6*time.Minute || left > 7*time.Minute {
			t.Errorf("expires in %v, want about 7m", left)
		}
	})

	t.Run("custom fields and a JSON request", func(t *testing.T) {
		secret := randomString("cs-")
		addCanary(secret)
		idp := newTokenServer(t, nil)
		idp.reply = func(n int64, req tokenRequest) (int, map[string]string, string) {
			want := map[string]string{"grant_type": "client_credentials", "client_id": "json-app", "client_secret": secret, "scope": "a b", "audience": "https://api", "tenant": "acme"}
			if req.contentType != "application/json" || fmt.Sprint(req.params) != fmt.Sprint(want) || req.header.Get("X-Api-Version") != "2" {
				return 400, nil, `{"error":"invalid_request"}`
			}
			return 200, nil, fmt.Sprintf(`{"result":{"token":%q,"lifetime":"120","kind":"bearer"}}`, idp.issue())
		}
		up := newAPI(t, idp.verify)
		p := startProxy(t, config(up.URL, `    token_url: `+idp.URL+`/t
    client_id: json-app
    client_secret: `+secret+`
    client_auth: client_secret_post
    request_format: json
    scopes: [a, b]
    audience: https://api
    params: {tenant: acme}
    headers: {X-Api-Version: "2"}
    response: {access_token: result.token, expires_in: result.lifetime, token_type: result.kind}`))
		if r := get(t, p.base+"/api/x"); r.status != 200 {
			t.Fatalf("%d %s", r.status, r.body)
		}
		if st := get(t, p.admin+"/tokens").body; !strings.Contains(st, `"expiry_from": "expires_in"`) {
			t.Errorf("/tokens = %s", st)
		}
	})
}
