package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTokens issues tok1, tok2, ... and counts what it is asked.
type fakeTokens struct {
	mu          sync.Mutex
	cur         string
	issued      int
	err         error
	invalidated []string
}

func (f *fakeTokens) Token(ctx context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	if f.cur == "" {
		f.issued++
		f.cur = fmt.Sprintf("tok%d", f.issued)
	}
	return f.cur, nil
}

func (f *fakeTokens) Invalidate(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.invalidated = append(f.invalidated, tok)
	if tok == f.cur {
		f.cur = ""
	}
}

// upstream records what reached it.
type upstream struct {
	*httptest.Server
	mu       sync.Mutex
	reqs     []*http.Request
	bodies   [][]byte
	hits     atomic.Int64
	handler  func(w http.ResponseWriter, r *http.Request, body []byte)
	lastHost string
}

func newUpstream(t *testing.T, h func(w http.ResponseWriter, r *http.Request, body []byte)) *upstream {
	t.Helper()
	u := &upstream{handler: h}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.hits.Add(1)
		u.mu.Lock()
		u.reqs = append(u.reqs, r)
		u.bodies = append(u.bodies, body)
		u.lastHost = r.Host
		u.mu.Unlock()
		if u.handler != nil {
			u.handler(w, r, body)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "ok %s", r.URL.RequestURI())
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) last(t *testing.T) (*http.Request, []byte) {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("nothing reached the upstream")
	}
	return u.reqs[len(u.reqs)-1], u.bodies[len(u.bodies)-1]
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// newProxy serves routes on a loopback listener and returns its base URL.
func newProxy(t *testing.T, in Inbound, routes ...Route) (string, *Handler) {
	t.Helper()
	for i := range routes {
		if routes[i].Transport == nil {
			routes[i].Transport = NewTransport(TransportOptions{ResponseHeaderTimeout: 2 * time.Second})
		}
		if routes[i].Tokens == nil {
			routes[i].Tokens = &fakeTokens{}
		}
	}
	h := newHandler(t, Options{}, in, routes...)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL, h
}

// newHandler returns a Handler serving routes.
func newHandler(t testing.TB, opts Options, in Inbound, routes ...Route) *Handler {
	t.Helper()
	h, err := NewHandler(opts)
	if err != nil {
		t.Fatal(err)
	}
	table, err := h.NewTable(routes, in)
	if err != nil {
		t.Fatal(err)
	}
	h.Swap(table)
	return h
}

func testRoute(t *testing.T, prefix, upstream string) Route {
	return Route{Prefix: prefix, Upstream: mustURL(t, upstream), StripPrefix: true, OAuth2: "test", RetryOn: []int{401}, RetryBodyLimit: 1 << 20, MaxBody: 10 << 20}
}

func do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func get(t *testing.T, u string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	return do(t, req)
}

func TestForwarding(t *testing.T) {
	up := newUpstream(t, nil)
	base, _ := newProxy(t, Inbound{}, testRoute(t, "/example/", up.URL+"/v2/"))
	upHost := strings.TrimPrefix(up.URL, "http://")

	resp, body := get(t, base+"/example/orders?id=1&x=a;b&bad=%zz&sp=a+b",
		"Authorization", "Basic dXNlcjpwYXNz",
		"Proxy-Authorization", "Basic eA==",
		"X-Forwarded-For", "6.6.6.6",
		"X-Forwarded-Host", "evil",
		"X-Forwarded-Prefix", "/evil",
		"X-Real-IP", "6.6.6.6",
		"Forwarded", "for=6.6.6.6",
		"X_Forwarded_For", "6.6.6.6",
		"X-Keep", "yes")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	r, _ := up.last(t)
	if got := r.URL.RequestURI(); got != "/v2/orders?id=1&x=a;b&bad=%zz&sp=a+b" {
		t.Errorf("upstream request URI = %q (query must pass byte for byte)", got)
	}
	if got := r.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer tok1" {
		t.Errorf("Authorization = %q, want only the proxy's token", got)
	}
	for _, h := range []string{"Proxy-Authorization", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Prefix", "X-Real-Ip", "Forwarded", "X_forwarded_for"} {
		if v := r.Header.Get(h); v != "" {
			t.Errorf("%s = %q reached the upstream", h, v)
		}
	}
	if r.Header.Get("X-Keep") != "yes" {
		t.Error("an ordinary header was dropped")
	}
	if up.lastHost != upHost {
		t.Errorf("Host = %q, want %q", up.lastHost, upHost)
	}
}

func TestPathJoining(t *testing.T) {
	up := newUpstream(t, nil)
	tests := []struct {
		prefix, upstream string
		strip            bool
		path, want       string
	}{
		{"/example/", "/v2/", true, "/example/orders", "/v2/orders"},
		{"/example/", "/v2/", true, "/example", "/v2/"},
		{"/example/", "/v2/", true, "/example/", "/v2/"},
		{"/example", "/v2", true, "/example/a/b/", "/v2/a/b/"},
		{"/example/", "", true, "/example/a", "/a"},
		{"/example/", "", true, "/example", "/"},
		{"/example/", "/v2/", false, "/example/a", "/v2/example/a"},
		{"/", "/root/", true, "/a/b", "/root/a/b"},
		{"/example/", "/v2/", true, "/example/a/../b", "/v2/b"},
		{"/example/", "/v2/", true, "/example/a%20b", "/v2/a%20b"},
		{"/example/", "/v2/", true, "/example//a", "/v2/a"},
	}
	for _, tc := range tests {
		t.Run(tc.prefix+tc.path, func(t *testing.T) {
			r := testRoute(t, tc.prefix, up.URL+tc.upstream)
			r.StripPrefix = tc.strip
			base, _ := newProxy(t, Inbound{}, r)
			resp, body := get(t, base+tc.path)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			got, _ := up.last(t)
			if got.URL.EscapedPath() != tc.want {
				t.Errorf("%s -> %q, want %q", tc.path, got.URL.EscapedPath(), tc.want)
			}
		})
	}
}

// rawGet sends a request line as written, bypassing Go's URL cleaning.
func rawGet(t *testing.T, base, target string, extra ...string) (int, string, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sConnection: close\r\n\r\n", target, strings.Join(extra, ""))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Oauthproxy-Error"), string(body)
}

func TestErrorsAreJSON(t *testing.T) {
	up := newUpstream(t, nil)
	base, _ := newProxy(t, Inbound{}, testRoute(t, "/example/", up.URL+"/v2/"), testRoute(t, "/admin/", up.URL+"/admin/"))
	tests := []struct {
		target string
		status int
		code   string
	}{
		{"/nowhere", 404, CodeNoRoute},
		{"/examplex/a", 404, CodeNoRoute},
		{"/example/../admin/x", 400, CodeBadPath},
		{"/example/%2e%2e/admin/x", 400, CodeBadPath},
		{"/example/a%2fb", 400, CodeBadPath},
		{"http://127.0.0.1/example/a", 400, CodeBadPath},
	}
	for _, tc := range tests {
		status, code, body := rawGet(t, base, tc.target)
		if status != tc.status || code != tc.code {
			t.Errorf("GET %s = %d %q, want %d %q", tc.target, status, code, tc.status, tc.code)
		}
		var eb errorBody
		if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error != tc.code || eb.Message == "" {
			t.Errorf("GET %s body = %s (%v)", tc.target, body, err)
		}
	}
	if n := up.hits.Load(); n != 0 {
		t.Errorf("%d refused requests reached the upstream", n)
	}
}

func TestTokenFailureIs502WithoutDetail(t *testing.T) {
	up := newUpstream(t, nil)
	r := testRoute(t, "/example/", up.URL)
	r.Tokens = &fakeTokens{err: errors.New("token endpoint https://idp/token answered 401 invalid_client")}
	base, _ := newProxy(t, Inbound{}, r)
	resp, body := get(t, base+"/example/x")
	if resp.StatusCode != 502 || resp.Header.Get("X-Oauthproxy-Error") != CodeTokenUnavailable {
		t.Fatalf("status %d %q", resp.StatusCode, resp.Header.Get("X-Oauthproxy-Error"))
	}
	var eb errorBody
	json.Unmarshal(body, &eb)
	if eb.Message != "token endpoint https://idp/token answered 401 invalid_client" || eb.Route != "/example/" || eb.OAuth2 != "test" {
		t.Errorf("body = %s", body)
	}
	if up.hits.Load() != 0 {
		t.Error("a request without a token reached the upstream")
	}
}

func TestRetryOnceWithSameBody(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.Header.Get("Authorization") == "Bearer tok1" {
			w.WriteHeader(401)
			io.WriteString(w, "expired")
			return
		}
		w.Write(body)
	})
	tokens := &fakeTokens{}
	r := testRoute(t, "/example/", up.URL)
	r.Tokens = tokens
	base, _ := newProxy(t, Inbound{}, r)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80 KB
	for _, chunked := range []bool{false, true} {
		up.hits.Store(0)
		tokens.mu.Lock()
		tokens.cur, tokens.issued = "", 0
		tokens.mu.Unlock()
		var body io.Reader = bytes.NewReader(payload)
		if chunked {
			body = io.MultiReader(body) // hides the length: sent chunked
		}
		req, _ := http.NewRequest("POST", base+"/example/echo", body)
		resp, got := do(t, req)
		if resp.StatusCode != 200 || !bytes.Equal(got, payload) {
			t.Errorf("chunked=%v: status %d, echoed %d bytes, want 200 and the same %d bytes", chunked, resp.StatusCode, len(got), len(payload))
		}
		if n := up.hits.Load(); n != 2 {
			t.Errorf("chunked=%v: upstream saw %d requests, want 2", chunked, n)
		}
	}
}

func TestNeverMoreThanOneRetry(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) { w.WriteHeader(401) })
	base, _ := newProxy(t, Inbound{}, testRoute(t, "/example/", up.URL))
	resp, _ := get(t, base+"/example/x")
	if resp.StatusCode != 401 || up.hits.Load() != 2 {
		t.Errorf("status %d after %d upstream requests, want 401 after 2", resp.StatusCode, up.hits.Load())
	}
}

func TestForbiddenIsNotRetried(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) { w.WriteHeader(403) })
	tokens := &fakeTokens{}
	r := testRoute(t, "/example/", up.URL)
	r.Tokens = tokens
	base, _ := newProxy(t, Inbound{}, r)
	resp, _ := get(t, base+"/example/x")
	if resp.StatusCode != 403 || up.hits.Load() != 1 || len(tokens.invalidated) != 0 {
		t.Errorf("403: status %d, %d upstream requests, invalidated %v", resp.StatusCode, up.hits.Load(), tokens.invalidated)
	}
}

func TestOverLimitBodyStreamsWithoutRetry(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.WriteHeader(401)
		fmt.Fprintf(w, "%d", len(body))
	})
	tokens := &fakeTokens{}
	r := testRoute(t, "/example/", up.URL)
	r.RetryBodyLimit = 1000
	r.Tokens = tokens
	base, _ := newProxy(t, Inbound{}, r)
	for _, size := range []int{1001, 5000} {
		for _, chunked := range []bool{false, true} {
			up.hits.Store(0)
			var body io.Reader = bytes.NewReader(make([]byte, size))
			if chunked {
				body = io.MultiReader(body)
			}
			req, _ := http.NewRequest("POST", base+"/example/x", body)
			resp, got := do(t, req)
			if resp.StatusCode != 401 || string(got) != fmt.Sprint(size) || up.hits.Load() != 1 {
				t.Errorf("size %d chunked=%v: status %d, upstream got %s bytes in %d requests; want 401, all bytes, 1 request",
					size, chunked, resp.StatusCode, got, up.hits.Load())
			}
		}
	}
	if len(tokens.invalidated) == 0 {
		t.Error("the rejected token was kept")
	}
}

func TestRetryNotAttemptedWhenTokenUnchanged(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) { w.WriteHeader(401) })
	r := testRoute(t, "/example/", up.URL)
	r.Tokens = &stickyTokens{}
	base, _ := newProxy(t, Inbound{}, r)
	resp, _ := get(t, base+"/example/x")
	if resp.StatusCode != 401 || up.hits.Load() != 1 {
		t.Errorf("status %d after %d requests; want the 401 at once when no new token comes", resp.StatusCode, up.hits.Load())
	}
}

// stickyTokens refuses to renew (like a rate-limited cache).
type stickyTokens struct{}

func (stickyTokens) Token(context.Context) (string, error) { return "same", nil }
func (stickyTokens) Invalidate(string)                     {}

func TestUpstreamFailures(t *testing.T) {
	slow := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	})
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := "http://" + l.Addr().String()
	l.Close()

	rSlow := testRoute(t, "/slow/", slow.URL)
	rSlow.Transport = NewTransport(TransportOptions{ResponseHeaderTimeout: 100 * time.Millisecond})
	base, _ := newProxy(t, Inbound{}, rSlow, testRoute(t, "/down/", closed))
	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/slow/x", 504, CodeUpstreamTimeout},
		{"/down/x", 502, CodeUpstreamUnreachable},
	} {
		resp, body := get(t, base+tc.path)
		if resp.StatusCode != tc.status || resp.Header.Get("X-Oauthproxy-Error") != tc.code {
			t.Errorf("%s: %d %s", tc.path, resp.StatusCode, body)
		}
		if strings.Contains(string(body), "tok1") {
			t.Errorf("%s: error leaks the token: %s", tc.path, body)
		}
	}
}

func TestMaxBody(t *testing.T) {
	up := newUpstream(t, nil)
	r := testRoute(t, "/example/", up.URL)
	r.MaxBody = 100
	r.RetryBodyLimit = 10
	base, _ := newProxy(t, Inbound{}, r)
	for _, chunked := range []bool{false, true} {
		var body io.Reader = bytes.NewReader(make([]byte, 101))
		if chunked {
			body = io.MultiReader(body)
		}
		req, _ := http.NewRequest("POST", base+"/example/x", body)
		resp, got := do(t, req)
		if resp.StatusCode != 413 || resp.Header.Get("X-Oauthproxy-Error") != CodeBodyTooLarge {
			t.Errorf("chunked=%v: %d %s", chunked, resp.StatusCode, got)
		}
	}
}

func TestSetRemoveAndForwardedHeaders(t *testing.T) {
	up := newUpstream(t, nil)
	r := testRoute(t, "/example/", up.URL)
	r.SetHeaders = map[string]string{"X-Tenant": "acme"}
	r.RemoveHeaders = []string{"Cookie"}
	r.ForwardedHeaders = true
	base, _ := newProxy(t, Inbound{}, r)
	get(t, base+"/example/x", "Cookie", "a=b", "X-Tenant", "evil", "X-Forwarded-For", "6.6.6.6")
	got, _ := up.last(t)
	if got.Header.Get("Cookie") != "" || got.Header.Get("X-Tenant") != "acme" {
		t.Errorf("headers = %v", got.Header)
	}
	if xff := got.Header.Get("X-Forwarded-For"); xff != "127.0.0.1" {
		t.Errorf("X-Forwarded-For = %q, want only the proxy's view of the client", xff)
	}
}

func TestInjectFormat(t *testing.T) {
	up := newUpstream(t, nil)
	r := testRoute(t, "/example/", up.URL)
	r.InjectHeader, r.InjectFormat = "X-Api-Token", "Token {token}"
	base, _ := newProxy(t, Inbound{}, r)
	get(t, base+"/example/x", "Authorization", "Bearer mine", "X-Api-Token", "forged")
	got, _ := up.last(t)
	if got.Header.Get("Authorization") != "" || got.Header.Values("X-Api-Token")[0] != "Token tok1" || len(got.Header.Values("X-Api-Token")) != 1 {
		t.Errorf("headers = %v", got.Header)
	}
}

func TestRewriteLocation(t *testing.T) {
	var upURL string
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Location", upURL+"/v2/orders/7")
		w.WriteHeader(201)
	})
	upURL = up.URL
	r := testRoute(t, "/example/", up.URL+"/v2/")
	r.RewriteLocation = true
	base, _ := newProxy(t, Inbound{}, r)
	resp, _ := get(t, base+"/example/orders")
	if loc := resp.Header.Get("Location"); loc != "/example/orders/7" {
		t.Errorf("Location = %q", loc)
	}

	// Without strip_prefix the upstream's paths hold the prefix already.
	up2 := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Location", "http://"+r.Host+"/v2/example/orders/7")
		w.WriteHeader(201)
	})
	r2 := testRoute(t, "/example/", up2.URL+"/v2/")
	r2.RewriteLocation, r2.StripPrefix = true, false
	base2, _ := newProxy(t, Inbound{}, r2)
	resp, _ = get(t, base2+"/example/orders")
	if loc := resp.Header.Get("Location"); loc != "/example/orders/7" {
		t.Errorf("strip_prefix false: Location = %q", loc)
	}
	// A Location elsewhere is left alone.
	r3 := testRoute(t, "/other/", up2.URL+"/elsewhere/")
	r3.RewriteLocation = true
	base3, _ := newProxy(t, Inbound{}, r3)
	resp, _ = get(t, base3+"/other/x")
	if loc := resp.Header.Get("Location"); !strings.HasSuffix(loc, "/v2/example/orders/7") || !strings.HasPrefix(loc, "http://") {
		t.Errorf("foreign Location rewritten: %q", loc)
	}
}

func TestInboundGuard(t *testing.T) {
	up := newUpstream(t, nil)
	opts := Inbound{
		RequireHeader:  "X-Proxy-Key",
		RequireValue:   "0123456789abcdef",
		AllowedHosts:   []string{"proxy.internal"},
		AllowedOrigins: []string{"https://app.example.com"},
		AllowCIDRs:     []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}
	base, _ := newProxy(t, opts, testRoute(t, "/example/", up.URL))
	key := "X-Proxy-Key: 0123456789abcdef\r\n"
	tests := []struct {
		name   string
		method string
		hdrs   []string
		status int
		code   string
	}{
		{"ok", "GET", []string{key}, 200, ""},
		{"no key", "GET", nil, 403, CodeForbidden},
		{"wrong key", "GET", []string{"X-Proxy-Key: 0123456789abcdeX\r\n"}, 403, CodeForbidden},
		{"two keys", "GET", []string{key, key}, 403, CodeForbidden},
		{"rebinding host", "GET", []string{key, "Host: evil.example\r\n"}, 421, CodeMisdirected},
		{"allowed host", "GET", []string{key, "Host: proxy.internal:8080\r\n"}, 200, ""},
		{"cross-site", "GET", []string{key, "Sec-Fetch-Site: cross-site\r\n"}, 403, CodeCrossSite},
		{"same-site", "GET", []string{key, "Sec-Fetch-Site: same-site\r\n"}, 403, CodeCrossSite},
		{"foreign origin", "GET", []string{key, "Origin: https://evil.example\r\n"}, 403, CodeCrossSite},
		{"null origin", "GET", []string{key, "Origin: null\r\n"}, 403, CodeCrossSite},
		{"allowed origin", "GET", []string{key, "Origin: https://app.example.com\r\n"}, 200, ""},
		{"trace", "TRACE", []string{key}, 405, CodeMethodNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			host := "Host: 127.0.0.1\r\n"
			for _, h := range tc.hdrs {
				if strings.HasPrefix(h, "Host:") {
					host = ""
				}
			}
			fmt.Fprintf(conn, "%s /example/x HTTP/1.1\r\n%s%sConnection: close\r\n\r\n", tc.method, host, strings.Join(tc.hdrs, ""))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || resp.Header.Get("X-Oauthproxy-Error") != tc.code {
				t.Errorf("%d %q, want %d %q", resp.StatusCode, resp.Header.Get("X-Oauthproxy-Error"), tc.status, tc.code)
			}
		})
	}
	r, _ := up.last(t)
	if r.Header.Get("X-Proxy-Key") != "" {
		t.Error("the inbound secret header reached the upstream")
	}
}

func TestSSEFlushesEachEvent(t *testing.T) {
	next := make(chan struct{})
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			<-next
		}
	})
	base, _ := newProxy(t, Inbound{}, testRoute(t, "/example/", up.URL))
	resp, err := http.Get(base + "/example/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := br.ReadString('\n')
		if err != nil || line != fmt.Sprintf("data: %d\n", i) {
			t.Fatalf("event %d: %q %v", i, line, err)
		}
		br.ReadString('\n')
		next <- struct{}{} // the upstream sends the next event only now
	}
}

func TestUpstreamProxy(t *testing.T) {
	var proxied atomic.Int64
	fwd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		if r.URL.Host != "api.invalid" || r.Header.Get("Authorization") != "Bearer tok1" {
			t.Errorf("proxy got %s %v", r.URL, r.Header)
		}
		io.WriteString(w, "via proxy")
	}))
	defer fwd.Close()
	t.Setenv("HTTP_PROXY", fwd.URL)
	t.Setenv("http_proxy", fwd.URL)

	direct := testRoute(t, "/direct/", "http://api.invalid/")
	viaProxy := testRoute(t, "/via/", "http://api.invalid/")
	viaProxy.Transport = NewTransport(TransportOptions{Proxy: mustURL(t, fwd.URL)})
	base, _ := newProxy(t, Inbound{}, direct, viaProxy)
	if r, _ := get(t, base+"/direct/x"); r.StatusCode != 502 || proxied.Load() != 0 {
		t.Errorf("without a proxy: %d, proxied=%d; HTTP_PROXY must be ignored", r.StatusCode, proxied.Load())
	}
	if r, body := get(t, base+"/via/x"); r.StatusCode != 200 || string(body) != "via proxy" {
		t.Errorf("through the proxy: %d %s", r.StatusCode, body)
	}
}
