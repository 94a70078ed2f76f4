package e2e

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// redis is a real redis-server on a free loopback port, for the tests of
// replicas sharing tokens.
type redis struct {
	cmd  *exec.Cmd
	addr string
}

func startRedis(t *testing.T) *redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("OAUTHPROXY_REQUIRE_SERVERS") != "" {
			t.Fatalf("redis-server is required (OAUTHPROXY_REQUIRE_SERVERS is set): %v", err)
		}
		t.Skip("redis-server not found (apt-get install redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	r := &redis{addr: addr}
	r.cmd = exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	out, _ := r.cmd.StdoutPipe()
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				for sc.Scan() {
				}
				return
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("redis-server did not start")
	}
	t.Cleanup(func() { r.cmd.Process.Signal(syscall.SIGCONT); r.cmd.Process.Kill(); r.cmd.Wait() })
	return r
}

func cacheKey() string {
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// replicaConfig is one replica's config: the same entry under a name of
// its own (names do not matter to sharing), through the cache.
func replicaConfig(i int, redisAddr, idp, upstream, grant string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
log: {level: debug, format: json}
cache:
  redis: {url: "redis://%s/0", timeout: 300ms}
  key: %s
oauth2:
  entry%d:
    token_url: %s/t
    client_id: shared-client
    client_secret: shared-secret-canary
%s
routes:
  - {prefix: /api/, upstream: "%s/", oauth2: entry%d}
`, redisAddr, cacheKey(), i, idp, grant, upstream, i)
}

func TestReplicasShareOneToken(t *testing.T) {
	rd := startRedis(t)
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	var ps []*proc
	for i := range 3 {
		ps = append(ps, startProxy(t, replicaConfig(i, rd.addr, idp.URL, up.URL, "")))
	}
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			if r := get(t, ps[i%3].base+"/api/x"); r.status != 200 {
				t.Errorf("replica %d: %d %s", i%3, r.status, r.body)
			}
		})
	}
	wg.Wait()
	if n := idp.hits.Load(); n != 1 {
		t.Errorf("%d token requests for 3 replicas, want 1", n)
	}
	for _, p := range ps {
		if b := get(t, p.admin+"/tokens").body; !strings.Contains(b, `"cache": "shared"`) {
			t.Errorf("/tokens does not say shared: %s", b)
		}
	}

	// The upstream rejects the shared token once at every replica: one renewal.
	first := up.last(t).token
	up.mu.Lock()
	up.reject = func(_ int64, tok string) bool { return tok == first }
	up.mu.Unlock()
	for _, p := range ps {
		if r := get(t, p.base+"/api/y"); r.status != 200 {
			t.Errorf("after a rejection: %d %s", r.status, r.body)
		}
	}
	if n := idp.hits.Load(); n != 2 {
		t.Errorf("%d token requests after 3 rejections of one token, want 2", n)
	}

	// Redis hangs: the replicas keep serving the token they hold and say
	// they are degraded; /readyz stays ready.
	rd.cmd.Process.Signal(syscall.SIGSTOP)
	for _, p := range ps {
		if r := get(t, p.base+"/api/z"); r.status != 200 {
			t.Errorf("with Redis hung: %d %s", r.status, r.body)
		}
	}
	// A rejection needs Redis: the replica fetches its own token.
	second := up.last(t).token
	up.mu.Lock()
	up.reject = func(_ int64, tok string) bool { return tok == first || tok == second }
	up.mu.Unlock()
	time.Sleep(5 * time.Second) // past the force interval
	start := time.Now()
	if r := get(t, ps[0].base+"/api/w"); r.status != 200 {
		t.Errorf("renewal with Redis hung: %d %s", r.status, r.body)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a request took %v with Redis hung", d)
	}
	if b := get(t, ps[0].admin+"/tokens").body; !strings.Contains(b, `"cache": "degraded"`) {
		t.Errorf("/tokens with Redis hung: %s", b)
	}
	if r := get(t, ps[0].admin+"/readyz"); r.status != 200 || !strings.Contains(r.body, "unreachable") {
		t.Errorf("/readyz with Redis hung: %d %s", r.status, r.body)
	}
	rd.cmd.Process.Signal(syscall.SIGCONT)
	deadline := time.Now().Add(15 * time.Second)
	for {
		third := up.last(t).token
		up.mu.Lock()
		up.reject = func(_ int64, tok string) bool { return tok == first || tok == second || tok == third }
		up.mu.Unlock()
		get(t, ps[0].base+"/api/v")
		if strings.Contains(get(t, ps[0].admin+"/tokens").body, `"cache": "shared"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replica did not rejoin the cache within 15 s of Redis returning")
		}
		time.Sleep(time.Second)
	}
}

// TestReplicasRotateRefreshTokenOnce: three replicas renew a refresh-token
// entry whose server rotates refresh tokens and refuses any spent twice.
func TestReplicasRotateRefreshTokenOnce(t *testing.T) {
	rd := startRedis(t)
	var mu sync.Mutex
	spent := map[string]int{}
	var idp *tokenServer
	idp = newTokenServer(t, func(n int64, req tokenRequest) (int, map[string]string, string) {
		mu.Lock()
		defer mu.Unlock()
		rt := req.params["refresh_token"]
		spent[rt]++
		if spent[rt] > 1 {
			return 400, nil, `{"error":"invalid_grant"}`
		}
		next := fmt.Sprintf("rt-%d-%s", n, randomString(""))
		addCanary(next)
		return 200, nil, idp.okBody(idp.issue(), 3, `,"refresh_token":"`+next+`"`)
	})
	up := newAPI(t, idp.verify)
	var ps []*proc
	for i := range 3 {
		ps = append(ps, startProxy(t, replicaConfig(i, rd.addr, idp.URL, up.URL,
			"    grant_type: refresh_token\n    refresh_token: rt-initial-canary")))
	}
	end := time.Now().Add(8 * time.Second)
	for time.Now().Before(end) {
		for i, p := range ps {
			if r := get(t, p.base+"/api/x"); r.status != 200 {
				t.Fatalf("replica %d: %d %s", i, r.status, r.body)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for rt, n := range spent {
		if n > 1 {
			t.Errorf("refresh token %q sent %d times", rt, n)
		}
	}
	if len(spent) < 4 {
		t.Errorf("only %d renewals in 8 s of 3-second tokens", len(spent))
	}
}
