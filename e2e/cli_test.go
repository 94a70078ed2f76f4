package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func writeConfig(t *testing.T, cfg string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// run runs the binary to completion and returns its output and exit code.
func run(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(args, "-show") { // the one output meant to hold a token
			canaries.Lock()
			canaries.logs = append(canaries.logs, capturedLog{t.Name() + " " + strings.Join(args, " "), out.String()})
			canaries.Unlock()
		}
		return out.String(), code
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("oauthproxy %v did not finish", args)
	}
	return "", -1
}

// TestCheckMatchesGolden runs `oauthproxy check` on the broken configs whose
// problems upstreams pins in golden files: the binary prints exactly those.
func TestCheckMatchesGolden(t *testing.T) {
	files, _ := filepath.Glob("../upstreams/testdata/check/*.yaml")
	if len(files) == 0 {
		t.Fatal("no golden configs")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			rel := strings.TrimPrefix(f, "../upstreams/")
			cmd := exec.Command(binary, "check", "-config", rel)
			cmd.Dir = "../upstreams"
			cmd.Env = []string{"PRESENT=x"}
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit %v, want 1:\n%s", err, out)
			}
			want, _ := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".golden")
			lines := strings.SplitAfter(string(out), "\n")
			got := strings.Join(lines[:len(lines)-2], "") // less the "N problems" summary
			if got != string(want) {
				t.Errorf("check output:\n%s\nwant:\n%s", got, want)
			}
			if !strings.HasSuffix(strings.TrimSpace(string(out)), "problem") && !strings.HasSuffix(strings.TrimSpace(string(out)), "problems") {
				t.Errorf("no summary line:\n%s", out)
			}
		})
	}
}

func TestCheckExample(t *testing.T) {
	out, code := run(t, nil, "check", "-config", "../config.example.yaml")
	if code != 0 || !strings.Contains(out, "ok: 5 routes, 5 oauth2 entries (corp, infor-m3, legacy, sidecar-login, user-delegated)") {
		t.Errorf("exit %d:\n%s", code, out)
	}
	out, code = run(t, []string{"OAUTHPROXY_CONFIG=../config.example.yaml"}, "check")
	if code != 0 {
		t.Errorf("OAUTHPROXY_CONFIG: exit %d:\n%s", code, out)
	}
}

func TestUsageAndExitCodes(t *testing.T) {
	env := []string{"OAUTHPROXY_CONFIG="}
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"run"}, 2, "no config"},
		{[]string{"check"}, 2, "no config"},
		{[]string{"token", "-config", "../config.example.yaml"}, 2, "Usage: oauthproxy token NAME"},
		{[]string{"token", "nope", "-config", "../config.example.yaml"}, 1, `no oauth2 entry "nope"`},
		{[]string{"run", "-config", "/nonexistent.yaml"}, 1, "no such file"},
		{[]string{"run", "-config", "../upstreams/testdata/check/references.yaml"}, 1, `oauth2 "crop" is not defined`},
		{[]string{"help"}, 0, "Usage:"},
		{[]string{"version"}, 0, "oauthproxy "},
	}
	for _, tc := range tests {
		out, code := run(t, env, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("oauthproxy %v: exit %d, want %d with %q:\n%s", tc.args, code, tc.code, tc.want, out)
		}
	}
}

func TestTokenCommand(t *testing.T) {
	secret := randomString("cs-")
	addCanary(secret)
	var last atomic.Value
	idp := newTokenServer(t, nil)
	idp.reply = func(n int64, req tokenRequest) (int, map[string]string, string) {
		if req.basicPass != secret {
			return 401, nil, `{"error":"invalid_client","error_description":"Client authentication failed"}`
		}
		tok := idp.issue()
		last.Store(tok)
		return 200, nil, idp.okBody(tok, 900, `,"scope":"a b"`)
	}
	issued := func() string { s, _ := last.Load().(string); return s }
	good := writeConfig(t, config("https://api.example.com", `    token_url: `+idp.URL+`/token
    client_id: app
    client_secret: `+secret))
	out, code := run(t, nil, "token", "e2e", "-config", good)
	if code != 0 || !strings.Contains(out, "expires_in:   15m0s") || !strings.Contains(out, "scopes:       a b") ||
		!strings.Contains(out, "opaque") || strings.Contains(out, issued()) {
		t.Errorf("exit %d:\n%s", code, out)
	}
	out, code = run(t, nil, "token", "-show", "e2e", "-config", good)
	if code != 0 || !strings.Contains(out, "access_token: "+issued()) {
		t.Errorf("-show: exit %d:\n%s", code, out)
	}

	bad := writeConfig(t, config("https://api.example.com", `    token_url: `+idp.URL+`/token
    client_id: app
    client_secret: not-the-secret`))
	out, code = run(t, nil, "token", "e2e", "-config", bad)
	if code != 1 || !strings.Contains(out, "answered 401 invalid_client (Client authentication failed)") {
		t.Errorf("failure: exit %d:\n%s", code, out)
	}
}
