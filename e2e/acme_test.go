package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// The listener's certificate from a real ACME server: Pebble, Let's
// Encrypt's test CA, run inside the test with its validation authority
// switched on, so that the proxy must really answer the challenge (on its
// own TLS port for tls-alpn-01, on http_listen for http-01). A client then
// verifies the proxy's certificate against Pebble's root.

// acmeDomain is the name the proxy gets a certificate for; the test's
// DNS server resolves every name to 127.0.0.1 for Pebble.
const acmeDomain = "proxy.oauthproxy.test"

// pebble is an in-process Pebble ACME server.
type pebble struct {
	directory string         // the ACME directory URL
	rootFile  string         // PEM: the directory's own HTTPS certificate (tls.acme.ca_root_file)
	issuer    *x509.CertPool // Pebble's root: what clients verify the proxy's certificate against
	orders    atomic.Int64   // new-order requests
	log       *syncBuffer
}

// startPebble runs Pebble's WFE over HTTPS on a free loopback port, with a
// VA that validates http-01 on httpPort and tls-alpn-01 on tlsPort of
// 127.0.0.1, whatever the domain.
func startPebble(t *testing.T, httpPort, tlsPort int) *pebble {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")      // no random 0-5 s wait before each validation
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0") // no deliberately rejected nonces (5% by default)
	p := &pebble{log: &syncBuffer{}}
	logger := log.New(p.log, "pebble ", log.Lmicroseconds)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "e2e"}})
	validator := va.New(logger, httpPort, tlsPort, false, startDNS(t), store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	h := front.Handler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/order-plz" {
			p.orders.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	srv.Config.ErrorLog = logger
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pebble:\n%s", p.log)
		}
	})
	p.directory = srv.URL + wfe.DirectoryPath
	p.rootFile = filepath.Join(t.TempDir(), "pebble-wfe.pem")
	if err := os.WriteFile(p.rootFile, pemOf("CERTIFICATE", srv.Certificate().Raw), 0o600); err != nil {
		t.Fatal(err)
	}
	p.issuer = x509.NewCertPool()
	p.issuer.AddCert(authority.GetRootCert(0).Cert)
	return p
}

// startDNS answers every A question with 127.0.0.1 (and AAAA with
// nothing), over TCP as Pebble's VA asks; it returns its address.
func startDNS(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Net: "tcp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		for _, qq := range q.Question {
			if qq.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A: net.IPv4(127, 0, 0, 1)})
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return ln.Addr().String()
}

// waitACME waits until the proxy logs msg, failing at once if it logs fail.
func (p *proc) waitACME(msg, fail string, timeout time.Duration) map[string]any {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if l := p.logLines(msg); len(l) > 0 {
			return l[0]
		}
		if l := p.logLines(fail); len(l) > 0 {
			p.t.Fatalf("waiting for %q, the proxy logged %q: %v", msg, fail, l[0])
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("the proxy did not log %q within %v", msg, timeout)
		}
		select {
		case <-p.done:
			p.t.Fatalf("oauthproxy exited: %v", p.err)
		case <-time.After(50 * time.Millisecond): // polling the log, not synchronising
		}
	}
}

func TestACMEListener(t *testing.T) {
	tests := []struct {
		name      string
		challenge string
		mtls      bool // require_client_cert: the CA's validation has no client certificate
	}{
		{"tls-alpn-01 on the proxy's own port", "tls-alpn-01", false},
		{"tls-alpn-01 with inbound mTLS required", "tls-alpn-01", true},
		{"http-01 on http_listen", "http-01", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proxyPort, httpPort := freePort(t), freePort(t)
			acmeCA := startPebble(t, httpPort, proxyPort)
			idp := newTokenServer(t, nil)
			up := newAPI(t, idp.verify)
			entry := "    token_url: " + idp.URL + "/t\n    client_id: a\n    client_secret: " + randomString("cs-")

			storage := filepath.Join(t.TempDir(), "acme") // created by the proxy
			section := fmt.Sprintf("tls:\n  acme:\n    ca: %s\n    ca_root_file: %s\n    email: ops@oauthproxy.test\n    domains: [%s]\n    storage: %s\n    challenge: %s\n",
				acmeCA.directory, acmeCA.rootFile, acmeDomain, storage, tc.challenge)
			if tc.challenge == "http-01" {
				section += fmt.Sprintf("    http_listen: 127.0.0.1:%d\n", httpPort)
			}
			clientCA := newPKI(t, "clients CA")
			var clientCert *tls.Certificate
			if tc.mtls {
				section += "  client_ca_file: " + clientCA.file + "\n  require_client_cert: true\n"
				_, _, c := clientCA.issue(t, "app", nil)
				clientCert = &c
			}
			section += "inbound: {allowed_hosts: [" + acmeDomain + "]}\n"
			cfg := section + strings.Replace(config(up.URL, entry), "listen: 127.0.0.1:0", fmt.Sprintf("listen: 127.0.0.1:%d", proxyPort), 1)
			if out, code := run(t, nil, "check", "-config", writeConfig(t, cfg)); code != 0 {
				t.Fatalf("check refuses the config: exit %d\n%s", code, out)
			}

			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				TLSClientConfig:   &tls.Config{RootCAs: acmeCA.issuer, ServerName: acmeDomain},
				ForceAttemptHTTP2: true,
				DisableKeepAlives: true,
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", proxyPort))
				},
			}}
			if clientCert != nil {
				client.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{*clientCert}
			}
			url := fmt.Sprintf("https://%s:%d/api/x", acmeDomain, proxyPort)
			call := func() *x509.Certificate {
				t.Helper()
				resp, err := client.Get(url)
				if err != nil {
					t.Fatalf("HTTPS through the proxy, verified against Pebble's root: %v", err)
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" {
					t.Fatalf("%s %d %s", resp.Proto, resp.StatusCode, body)
				}
				leaf := resp.TLS.PeerCertificates[0]
				if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != acmeDomain {
					t.Fatalf("the certificate names %v, want [%s]", leaf.DNSNames, acmeDomain)
				}
				return leaf
			}

			p := startProxy(t, cfg)
			// "in use" comes once the certificate is in the cache that
			// handshakes read; "obtained" a moment before.
			p.waitACME("acme: certificate in use", "acme: getting a certificate failed; retrying with backoff", 60*time.Second)
			if len(p.logLines("acme: certificate obtained")) != 1 {
				t.Error("the new certificate is not logged as obtained")
			}
			first := call()
			if n := acmeCA.orders.Load(); n != 1 {
				t.Errorf("%d orders at Pebble, want 1", n)
			}
			hits := up.hits.Load()
			if hits == 0 {
				t.Error("the upstream saw no request")
			}
			if tc.mtls { // the handshake still needs a client certificate
				noCert := &http.Client{Transport: client.Transport.(*http.Transport).Clone()}
				noCert.Transport.(*http.Transport).TLSClientConfig.Certificates = nil
				if resp, err := noCert.Get(url); err == nil {
					resp.Body.Close()
					t.Errorf("without a client certificate: %d", resp.StatusCode)
				}
			}
			if tc.challenge == "http-01" { // http_listen serves challenges, never the proxy
				resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/x", httpPort))
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 404 || up.hits.Load() != hits {
					t.Errorf("plain HTTP on http_listen: %d, upstream hits %d -> %d", resp.StatusCode, hits, up.hits.Load())
				}
			}

			// A restart uses the stored certificate: served at once, no new order.
			p.stop()
			p2 := startProxy(t, cfg)
			again := call()
			if again.SerialNumber.Cmp(first.SerialNumber) != 0 {
				t.Errorf("after a restart the proxy serves serial %v, want the stored %v", again.SerialNumber, first.SerialNumber)
			}
			if n := acmeCA.orders.Load(); n != 1 {
				t.Errorf("%d orders at Pebble after the restart, want still 1", n)
			}
			if l := p2.logLines("acme: obtaining a certificate"); len(l) > 0 {
				t.Errorf("the restarted proxy obtained a certificate again: %v", l)
			}
			if l := p2.logLines("acme: certificate in use"); len(l) == 0 || l[0]["not_after"] == nil {
				t.Errorf("the restarted proxy does not log the stored certificate: %v", l)
			}
		})
	}
}

// TestACMEUnreachableCA: a CA that does not answer leaves the proxy up
// (admin, probes) and says so in the log, naming the CA; the listener
// has no certificate to offer until one comes.
func TestACMEUnreachableCA(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	entry := "    token_url: " + idp.URL + "/t\n    client_id: a\n    client_secret: " + randomString("cs-")
	dead := fmt.Sprintf("https://127.0.0.1:%d/dir", freePort(t))
	cfg := fmt.Sprintf("tls:\n  acme: {ca: %s, domains: [%s], storage: %s}\n", dead, acmeDomain, t.TempDir()) + config(up.URL, entry)
	p := startProxy(t, cfg)
	rec := p.waitACME("acme: getting a certificate failed; retrying with backoff", "acme: certificate obtained", 30*time.Second)
	if rec["ca"] != dead || rec["domain"] != acmeDomain || !strings.Contains(fmt.Sprint(rec["error"]), "connection refused") {
		t.Errorf("the failure's log line: %v", rec)
	}
	base := strings.Replace(p.base, "http://", "https://", 1)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: acmeDomain}}
	if resp, err := (&http.Client{Transport: tr}).Get(base + "/api/x"); err == nil {
		resp.Body.Close()
		t.Errorf("the listener served without a certificate: %d", resp.StatusCode)
	}
	resp, err := http.Get(p.admin + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz %d while the CA is down", resp.StatusCode)
	}
}
