package upstreams

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// testCA is a private CA made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var (
	serial     atomic.Int64
	discardLog = slog.New(slog.DiscardHandler)
)

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{c, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a leaf certificate and key as PEM, and as a tls.Certificate.
func (ca *testCA) issue(t *testing.T, cn string, notAfter time.Time, hosts ...string) (certPEM, keyPEM []byte, tc tls.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return ca.issueKey(t, cn, key, notAfter, hosts...)
}

// issueKey is issue for a given key.
func (ca *testCA) issueKey(t *testing.T, cn string, key crypto.Signer, notAfter time.Time, hosts ...string) (certPEM, keyPEM []byte, tc tls.Certificate) {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := x509.MarshalPKCS8PrivateKey(key)
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k})
	tc, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM, tc
}

func writeTo(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// mtlsServer is an HTTPS server with a certificate from serverCA for
// hosts, requiring client certificates from clientCA (nil: none asked).
// It answers with the client certificate's common name.
func mtlsServer(t *testing.T, serverCA, clientCA *testCA, mod func(*tls.Config), hosts ...string) *httptest.Server {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1"}
	}
	_, _, cert := serverCA.issue(t, "server", time.Now().Add(time.Hour), hosts...)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cn := "-"
		if len(r.TLS.PeerCertificates) > 0 {
			cn = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		io.WriteString(w, cn)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCA != nil {
		pool := x509.NewCertPool()
		pool.AddCert(clientCA.cert)
		srv.TLS.ClientAuth, srv.TLS.ClientCAs = tls.RequireAndVerifyClientCert, pool
	}
	if mod != nil {
		mod(srv.TLS)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// routeTransport loads a config whose one route has tlsYAML and returns
// the route's transport, the config and its warnings.
func routeTransport(t *testing.T, upstream, tlsYAML string) (http.RoundTripper, *Config, error) {
	t.Helper()
	doc := fmt.Sprintf(`
oauth2:
  a: {token_url: "https://idp.test/t", client_id: x, client_secret: y}
routes:
  - prefix: /a/
    upstream: %q
    oauth2: a
    tls: %s
`, upstream, tlsYAML)
	cfg, err := Parse(filepath.Join(t.TempDir(), "c.yaml"), []byte(doc), env())
	if err != nil {
		return nil, nil, err
	}
	cfg.SetLogger(discardLog)
	return newTransports(nil).upstream(cfg.Routes[0]), cfg, nil
}

func getVia(rt http.RoundTripper, url string) (string, error) {
	req, _ := http.NewRequest("GET", url, nil)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), nil
}

func TestOutboundTLS(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA, otherCA := newTestCA(t, "server CA"), newTestCA(t, "client CA"), newTestCA(t, "other CA")
	caFile := writeTo(t, filepath.Join(dir, "ca.pem"), serverCA.pem)
	certPEM, keyPEM, _ := clientCA.issue(t, "proxy-client", time.Now().Add(time.Hour))
	certFile, keyFile := writeTo(t, filepath.Join(dir, "c.crt"), certPEM), writeTo(t, filepath.Join(dir, "c.key"), keyPEM)
	otherCert, otherKey, _ := otherCA.issue(t, "stranger", time.Now().Add(time.Hour))
	otherCertFile, otherKeyFile := writeTo(t, filepath.Join(dir, "o.crt"), otherCert), writeTo(t, filepath.Join(dir, "o.key"), otherKey)

	mtls := mtlsServer(t, serverCA, clientCA, nil)
	named := mtlsServer(t, serverCA, nil, nil, "partner.internal")
	tls12 := mtlsServer(t, serverCA, nil, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 })
	tests := []struct {
		name    string
		url     string
		tls     string
		want    string // the body: the client certificate's CN
		wantErr string
		warn    string
	}{
		{"private CA and client certificate", mtls.URL, fmt.Sprintf("{ca_file: %s, cert_file: %s, key_file: %s}", caFile, certFile, keyFile), "proxy-client", "", ""},
		{"ca_only", mtls.URL, fmt.Sprintf("{ca_file: %s, ca_only: true, cert_file: %s, key_file: %s}", caFile, certFile, keyFile), "proxy-client", "", ""},
		{"no CA: unknown authority", mtls.URL, fmt.Sprintf("{cert_file: %s, key_file: %s}", certFile, keyFile), "", "certificate signed by unknown authority", ""},
		{"no client certificate", mtls.URL, fmt.Sprintf("{ca_file: %s}", caFile), "", "certificate required", ""},
		{"a client certificate from another CA", mtls.URL, fmt.Sprintf("{ca_file: %s, cert_file: %s, key_file: %s}", caFile, otherCertFile, otherKeyFile), "", "unknown certificate authority", ""},
		{"server_name", named.URL, fmt.Sprintf("{ca_file: %s, server_name: partner.internal}", caFile), "-", "", ""},
		{"without server_name the name does not match", named.URL, fmt.Sprintf("{ca_file: %s}", caFile), "", "cannot validate certificate for 127.0.0.1", ""},
		{"min_version 1.3 refuses a 1.2 server", tls12.URL, fmt.Sprintf("{ca_file: %s, min_version: 1.3}", caFile), "", "protocol version", ""},
		{"min_version 1.2 by default", tls12.URL, fmt.Sprintf("{ca_file: %s}", caFile), "-", "", ""},
		{"insecure_skip_verify", named.URL, "{insecure_skip_verify: true}", "-", "", "tls.insecure_skip_verify: the server's certificate is not verified"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rt, cfg, err := routeTransport(t, tc.url+"/", tc.tls)
			if err != nil {
				t.Fatal(err)
			}
			got, err := getVia(rt, tc.url+"/x")
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("GET: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("GET = %q, %v; want an error with %q", got, err, tc.wantErr)
			case got != tc.want:
				t.Errorf("the server saw client certificate %q, want %q", got, tc.want)
			}
			var warnings []string
			for _, w := range cfg.Warnings {
				warnings = append(warnings, w.Msg)
			}
			if tc.warn != "" && !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, tc.warn) }) {
				t.Errorf("warnings %q, want one with %q", warnings, tc.warn)
			}
			if tc.warn == "" && len(warnings) > 0 {
				t.Errorf("unexpected warnings %q", warnings)
			}
		})
	}
}

// TestCAOnlyPool: ca_only trusts the file's CAs alone; without it they
// are added to the system's roots.
func TestCAOnlyPool(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "only")
	caFile := writeTo(t, filepath.Join(dir, "ca.pem"), ca.pem)
	only := x509.NewCertPool()
	only.AddCert(ca.cert)
	for _, caOnly := range []bool{true, false} {
		_, cfg, err := routeTransport(t, "https://api.test/", fmt.Sprintf("{ca_file: %s, ca_only: %v}", caFile, caOnly))
		if err != nil {
			t.Fatal(err)
		}
		pool := cfg.Routes[0].TLS.ready.config.RootCAs
		if pool.Equal(only) != caOnly {
			t.Errorf("ca_only %v: the pool equals the file's CA alone: %v", caOnly, !caOnly)
		}
	}
}

// TestClientCertificateRotation: the client certificate and key are
// replaced on disk while the transport is in use; a new connection
// presents the new certificate within the contract's 5 seconds, with no
// reload. A half-written pair is never presented.
func TestClientCertificateRotation(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA := newTestCA(t, "server CA"), newTestCA(t, "client CA")
	caFile := writeTo(t, filepath.Join(dir, "ca.pem"), serverCA.pem)
	c1, k1, _ := clientCA.issue(t, "first", time.Now().Add(time.Hour))
	certFile, keyFile := writeTo(t, filepath.Join(dir, "tls.crt"), c1), writeTo(t, filepath.Join(dir, "tls.key"), k1)
	srv := mtlsServer(t, serverCA, clientCA, nil)
	rt, _, err := routeTransport(t, srv.URL+"/", fmt.Sprintf("{ca_file: %s, cert_file: %s, key_file: %s}", caFile, certFile, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	tr := rt.(*http.Transport)
	if got, err := getVia(tr, srv.URL); err != nil || got != "first" {
		t.Fatalf("before the rotation: %q, %v", got, err)
	}

	// The certificate lands first; its key does not match yet.
	c2, k2, _ := clientCA.issue(t, "second", time.Now().Add(time.Hour))
	writeTo(t, certFile+".new", c2)
	os.Rename(certFile+".new", certFile)
	for range 3 {
		tr.CloseIdleConnections()
		if got, err := getVia(tr, srv.URL); err != nil || got != "first" {
			t.Fatalf("with a half-rotated pair: %q, %v; want the old pair", got, err)
		}
	}
	writeTo(t, keyFile+".new", k2)
	os.Rename(keyFile+".new", keyFile)
	deadline := time.Now().Add(5 * time.Second)
	for {
		tr.CloseIdleConnections()
		got, err := getVia(tr, srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if got == "second" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new connections still present %q 5s after the rotation", got)
		}
		time.Sleep(50 * time.Millisecond) // polling the contract's deadline, not synchronising
	}
}

// TestTLSClientAuthRotate: a tls_client_auth entry's certificate is
// rotated on disk; the server refuses the old one (invalid_client) on the
// pooled connection. The source re-reads the pair, drops the idle
// connection and succeeds on a new one with the new certificate.
func TestTLSClientAuthRotate(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA := newTestCA(t, "server CA"), newTestCA(t, "client CA")
	caFile := writeTo(t, filepath.Join(dir, "ca.pem"), serverCA.pem)
	c1, k1, _ := clientCA.issue(t, "first", time.Now().Add(time.Hour))
	certFile, keyFile := writeTo(t, filepath.Join(dir, "tls.crt"), c1), writeTo(t, filepath.Join(dir, "tls.key"), k1)
	var mu sync.Mutex
	accept, seen := "first", []string{}
	_, _, srvCert := serverCA.issue(t, "idp", time.Now().Add(time.Hour), "127.0.0.1")
	idp := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		cn := r.TLS.PeerCertificates[0].Subject.CommonName
		mu.Lock()
		seen = append(seen, cn)
		ok := cn == accept && r.PostForm.Get("client_id") == "mtls-app" && r.PostForm.Get("client_secret") == ""
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(401)
			io.WriteString(w, `{"error":"invalid_client"}`)
			return
		}
		io.WriteString(w, `{"access_token":"tok-`+cn+`","token_type":"Bearer","expires_in":3600}`)
	}))
	pool := x509.NewCertPool()
	pool.AddCert(clientCA.cert)
	idp.TLS = &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	idp.StartTLS()
	t.Cleanup(idp.Close)

	doc := fmt.Sprintf(`
oauth2:
  m:
    token_url: %s/token
    client_id: mtls-app
    client_auth: tls_client_auth
    tls: {ca_file: %s, cert_file: %s, key_file: %s}
routes:
  - {prefix: /a/, upstream: "https://api.test/", oauth2: m}
`, idp.URL, caFile, certFile, keyFile)
	cfg, err := Parse(filepath.Join(dir, "c.yaml"), []byte(doc), env())
	if err != nil {
		t.Fatal(err)
	}
	cfg.SetLogger(discardLog)
	src, err := NewSource(cfg, "m", Options{Logger: discardLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	if _, err := src.Fetch(context.Background()); err != nil {
		t.Fatalf("first token: %v", err)
	}
	c2, k2, _ := clientCA.issue(t, "second", time.Now().Add(time.Hour))
	writeTo(t, certFile, c2)
	writeTo(t, keyFile, k2)
	mu.Lock()
	accept = "second"
	mu.Unlock()
	if _, err := src.Fetch(context.Background()); err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"first", "first", "second"}; !slices.Equal(seen, want) {
		t.Errorf("the token endpoint saw certificates %q, want %q", seen, want)
	}
}

// TestCAFileIsConfig: ca_file is read through the config's resolver, so a
// changed CA changes the entry's fingerprint and the transport's key (a
// reload builds a new pool), and the file is watched.
func TestCAFileIsConfig(t *testing.T) {
	dir := t.TempDir()
	caFile := writeTo(t, filepath.Join(dir, "ca.pem"), newTestCA(t, "one").pem)
	doc := []byte(`
oauth2:
  a: {token_url: "https://idp.test/t", client_id: x, client_secret: y, tls: {ca_file: ca.pem}}
routes:
  - {prefix: /a/, upstream: "https://api.test/", oauth2: a, tls: {ca_file: ca.pem}}
`)
	load := func() *Config {
		cfg, err := Parse(filepath.Join(dir, "c.yaml"), doc, env())
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	a := load()
	if !slices.Contains(a.Files, caFile) {
		t.Errorf("Files = %q, want it to hold %s (a relative ca_file is read next to the config)", a.Files, caFile)
	}
	if again := load(); again.OAuth2["a"].fingerprint() != a.OAuth2["a"].fingerprint() || again.Routes[0].TLS.transportKey() != a.Routes[0].TLS.transportKey() {
		t.Error("the same files give another fingerprint or transport key")
	}
	writeTo(t, caFile, newTestCA(t, "two").pem)
	b := load()
	if b.OAuth2["a"].fingerprint() == a.OAuth2["a"].fingerprint() {
		t.Error("a changed ca_file keeps the entry's fingerprint: a reload would keep the old pool")
	}
	if b.Routes[0].TLS.transportKey() == a.Routes[0].TLS.transportKey() {
		t.Error("a changed ca_file keeps the route's transport key")
	}
	if k := b.Routes[0].TLS.transportKey(); strings.Contains(k, dir) {
		t.Errorf("transport key %q shows a path", k)
	}
}

func TestTLSWarnings(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "ca")
	c, k, _ := ca.issue(t, "old", time.Now().Add(-time.Minute))
	certFile, keyFile := writeTo(t, filepath.Join(dir, "c.crt"), c), writeTo(t, filepath.Join(dir, "c.key"), k)
	doc := fmt.Sprintf(`
oauth2:
  a:
    token_url: "https://idp.test/t"
    client_id: x
    client_secret: short
    client_auth: client_secret_jwt
    tls: {insecure_skip_verify: true, cert_file: %s, key_file: %s}
routes:
  - {prefix: /a/, upstream: "http://127.0.0.1:1/", oauth2: a, tls: {min_version: "1.3"}}
`, certFile, keyFile)
	cfg, err := Parse(filepath.Join(dir, "c.yaml"), []byte(doc), env())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range cfg.Warnings {
		got = append(got, w.Msg)
	}
	for _, want := range []string{
		"oauth2.a.tls.insecure_skip_verify: the server's certificate is not verified",
		"oauth2.a.tls.cert_file: the certificate in " + certFile + " expired on ",
		"oauth2.a.client_secret: 5 bytes: client_secret_jwt signs HS256",
		`routes[0] (prefix "/a/"): tls: upstream is plain http`,
	} {
		if !slices.ContainsFunc(got, func(w string) bool { return strings.HasPrefix(w, want) }) {
			t.Errorf("warnings %q\nwant one starting %q", got, want)
		}
	}
	if w := cfg.OAuth2["a"].tlsWarnings(); !slices.Equal(w, []string{"tls.insecure_skip_verify"}) {
		t.Errorf("tlsWarnings = %q", w)
	}
}

// TestSignedEntriesBuild: what the config builds for each signed method.
func TestSignedEntriesBuild(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "ca")
	c, k, _ := ca.issue(t, "client", time.Now().Add(time.Hour))
	certFile, keyFile := writeTo(t, filepath.Join(dir, "c.crt"), c), writeTo(t, filepath.Join(dir, "c.key"), k)
	doc := fmt.Sprintf(`
oauth2:
  pk:
    token_url: https://idp.test/token
    client_id: app
    client_auth: private_key_jwt
    private_key_file: c.key
    certificate_file: c.crt
  pk-aud:
    token_url: https://idp.test/token
    client_id: app
    client_auth: private_key_jwt
    private_key_file: %s
    private_key_id: k1
    assertion_audience: https://idp.test
  sj:
    token_url: https://idp.test/token
    client_id: app
    client_secret: a-secret-of-thirty-two-bytes-or-more
    client_auth: client_secret_jwt
  mtls:
    token_url: https://idp.test/token
    client_id: app
    client_auth: tls_client_auth
    tls: {cert_file: %s, key_file: %s}
  bearer:
    grant_type: jwt_bearer
    token_url: https://idp.test/token
    client_id: app
    private_key_file: c.key
    assertion_subject: svc
    assertion_claims: {scope: a b}
routes:
  - {prefix: /a/, upstream: "https://api.test/", oauth2: pk}
  - {prefix: /b/, upstream: "https://api.test/", oauth2: pk-aud}
  - {prefix: /c/, upstream: "https://api.test/", oauth2: sj}
  - {prefix: /d/, upstream: "https://api.test/", oauth2: mtls}
  - {prefix: /e/, upstream: "https://api.test/", oauth2: bearer}
`, keyFile, certFile, keyFile)
	cfg, err := Parse(filepath.Join(dir, "c.yaml"), []byte(doc), env())
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) > 0 {
		t.Errorf("warnings: %v", Problems(cfg.Warnings))
	}
	auth := func(name string) tokencache.ClientAuth {
		o := cfg.OAuth2[name]
		return clientAuths[o.ClientAuth].build(o, tokencache.NewClientSecret(o.ClientSecret.Secret, nil))
	}
	if a, ok := auth("pk").(tokencache.PrivateKeyJWT); !ok || a.Audience != "https://idp.test/token" || a.Signer.KeyID != "" ||
		a.Signer.Keys.CertFile() != certFile || a.Signer.Keys.KeyFile() != keyFile {
		t.Errorf("pk: %#v", auth("pk"))
	}
	if a, ok := auth("pk-aud").(tokencache.PrivateKeyJWT); !ok || a.Audience != "https://idp.test" || a.Signer.KeyID != "k1" {
		t.Errorf("pk-aud: %#v", auth("pk-aud"))
	}
	if a, ok := auth("sj").(tokencache.ClientSecretJWT); !ok || a.Audience != "https://idp.test/token" || a.Secret.Get() == "" {
		t.Errorf("sj: %#v", auth("sj"))
	}
	if a, ok := auth("mtls").(tokencache.TLSClientAuth); !ok || a.ClientID != "app" || a.Reload == nil {
		t.Errorf("mtls: %#v", auth("mtls"))
	}
	o := cfg.OAuth2["bearer"]
	if o.ClientAuth != "none" {
		t.Errorf("jwt_bearer's client_auth defaults to %q, want none", o.ClientAuth)
	}
	g, ok := grants[o.GrantType].build(o).(tokencache.JWTBearer)
	if !ok || g.Assertion.Issuer != "app" || g.Assertion.Subject != "svc" || g.Assertion.Audience != "https://idp.test/token" || g.Assertion.Claims["scope"] != "a b" {
		t.Errorf("bearer: %#v", g)
	}
	rt, err := Build(cfg, nil, Options{Logger: discardLog})
	if err != nil {
		t.Fatal(err)
	}
	rt.Close()
}

// TestTLSDocExamples: every config in docs/tls.md passes check, with
// generated keys and certificates where its paths point.
func TestTLSDocExamples(t *testing.T) {
	data, err := os.ReadFile("../docs/tls.md")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := newTestCA(t, "docs CA")
	files := map[string][]byte{"/certs/corp-ca.pem": ca.pem, "/certs/partner-ca.pem": ca.pem, "/certs/clients.pem": ca.pem, "/certs/acme-ca.pem": ca.pem}
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	files["/secrets/client.crt"], files["/secrets/client.key"], _ = ca.issue(t, "client", time.Now().Add(time.Hour))
	files["/certs/tls.crt"], files["/certs/tls.key"], _ = ca.issue(t, "proxy.internal", time.Now().Add(time.Hour))
	files["/secrets/entra.crt"], files["/secrets/entra.key"], _ = ca.issueKey(t, "entra", rsaKey, time.Now().Add(time.Hour))
	der, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	files["/secrets/signing.key"] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	_, ecPEM, _ := ca.issue(t, "svc", time.Now().Add(time.Hour))
	files["/secrets/svc-ec.key"] = ecPEM
	secrets := map[string]string{"/secrets/corp-secret": "s", "/secrets/bank-secret": "s", "/secrets/hs-secret": strings.Repeat("x", 40)}
	var blocks []string
	for _, part := range strings.Split(string(data), "```yaml\n")[1:] {
		blocks = append(blocks, part[:strings.Index(part, "```")])
	}
	if len(blocks) < 8 {
		t.Fatalf("%d yaml examples in docs/tls.md", len(blocks))
	}
	for i, b := range blocks {
		b = strings.ReplaceAll(b, "/var/lib/oauthproxy/acme", filepath.Join(dir, "acme")) // the ACME storage: a directory to create
		for path, content := range files {
			local := filepath.Join(dir, filepath.Base(path))
			writeTo(t, local, content)
			b = strings.ReplaceAll(b, path, local)
		}
		res := Resolver{Getenv: func(string) (string, bool) { return "", false }, ReadFile: func(p string) ([]byte, error) {
			if s, ok := secrets[p]; ok {
				return []byte(s), nil
			}
			return os.ReadFile(p)
		}}
		cfg, err := Parse(fmt.Sprintf("docs/tls.md example %d", i+1), []byte(b), res)
		if err != nil {
			t.Errorf("example %d:\n%s\n%v", i+1, b, err)
			continue
		}
		if len(cfg.Warnings) > 0 {
			t.Errorf("example %d warns: %v", i+1, Problems(cfg.Warnings))
		}
	}
}

// TestListenTLS: the listener's TLS from the top-level tls: section:
// HTTP/2 offered, inbound mTLS enforced at the handshake, and a rotated
// certificate served to new connections within 5 s.
func TestListenTLS(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA, otherCA := newTestCA(t, "server CA"), newTestCA(t, "client CA"), newTestCA(t, "other CA")
	c1, k1, _ := serverCA.issue(t, "first", time.Now().Add(time.Hour), "127.0.0.1")
	certFile, keyFile := writeTo(t, filepath.Join(dir, "tls.crt"), c1), writeTo(t, filepath.Join(dir, "tls.key"), k1)
	clientsFile := writeTo(t, filepath.Join(dir, "clients.pem"), clientCA.pem)
	doc := fmt.Sprintf(`
listen: 0.0.0.0:0
tls: {cert_file: %s, key_file: %s, client_ca_file: %s, require_client_cert: true}
oauth2:
  a: {token_url: "https://idp.test/t", client_id: x, client_secret: y}
routes:
  - {prefix: /a/, upstream: "https://api.test/", oauth2: a}
`, certFile, keyFile, clientsFile)
	cfg, err := Parse(filepath.Join(dir, "c.yaml"), []byte(doc), env())
	if err != nil {
		t.Fatalf("a non-loopback listen with inbound mTLS as its only control: %v", err)
	}
	cfg.SetLogger(discardLog)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Proto, r.TLS.PeerCertificates[0].Subject.CommonName)
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(tls.NewListener(ln, cfg.ListenTLSConfig()))
	t.Cleanup(func() { srv.Close() })
	url := "https://" + ln.Addr().String() + "/"

	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)
	client := func(cert *tls.Certificate) *http.Client {
		tc := &tls.Config{RootCAs: roots}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, DisableKeepAlives: true}}
	}
	_, _, good := clientCA.issue(t, "app", time.Now().Add(time.Hour))
	_, _, stranger := otherCA.issue(t, "stranger", time.Now().Add(time.Hour))
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		want string // body, or "" for a refused handshake
	}{
		{"no client certificate", nil, ""},
		{"a certificate from another CA", &stranger, ""},
		{"a certificate from client_ca_file", &good, "HTTP/2.0 app"},
	} {
		resp, err := client(tc.cert).Get(url)
		if tc.want == "" {
			if err == nil {
				resp.Body.Close()
				t.Errorf("%s: the handshake succeeded (%d)", tc.name, resp.StatusCode)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, b, tc.want)
		}
	}

	served := func() string {
		resp, err := client(&good).Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName
	}
	if cn := served(); cn != "first" {
		t.Fatalf("serves %q", cn)
	}
	c2, k2, _ := serverCA.issue(t, "second", time.Now().Add(time.Hour), "127.0.0.1")
	writeTo(t, keyFile+".new", k2)
	os.Rename(keyFile+".new", keyFile)
	writeTo(t, certFile+".new", c2)
	os.Rename(certFile+".new", certFile)
	deadline := time.Now().Add(5 * time.Second)
	for served() != "second" {
		if time.Now().After(deadline) {
			t.Fatal("the listener still serves the old certificate 5s after the rotation")
		}
		time.Sleep(50 * time.Millisecond) // polling the contract's deadline, not synchronising
	}
}

func TestListenTLSProblems(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "ca")
	c, k, _ := ca.issue(t, "srv", time.Now().Add(time.Hour))
	certFile, keyFile := writeTo(t, filepath.Join(dir, "tls.crt"), c), writeTo(t, filepath.Join(dir, "tls.key"), k)
	rest := `
oauth2:
  a: {token_url: "https://idp.test/t", client_id: x, client_secret: y}
routes:
  - {prefix: /a/, upstream: "https://api.test/", oauth2: a}
`
	tests := []struct {
		name, doc, want string
	}{
		{"tls alone is no inbound control", "listen: 0.0.0.0:8080\ntls: {cert_file: " + certFile + ", key_file: " + keyFile + "}",
			"listen: \"0.0.0.0:8080\" is reachable beyond this machine"},
		{"require_client_cert needs client_ca_file", "tls: {cert_file: " + certFile + ", key_file: " + keyFile + ", require_client_cert: true}",
			"tls.require_client_cert: needs client_ca_file"},
		{"no key_file", "tls: {cert_file: " + certFile + "}", "tls: missing key_file"},
		{"a unix socket", "listen: unix:/tmp/p.sock\ntls: {cert_file: " + certFile + ", key_file: " + keyFile + "}",
			"tls: listen is a unix socket"},
		{"client_ca_file without certificates", "tls: {cert_file: " + certFile + ", key_file: " + keyFile + ", client_ca_file: " + keyFile + "}",
			"tls.client_ca_file: " + keyFile + " contains no certificates"},
		{"key and certificate swapped", "tls: {cert_file: " + keyFile + ", key_file: " + certFile + "}",
			"holds no private key (it has CERTIFICATE)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(filepath.Join(dir, "c.yaml"), []byte(tc.doc+rest), env())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse = %v\nwant a problem with %q", err, tc.want)
			}
		})
	}
}
