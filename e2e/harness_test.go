// Package e2e runs the built oauthproxy binary as a process against real
// authorization servers (oidc-provider, and a fault-injecting Go token
// endpoint) and real upstreams over loopback.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binary is the oauthproxy built once for the whole suite.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "oauthproxy-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "oauthproxy")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/oauthproxy")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building oauthproxy:", err)
		os.Exit(1)
	}
	code := m.Run()
	stopOIDC()
	if leaks := scanForCanaries(); len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: secrets or tokens reached the proxy's output:\n%s\n", strings.Join(leaks, "\n"))
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// canaries are values that must never appear in the proxy's output:
// configured secrets and every token an authorization server issued.
var canaries = struct {
	sync.Mutex
	set  map[string]bool
	logs []capturedLog
}{set: map[string]bool{}}

type capturedLog struct{ test, text string }

func addCanary(values ...string) {
	canaries.Lock()
	defer canaries.Unlock()
	for _, v := range values {
		if len(v) >= 8 {
			canaries.set[v] = true
		}
	}
}

// scanForCanaries checks every captured proxy output against every canary.
func scanForCanaries() []string {
	canaries.Lock()
	defer canaries.Unlock()
	var leaks []string
	for _, l := range canaries.logs {
		for c := range canaries.set {
			if strings.Contains(l.text, c) {
				leaks = append(leaks, fmt.Sprintf("  %s: output contains %.12s...", l.test, c))
			}
		}
	}
	return leaks
}

// proc is a running oauthproxy.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	out   *syncBuffer
	base  string // http://proxy
	admin string // http://admin
	done  chan struct{}
	err   error
}

// startProxy writes config to a file and runs `oauthproxy run` on it. The
// config should listen on 127.0.0.1:0; the addresses are read off the
// startup log line.
func startProxy(t *testing.T, config string, env ...string) *proc {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, env, "run", "-config", path)
	p.waitServing()
	return p
}

func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		text := p.out.String()
		canaries.Lock()
		canaries.logs = append(canaries.logs, capturedLog{t.Name(), text})
		canaries.Unlock()
		if strings.Contains(text, "DATA RACE") {
			t.Errorf("the proxy reported a data race")
		}
		if t.Failed() {
			t.Logf("oauthproxy %s output:\n%s", strings.Join(args, " "), text)
		}
	})
	return p
}

func (p *proc) waitServing() {
	p.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(p.out.String(), "\n") {
			var rec struct{ Msg, Listen, Admin string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "oauthproxy serving" {
				p.base, p.admin = "http://"+rec.Listen, "http://"+rec.Admin
				if resp, err := http.Get(p.admin + "/healthz"); err == nil {
					resp.Body.Close()
					if resp.StatusCode == 200 {
						return
					}
				}
			}
		}
		select {
		case <-p.done:
			p.t.Fatalf("oauthproxy exited: %v\n%s", p.err, p.out)
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.t.Fatalf("oauthproxy did not start serving:\n%s", p.out)
}

// stop sends SIGTERM and waits; a process that does not stop is killed.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		p.t.Errorf("oauthproxy did not stop within 15s of SIGTERM")
	}
}

// wait returns the exit code once the process ends.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("oauthproxy still running after %v", timeout)
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	p.t.Fatalf("oauthproxy: %v", p.err)
	return -1
}

// logLines returns the JSON log records whose msg is msg.
func (p *proc) logLines(msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// response is what a client got.
type response struct {
	status int
	header http.Header
	body   string
}

func (r response) errorCode() string { return r.header.Get("X-Oauthproxy-Error") }

// proxyError decodes a proxy-made JSON error.
func (r response) proxyError(t *testing.T) map[string]string {
	t.Helper()
	var m map[string]string
	if err := json.Unmarshal([]byte(r.body), &m); err != nil {
		t.Fatalf("not a JSON error (%v): %d %s", err, r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	return m
}

func send(t *testing.T, method, url string, body io.Reader, hdr ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, string(b)}
}

func get(t *testing.T, url string, hdr ...string) response {
	t.Helper()
	return send(t, "GET", url, nil, hdr...)
}

// noLeak fails if s holds a canary.
func noLeak(t *testing.T, where, s string) {
	t.Helper()
	canaries.Lock()
	defer canaries.Unlock()
	for c := range canaries.set {
		if strings.Contains(s, c) {
			t.Errorf("%s leaks a secret or token (%.12s...): %s", where, c, s)
		}
	}
}
