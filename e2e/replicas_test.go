package e2e

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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
