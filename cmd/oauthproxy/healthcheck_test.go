package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// healthzServer answers /healthz with status on loopback TCP; other paths
// get 404, so that a check of the wrong path fails.
func healthzServer(t *testing.T, status int) string {
	t.Helper()
	srv := httptest.NewServer(healthzHandler(status))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func healthzHandler(status int) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		w.Write([]byte("ok\n"))
	})
	return mux
}

// hangingServer accepts /healthz and never answers until the test ends.
func hangingServer(t *testing.T) string {
	t.Helper()
	done := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-done:
		}
	}))
	t.Cleanup(func() { close(done); srv.Close() })
	return srv.Listener.Addr().String()
}

// unixServer serves /healthz on a unix socket; the path is short because
// sun_path holds about 100 bytes and t.TempDir() can be longer.
func unixServer(t *testing.T, status int) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "hc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: healthzHandler(status)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "unix:" + path
}

// refusedAddr is a loopback port nothing listens on.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestHealthcheck(t *testing.T) {
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	tests := []struct {
		name    string
		addr    func(t *testing.T) string
		timeout time.Duration
		wantErr string // "" means healthy
	}{
		{"200", func(t *testing.T) string { return healthzServer(t, 200) }, time.Second, ""},
		{"wildcard 0.0.0.0 dials loopback", func(t *testing.T) string { return "0.0.0.0:" + port(healthzServer(t, 200)) }, time.Second, ""},
		{"empty host dials loopback", func(t *testing.T) string { return ":" + port(healthzServer(t, 200)) }, time.Second, ""},
		{"unix socket 200", func(t *testing.T) string { return unixServer(t, 200) }, time.Second, ""},
		{"503", func(t *testing.T) string { return healthzServer(t, 503) }, time.Second, "/healthz: 503 Service Unavailable"},
		{"204 is not 200", func(t *testing.T) string { return healthzServer(t, 204) }, time.Second, "204 No Content"},
		{"redirect is not followed", func(t *testing.T) string { return healthzServer(t, 302) }, time.Second, "302 Found"},
		{"unix socket 503", func(t *testing.T) string { return unixServer(t, 503) }, time.Second, "503 Service Unavailable"},
		{"hang", hangingServer, 200 * time.Millisecond, "no answer within 200ms"},
		{"refused", refusedAddr, time.Second, "connection refused"},
		{"missing socket", func(t *testing.T) string { return "unix:" + filepath.Join(t.TempDir(), "none.sock") }, time.Second, "no such file"},
		{"not an address", func(*testing.T) string { return "http://127.0.0.1:9090" }, time.Second, "want host:port or unix:/path"},
		{"no port", func(*testing.T) string { return "127.0.0.1" }, time.Second, "want host:port or unix:/path"},
		{"empty socket path", func(*testing.T) string { return "unix:" }, time.Second, "no socket path"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.addr(t)
			start := time.Now()
			err := healthcheck(addr, tc.timeout)
			if took := time.Since(start); took > tc.timeout+time.Second {
				t.Errorf("healthcheck(%q) took %s, more than its timeout %s", addr, took, tc.timeout)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("healthcheck(%q) = %v, want nil", addr, err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("healthcheck(%q) = nil, want an error containing %q", addr, tc.wantErr)
			case err != nil && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("healthcheck(%q) = %q, want it to contain %q", addr, err, tc.wantErr)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("healthcheck(%q) = %q: want one line", addr, err)
			}
		})
	}
}

// TestHealthcheckCommand runs the subcommand as main does: exit codes,
// the $OAUTHPROXY_ADMIN default and the one-line reason on stderr.
func TestHealthcheckCommand(t *testing.T) {
	ok, down := healthzServer(t, 200), healthzServer(t, 503)
	tests := []struct {
		name       string
		env        string // OAUTHPROXY_ADMIN
		args       []string
		want       int
		wantStderr string // ending in \n: all of stderr; else a part of it
	}{
		{"-admin healthy", "", []string{"-admin", ok}, 0, ""},
		{"$OAUTHPROXY_ADMIN healthy", ok, nil, 0, ""},
		{"-admin overrides $OAUTHPROXY_ADMIN", ok, []string{"-admin", down}, 1, "oauthproxy healthcheck: GET http://" + down + "/healthz: 503 Service Unavailable\n"},
		{"unhealthy", "", []string{"-admin=" + down}, 1, "oauthproxy healthcheck: GET http://" + down + "/healthz: 503 Service Unavailable\n"},
		{"unknown flag is 1, not 2", ok, []string{"-bogus"}, 1, "flag provided but not defined: -bogus"},
		{"argument", ok, []string{"extra"}, 1, "oauthproxy healthcheck: unexpected argument \"extra\"\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("OAUTHPROXY_ADMIN", tc.env)
			var stdout, stderr bytes.Buffer
			got := runMain(append([]string{"healthcheck"}, tc.args...), &stdout, &stderr)
			if got != tc.want {
				t.Errorf("oauthproxy healthcheck %q = %d, want %d (stderr %q)", tc.args, got, tc.want, stderr.String())
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout = %q, want nothing", stdout.String())
			}
			// A want ending in a newline is the whole of stderr.
			exact := tc.wantStderr == "" || strings.HasSuffix(tc.wantStderr, "\n")
			if exact && stderr.String() != tc.wantStderr || !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("stderr = %q, want %q", stderr.String(), tc.wantStderr)
			}
		})
	}
}

// TestHealthcheckDefault checks the default address when neither -admin
// nor $OAUTHPROXY_ADMIN is set: the config's default admin_listen.
func TestHealthcheckDefault(t *testing.T) {
	t.Setenv("OAUTHPROXY_ADMIN", "")
	var stdout, stderr bytes.Buffer
	if code := runMain([]string{"healthcheck", "-h"}, &stdout, &stderr); code != 0 {
		t.Fatalf("healthcheck -h = %d, want 0", code)
	}
	if want := `(default "127.0.0.1:9090")`; !strings.Contains(stderr.String(), want) {
		t.Errorf("healthcheck -h printed %q, want the default %q", stderr.String(), want)
	}
	if healthcheckTimeout != 5*time.Second {
		t.Errorf("healthcheckTimeout = %s, want the contract's 5s", healthcheckTimeout)
	}
}
