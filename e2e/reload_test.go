package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// reloadConfig is the config of TestReload: entry a (a client secret in
// the file) and entry b (its secret in a ${file:...}), route /a/ and /b/,
// and extra routes.
func reloadConfig(idpA, idpB, upA, upB, secretFile, extra string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
log: {level: info, format: json}
oauth2:
  a: {token_url: %s/t, client_id: a, client_secret: secret-a-fixed}
  b: {token_url: %s/t, client_id: b, client_secret: "${file:%s}"}
routes:
  - {prefix: /a/, upstream: %s/, oauth2: a}
  - {prefix: /b/, upstream: %s/, oauth2: b}
%s`, idpA, idpB, secretFile, upA, upB, extra)
}

// sample reads one sample of /metrics, 0 when absent.
func sample(t *testing.T, p *proc, series string) float64 {
	t.Helper()
	return max(metricValue(get(t, p.admin+"/metrics").body, series), 0)
}

// TestReload changes the config in every way an operator does while
// requests keep flowing: not one request may fail, each change must show
// within 2 s, and only changed entries fetch new tokens.
func TestReload(t *testing.T) {
	idpA, idpB := newTokenServer(t, nil), newTokenServer(t, nil)
	upA, upB := newAPI(t, idpA.verify), newAPI(t, idpB.verify)
	dir := t.TempDir()
	secretB := filepath.Join(dir, "secret-b")
	os.WriteFile(secretB, []byte("secret-b-1\n"), 0o600)
	cfgText := func(extra string) string { return reloadConfig(idpA.URL, idpB.URL, upA.URL, upB.URL, secretB, extra) }

	// The layout of a Kubernetes ConfigMap volume: config.yaml is a
	// symlink through ..data to a timestamped directory.
	vol := filepath.Join(dir, "vol")
	os.MkdirAll(filepath.Join(vol, "..2026_01_01_00_00_00.1"), 0o755)
	os.WriteFile(filepath.Join(vol, "..2026_01_01_00_00_00.1", "config.yaml"), []byte(cfgText("")), 0o644)
	os.Symlink("..2026_01_01_00_00_00.1", filepath.Join(vol, "..data"))
	os.Symlink("..data/config.yaml", filepath.Join(vol, "config.yaml"))
	path := filepath.Join(vol, "config.yaml")
	p := start(t, nil, "run", "-config", path)
	p.waitServing()
	waitReady(t, p)

	// Constant load on both routes.
	var failures atomic.Int64
	var sent atomic.Int64
	var failMu sync.Mutex
	var failed []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			route := []string{"/a/", "/b/"}[i%2]
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Get(p.base + route + "load")
				sent.Add(1)
				if err != nil || resp.StatusCode != 200 {
					failures.Add(1)
					failMu.Lock()
					if err != nil {
						failed = append(failed, err.Error())
					} else {
						failed = append(failed, resp.Status+" "+resp.Header.Get("X-Oauthproxy-Error"))
					}
					failMu.Unlock()
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}()
	}
	defer func() {
		close(stop)
		wg.Wait()
		if n := failures.Load(); n > 0 {
			t.Errorf("%d of %d requests failed during reloads: %v", n, sent.Load(), failed[:min(len(failed), 5)])
		}
		t.Logf("%d requests during the reloads", sent.Load())
	}()

	within := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not in effect within 2 s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	routeOK := func(prefix string) func() bool {
		return func() bool {
			resp, err := http.Get(p.base + prefix + "x")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		}
	}
	reloads := func(result string) float64 {
		return sample(t, p, `oauthproxy_config_reloads_total{result="`+result+`"}`)
	}

	// (c) the ConfigMap swap: a new timestamped directory, ..data_tmp
	// renamed over ..data.
	ts2 := filepath.Join(vol, "..2026_01_01_00_01_00.2")
	os.MkdirAll(ts2, 0o755)
	os.WriteFile(filepath.Join(ts2, "config.yaml"), []byte(cfgText("  - {prefix: /c/, upstream: "+upA.URL+"/, oauth2: a}\n")), 0o644)
	os.Symlink("..2026_01_01_00_01_00.2", filepath.Join(vol, "..data_tmp"))
	if err := os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")); err != nil {
		t.Fatal(err)
	}
	within("ConfigMap swap adds /c/", routeOK("/c/"))

	// (a) an edit in place (through the symlink).
	os.WriteFile(path, []byte(cfgText("  - {prefix: /c/, upstream: "+upA.URL+"/, oauth2: a}\n  - {prefix: /d/, upstream: "+upB.URL+"/, oauth2: b}\n")), 0o644)
	within("edit in place adds /d/", routeOK("/d/"))

	// (b) a rename over the file, as editors save.
	tmp := filepath.Join(vol, ".config.yaml.swp")
	os.WriteFile(tmp, []byte(cfgText("  - {prefix: /e/, upstream: "+upA.URL+"/, oauth2: a}\n")), 0o644)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	within("rename adds /e/", routeOK("/e/"))
	within("rename removes /d/", func() bool { return get(t, p.base+"/d/x").status == 404 })

	// (d) SIGHUP: one reload per signal, the file unchanged.
	before := reloads("success")
	p.cmd.Process.Signal(syscall.SIGHUP)
	within("SIGHUP reloads", func() bool { return reloads("success") == before+1 })

	// (e) a broken config is refused whole: the old one serves on.
	errsBefore := reloads("error")
	os.WriteFile(path, []byte(cfgText("  - {prefix: /f/, upstream: "+upA.URL+"/, oauth2: nope}\n")), 0o644)
	within("a broken config is counted", func() bool { return reloads("error") == errsBefore+1 })
	if !regexp.MustCompile(`"msg":"config reload refused: routes\[2\] \(prefix \\"/f/\\"\): oauth2 \\"nope\\" is not defined[^"]*","file":"[^"]+config.yaml","line":10,"col":\d+`).MatchString(p.out.String()) {
		t.Errorf("the refused reload's problem is not logged with its line:\n%s", p.out.String())
	}
	if r := get(t, p.admin+"/readyz"); r.status != 200 {
		t.Errorf("/readyz after a refused reload: %d %s", r.status, r.body)
	}
	if !routeOK("/e/")() {
		t.Error("the old config stopped serving after a refused reload")
	}

	// Nothing so far changed an entry: one token each, still.
	if n, m := idpA.hits.Load(), idpB.hits.Load(); n != 1 || m != 1 {
		t.Errorf("token requests after route-only reloads: a=%d b=%d, want 1 and 1", n, m)
	}

	// (f) a rotated client-secret file: b gets a fresh token with the new
	// secret, a keeps its token.
	okBefore := reloads("success")
	os.WriteFile(path, []byte(cfgText("")), 0o644) // fix the config first
	within("the fixed config is taken", func() bool { return reloads("success") == okBefore+1 })
	os.WriteFile(secretB, []byte("secret-b-2\n"), 0o600)
	within("b fetches with the rotated secret", func() bool {
		reqs := idpB.requests()
		return len(reqs) == 2 && reqs[1].basicPass == "secret-b-2"
	})
	if n := idpA.hits.Load(); n != 1 {
		t.Errorf("entry a fetched %d tokens; its settings never changed", n)
	}
	time.Sleep(200 * time.Millisecond) // load on the new token of b
}

// TestShutdownDrain: SIGTERM turns /readyz 503 at once, keeps accepting
// for shutdown_delay, lets slow requests finish and exits 0.
func TestShutdownDrain(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	up.delay = 1500 * time.Millisecond
	p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: s", "server: {shutdown_delay: 700ms, shutdown_timeout: 10s}"))
	waitReady(t, p)
	results := make(chan int, 4)
	for range 3 {
		go func() { results <- get(t, p.base+"/api/slow").status }()
	}
	for up.hits.Load() < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(100 * time.Millisecond)
	if r := get(t, p.admin+"/readyz"); r.status != 503 {
		t.Errorf("/readyz right after SIGTERM: %d", r.status)
	}
	// Within the delay the listener still accepts.
	go func() { results <- get(t, p.base+"/api/late").status }()
	for range 4 {
		if s := <-results; s != 200 {
			t.Errorf("a request during the drain got %d", s)
		}
	}
	if code := p.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// TestSecondSignalExits: a second SIGTERM does not wait for the drain.
func TestSecondSignalExits(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	up.delay = 20 * time.Second
	p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: s", "server: {shutdown_timeout: 30s}"))
	waitReady(t, p)
	go http.Get(p.base + "/api/slow")
	for up.hits.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(5 * time.Second); code != 1 {
		t.Errorf("exit code after a second signal: %d, want 1", code)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the second signal took %v to end the process", d)
	}
}

// TestRevokeOnShutdown: an entry with revoke_on_shutdown revokes its
// access token when the proxy stops.
func TestRevokeOnShutdown(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: s\n    revoke_url: "+idp.URL+"/revoke\n    revoke_on_shutdown: true"))
	if r := get(t, p.base+"/api/x"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	tok := up.last(t).token
	p.stop()
	var revoked bool
	for _, r := range idp.requests() {
		if r.params["token"] == tok && r.params["token_type_hint"] == "access_token" && r.basicUser == "a" {
			revoked = true
		}
	}
	if !revoked {
		t.Errorf("the access token was not revoked at shutdown: %d requests to the IdP", len(idp.requests()))
	}
}
