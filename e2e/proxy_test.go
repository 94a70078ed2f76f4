package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rawExchange sends bytes as written and reads one response. It returns
// status 0 when the proxy closes the connection without answering.
func rawExchange(t *testing.T, base, req string) (status int, code, body string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, req)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Oauthproxy-Error"), string(b)
}

// TestRequestPath: routing, header handling and the proxy's own errors,
// through the built binary.
func TestRequestPath(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	slow := newAPI(t, idp.verify)
	slow.delay = 2 * time.Second
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	entry := "    token_url: " + idp.URL + "/t\n    client_id: a\n    client_secret: " + randomString("cs-")
	p := startProxy(t, config(up.URL, entry, `    set_headers: {X-Tenant: acme}
    remove_headers: [Cookie]
  - prefix: /api/v2/
    upstream: `+up.URL+`/second/
    oauth2: e2e
  - prefix: /slow/
    upstream: `+slow.URL+`/
    oauth2: e2e
    timeout: 300ms
  - prefix: /down/
    upstream: http://`+closed+`/
    oauth2: e2e`))

	r := get(t, p.base+"/api/orders/1?q=a;b&z=%zz", "Authorization", "Basic Zm9yZ2Vk", "X-Forwarded-For", "6.6.6.6",
		"Forwarded", "for=6.6.6.6", "Cookie", "session=1", "X-Tenant", "forged")
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	seen := up.last(t)
	if seen.uri != "/orders/1?q=a;b&z=%zz" || seen.host != strings.TrimPrefix(up.URL, "http://") {
		t.Errorf("upstream saw %q on host %q", seen.uri, seen.host)
	}
	if seen.header.Get("X-Forwarded-For") != "" || seen.header.Get("Forwarded") != "" || seen.header.Get("Cookie") != "" || seen.header.Get("X-Tenant") != "acme" {
		t.Errorf("upstream headers: %v", seen.header)
	}
	if get(t, p.base+"/api/v2/x").status != 200 || up.last(t).uri != "/second/x" {
		t.Errorf("longest prefix: upstream saw %q", up.last(t).uri)
	}

	before := up.hits.Load()
	for _, tc := range []struct {
		target string
		status int
		code   string
	}{
		{"/nothing/here", 404, "no_route"},
		{"/apix/y", 404, "no_route"},
		{"/api/../down/x", 400, "bad_path"},
		{"/api/%2e%2e/down/x", 400, "bad_path"},
		{"/api/a%2fb", 400, "bad_path"},
		{"http://" + strings.TrimPrefix(up.URL, "http://") + "/api/x", 400, "bad_path"},
	} {
		status, code, _ := rawExchange(t, p.base, "GET "+tc.target+" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
		if status != tc.status || code != tc.code {
			t.Errorf("GET %s = %d %q, want %d %q", tc.target, status, code, tc.status, tc.code)
		}
	}
	if up.hits.Load() != before {
		t.Error("a refused request reached the upstream")
	}

	if r := get(t, p.base+"/slow/x"); r.status != 504 || r.errorCode() != "upstream_timeout" {
		t.Errorf("slow upstream: %d %s", r.status, r.body)
	}
	if r := get(t, p.base+"/down/x"); r.status != 502 || r.errorCode() != "upstream_unreachable" || !strings.Contains(r.body, "connection refused") {
		t.Errorf("closed upstream: %d %s", r.status, r.body)
	}
	m := get(t, p.admin+"/metrics").body
	for _, want := range []string{
		`oauthproxy_requests_total{code="200",route="/api/"}`,
		`oauthproxy_requests_total{code="404",route="none"} 2`,
		`oauthproxy_requests_total{code="504",route="/slow/"} 1`,
		`oauthproxy_request_duration_seconds_bucket{route="/api/",le="`,
		`oauthproxy_token_request_duration_seconds_count{oauth2="e2e"} 1`,
		`oauthproxy_token_expiry_timestamp_seconds{oauth2="e2e"}`,
		`oauthproxy_upstream_retries_total{route="/api/"} 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestGracefulShutdown: on SIGTERM /readyz turns 503, the request in
// flight finishes, new connections are refused, and the process exits 0.
func TestGracefulShutdown(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	up.delay = 3 * time.Second // the request is still in flight while shutdown is checked
	p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-")))
	waitReady(t, p)

	done := make(chan response, 1)
	go func() { done <- get(t, p.base+"/api/slow") }()
	for up.hits.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	rz := get(t, p.admin+"/readyz")
	for deadline := time.Now().Add(2 * time.Second); rz.status == 200 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		rz = get(t, p.admin+"/readyz")
	}
	if rz.status != 503 || !strings.Contains(rz.body, "shutting down") {
		t.Errorf("/readyz during shutdown: %d %s", rz.status, rz.body)
	}
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(p.base, "http://"), time.Second); err == nil {
		t.Error("the proxy still accepts connections after SIGTERM")
	}
	if r := <-done; r.status != 200 {
		t.Errorf("in-flight request: %d %s", r.status, r.body)
	}
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func waitReady(t *testing.T, p *proc) {
	t.Helper()
	for range 200 {
		if get(t, p.admin+"/readyz").status == 200 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("/readyz never 200: %s", get(t, p.admin+"/readyz").body)
}

// TestDemo runs `oauthproxy demo` and follows its first curl line.
func TestDemo(t *testing.T) {
	p := start(t, nil, "demo", "-listen", "127.0.0.1:0", "-admin-listen", "127.0.0.1:0")
	var lines []string
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) && len(lines) < 4 {
		lines = nil
		for _, l := range strings.Split(p.out.String(), "\n") {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "curl" {
				lines = append(lines, f[2])
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(lines) < 4 {
		t.Fatalf("no curl lines:\n%s", p.out)
	}
	if r := get(t, lines[0]); r.status != 200 || !strings.Contains(r.body, "carried a valid token") || !strings.Contains(r.body, `"query": "name=world"`) {
		t.Errorf("%s: %d %s", lines[0], r.status, r.body)
	}
	if r := get(t, lines[1]); r.status != 401 {
		t.Errorf("%s (the API without the proxy): %d, want 401", lines[1], r.status)
	}
	if r := get(t, lines[2]); r.status != 200 || !strings.Contains(r.body, `"state": "valid"`) {
		t.Errorf("%s: %d %s", lines[2], r.status, r.body)
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("demo exit code %d", code)
	}
}

// TestRouteOptions: inject header and format, forwarded_headers,
// rewrite_location and strip_prefix: false, through the binary.
func TestRouteOptions(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, func(tok string) error { return nil })
	var upURL string
	up.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up.mu.Lock()
		up.seen = append(up.seen, apiRequest{method: r.Method, uri: r.RequestURI, header: r.Header.Clone()})
		up.mu.Unlock()
		w.Header().Set("Location", upURL+"/v2/example/created/7")
		w.WriteHeader(201)
	})
	upURL = up.URL
	p := startProxy(t, fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
log: {level: debug, format: json}
oauth2:
  e2e:
    token_url: %s/t
    client_id: a
    client_secret: %s
    inject: {header: X-Api-Token, format: "Token {token}"}
routes:
  - prefix: /example/
    upstream: %s/v2/
    oauth2: e2e
    strip_prefix: false
    forwarded_headers: true
    rewrite_location: true
`, idp.URL, randomString("cs-"), up.URL))
	r := get(t, p.base+"/example/orders?x=1", "Authorization", "Bearer mine", "X-Api-Token", "forged", "X-Forwarded-For", "6.6.6.6")
	if r.status != 201 || r.header.Get("Location") != "/example/created/7" {
		t.Errorf("%d, Location %q", r.status, r.header.Get("Location"))
	}
	seen := up.last(t)
	tok, ok := strings.CutPrefix(seen.header.Get("X-Api-Token"), "Token ")
	if !ok || idp.verify(tok) != nil || len(seen.header.Values("X-Api-Token")) != 1 || seen.header.Get("Authorization") != "" {
		t.Errorf("credentials upstream: X-Api-Token %q, Authorization %q", seen.header.Values("X-Api-Token"), seen.header.Get("Authorization"))
	}
	if seen.uri != "/v2/example/orders?x=1" {
		t.Errorf("strip_prefix false: upstream saw %q", seen.uri)
	}
	if xff := seen.header.Get("X-Forwarded-For"); xff != "127.0.0.1" || seen.header.Get("X-Forwarded-Proto") != "http" {
		t.Errorf("forwarded headers: For %q Proto %q; want the proxy's own view", xff, seen.header.Get("X-Forwarded-Proto"))
	}
}

// TestProxyURL: with proxy_url set, token requests and upstream requests
// go through that proxy. (That HTTP_PROXY is never used is tested in
// tokencache and proxy against non-loopback hosts: Go never applies an
// environment proxy to loopback, so it cannot be shown here.)
func TestProxyURL(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	var mu sync.Mutex
	var via []string
	fwd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		via = append(via, r.Method+" "+r.URL.String()) // a forward proxy sees absolute URLs
		mu.Unlock()
		r.RequestURI = ""
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			w.WriteHeader(502)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	defer fwd.Close()
	cfg := config(up.URL, "    token_url: "+idp.URL+"/token\n    client_id: a\n    client_secret: "+randomString("cs-")+"\n    proxy_url: "+fwd.URL,
		"    proxy_url: "+fwd.URL)
	p := startProxy(t, cfg)
	if r := get(t, p.base+"/api/x"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(via) != 2 || via[0] != "POST "+idp.URL+"/token" || via[1] != "GET "+up.URL+"/x" {
		t.Errorf("through the proxy: %q", via)
	}
}
