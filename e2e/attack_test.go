package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// attackTarget is a proxy with two routes: /api/ (where attacks start) and
// /admin/ (which no attack through /api/ may reach), both upstreams counting.
type attackTarget struct {
	p          *proc
	api, admin *api
	idp        *tokenServer
	key        string
}

func newAttackTarget(t *testing.T, extra string) *attackTarget {
	t.Helper()
	a := &attackTarget{idp: newTokenServer(t, nil), key: randomString("proxy-key-")}
	addCanary(a.key)
	a.api = newAPI(t, a.idp.verify)
	a.admin = newAPI(t, a.idp.verify)
	a.p = startProxy(t, fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
log: {level: debug, format: json}
server: {read_header_timeout: 1s, max_connections: 64}
inbound:
  require_header: {name: X-Proxy-Key, value: %s}
  allowed_hosts: [proxy.internal]
  allowed_origins: [https://app.example.com]
oauth2:
  e2e: {token_url: %s/t, client_id: a, client_secret: %s}
routes:
  - {prefix: /api/, upstream: "%s/", oauth2: e2e, max_body: 1KiB, retry_body_limit: 512}
  - {prefix: /admin/, upstream: "%s/secret/", oauth2: e2e}
%s`, a.key, a.idp.URL, randomString("cs-"), a.api.URL, a.admin.URL, extra))
	return a
}

func (a *attackTarget) raw(t *testing.T, req string) (int, string, string) {
	t.Helper()
	return rawExchange(t, a.p.base, req)
}

// get is a GET request line and headers; Host: 127.0.0.1 unless headers
// hold a Host of their own.
func (a *attackTarget) get(target string, headers ...string) string {
	h := "X-Proxy-Key: " + a.key + "\r\n"
	host := "Host: 127.0.0.1\r\n"
	for _, x := range headers {
		if strings.HasPrefix(x, "Host:") {
			host = ""
		}
		h += x + "\r\n"
	}
	return "GET " + target + " HTTP/1.1\r\n" + host + h + "Connection: close\r\n\r\n"
}

// TestAttackPathEscapes: no spelling of ".." or "/" gets from /api/ to
// /admin/ or outside the upstream's base path.
func TestAttackPathEscapes(t *testing.T) {
	a := newAttackTarget(t, "")
	paths := []string{
		"/api/../admin/x",
		"/api/%2e%2e/admin/x",
		"/api/%2E%2E/admin/x",
		"/api/.%2e/admin/x",
		"/api/%2e./admin/x",
		"/api/..%2fadmin/x",
		"/api/%2e%2e%2fadmin%2fx",
		"/api/..%5cadmin/x",
		"/api/..\\admin/x",
		"/api/..;/admin/x",
		"/api/.;/../admin/x",
		"/api/%252e%252e/admin/x",
		"/api/%252e%252e%252fadmin",
		"/api/%c0%ae%c0%ae/admin/x",
		"/api/./../admin/x",
		"/api/a/../../admin/x",
		"/api/%00/../admin",
		"/api/x%0d%0aX-Injected:%20yes",
		"/api/..%00/admin",
		"/api%2f..%2fadmin/x",
		"/API/../admin/x",
		"/api/%2e%2e%5cadmin",
	}
	for _, p := range paths {
		status, code, body := a.raw(t, a.get(p))
		if status != 400 && status != 404 {
			t.Errorf("GET %s = %d %q %s, want 400 bad_path or 404 no_route", p, status, code, body)
		}
	}
	if n := a.admin.hits.Load(); n != 0 {
		t.Errorf("%d escapes reached the /admin/ upstream", n)
	}
	if n := a.api.hits.Load(); n != 0 {
		t.Errorf("%d escapes reached the /api/ upstream", n)
	}
	// A path that stays inside its route is fine, dot segments and all.
	if status, _, body := a.raw(t, a.get("/api/a/./b/../c?q=%2e%2e")); status != 200 || a.api.last(t).uri != "/a/c?q=%2e%2e" {
		t.Errorf("in-route dot segments: %d %s -> %s", status, body, a.api.last(t).uri)
	}
}

// TestAttackHostOriginMethod: DNS rebinding, cross-site browser requests,
// CONNECT, TRACE and absolute-form targets are refused before any upstream.
func TestAttackHostOriginMethod(t *testing.T) {
	a := newAttackTarget(t, "")
	tests := []struct {
		name   string
		req    string
		status int
		code   string
	}{
		{"rebinding host", a.get("/api/x", "Host: attacker.example"), 421, "misdirected"},
		{"rebinding host with port", a.get("/api/x", "Host: attacker.example:8080"), 421, "misdirected"},
		{"localhost suffix", a.get("/api/x", "Host: localhost.attacker.example"), 421, "misdirected"},
		{"allowed host", a.get("/api/x", "Host: proxy.internal"), 200, ""},
		{"localhost", a.get("/api/x", "Host: localhost:1234"), 200, ""},
		{"ipv6 loopback", a.get("/api/x", "Host: [::1]:1234"), 200, ""},
		{"two hosts", a.get("/api/x", "Host: 127.0.0.1", "Host: attacker.example"), 400, ""},
		{"cross-site fetch", a.get("/api/x", "Sec-Fetch-Site: cross-site"), 403, "cross_site"},
		{"same-site fetch", a.get("/api/x", "Sec-Fetch-Site: same-site"), 403, "cross_site"},
		{"foreign origin", a.get("/api/x", "Origin: https://attacker.example"), 403, "cross_site"},
		{"null origin", a.get("/api/x", "Origin: null"), 403, "cross_site"},
		{"allowed origin", a.get("/api/x", "Origin: https://app.example.com"), 200, ""},
		{"no inbound key", "GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 403, "forbidden"},
		{"wrong inbound key", "GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + strings.Repeat("x", len(a.key)) + "\r\nConnection: close\r\n\r\n", 403, "forbidden"},
		{"CONNECT", "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\nX-Proxy-Key: " + a.key + "\r\n\r\n", 405, "method_not_allowed"},
		{"TRACE", strings.Replace(a.get("/api/x"), "GET", "TRACE", 1), 405, "method_not_allowed"},
		{"absolute-form", a.get(a.api.URL + "/x"), 400, "bad_path"},
		{"absolute-form to the admin upstream", a.get(a.admin.URL + "/secret/x"), 400, "bad_path"},
		{"asterisk", strings.Replace(a.get("*"), "GET", "POST", 1), 400, "bad_path"},
		// net/http would answer OPTIONS * 200 itself, past the inbound guard.
		{"OPTIONS asterisk", strings.Replace(a.get("*"), "GET", "OPTIONS", 1), 400, "bad_path"},
		{"OPTIONS asterisk without the key", "OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 403, "forbidden"},
	}
	for _, tc := range tests {
		status, code, body := a.raw(t, tc.req)
		if status != tc.status || code != tc.code {
			t.Errorf("%s: %d %q %s, want %d %q", tc.name, status, code, body, tc.status, tc.code)
		}
	}
	if a.admin.hits.Load() != 0 {
		t.Error("an attack reached the /admin/ upstream")
	}
	for _, r := range a.api.requests() {
		if r.header.Get("X-Proxy-Key") != "" {
			t.Error("the inbound key reached the upstream")
		}
	}
}

// TestAttackHeaders: credentials and forwarding claims from the client
// never reach the upstream; a header list cannot make the proxy drop its
// own token; oversized and conflicting headers are refused.
func TestAttackHeaders(t *testing.T) {
	a := newAttackTarget(t, "")
	status, _, body := a.raw(t, a.get("/api/h",
		"Authorization: Bearer stolen-elsewhere",
		"Proxy-Authorization: Basic eDp5",
		"Connection: Authorization, X-Proxy-Key",
		"X-Forwarded-For: 10.0.0.1", "X-Forwarded-Host: internal", "X-Forwarded-Proto: https",
		"Forwarded: for=10.0.0.1;proto=https", "X-Real-IP: 10.0.0.1", "X_Forwarded_For: 10.0.0.1"))
	if status != 200 {
		t.Fatalf("%d %s", status, body)
	}
	seen := a.api.last(t)
	if err := a.idp.verify(seen.token); err != nil {
		t.Errorf("the upstream got %q, not the proxy's token", seen.token)
	}
	for _, h := range []string{"Proxy-Authorization", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "X-Real-Ip", "X_forwarded_for", "X-Proxy-Key"} {
		if v := seen.header.Get(h); v != "" {
			t.Errorf("%s: %q reached the upstream", h, v)
		}
	}

	big := strings.Repeat("a", 70<<10)
	if status, _, _ := a.raw(t, a.get("/api/x", "X-Big: "+big)); status != 431 {
		t.Errorf("a 70 KiB header: %d, want 431", status)
	}
	for name, req := range map[string]string{
		"two content lengths": "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + a.key + "\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
		"bad transfer coding": "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + a.key + "\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"space before colon":  "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + a.key + "\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
	} {
		before := a.api.hits.Load()
		status, _, _ := a.raw(t, req)
		if status < 400 && status != 0 {
			t.Errorf("%s: %d, want a 4xx or 5xx refusal", name, status)
		}
		if a.api.hits.Load() != before {
			t.Errorf("%s reached the upstream", name)
		}
	}
}

// TestAttackSmuggling: a request with both Content-Length and
// Transfer-Encoding, carrying a second request in its body, never makes
// the upstream see two requests.
func TestAttackSmuggling(t *testing.T) {
	a := newAttackTarget(t, "")
	smuggled := "GET /secret/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	chunk := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled)
	for name, req := range map[string]string{
		"CL.TE":                   "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + a.key + "\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk,
		"TE.CL":                   "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + a.key + "\r\nTransfer-Encoding: chunked\r\nContent-Length: " + fmt.Sprint(len(chunk)+10) + "\r\n\r\n" + chunk,
		"CL body holds a request": "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + a.key + "\r\nContent-Length: " + fmt.Sprint(len(smuggled)) + "\r\n\r\n" + smuggled,
	} {
		before := a.api.hits.Load()
		conn, err := net.Dial("tcp", strings.TrimPrefix(a.p.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(time.Second))
		io.WriteString(conn, req)
		io.Copy(io.Discard, conn) // read whatever comes until the proxy closes or times out
		conn.Close()
		if n := a.api.hits.Load() - before; n > 1 {
			t.Errorf("%s: the upstream saw %d requests from one inbound message", name, n)
		}
		for _, r := range a.api.requests() {
			if strings.Contains(r.uri, "smuggled") {
				t.Errorf("%s: the smuggled request reached the upstream", name)
			}
		}
	}
	if a.admin.hits.Load() != 0 {
		t.Error("a smuggled request reached /admin/")
	}
}

// TestAttackHeaderFraming: what net/http tolerates (obs-fold, bare LF) is
// forwarded as one normalised request: the upstream parses what the proxy
// parsed, never the client's raw bytes.
func TestAttackHeaderFraming(t *testing.T) {
	a := newAttackTarget(t, "")
	for name, req := range map[string]string{
		"obs-fold": "GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + a.key + "\r\nX-A: 1\r\n  folded\r\nConnection: close\r\n\r\n",
		"LF only":  "GET /api/x HTTP/1.1\nHost: 127.0.0.1\nX-Proxy-Key: " + a.key + "\nX-A: 1\nConnection: close\n\n",
	} {
		before := a.api.hits.Load()
		status, _, _ := a.raw(t, req)
		if status != 200 && status != 400 {
			t.Errorf("%s: %d", name, status)
		}
		if n := a.api.hits.Load() - before; n > 1 {
			t.Errorf("%s: %d upstream requests", name, n)
		}
		if n := a.api.hits.Load() - before; n == 1 {
			if v := a.api.last(t).header.Values("X-A"); len(v) != 1 || strings.ContainsAny(v[0], "\r\n") {
				t.Errorf("%s: the upstream got X-A %q", name, v)
			}
		}
	}
}

// TestAttackSlowloris: a client that sends its headers a byte at a time is
// cut off after server.read_header_timeout.
func TestAttackSlowloris(t *testing.T) {
	a := newAttackTarget(t, "")
	conn, err := net.Dial("tcp", strings.TrimPrefix(a.p.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	closed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, conn)
		close(closed)
	}()
	req := a.get("/api/x")
	for i := 0; i < len(req); i++ {
		if _, err := conn.Write([]byte{req[i]}); err != nil {
			break
		}
		select {
		case <-closed:
			i = len(req)
		case <-time.After(200 * time.Millisecond):
		}
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a slow client held the connection %v; read_header_timeout is 1s", d)
	}
	if a.api.hits.Load() != 0 {
		t.Error("the slow request reached the upstream")
	}
}

// TestAttackBodies: bodies over max_body get 413, whether announced or chunked.
func TestAttackBodies(t *testing.T) {
	a := newAttackTarget(t, "")
	body := strings.Repeat("b", 2048)
	for name, req := range map[string]string{
		"content-length": "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + a.key + "\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n" + body,
		"chunked":        "POST /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Proxy-Key: " + a.key + "\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n" + body + "\r\n0\r\n\r\n",
	} {
		status, code, _ := a.raw(t, req)
		if status != 413 || code != "body_too_large" {
			t.Errorf("%s: %d %q, want 413 body_too_large", name, status, code)
		}
	}
}

// TestAttackConnectionCap: past server.max_connections, a new connection
// waits until one closes.
func TestAttackConnectionCap(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-"))+
		"server: {max_connections: 3}\n")
	var held []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", strings.TrimPrefix(p.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond)
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(p.base + "/api/x")
		if err == nil {
			got.Store(int64(resp.StatusCode))
			resp.Body.Close()
		}
	}()
	select {
	case <-done:
		t.Fatalf("a fourth connection was served (%d) while three were open", got.Load())
	case <-time.After(500 * time.Millisecond):
	}
	held[0].Close()
	select {
	case <-done:
		if got.Load() != 200 {
			t.Errorf("after a connection closed: %d", got.Load())
		}
	case <-time.After(5 * time.Second):
		t.Error("the waiting connection was not served after one closed")
	}
	for _, c := range held[1:] {
		c.Close()
	}
}

// TestListenBeyondLoopback: without an inbound control the proxy refuses to
// start; with one, it serves only callers that pass it.
func TestListenBeyondLoopback(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	open := strings.Replace(config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-")),
		"listen: 127.0.0.1:0", "listen: 0.0.0.0:0", 1)
	out, code := run(t, nil, "run", "-config", writeConfig(t, open))
	if code != 1 || !strings.Contains(out, "is reachable beyond this machine") || !strings.Contains(out, "inbound.require_header") {
		t.Errorf("exit %d:\n%s", code, out)
	}
	key := randomString("k-")
	addCanary(key)
	p := startProxy(t, open+"inbound: {require_header: {name: X-Proxy-Key, value: "+key+"}}\n")
	if r := get(t, p.base+"/api/x"); r.status != 403 {
		t.Errorf("without the key: %d", r.status)
	}
	if r := get(t, p.base+"/api/x", "X-Proxy-Key", key); r.status != 200 {
		t.Errorf("with the key: %d %s", r.status, r.body)
	}
}

// TestUnixSocket: listen: unix:/path with socket_mode; a stale socket left
// by a killed process is replaced; the socket is removed at exit.
func TestUnixSocket(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	sock := filepath.Join(t.TempDir(), "proxy.sock")
	cfg := strings.Replace(config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-")),
		"listen: 127.0.0.1:0", "listen: unix:"+sock+"\nsocket_mode: \"0600\"", 1)
	dial := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	uc := &http.Client{Transport: dial, Timeout: 5 * time.Second}

	first := start(t, nil, "run", "-config", writeConfig(t, cfg))
	waitSocket(t, sock)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v %v", fi, err)
	}
	resp, err := uc.Get("http://localhost/api/x")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("over the socket: %v %v", resp, err)
	}
	resp.Body.Close()
	first.cmd.Process.Signal(syscall.SIGKILL) // leaves the socket file behind
	first.wait(5 * time.Second)
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("the killed process left no socket: %v", err)
	}
	dial.CloseIdleConnections()

	second := start(t, nil, "run", "-config", writeConfig(t, cfg))
	waitSocket(t, sock)
	resp, err = uc.Get("http://localhost/api/x")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after replacing the stale socket: %v %v\n%s", resp, err, second.out)
	}
	resp.Body.Close()
	dial.CloseIdleConnections()
	second.cmd.Process.Signal(syscall.SIGTERM)
	if code := second.wait(10 * time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket is still there after exit: %v", err)
	}
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for range 500 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s", path)
}

// TestWebSocketClosedOnShutdown: an upgraded connection gets the token, and
// SIGTERM closes it rather than waiting on it forever.
func TestWebSocketClosedOnShutdown(t *testing.T) {
	idp := newTokenServer(t, nil)
	wsAuth := make(chan string, 1)
	ws := newAPI(t, idp.verify)
	ws.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wsAuth <- r.Header.Get("Authorization")
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		io.Copy(io.Discard, brw) // hold the connection open
	})
	p := startProxy(t, config(ws.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-"))+
		"server: {shutdown_grace: 20s}\n")
	conn, err := net.Dial("tcp", strings.TrimPrefix(p.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /api/socket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if auth := <-wsAuth; idp.verify(strings.TrimPrefix(auth, "Bearer ")) != nil {
		t.Errorf("the upgrade carried %q", auth)
	}
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		t.Error("read data from a connection that shutdown should close")
	}
	if code := p.wait(10 * time.Second); code != 0 || time.Since(start) > 5*time.Second {
		t.Errorf("exit %d after %v: shutdown must close upgraded connections, not wait out the 20s grace", code, time.Since(start))
	}
}
