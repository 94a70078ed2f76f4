package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// redis is a real redis-server on a free loopback port, for the tests of
// replicas sharing tokens. It can be killed and started again on the same
// port, with no persistence: what a crash of a cache-only Redis looks like.
type redis struct {
	bin, port, dir string
	cmd            *exec.Cmd
	addr           string
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
	r := &redis{bin: bin, port: port, dir: t.TempDir(), addr: addr}
	r.launch(t)
	t.Cleanup(func() { r.cmd.Process.Signal(syscall.SIGCONT); r.kill() })
	return r
}

// launch starts redis-server on r's port and waits until it accepts
// connections.
func (r *redis) launch(t *testing.T) {
	t.Helper()
	r.cmd = exec.Command(r.bin, "--port", r.port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", r.dir)
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
}

// kill ends redis-server with SIGKILL and reaps it.
func (r *redis) kill() {
	r.cmd.Process.Kill()
	r.cmd.Wait()
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
	t.Parallel()
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
	t.Parallel()
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

// --- load, status and metrics helpers of the replica tests ---

// latency is one request of a load run.
type latency struct {
	at time.Time // when it was sent
	d  time.Duration
}

// loader sends requests to replicas from a few workers until stopped, and
// counts what did not come back 200. A replica the test kills on purpose
// (marked dead first) is left out, and so are its failures.
type loader struct {
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []latency
	fails   []string
	dead    map[*proc]bool
}

// startLoad runs workers against ps (spread round robin) on path, each
// pausing pace between requests: load that leaves the shared machine
// some CPU for the replicas' own work.
func startLoad(t *testing.T, ps []*proc, workers int, pace time.Duration, path string) *loader {
	l := &loader{stop: make(chan struct{}), dead: map[*proc]bool{}}
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	for w := range workers {
		l.wg.Go(func() {
			for i := w; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				p := l.pick(ps, i)
				start := time.Now()
				status, body := 0, ""
				resp, err := client.Get(p.base + path)
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					status, body = resp.StatusCode, string(b)
				} else {
					body = err.Error()
				}
				l.record(p, latency{start, time.Since(start)}, status, body)
				time.Sleep(pace)
			}
		})
	}
	t.Cleanup(func() { l.finish() })
	return l
}

func (l *loader) pick(ps []*proc, i int) *proc {
	l.mu.Lock()
	defer l.mu.Unlock()
	for range ps {
		if p := ps[i%len(ps)]; !l.dead[p] {
			return p
		}
		i++
	}
	return ps[0]
}

func (l *loader) record(p *proc, s latency, status int, body string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead[p] {
		return
	}
	if status != 200 {
		if len(l.fails) < 10 {
			l.fails = append(l.fails, fmt.Sprintf("%s: %d %.200s", p.base, status, body))
		} else {
			l.fails = append(l.fails, "")
		}
		return
	}
	l.samples = append(l.samples, s)
}

// kill marks p dead, then kills it with SIGKILL.
func (l *loader) kill(p *proc) {
	l.mu.Lock()
	l.dead[p] = true
	l.mu.Unlock()
	p.cmd.Process.Kill()
}

// finish stops the workers and returns the successful samples and the
// failures.
func (l *loader) finish() ([]latency, []string) {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.samples, l.fails
}

// percentile returns the p-th percentile of the latencies of the samples
// sent in [from, to).
func percentile(ss []latency, p float64, from, to time.Time) (time.Duration, int) {
	var ds []time.Duration
	for _, s := range ss {
		if !s.at.Before(from) && s.at.Before(to) {
			ds = append(ds, s.d)
		}
	}
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(float64(len(ds))*p))], len(ds)
}

// cacheModes returns /tokens' "cache" of every entry of p.
func cacheModes(t *testing.T, p *proc) map[string]string {
	t.Helper()
	r := get(t, p.admin+"/tokens")
	var all []struct {
		OAuth2 string `json:"oauth2"`
		Cache  string `json:"cache"`
	}
	if err := json.Unmarshal([]byte(r.body), &all); err != nil {
		t.Fatalf("/tokens: %d %s", r.status, r.body)
	}
	out := map[string]string{}
	for _, e := range all {
		out[e.OAuth2] = e.Cache
	}
	return out
}

// waitModes polls until every entry of every replica in ps shows mode on
// /tokens, and returns how long that took; it fails the test after within.
func waitModes(t *testing.T, ps []*proc, mode string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		all := true
		var last map[string]string
		for _, p := range ps {
			last = cacheModes(t, p)
			for _, m := range last {
				all = all && m == mode
			}
			if !all {
				break
			}
		}
		if all {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("the replicas did not all show \"cache\": %q on /tokens within %v; one shows %v", mode, within, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var cacheOpLine = regexp.MustCompile(`^oauthproxy_cache_operations_total\{(.*)\} ([0-9.e+]+)$`)
var opLabel, resultLabel = regexp.MustCompile(`\bop="([a-z_]+)"`), regexp.MustCompile(`\bresult="([a-z_]+)"`)

// cacheOps reads oauthproxy_cache_operations_total of p: "op/result" → count.
func cacheOps(t *testing.T, p *proc) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, line := range strings.Split(get(t, p.admin+"/metrics").body, "\n") {
		m := cacheOpLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		op, res := opLabel.FindStringSubmatch(m[1]), resultLabel.FindStringSubmatch(m[1])
		v, err := strconv.ParseFloat(m[2], 64)
		if op == nil || res == nil || err != nil {
			t.Fatalf("cannot read %q", line)
		}
		out[op[1]+"/"+res[1]] += int(v)
	}
	return out
}

func sumOps(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// redisCommands is how many commands Redis has run (INFO stats).
func redisCommands(t *testing.T, r *redis) int64 {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: r.addr})
	defer c.Close()
	info, err := c.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "total_commands_processed:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatal("INFO stats has no total_commands_processed")
	return 0
}

// expiringTokens is a token endpoint that issues tokens valid for ttl, and
// the check of a resource server that refuses them once expired.
func expiringTokens(t *testing.T, ttl time.Duration) (*tokenServer, func(string) error) {
	var mu sync.Mutex
	expiry := map[string]time.Time{}
	var idp *tokenServer
	idp = newTokenServer(t, func(int64, tokenRequest) (int, map[string]string, string) {
		tok := idp.issue()
		mu.Lock()
		expiry[tok] = time.Now().Add(ttl)
		mu.Unlock()
		return 200, nil, idp.okBody(tok, int(ttl/time.Second), "")
	})
	return idp, func(tok string) error {
		mu.Lock()
		exp, ok := expiry[tok]
		mu.Unlock()
		switch {
		case !ok:
			return errors.New("unknown token")
		case !time.Now().Before(exp):
			return errors.New("expired token")
		}
		return nil
	}
}

// startReplicas starts n proxies on configs from cfg(i).
func startReplicas(t *testing.T, n int, cfg func(i int) string) []*proc {
	t.Helper()
	var ps []*proc
	for i := range n {
		ps = append(ps, startProxy(t, cfg(i)))
	}
	return ps
}

// TestReplicasShortTokensAndRedisOutage: 3 replicas share 3-second client
// credentials tokens under load, then Redis is killed (and started again
// on its port, empty) or frozen for 10 s: no request fails, every replica
// says degraded within seconds and shared again soon after Redis is back.
// The kill run first measures 12 s of sharing: about one token request
// per lifetime, and the Redis operations it costs (docs/replicas.md).
func TestReplicasShortTokensAndRedisOutage(t *testing.T) {
	t.Parallel()
	const ttl = 3 * time.Second
	for _, tc := range []struct {
		name     string
		measure  time.Duration // of load before the outage
		down, up func(t *testing.T, r *redis)
	}{
		{"SIGKILL", 12 * time.Second,
			func(t *testing.T, r *redis) { r.kill() },
			func(t *testing.T, r *redis) { r.launch(t) }},
		{"SIGSTOP", 3 * time.Second,
			func(t *testing.T, r *redis) { r.cmd.Process.Signal(syscall.SIGSTOP) },
			func(t *testing.T, r *redis) { r.cmd.Process.Signal(syscall.SIGCONT) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rd := startRedis(t)
			idp, verify := expiringTokens(t, ttl)
			up := newAPI(t, verify)
			// Renewed 0.5 s before expiry: every 2.5 s.
			ps := startReplicas(t, 3, func(i int) string {
				return replicaConfig(i, rd.addr, idp.URL, up.URL, "    refresh_before: 500ms")
			})
			waitModes(t, ps, "shared", 5*time.Second)
			ops0 := make([]map[string]int, len(ps))
			for i, p := range ps {
				ops0[i] = cacheOps(t, p)
			}
			hits0 := idp.hits.Load()
			cmds0 := redisCommands(t, rd)
			load := startLoad(t, ps, 6, 10*time.Millisecond, "/api/x")
			begin := time.Now()
			time.Sleep(tc.measure)
			if tc.measure >= 4*ttl {
				// One token request per renewal for all three replicas; one
				// replica alone would make as many, three unshared three times.
				lifetimes := float64(tc.measure) / float64(ttl)
				n := idp.hits.Load() - hits0
				t.Logf("sharing: %d token requests in %v of %v tokens across 3 replicas (%.2f per lifetime)", n, tc.measure, ttl, float64(n)/lifetimes)
				if float64(n) > 1.5*lifetimes || n < 3 {
					t.Errorf("%d token requests in %v of %v tokens across 3 replicas, want about one per lifetime (at most %.0f)", n, tc.measure, ttl, 1.5*lifetimes)
				}
				for i, p := range ps {
					ops := cacheOps(t, p)
					for k, v := range ops0[i] {
						ops[k] -= v
					}
					t.Logf("replica %d: %.1f Redis operations per token lifetime: %v", i, float64(sumOps(ops))/lifetimes, ops)
				}
				// Everything Redis ran, pub/sub and health checks included
				// (and this INFO).
				n = redisCommands(t, rd) - cmds0
				t.Logf("Redis ran %d commands: %.1f per replica per token lifetime", n, float64(n)/3/lifetimes)
			}

			t0 := time.Now()
			tc.down(t, rd)
			degraded := waitModes(t, ps, "degraded", 8*time.Second)
			time.Sleep(time.Until(t0.Add(10 * time.Second)))
			tc.up(t, rd)
			rejoined := waitModes(t, ps, "shared", 15*time.Second)
			t2 := time.Now()
			time.Sleep(time.Second)
			ss, fails := load.finish()
			if len(fails) > 0 {
				t.Errorf("%d of %d requests failed with Redis %s for 10 s; the first: %q", len(fails), len(fails)+len(ss), tc.name, fails[:min(3, len(fails))])
			}
			base, nb := percentile(ss, 0.99, begin, t0)
			out, no := percentile(ss, 0.99, t0, t2)
			worst, _ := percentile(ss, 1, t0, t2)
			t.Logf("Redis %s: all degraded after %v, all shared %v after Redis returned; p99 %v (%d requests) before, %v (%d requests) during the outage and rejoin (max %v)",
				tc.name, degraded.Round(time.Millisecond), rejoined.Round(time.Millisecond), base, nb, out, no, worst)
			if rz := get(t, ps[0].admin+"/readyz"); rz.status != 200 {
				t.Errorf("/readyz after the outage: %d %s", rz.status, rz.body)
			}
		})
	}
}

// provider is an oidc-provider of one test (e2e/idp/oidc.mjs), for access
// tokens shorter-lived than the suite's: it rotates refresh tokens on
// every use and revokes the grant when a spent one comes back.
type provider struct {
	iss string
	out *syncBuffer
}

func startProvider(t *testing.T, tokenTTL int) *provider {
	t.Helper()
	needOIDC(t) // Node.js and node_modules, or skip
	cmd := exec.Command("node", "idp/oidc.mjs")
	cmd.Env = append(os.Environ(), "OIDC_CLIENTS=[]", fmt.Sprintf("OIDC_TOKEN_TTL=%d", tokenTTL))
	out := &syncBuffer{}
	cmd.Stderr = out
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if iss, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				first <- iss
			}
			out.Write([]byte(sc.Text() + "\n"))
		}
	}()
	select {
	case iss := <-first:
		return &provider{iss: iss, out: out}
	case <-time.After(20 * time.Second):
		t.Fatalf("oidc-provider did not start:\n%s", out)
		return nil
	}
}

// granted counts the tokens the provider granted to client with grant type gt.
func (p *provider) granted(client, gt string) int {
	return strings.Count(p.out.String(), "granted "+client+" "+gt+"\n")
}

// refused returns the provider's refusals of client's token requests.
func (p *provider) refused(client string) []string {
	var out []string
	for _, l := range strings.Split(p.out.String(), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "grant.error" && f[2] == client {
			out = append(out, l)
		}
	}
	return out
}

// jwtVerifier checks what a resource server of p checks of an access
// token: its RS256 signature, issuer, client and expiry.
func (p *provider) jwtVerifier(t *testing.T, client string) func(string) error {
	keys, err := fetchJWKS(p.iss)
	if err != nil {
		t.Fatal(err)
	}
	return func(tok string) error {
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			return errors.New("not a JWT")
		}
		hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
		var h struct{ Kid string }
		json.Unmarshal(hb, &h)
		key, ok := keys[h.Kid]
		if !ok {
			return fmt.Errorf("unknown kid %q", h.Kid)
		}
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, sum[:], sig); err != nil {
			return err
		}
		cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var c struct {
			ClientID string `json:"client_id"`
			Exp      int64  `json:"exp"`
		}
		json.Unmarshal(cb, &c)
		switch {
		case c.ClientID != client:
			return fmt.Errorf("a token of client %q", c.ClientID)
		case !time.Now().Before(time.Unix(c.Exp, 0)):
			return errors.New("expired")
		}
		return nil
	}
}

// tokenFront stands between the replicas and the provider's token
// endpoint, where it sees every refresh token sent on the wire. hold, when
// set, is told of a refresh request (by the peer address) before it goes
// on; if it returns true the request is held until its sender hangs up,
// and then dropped: the sender died before the provider saw it.
type tokenFront struct {
	*httptest.Server
	mu    sync.Mutex
	sent  map[string]int // refresh tokens forwarded to the provider
	order []string
	hold  func(remote string) bool
}

func newTokenFront(t *testing.T, target string) *tokenFront {
	f := &tokenFront{sent: map[string]int{}}
	u, _ := url.Parse(target)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		ModifyResponse: func(resp *http.Response) error {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			var tr struct{ AccessToken, RefreshToken, IDToken string }
			if json.Unmarshal(b, &tr) == nil {
				addCanary(tr.AccessToken, tr.RefreshToken, tr.IDToken)
			}
			resp.Body = io.NopCloser(bytes.NewReader(b))
			return err
		},
	}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(body))
		if rt := form.Get("refresh_token"); form.Get("grant_type") == "refresh_token" {
			addCanary(rt)
			f.mu.Lock()
			hold := f.hold
			f.mu.Unlock()
			if hold != nil && hold(r.RemoteAddr) {
				select {
				case <-r.Context().Done():
					return // its sender is gone: the provider never sees it
				case <-time.After(5 * time.Second):
				}
			}
			f.mu.Lock()
			f.sent[rt]++
			f.order = append(f.order, rt)
			f.mu.Unlock()
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

// resent returns how many refresh tokens were forwarded more than once,
// and how many were forwarded in all.
func (f *tokenFront) resent() (twice, all int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.sent {
		if n > 1 {
			twice++
		}
	}
	return twice, len(f.order)
}

// pidOfPeer returns which of ps owns the loopback TCP socket whose local
// address is remote (the peer of a connection a test server accepted):
// the replica that sent a request. 0 if none.
func pidOfPeer(remote string, ps []*proc) int {
	_, port, err := net.SplitHostPort(remote)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(port)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return 0
	}
	inode := ""
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 9 && f[1] == fmt.Sprintf("0100007F:%04X", n) {
			inode = f[9]
		}
	}
	if inode == "" {
		return 0
	}
	for _, p := range ps {
		pid := p.cmd.Process.Pid
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == "socket:["+inode+"]" {
				return pid
			}
		}
	}
	return 0
}

// rotatingConfig is a replica of an authorization code entry "e2e" of
// client c whose callback is on admin0 (replica 0's admin listener, where
// the person signs in), with tokens from front.
func rotatingConfig(admin, admin0, redisAddr string, pr *provider, front string, c signinClient, upstream string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: %s
log: {level: debug, format: json}
cache:
  redis: {url: "redis://%s/0", timeout: 300ms}
  key: %s
oauth2:
  e2e:
    grant_type: authorization_code
    auth_url: %s/auth
    token_url: %s/token
    redirect_url: http://%s/oauth2/e2e/callback
    client_id: %s
    client_secret: %s
    scopes: [openid, orders.read]
    request_refresh_token: true
    prompt: consent
    resource: %s
    timeout: 1s
routes:
  - {prefix: /api/, upstream: "%s/", oauth2: e2e}
`, admin, redisAddr, cacheKey(), pr.iss, front, admin0, c.id, c.secret, apiResource, upstream)
}

// signedInReplicas starts 3 replicas of one authorization code entry of
// a fresh client at pr, signs in on the first, and returns them once
// all three hold the shared token.
func signedInReplicas(t *testing.T, pr *provider) ([]*proc, *tokenFront, signinClient) {
	t.Helper()
	rd := startRedis(t)
	c := authCodeClient(t, pr.iss)
	up := newAPI(t, pr.jwtVerifier(t, c.id))
	front := newTokenFront(t, pr.iss)
	admin0 := freeAddr(t)
	ps := []*proc{startProxy(t, rotatingConfig(admin0, admin0, rd.addr, pr, front.URL, c, up.URL))}
	signedIn(t, newBrowser(t).signInAt("http://"+admin0+"/oauth2/e2e/login"))
	// The others start after the sign-in: a replica that found no refresh
	// token waits for a sign-in and looks again only every 10 s.
	for range 2 {
		ps = append(ps, startProxy(t, rotatingConfig("127.0.0.1:0", admin0, rd.addr, pr, front.URL, c, up.URL)))
	}
	for _, p := range ps {
		p.waitStatus(t, "valid", isState("valid"))
	}
	return ps, front, c
}

// TestReplicasRotateAtProvider: 3 replicas share one rotating refresh
// token of the real oidc-provider, which revokes the grant when a spent
// refresh token comes back. Under load through many rotations nothing
// fails and no refresh token goes out twice; and when the replica that
// holds the renewal is killed (SIGKILL) in the middle of its refresh
// request, another takes over when its lease ends, with the refresh token
// as it stands, before the shared access token expires.
func TestReplicasRotateAtProvider(t *testing.T) {
	t.Parallel()
	t.Run("load", func(t *testing.T) {
		t.Parallel()
		pr := startProvider(t, 4) // renewed at half-life: a rotation every 2 s
		ps, front, c := signedInReplicas(t, pr)
		rotations := pr.granted(c.id, "refresh_token")
		load := startLoad(t, ps, 6, 10*time.Millisecond, "/api/x")
		time.Sleep(20 * time.Second)
		ss, fails := load.finish()
		rotations = pr.granted(c.id, "refresh_token") - rotations
		twice, sent := front.resent()
		t.Logf("%d requests, %d rotations in 20 s; %d refresh tokens sent", len(ss), rotations, sent)
		if len(fails) > 0 {
			t.Errorf("%d of %d requests failed; the first: %q", len(fails), len(fails)+len(ss), fails[:min(3, len(fails))])
		}
		if rotations < 6 {
			t.Errorf("%d rotations in 20 s of 4-second tokens, want at least 6", rotations)
		}
		if twice > 0 {
			t.Errorf("%d refresh tokens were sent to the provider more than once", twice)
		}
		if r := pr.refused(c.id); len(r) > 0 {
			t.Errorf("the provider refused token requests: %q", r)
		}
	})
	t.Run("holder killed", func(t *testing.T) {
		t.Parallel()
		// 24-second tokens are renewed at 12 s and usable until 21.6 s;
		// the lease of a renewal with timeout 1s lasts 7 s.
		pr := startProvider(t, 24)
		ps, front, c := signedInReplicas(t, pr)
		load := startLoad(t, ps, 6, 10*time.Millisecond, "/api/x")
		killed := make(chan *proc, 1)
		var once sync.Once
		front.mu.Lock()
		front.hold = func(remote string) (held bool) {
			once.Do(func() {
				pid := pidOfPeer(remote, ps)
				for _, p := range ps {
					if p.cmd.Process.Pid == pid {
						load.kill(p)
						killed <- p
						held = true
					}
				}
				if !held {
					t.Errorf("no replica sent the refresh request from %s", remote)
				}
			})
			return held
		}
		front.mu.Unlock()
		rotations := pr.granted(c.id, "refresh_token")
		var victim *proc
		select {
		case victim = <-killed:
		case <-time.After(20 * time.Second):
			t.Fatal("no renewal within 20 s of 24-second tokens")
		}
		select {
		case <-victim.done:
		case <-time.After(5 * time.Second):
			t.Fatal("the killed replica did not exit")
		}
		t.Logf("killed the lease holder, pid %d, in the middle of its refresh request", victim.cmd.Process.Pid)
		deadline := time.Now().Add(15 * time.Second)
		for pr.granted(c.id, "refresh_token") == rotations {
			if time.Now().After(deadline) {
				t.Fatal("no replica renewed within 15 s of the lease holder's death")
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(time.Second)
		ss, fails := load.finish()
		twice, sent := front.resent()
		t.Logf("%d requests; %d refresh tokens sent to the provider", len(ss), sent)
		if len(fails) > 0 {
			t.Errorf("%d of %d requests to the surviving replicas failed; the first: %q", len(fails), len(fails)+len(ss), fails[:min(3, len(fails))])
		}
		if twice > 0 {
			t.Errorf("%d refresh tokens were sent to the provider more than once", twice)
		}
		if r := pr.refused(c.id); len(r) > 0 {
			t.Errorf("the provider refused token requests: %q", r)
		}
	})
}

// entrySecrets are the settings of the two entries of dumpConfig that
// must never be in Redis in the clear.
type entrySecrets struct {
	ccID, ccSecret, rtID, rtSecret, rtSeed string
}

func newEntrySecrets() entrySecrets {
	s := entrySecrets{randomString("cc-client-id-"), randomString("cc-client-secret-"),
		randomString("rt-client-id-"), randomString("rt-client-secret-"), randomString("rt-seed-")}
	addCanary(s.ccSecret, s.rtSecret, s.rtSeed)
	return s
}

// dumpConfig is a replica with a client credentials entry (route /api/)
// and, with rt, a refresh token entry (route /rt/), named differently on
// each replica, sharing through Redis with cache.key key.
func dumpConfig(i int, redisAddr, key string, cc, rt *tokenServer, s entrySecrets, upstream string, withRT bool) string {
	entries := fmt.Sprintf(`  orders-cc-%d:
    token_url: %s/t
    client_id: %s
    client_secret: %s
`, i, cc.URL, s.ccID, s.ccSecret)
	routes := fmt.Sprintf("  - {prefix: /api/, upstream: \"%s/\", oauth2: orders-cc-%d}\n", upstream, i)
	if withRT {
		entries += fmt.Sprintf(`  orders-rt-%d:
    grant_type: refresh_token
    refresh_token: %s
    token_url: %s/t
    client_id: %s
    client_secret: %s
`, i, s.rtSeed, rt.URL, s.rtID, s.rtSecret)
		routes += fmt.Sprintf("  - {prefix: /rt/, upstream: \"%s/\", oauth2: orders-rt-%d}\n", upstream, i)
	}
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
log: {level: debug, format: json}
cache:
  redis: {url: "redis://%s/0", timeout: 300ms}
  key: %s
oauth2:
%sroutes:
%s`, redisAddr, key, entries, routes)
}

// dumpRedis returns every key of Redis and its value: strings as they
// are, hashes as sorted field=value lines.
func dumpRedis(t *testing.T, c *goredis.Client) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	iter := c.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		switch typ := c.Type(ctx, k).Val(); typ {
		case "string":
			out[k] = c.Get(ctx, k).Val()
		case "hash":
			var fs []string
			for f, v := range c.HGetAll(ctx, k).Val() {
				fs = append(fs, f+"="+v)
			}
			slices.Sort(fs)
			out[k] = strings.Join(fs, "\n")
		case "none": // expired between SCAN and TYPE
		default:
			t.Errorf("Redis key %q is a %s", k, typ)
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("scanning Redis: %v", err)
	}
	return out
}

// TestReplicasColdBurstAndNothingInClear: 300 requests at once on 3
// replicas that hold no token make one token request, 60 requests with a
// rejected token one renewal; then no key, value or pub/sub message in
// Redis holds a token, a refresh token, a client id or a secret; and a
// fourth replica with another cache.key says so, serves with its own
// tokens and leaves the others' values alone.
func TestReplicasColdBurstAndNothingInClear(t *testing.T) {
	t.Parallel()
	rd := startRedis(t)
	rc := goredis.NewClient(&goredis.Options{Addr: rd.addr})
	t.Cleanup(func() { rc.Close() })
	sub := rc.PSubscribe(context.Background(), "*")
	if _, err := sub.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	var msgs syncBuffer
	go func() {
		for m := range sub.Channel() {
			fmt.Fprintf(&msgs, "%s %s\n", m.Channel, m.Payload)
		}
	}()

	var answered atomic.Bool
	var cc *tokenServer
	cc = newTokenServer(t, func(int64, tokenRequest) (int, map[string]string, string) {
		answered.Store(true)
		return 200, nil, cc.okBody(cc.issue(), 3600, "")
	})
	cc.delay = 5 * time.Second // the first token request is still out when the burst comes
	var mu sync.Mutex
	refreshTokens := map[string]bool{} // issued and not spent
	var rt *tokenServer
	rt = newTokenServer(t, func(n int64, req tokenRequest) (int, map[string]string, string) {
		mu.Lock()
		defer mu.Unlock()
		if got := req.params["refresh_token"]; !refreshTokens[got] {
			return 400, nil, `{"error":"invalid_grant"}`
		} else {
			delete(refreshTokens, got)
		}
		next := randomString("rt-rotated-")
		addCanary(next)
		refreshTokens[next] = true
		return 200, nil, rt.okBody(rt.issue(), 3600, `,"refresh_token":"`+next+`"`)
	})
	up := newAPI(t, func(tok string) error {
		if cc.verify(tok) != nil && rt.verify(tok) != nil {
			return errors.New("unknown token")
		}
		return nil
	})
	secrets := newEntrySecrets()
	mu.Lock()
	refreshTokens[secrets.rtSeed] = true
	mu.Unlock()
	key := cacheKey()
	addCanary(key)
	ps := startReplicas(t, 3, func(i int) string { return dumpConfig(i, rd.addr, key, cc, rt, secrets, up.URL, true) })

	// The cold burst: 300 at once, while the first token request is out.
	if answered.Load() {
		t.Fatal("the first token request was answered before the burst: not a cold start (slow machine?)")
	}
	cc.mu.Lock()
	cc.delay = 0
	cc.mu.Unlock()
	burst := func(n int, path string) {
		t.Helper()
		var wg sync.WaitGroup
		var failed atomic.Int64
		for i := range n {
			wg.Go(func() {
				resp, err := http.Get(ps[i%len(ps)].base + path)
				if err != nil {
					failed.Add(1)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
				}
			})
		}
		wg.Wait()
		if f := failed.Load(); f > 0 {
			t.Errorf("%d of %d requests on %s failed", f, n, path)
		}
	}
	burst(300, "/api/cold")
	if n := cc.hits.Load(); n != 1 {
		t.Errorf("a cold burst of 300 requests on 3 replicas made %d token requests, want 1", n)
	}
	// The upstream rejects the token at all three: one renewal.
	first := up.last(t).token
	up.mu.Lock()
	up.reject = func(_ int64, tok string) bool { return tok == first }
	up.mu.Unlock()
	burst(60, "/api/rejected")
	if n := cc.hits.Load(); n != 2 {
		t.Errorf("60 requests with a rejected token on 3 replicas made %d renewals, want 1", n-1)
	}
	// The refresh token entry renews too (a rotation written back), so
	// that Redis has seen every kind of write.
	burst(3, "/rt/x")
	rtFirst := up.last(t).token
	up.mu.Lock()
	up.reject = func(_ int64, tok string) bool { return tok == first || tok == rtFirst }
	up.mu.Unlock()
	burst(30, "/rt/rejected")
	if n := rt.hits.Load(); n != 2 {
		t.Errorf("the refresh token entry made %d token requests, want 2", n)
	}

	before := dumpRedis(t, rc)
	var names []string
	for k := range before {
		names = append(names, k)
	}
	t.Logf("Redis keys: %q", names)
	if len(before) < 3 {
		t.Errorf("Redis holds only %q", names)
	}
	clear := []string{secrets.ccID, secrets.ccSecret, secrets.rtID, secrets.rtSecret, secrets.rtSeed, key,
		strings.TrimPrefix(cc.URL, "http://"), strings.TrimPrefix(rt.URL, "http://"), "orders-cc-", "orders-rt-"}
	mu.Lock()
	for t := range refreshTokens {
		clear = append(clear, t)
	}
	mu.Unlock()
	for _, s := range []*tokenServer{cc, rt} {
		s.mu.Lock()
		for t := range s.valid {
			clear = append(clear, t)
		}
		s.mu.Unlock()
	}
	for _, r := range rt.requests() {
		clear = append(clear, r.params["refresh_token"])
	}
	time.Sleep(100 * time.Millisecond) // the last messages
	for _, v := range clear {
		for k, val := range before {
			if strings.Contains(k, v) || strings.Contains(val, v) {
				t.Errorf("Redis key %q holds %.14s... in the clear", k, v)
			}
		}
		if strings.Contains(msgs.String(), v) {
			t.Errorf("a pub/sub message holds %.14s... in the clear", v)
		}
	}

	// A fourth replica with another cache.key.
	other := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x5a}, 32))
	addCanary(other)
	hits := cc.hits.Load()
	// Only its client credentials entry: a refresh_token entry (a seeded
	// one) makes the process exit at start when the store cannot be read
	// (Source.seed), which the report of this test's change describes.
	p4 := startProxy(t, dumpConfig(3, rd.addr, other, cc, rt, secrets, up.URL, false))
	if r := get(t, p4.base+"/api/other-key"); r.status != 200 {
		t.Errorf("the replica with another cache.key: %d %s", r.status, r.body)
	}
	if n := cc.hits.Load() - hits; n != 1 {
		t.Errorf("the replica with another cache.key made %d token requests, want 1 (its own)", n)
	}
	var named bool
	for _, l := range strings.Split(p4.out.String(), "\n") {
		named = named || (strings.Contains(l, `"level":"ERROR"`) && strings.Contains(l, "cache.key") && strings.Contains(l, `"orders-cc-3"`))
	}
	if !named {
		t.Errorf("the replica with another cache.key logged no error naming cache.key and the entry")
	}
	if m := cacheModes(t, p4); m["orders-cc-3"] != "degraded" {
		t.Errorf("/tokens of the replica with another cache.key: %v, want degraded", m)
	}
	if ops := cacheOps(t, p4); ops["load/key_mismatch"]+ops["cas/key_mismatch"]+ops["acquire/key_mismatch"] == 0 {
		t.Errorf("oauthproxy_cache_operations_total counts no key_mismatch: %v", ops)
	}
	if after := dumpRedis(t, rc); !maps.Equal(before, after) {
		t.Errorf("the replica with another cache.key changed Redis:\nbefore %q\nafter  %q", before, after)
	}
	for _, p := range ps {
		if r := get(t, p.base+"/api/after"); r.status != 200 {
			t.Errorf("a replica after the other key came: %d %s", r.status, r.body)
		}
	}
	if n := cc.hits.Load() - hits; n != 1 {
		t.Errorf("the first replicas fetched anew after the other key came: %d token requests", n-1)
	}
}

// keyID is the id byte that redisstore puts in values sealed with key.
func keyID(t *testing.T, key string) byte {
	b, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, b)
	m.Write([]byte("oauthproxy key id"))
	return m.Sum(nil)[0]
}

// TestReplicasKeyRotation: a replica whose cache.key was rotated (the old
// one in previous_keys) adopts the tokens the others wrote with the old
// key, without a token request, and seals every value it reads again
// with the new key; its own writes use the new key.
func TestReplicasKeyRotation(t *testing.T) {
	t.Parallel()
	if out, code := run(t, quickExit(), "check", "-config", writeConfig(t, `cache:
  redis: {url: "redis://127.0.0.1:1/0"}
  key: `+cacheKey()+`
  previous_keys: ["c2hvcnQ="]
oauth2:
  e: {token_url: "http://127.0.0.1:2/t", client_id: a, client_secret: b}
routes:
  - {prefix: /api/, upstream: "http://127.0.0.1:3/", oauth2: e}
`)); code == 0 || !strings.Contains(out, "cache.previous_keys[0]") {
		t.Errorf("check with a short previous key: exit %d, want an error naming cache.previous_keys[0]:\n%s", code, out)
	}

	rd := startRedis(t)
	rc := goredis.NewClient(&goredis.Options{Addr: rd.addr})
	t.Cleanup(func() { rc.Close() })
	cc := newTokenServer(t, nil)
	var mu sync.Mutex
	next := map[string]bool{}
	var rt *tokenServer
	rt = newTokenServer(t, func(int64, tokenRequest) (int, map[string]string, string) {
		mu.Lock()
		defer mu.Unlock()
		n := randomString("rt-rotated-")
		addCanary(n)
		next[n] = true
		return 200, nil, rt.okBody(rt.issue(), 3600, `,"refresh_token":"`+n+`"`)
	})
	up := newAPI(t, func(tok string) error {
		if cc.verify(tok) != nil && rt.verify(tok) != nil {
			return errors.New("unknown token")
		}
		return nil
	})
	secrets := newEntrySecrets()
	oldKey, newKey := cacheKey(), base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x42}, 32))
	addCanary(oldKey, newKey)
	old := startProxy(t, dumpConfig(0, rd.addr, oldKey, cc, rt, secrets, up.URL, true))
	for _, path := range []string{"/api/x", "/rt/x"} {
		if r := get(t, old.base+path); r.status != 200 {
			t.Fatalf("%s: %d %s", path, r.status, r.body)
		}
	}
	sealedWith := func(id byte) (n int, others []string) {
		for k, v := range dumpRedis(t, rc) {
			if strings.HasSuffix(k, ":keycheck") {
				if len(v) < 2 || v[1] != id {
					others = append(others, k)
				}
				n++
				continue
			}
			for _, fv := range strings.Split(v, "\n") {
				if f, val, _ := strings.Cut(fv, "="); f == "r" || f == "a" {
					if len(val) < 2 || val[1] != id {
						others = append(others, k+" "+f)
					}
					n++
				}
			}
		}
		return n, others
	}
	if n, others := sealedWith(keyID(t, oldKey)); n < 5 || len(others) > 0 {
		t.Fatalf("before the rotation: %d values, %q not sealed with the old key", n, others)
	}

	rotated := strings.Replace(dumpConfig(1, rd.addr, newKey, cc, rt, secrets, up.URL, true),
		"  key: "+newKey+"\n", "  key: "+newKey+"\n  previous_keys: ["+oldKey+"]\n", 1)
	p := startProxy(t, rotated)
	for _, path := range []string{"/api/x", "/rt/x"} {
		if r := get(t, p.base+path); r.status != 200 {
			t.Errorf("the rotated replica, %s: %d %s", path, r.status, r.body)
		}
	}
	if cc.hits.Load() != 1 || rt.hits.Load() != 1 {
		t.Errorf("the rotated replica made %d and %d token requests, want none: it adopts the shared tokens", cc.hits.Load()-1, rt.hits.Load()-1)
	}
	if m := cacheModes(t, p); m["orders-cc-1"] != "shared" || m["orders-rt-1"] != "shared" {
		t.Errorf("/tokens of the rotated replica: %v", m)
	}
	if n, others := sealedWith(keyID(t, newKey)); n < 5 || len(others) > 0 {
		t.Errorf("after the rotated replica read them: %d values, %q not sealed with the new key", n, others)
	}
	if ops := cacheOps(t, p); ops["rewrap/ok"] < 3 {
		t.Errorf("the rotated replica counts %d rewraps, want the key check and both records: %v", ops["rewrap/ok"], ops)
	}
	// Its renewal (a rotated refresh token) is written with the new key.
	first := up.last(t).token
	up.mu.Lock()
	up.reject = func(_ int64, tok string) bool { return tok == first }
	up.mu.Unlock()
	if r := get(t, p.base+"/rt/y"); r.status != 200 || rt.hits.Load() != 2 {
		t.Errorf("renewal on the rotated replica: %d %s, %d token requests", r.status, r.body, rt.hits.Load())
	}
	if _, others := sealedWith(keyID(t, newKey)); len(others) > 0 {
		t.Errorf("after a renewal: %q not sealed with the new key", others)
	}
}
