package admin

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

// idp is a token and revocation endpoint that counts what it is asked.
type idp struct {
	*httptest.Server
	tokens, revokes atomic.Int64
	token           string // what it issues: a JWT-shaped canary
}

func newIDP(t *testing.T) *idp {
	t.Helper()
	claims := base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"svc-account","exp":4102444800,"scope":"orders.read"}`))
	s := &idp{token: "eyJhbGciOiJub25lIn0." + claims + ".canary-signature-value"}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/token":
			s.tokens.Add(1)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"access_token":%q,"token_type":"Bearer","expires_in":3600,"scope":"orders.read"}`, s.token)
		case "/revoke":
			s.revokes.Add(1)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// fixture is an admin handler over a runtime built from a real config.
type fixture struct {
	h   *Handler
	idp *idp
}

const metricsText = `# TYPE oauthproxy_requests_total counter
oauthproxy_requests_total{code="200",route="/api/"} 7
oauthproxy_requests_total{code="401",route="/api/"} 2
oauthproxy_requests_total{code="200",route="/other/"} 5
# TYPE oauthproxy_upstream_retries_total counter
oauthproxy_upstream_retries_total{route="/api/"} 2
# TYPE oauthproxy_config_reloads_total counter
oauthproxy_config_reloads_total{result="success"} 3
oauthproxy_config_reloads_total{result="error"} 1
# TYPE oauthproxy_config_last_reload_success_timestamp_seconds gauge
oauthproxy_config_last_reload_success_timestamp_seconds 1767225600
`

// newFixture builds the admin handler for a config with one
// client_credentials entry; top holds extra top-level keys.
func newFixture(t *testing.T, loopback bool, top string) *fixture {
	t.Helper()
	s := newIDP(t)
	yaml := fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
%s
oauth2:
  cc:
    token_url: %[2]s/token
    revoke_url: %[2]s/revoke
    client_id: app
    client_secret: client-secret-canary
routes:
  - prefix: /api/
    upstream: %[2]s/
    oauth2: cc
`, top, s.URL)
	cfg, err := upstreams.Parse("test.yaml", []byte(yaml), upstreams.Resolver{Getenv: func(k string) (string, bool) {
		return map[string]string{"ADMIN_PASSWORD": "correct horse battery staple"}[k], k == "ADMIN_PASSWORD"
	}})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := upstreams.Build(cfg, nil, upstreams.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	serving := &atomic.Bool{}
	serving.Store(true)
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		io.WriteString(w, metricsText)
	})
	h := New(Options{Runtime: func() *upstreams.Runtime { return rt }, Metrics: metrics, Serving: serving, Loopback: loopback})
	return &fixture{h: h, idp: s}
}

// do sends one request to the handler; hdr is name, value pairs. Host
// defaults to the admin listener's loopback address.
func (f *fixture) do(method, target string, hdr ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r.Host = "127.0.0.1:9090"
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			r.Host = hdr[i+1]
			continue
		}
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

func TestActionOriginHostAndCSRF(t *testing.T) {
	tok := newFixture(t, true, "").h.csrf // each case's handler takes this token over
	const self = "http://127.0.0.1:9090"
	tests := []struct {
		name string
		hdr  []string
		want int
	}{
		{"script without browser headers", nil, 200},
		{"browser, same origin, CSRF token", []string{"Origin", self, "Sec-Fetch-Site", "same-origin", csrfHeader, tok}, 200},
		{"browser, Sec-Fetch-Site only, CSRF token", []string{"Sec-Fetch-Site", "same-origin", csrfHeader, tok}, 200},
		{"Host in admin_hosts", []string{"Host", "admin.internal:9090", "Origin", "http://admin.internal:9090", csrfHeader, tok}, 200},
		{"localhost", []string{"Host", "localhost:9090"}, 200},
		{"browser without CSRF token", []string{"Origin", self}, 403},
		{"browser, Sec-Fetch-Site only, without CSRF token", []string{"Sec-Fetch-Site", "same-origin"}, 403},
		{"browser with a wrong CSRF token", []string{"Origin", self, csrfHeader, tok[:len(tok)-1] + "x"}, 403},
		{"foreign Origin", []string{"Origin", "http://evil.example", csrfHeader, tok}, 403},
		{"Origin null", []string{"Origin", "null", csrfHeader, tok}, 403},
		{"Origin on another port", []string{"Origin", "http://127.0.0.1:8080", csrfHeader, tok}, 403},
		{"cross-site fetch", []string{"Sec-Fetch-Site", "cross-site", csrfHeader, tok}, 403},
		{"same-site fetch", []string{"Sec-Fetch-Site", "same-site", csrfHeader, tok}, 403},
		{"same Origin but cross-site fetch", []string{"Origin", self, "Sec-Fetch-Site", "cross-site", csrfHeader, tok}, 403},
		{"foreign Host (DNS rebinding)", []string{"Host", "evil.example:9090"}, 403},
		{"foreign Host and matching Origin", []string{"Host", "evil.example", "Origin", "http://evil.example", csrfHeader, tok}, 403},
		{"private address as Host", []string{"Host", "10.0.0.5:9090"}, 403},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, true, "admin_hosts: [admin.internal]")
			f.h.csrf = tok
			before := f.idp.tokens.Load()
			w := f.do("POST", "/oauth2/cc/renew", tc.hdr...)
			if w.Code != tc.want {
				t.Fatalf("POST renew = %d %s, want %d", w.Code, w.Body, tc.want)
			}
			got := f.idp.tokens.Load() - before
			if want := map[bool]int64{true: 1, false: 0}[tc.want == 200]; got != want {
				t.Errorf("token requests = %d, want %d", got, want)
			}
		})
	}
}

func TestActionsAnswer405ToGET(t *testing.T) {
	f := newFixture(t, true, "")
	for _, p := range []string{"/oauth2/cc/renew", "/oauth2/cc/revoke"} {
		t.Run(p, func(t *testing.T) {
			w := f.do("GET", p)
			if w.Code != http.StatusMethodNotAllowed || !strings.Contains(w.Header().Get("Allow"), "POST") {
				t.Errorf("GET %s = %d (Allow %q), want 405 allowing POST", p, w.Code, w.Header().Get("Allow"))
			}
		})
	}
	if n := f.idp.tokens.Load() + f.idp.revokes.Load(); n != 0 {
		t.Errorf("GET on actions made %d requests to the authorization server", n)
	}
}

func TestRenewAndRevoke(t *testing.T) {
	f := newFixture(t, true, "")
	w := f.do("POST", "/oauth2/cc/renew")
	if w.Code != 200 {
		t.Fatalf("renew = %d %s", w.Code, w.Body)
	}
	if strings.Contains(w.Body.String(), "canary-signature-value") || strings.Contains(w.Body.String(), f.idp.token) {
		t.Errorf("renew answers the token: %s", w.Body)
	}
	var out struct {
		ExpiresAt string         `json:"expires_at"`
		Scopes    []string       `json:"scopes"`
		Claims    map[string]any `json:"claims_unverified"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.ExpiresAt == "" || out.Claims["sub"] != "svc-account" || strings.Join(out.Scopes, " ") != "orders.read" {
		t.Errorf("renew = %s, want expiry, scopes [orders.read] and claims with sub svc-account", w.Body)
	}
	w = f.do("POST", "/oauth2/cc/revoke")
	if w.Code != 200 || f.idp.revokes.Load() != 1 {
		t.Errorf("revoke = %d %s with %d revocation requests, want 200 and 1", w.Code, w.Body, f.idp.revokes.Load())
	}
}

func TestAccessBeyondLoopback(t *testing.T) {
	const auth = "admin_auth: {username: ops, password: \"${ADMIN_PASSWORD}\"}"
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	good := basic("ops", "correct horse battery staple")
	protected := []string{"/", "/assets/app.js", "/tokens", "/routes", "/status", "/oauth2/cc/login"}
	open := []string{"/healthz", "/metrics"}
	tests := []struct {
		name     string
		loopback bool
		top      string
		hdr      []string
		want     int // for the protected paths
	}{
		{"beyond loopback without admin_auth", false, "", nil, 403},
		{"beyond loopback without admin_auth, credentials sent", false, "", []string{"Authorization", good}, 403},
		{"beyond loopback, no credentials", false, auth, nil, 401},
		{"beyond loopback, wrong password", false, auth, []string{"Authorization", basic("ops", "wrong")}, 401},
		{"beyond loopback, wrong user", false, auth, []string{"Authorization", basic("root", "correct horse battery staple")}, 401},
		{"beyond loopback, a bearer token", false, auth, []string{"Authorization", "Bearer x"}, 401},
		{"beyond loopback, right login", false, auth, []string{"Authorization", good}, 200},
		{"loopback without admin_auth", true, "", nil, 200},
		{"loopback with admin_auth, no credentials", true, auth, nil, 401},
		{"loopback with admin_auth, right login", true, auth, []string{"Authorization", good}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.loopback, tc.top)
			for _, p := range protected {
				w := f.do("GET", p, tc.hdr...)
				got := w.Code
				if p == "/oauth2/cc/login" && got == http.StatusBadRequest {
					got = 200 // admitted; a client_credentials entry has no sign-in
				}
				if got != tc.want {
					t.Errorf("GET %s = %d, want %d", p, w.Code, tc.want)
				}
				if wa := w.Header().Get("WWW-Authenticate"); (tc.want == 401) != strings.HasPrefix(wa, "Basic ") {
					t.Errorf("GET %s: WWW-Authenticate = %q", p, wa)
				}
			}
			for _, p := range open {
				if w := f.do("GET", p); w.Code != 200 {
					t.Errorf("GET %s = %d, want 200 (probes and /metrics stay open)", p, w.Code)
				}
			}
			if w := f.do("GET", "/readyz"); w.Code == 401 || w.Code == 403 {
				t.Errorf("GET /readyz = %d, want it open", w.Code)
			}
			before := f.idp.tokens.Load()
			w := f.do("POST", "/oauth2/cc/renew", tc.hdr...)
			if w.Code != tc.want {
				t.Errorf("POST renew = %d, want %d", w.Code, tc.want)
			}
			if tc.want != 200 && f.idp.tokens.Load() != before {
				t.Errorf("a refused renew made a token request")
			}
		})
	}
}

func TestUnixSocketTakesAnyHost(t *testing.T) {
	f := newFixture(t, true, "")
	r := httptest.NewRequest("GET", "/tokens", nil)
	r.Host = "admin" // what `oauthproxy revoke` sends over the socket
	r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, &net.UnixAddr{Name: "/run/admin.sock", Net: "unix"}))
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	if w.Code != 200 {
		t.Errorf("GET /tokens over a unix socket with Host admin = %d, want 200", w.Code)
	}
}

func TestPageHeadersAndContent(t *testing.T) {
	f := newFixture(t, true, "")
	w := f.do("GET", "/")
	if w.Code != 200 {
		t.Fatalf("GET / = %d", w.Code)
	}
	csp := w.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "require-trusted-types-for 'script'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("CSP %q allows something unsafe", csp)
	}
	for k, want := range map[string]string{"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Content-Type": "text/html; charset=utf-8"} {
		if got := w.Header().Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	body := w.Body.String()
	if !strings.Contains(body, `<meta name="oauthproxy-csrf" content="`+f.h.csrf+`">`) {
		t.Errorf("the page does not carry the CSRF token")
	}
	// No inline script or style: every <script> has a src, no <style>, no style= or on...= attributes.
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`<script[^>]*>[^<]+</script>`), regexp.MustCompile(`<style`),
		regexp.MustCompile(`\sstyle=`), regexp.MustCompile(`\son[a-z]+=`),
	} {
		if m := bad.FindString(body); m != "" {
			t.Errorf("the page has inline script or style: %q", m)
		}
	}
	for _, m := range regexp.MustCompile(`<script[^>]*>`).FindAllString(body, -1) {
		if !strings.Contains(m, `src="/assets/`) {
			t.Errorf("script without a same-origin src: %q", m)
		}
	}
	for _, a := range []struct{ path, typ string }{{"/assets/app.js", "text/javascript"}, {"/assets/app.css", "text/css"}, {"/assets/icon.svg", "image/svg+xml"}} {
		w := f.do("GET", a.path)
		if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), a.typ) || w.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s = %d %q nosniff=%q", a.path, w.Code, w.Header().Get("Content-Type"), w.Header().Get("X-Content-Type-Options"))
		}
	}
	if w := f.do("GET", "/assets/index.html"); w.Code != 404 {
		t.Errorf("GET /assets/index.html = %d, want 404 (the page is served at / only, with its token)", w.Code)
	}
	if w := f.do("GET", "/tokens"); w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("/tokens Cache-Control = %q, want no-store", w.Header().Get("Cache-Control"))
	}
}

// TestPageSize keeps the page small: it is built into every binary and
// loaded on phones (issue 13: about 50 KiB at most).
func TestPageSize(t *testing.T) {
	const limit = 50 << 10
	total := 0
	fs.WalkDir(assetFS, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := assetFS.ReadFile(p)
			total += len(b)
		}
		return err
	})
	if total == 0 || total > limit {
		t.Errorf("the page's files add up to %d bytes, want 1 to %d", total, limit)
	}
}

func TestRoutesAndStatus(t *testing.T) {
	f := newFixture(t, true, "")
	var routes struct {
		Counts bool
		Routes []struct {
			Prefix, Upstream, OAuth2 string
			Requests, Retries        *int64
			ByCode                   map[string]int64 `json:"requests_by_code"`
		}
	}
	w := f.do("GET", "/routes")
	if err := json.Unmarshal(w.Body.Bytes(), &routes); err != nil {
		t.Fatalf("/routes: %v: %s", err, w.Body)
	}
	if !routes.Counts || len(routes.Routes) != 1 {
		t.Fatalf("/routes = %s, want one route with counts", w.Body)
	}
	r := routes.Routes[0]
	if r.Prefix != "/api/" || r.OAuth2 != "cc" || r.Requests == nil || *r.Requests != 9 || r.Retries == nil || *r.Retries != 2 || r.ByCode["401"] != 2 {
		t.Errorf("/routes = %s, want /api/ with 9 requests (2 of them 401) and 2 retries", w.Body)
	}
	var st struct {
		LoadedAt string `json:"loaded_at"`
		Reloads  map[string]int64
		File     string `json:"config_file"`
	}
	w = f.do("GET", "/status")
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if st.LoadedAt != "2026-01-01T00:00:00Z" || st.Reloads["success"] != 3 || st.Reloads["error"] != 1 || st.File != "test.yaml" {
		t.Errorf("/status = %s", w.Body)
	}

	f.h.opts.Metrics = nil // unreadable metrics: the routes without counts
	w = f.do("GET", "/routes")
	if !strings.Contains(w.Body.String(), `"counts": false`) || strings.Contains(w.Body.String(), `"requests"`) {
		t.Errorf("/routes without metrics = %s, want counts false and no numbers", w.Body)
	}
}

func TestDeviceSignIn(t *testing.T) {
	f := newFixture(t, true, "")
	yaml := fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
oauth2:
  dev:
    grant_type: device_code
    device_auth_url: %[1]s/device
    token_url: %[1]s/token
    client_id: sidecar
    client_auth: none
routes:
  - prefix: /api/
    upstream: %[1]s/
    oauth2: dev
`, f.idp.URL)
	cfg, err := upstreams.Parse("test.yaml", []byte(yaml), upstreams.Resolver{Getenv: func(string) (string, bool) { return "", false }})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := upstreams.Build(cfg, nil, upstreams.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rt.Close)
	f.h = New(Options{Runtime: func() *upstreams.Runtime { return rt }, Serving: &atomic.Bool{}, Loopback: true})
	tests := []struct {
		name, method string
		hdr          []string
		want         int
		body         string
	}{
		{"the page's Sign in", "POST", []string{"Origin", "http://127.0.0.1:9090", "Sec-Fetch-Site", "same-origin", csrfHeader, f.h.csrf, "Accept", "application/json"}, 202, `"device_code": "started"`},
		{"a script", "POST", nil, 200, "Device sign-in started"},
		{"a typed URL", "GET", []string{"Sec-Fetch-Site", "none"}, 200, "Device sign-in started"},
		{"another site's link", "GET", []string{"Sec-Fetch-Site", "cross-site"}, 403, "not from another site"},
		{"another site's POST", "POST", []string{"Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"}, 403, "cross-origin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := f.do(tc.method, "/oauth2/dev/login", tc.hdr...)
			if w.Code != tc.want || !strings.Contains(w.Body.String(), tc.body) {
				t.Errorf("%s /oauth2/dev/login = %d %s, want %d with %q", tc.method, w.Code, w.Body, tc.want, tc.body)
			}
		})
	}
}
