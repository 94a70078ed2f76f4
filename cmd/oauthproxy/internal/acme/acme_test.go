package acme

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"go.uber.org/zap"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

const rest = `
inbound: {allowed_hosts: [proxy.oauthproxy.test]}
oauth2:
  a: {token_url: "https://idp.test/t", client_id: x, client_secret: y}
routes:
  - {prefix: /a/, upstream: "https://api.test/", oauth2: a}
`

func parse(t *testing.T, doc string) *upstreams.Config {
	t.Helper()
	dir := t.TempDir()
	cfg, err := upstreams.Parse(filepath.Join(dir, "c.yaml"), []byte(doc+rest), upstreams.Resolver{})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// records is a slog handler that keeps what is logged.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *records) WithAttrs(as []slog.Attr) slog.Handler { return &withAttrs{r, as} }
func (r *records) WithGroup(string) slog.Handler         { return r }

// find returns the attributes of the first record with msg.
func (r *records) find(msg string) (map[string]any, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.Message == msg {
			m := map[string]any{"level": rec.Level}
			rec.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.Any(); return true })
			return m, true
		}
	}
	return nil, false
}

type withAttrs struct {
	*records
	as []slog.Attr
}

func (w *withAttrs) Handle(ctx context.Context, rec slog.Record) error {
	rec = rec.Clone()
	rec.AddAttrs(w.as...)
	return w.records.Handle(ctx, rec)
}

func TestNoACME(t *testing.T) {
	cfg := parse(t, "")
	m, err := New(cfg, slog.New(slog.DiscardHandler))
	if m != nil || err != nil {
		t.Fatalf("New without tls.acme = %v, %v", m, err)
	}
	base := &tls.Config{}
	if m.TLSConfig(base) != base || m.TLSConfig(nil) != nil {
		t.Error("a nil Manager changes the TLS config")
	}
	if err := m.Start(context.Background(), &net.TCPAddr{}); err != nil {
		t.Error(err)
	}
	m.Stop()
}

// TestTLSConfig: the listener's TLS with ACME: certificates from certmagic,
// acme-tls/1 offered for tls-alpn-01 only, and a validation (which offers
// acme-tls/1 alone) spared the client certificate that require_client_cert
// asks of everyone else.
func TestTLSConfig(t *testing.T) {
	storage := t.TempDir()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	srv.Close()
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	acme := fmt.Sprintf("acme: {domains: [proxy.oauthproxy.test], storage: %s", storage)
	tests := []struct {
		name, tls     string
		wantProtos    []string
		challengeConf bool // a validation's hello gets its own config
	}{
		{"tls-alpn-01", "tls: {" + acme + "}}", []string{"h2", "http/1.1", "acme-tls/1"}, false},
		{"tls-alpn-01 and client certificates", "tls: {client_ca_file: " + caFile + ", require_client_cert: true, " + acme + "}}",
			[]string{"h2", "http/1.1", "acme-tls/1"}, true},
		{"http-01", "tls: {" + acme + ", challenge: http-01, http_listen: '127.0.0.1:0'}}", []string{"h2", "http/1.1"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := parse(t, tc.tls)
			m, err := New(cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(m.Stop)
			base := cfg.ListenTLSConfig()
			c := m.TLSConfig(base)
			if !slices.Equal(c.NextProtos, tc.wantProtos) {
				t.Errorf("NextProtos %q, want %q", c.NextProtos, tc.wantProtos)
			}
			if !slices.Equal(base.NextProtos, []string{"h2", "http/1.1"}) {
				t.Errorf("the base config was changed: %q", base.NextProtos)
			}
			if c.MinVersion != tls.VersionTLS12 || c.ClientAuth != base.ClientAuth {
				t.Errorf("min version %x, client auth %v: not the base's", c.MinVersion, c.ClientAuth)
			}
			conn, _ := net.Pipe()
			defer conn.Close()
			if _, err := c.GetCertificate(&tls.ClientHelloInfo{ServerName: "proxy.oauthproxy.test", Conn: conn}); err == nil {
				t.Error("a certificate before any was obtained")
			}
			if !tc.challengeConf {
				if c.GetConfigForClient != nil {
					t.Error("GetConfigForClient set without client certificates")
				}
				return
			}
			got, err := c.GetConfigForClient(&tls.ClientHelloInfo{SupportedProtos: []string{"acme-tls/1"}})
			if err != nil || got == nil || got.ClientAuth != tls.NoClientCert || !slices.Equal(got.NextProtos, []string{"acme-tls/1"}) {
				t.Errorf("a validation's hello gets %+v, %v; want no client certificate asked, acme-tls/1 only", got, err)
			}
			for _, protos := range [][]string{{"h2", "http/1.1"}, {"h2", "acme-tls/1"}, nil} {
				if got, _ := c.GetConfigForClient(&tls.ClientHelloInfo{SupportedProtos: protos}); got != nil {
					t.Errorf("a client offering %q escapes require_client_cert", protos)
				}
			}
		})
	}
}

func TestHTTPListenInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := parse(t, fmt.Sprintf("tls: {acme: {domains: [proxy.oauthproxy.test], storage: %s, challenge: http-01, http_listen: '%s'}}", t.TempDir(), ln.Addr()))
	if _, err := New(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "tls.acme.http_listen: ") {
		t.Fatalf("New with http_listen in use: %v", err)
	}
}

// TestZapLogger: certmagic's zap lines reach the proxy's log: its info
// chatter at debug, its warnings and errors as warnings, fields as
// attributes.
func TestZapLogger(t *testing.T) {
	rec := &records{}
	zl := newZapLogger(rec).With(zap.String("ca", "https://ca.test/dir"))
	zl.Info("obtaining certificate", zap.String("identifier", "a.test"))
	zl.Warn("will retry", zap.Duration("retrying_in", time.Minute))
	zl.Error("could not get certificate from issuer", zap.Error(fmt.Errorf("connection refused")))
	for _, tc := range []struct {
		msg   string
		level slog.Level
		key   string
		want  any
	}{
		{"acme: obtaining certificate", slog.LevelDebug, "identifier", "a.test"},
		{"acme: obtaining certificate", slog.LevelDebug, "ca", "https://ca.test/dir"},
		{"acme: will retry", slog.LevelWarn, "retrying_in", time.Minute},
		{"acme: could not get certificate from issuer", slog.LevelWarn, "error", "connection refused"},
	} {
		got, ok := rec.find(tc.msg)
		if !ok {
			t.Errorf("no record %q", tc.msg)
			continue
		}
		if got["level"] != tc.level || got[tc.key] != tc.want {
			t.Errorf("%q: level %v, %s=%v; want %v, %v", tc.msg, got["level"], tc.key, got[tc.key], tc.level, tc.want)
		}
	}
	quiet := newZapLogger(slog.NewTextHandler(&bytes.Buffer{}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if quiet.Core().Enabled(zap.InfoLevel) || !quiet.Core().Enabled(zap.WarnLevel) {
		t.Error("at log level info, certmagic's info lines are not dropped or its warnings are")
	}
}

// TestRenewal: with in-process Pebble (validation switched off: the e2e
// tests validate for real), the manager obtains a certificate, serves it,
// and renews it in the background; new handshakes get the new one.
func TestRenewal(t *testing.T) {
	t.Setenv("PEBBLE_VA_ALWAYS_VALID", "1")
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	var pebbleLog bytes.Buffer
	var mu sync.Mutex
	logger := log.New(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return pebbleLog.Write(p) }), "pebble ", 0)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {ValidityPeriod: 60}})
	front := wfe.New(logger, store, va.New(logger, 0, 0, false, "", store), authority, nil, false, false, 0, 0)
	acmeSrv := httptest.NewTLSServer(front.Handler())
	t.Cleanup(acmeSrv.Close)
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			t.Logf("pebble:\n%s", pebbleLog.String())
			mu.Unlock()
		}
	})
	rootFile := filepath.Join(t.TempDir(), "wfe.pem")
	os.WriteFile(rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: acmeSrv.Certificate().Raw}), 0o600)
	roots := x509.NewCertPool()
	roots.AddCert(authority.GetRootCert(0).Cert)

	cfg := parse(t, fmt.Sprintf("tls: {acme: {ca: %s, ca_root_file: %s, domains: [proxy.oauthproxy.test], storage: %s}}",
		acmeSrv.URL+wfe.DirectoryPath, rootFile, t.TempDir()))

	// start runs a manager and a TLS listener with its config; serial
	// dials it and returns the serial of the certificate served, "" for
	// none.
	start := func(o options, rec *records) (m *Manager, serial func() string) {
		t.Helper()
		m, err := newManager(cfg, slog.New(rec), o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Stop)
		ln, err := tls.Listen("tcp", "127.0.0.1:0", m.TLSConfig(cfg.ListenTLSConfig()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { c.(*tls.Conn).Handshake(); c.Close() }()
			}
		}()
		if err := m.Start(context.Background(), ln.Addr()); err != nil {
			t.Fatal(err)
		}
		return m, func() string {
			c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "proxy.oauthproxy.test"})
			if err != nil {
				return ""
			}
			defer c.Close()
			return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
		}
	}
	// Polling what the listener serves, against a deadline: the manager
	// works in the background and says nothing to wait on but its log.
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 20s", what)
			}
		}
	}
	renewalLogged := func(rec *records) bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		for _, r := range rec.recs {
			renewed := false
			r.Attrs(func(a slog.Attr) bool {
				renewed = renewed || a.Key == "renewal" && a.Value.Bool()
				return true
			})
			if r.Message == "acme: certificate obtained" && renewed {
				return true
			}
		}
		return false
	}

	// A 60 s certificate renewed once less than 95% of it is left: after
	// about 3 s, checked every 500 ms.
	rec := &records{}
	m, serial := start(options{renewCheck: 500 * time.Millisecond, renewalRatio: 0.95}, rec)
	var first string
	waitFor("the first certificate served", func() bool { first = serial(); return first != "" })
	if got, ok := rec.find("acme: certificate obtained"); !ok || got["renewal"] != false {
		t.Errorf("the first certificate's log line: %v", got)
	}
	if got, ok := rec.find("acme: obtaining a certificate"); !ok || got["domain"] != "proxy.oauthproxy.test" {
		t.Errorf("obtaining is not logged: %v", got)
	}
	waitFor("a renewed certificate served", func() bool { s := serial(); return s != "" && s != first })
	if !renewalLogged(rec) {
		t.Error("the renewal is not logged as one")
	}
	m.Stop()

	// A restart serves the stored certificate from the first handshake,
	// and renews one that is due at once, not at the first check an hour on.
	rec2 := &records{}
	_, serial2 := start(options{renewCheck: time.Hour, renewalRatio: 1}, rec2)
	if _, ok := rec2.find("acme: certificate in use"); !ok {
		t.Error("Start returned before the stored certificate was loaded")
	}
	stored := serial2()
	if stored == "" {
		t.Fatal("the restarted manager serves no certificate right after Start")
	}
	waitFor("a due certificate renewed after a restart", func() bool { s := serial2(); return s != "" && s != stored })
	if !renewalLogged(rec2) {
		t.Error("the renewal after the restart is not logged as one")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
