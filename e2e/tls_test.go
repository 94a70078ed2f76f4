package e2e

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Outbound TLS and signed client credentials, through the built binary:
// token endpoints and upstreams that demand client certificates from a
// private CA, and that verify the assertions the proxy signs the way a
// server does (signature, aud, exp, a jti never seen before).

// pki is a private CA made for one test.
type pki struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
	file string // the CA certificate, PEM
}

var certSerial atomic.Int64

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(certSerial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	p := &pki{cert: c, key: key, dir: t.TempDir()}
	p.file = p.write(t, "ca.pem", pemOf("CERTIFICATE", der))
	return p
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func (p *pki) write(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path+".tmp", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil { // atomic, as a secret volume swaps
		t.Fatal(err)
	}
	return path
}

// issue signs a certificate for key (a new P-256 key when nil) valid for
// hosts, and writes cert and key as NAME.crt and NAME.key.
func (p *pki) issue(t *testing.T, name string, key crypto.Signer, hosts ...string) (certFile, keyFile string, tc tls.Certificate) {
	t.Helper()
	if key == nil {
		key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(certSerial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	for _, h := range hosts {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(h))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	var keyPEM []byte
	switch k := key.(type) {
	case *rsa.PrivateKey: // PKCS#1, as openssl genrsa writes it
		keyPEM = pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k))
	case *ecdsa.PrivateKey: // SEC1
		b, _ := x509.MarshalECPrivateKey(k)
		keyPEM = pemOf("EC PRIVATE KEY", b)
	}
	certPEM := pemOf("CERTIFICATE", der)
	tc, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p.write(t, name+".crt", certPEM), p.write(t, name+".key", keyPEM), tc
}

func (p *pki) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.cert)
	return pool
}

// clientCNHeader carries the TLS client certificate's common name from
// the TLS layer to the fakes' request records.
const clientCNHeader = "X-E2e-Client-Cn"

// withClientCN records the client certificate's common name ("-": none).
func withClientCN(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cn := "-"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			cn = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		r.Header.Set(clientCNHeader, cn)
		h(w, r)
	}
}

// startTLS serves s over HTTPS with a certificate from serverCA for
// 127.0.0.1, requiring a client certificate from clientCA unless nil.
func startTLS(t *testing.T, s *httptest.Server, serverCA, clientCA *pki) {
	t.Helper()
	_, _, cert := serverCA.issue(t, "server", nil, "127.0.0.1")
	s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCA != nil {
		s.TLS.ClientAuth, s.TLS.ClientCAs = tls.RequireAndVerifyClientCert, clientCA.pool()
	}
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	s.StartTLS()
	t.Cleanup(s.Close)
}

// newTLSTokenServer is newTokenServer over HTTPS.
func newTLSTokenServer(t *testing.T, serverCA, clientCA *pki, reply func(n int64, req tokenRequest) (int, map[string]string, string)) *tokenServer {
	s := &tokenServer{valid: map[string]bool{}, reply: reply}
	s.Server = httptest.NewUnstartedServer(withClientCN(s.serve))
	startTLS(t, s.Server, serverCA, clientCA)
	return s
}

// newTLSAPI is newAPI over HTTPS.
func newTLSAPI(t *testing.T, serverCA, clientCA *pki, verify func(string) error) *api {
	a := &api{verify: verify}
	a.Server = httptest.NewUnstartedServer(withClientCN(a.serve))
	startTLS(t, a.Server, serverCA, clientCA)
	return a
}

// assertionVerifier checks client assertions and jwt_bearer assertions as
// an authorization server does (RFC 7523 §3): signature with the
// registered key, iss, sub, aud, a short exp, and a jti never seen before.
type assertionVerifier struct {
	pub    crypto.PublicKey // nil: HMAC with secret
	secret []byte
	alg    string
	mu     sync.Mutex
	jtis   map[string]bool
}

func (v *assertionVerifier) verify(jws, iss, sub, aud string) (hdr, claims map[string]any, err error) {
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		return nil, nil, errors.New("not a compact JWS")
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	cb, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err := errors.Join(err1, err2, err3, json.Unmarshal(hb, &hdr), json.Unmarshal(cb, &claims)); err != nil {
		return nil, nil, err
	}
	if hdr["alg"] != v.alg {
		return nil, nil, fmt.Errorf("alg %v, want %s", hdr["alg"], v.alg)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	ok := false
	switch v.alg {
	case "RS256":
		ok = rsa.VerifyPKCS1v15(v.pub.(*rsa.PublicKey), crypto.SHA256, digest[:], sig) == nil
	case "PS256":
		ok = rsa.VerifyPSS(v.pub.(*rsa.PublicKey), crypto.SHA256, digest[:], sig, nil) == nil
	case "ES256":
		ok = len(sig) == 64 && ecdsa.Verify(v.pub.(*ecdsa.PublicKey), digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	case "HS256":
		m := hmac.New(sha256.New, v.secret)
		m.Write([]byte(parts[0] + "." + parts[1]))
		ok = hmac.Equal(m.Sum(nil), sig)
	}
	if !ok {
		return nil, nil, errors.New("bad signature")
	}
	now := float64(time.Now().Unix())
	exp, _ := claims["exp"].(float64)
	iat, _ := claims["iat"].(float64)
	switch {
	case claims["iss"] != iss || claims["sub"] != sub || claims["aud"] != aud:
		return nil, nil, fmt.Errorf("iss/sub/aud %v %v %v", claims["iss"], claims["sub"], claims["aud"])
	case exp <= now || exp > now+120 || iat > now+5:
		return nil, nil, fmt.Errorf("iat %v exp %v at %v", iat, exp, now)
	}
	jti, _ := claims["jti"].(string)
	v.mu.Lock()
	defer v.mu.Unlock()
	if jti == "" || v.jtis[jti] {
		return nil, nil, fmt.Errorf("jti %q replayed", jti)
	}
	if v.jtis == nil {
		v.jtis = map[string]bool{}
	}
	v.jtis[jti] = true
	return hdr, claims, nil
}

// TestPrivateKeyJWTOverMTLS: an IdP behind mutual TLS with a private CA
// that authenticates the client by private_key_jwt, for an RSA key (RS256,
// kid) and an EC key with its certificate (ES256, x5t#S256 as Entra ID
// wants); the upstream demands a client certificate from a private CA too.
// The upstream refuses the first token, so that two assertions are made:
// each verifies, and their jtis differ.
func TestPrivateKeyJWTOverMTLS(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		alg  string
		kid  bool // else the certificate's x5t#S256
	}{
		{"RS256 with kid", rsaKey, "RS256", true},
		{"ES256 with x5t#S256", ecKey, "ES256", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idpCA, apiCA, clientCA := newPKI(t, "idp CA"), newPKI(t, "api CA"), newPKI(t, "client CA")
			clientCert, clientKey, _ := clientCA.issue(t, "proxy", nil)
			signCert, signKey, signTLS := clientCA.issue(t, "signing", tc.key)
			thumb := sha256.Sum256(signTLS.Certificate[0])
			v := &assertionVerifier{pub: tc.key.Public(), alg: tc.alg}
			idp := newTLSTokenServer(t, idpCA, clientCA, nil)
			setReply(idp, func(n int64, req tokenRequest) (int, map[string]string, string) {
				hdr, _, err := v.verify(req.params["client_assertion"], "signed-app", "signed-app", idp.URL+"/token")
				switch {
				case req.header.Get(clientCNHeader) != "proxy":
					return 401, nil, `{"error":"invalid_client","error_description":"no client certificate"}`
				case err != nil || req.params["client_assertion_type"] != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" || req.params["client_id"] != "signed-app":
					t.Errorf("assertion refused: %v (form %v)", err, req.params)
					return 401, nil, `{"error":"invalid_client"}`
				case tc.kid && (hdr["kid"] != "key-2026-01" || hdr["x5t#S256"] != nil):
					t.Errorf("header %v: want kid key-2026-01", hdr)
				case !tc.kid && (hdr["x5t#S256"] != base64.RawURLEncoding.EncodeToString(thumb[:]) || hdr["kid"] != nil):
					t.Errorf("header %v: want the certificate's x5t#S256", hdr)
				case req.basicUser != "" || req.params["client_secret"] != "":
					t.Error("a client secret was sent")
				}
				return 200, nil, idp.okBody(idp.issue(), 3600, "")
			})
			up := newTLSAPI(t, apiCA, clientCA, idp.verify)
			up.mu.Lock()
			up.reject = func(n int64, tok string) bool { return n == 1 }
			up.mu.Unlock()

			signing := "    private_key_id: key-2026-01"
			if !tc.kid {
				signing = "    certificate_file: " + signCert
			}
			p := startProxy(t, config(up.URL, fmt.Sprintf(`    token_url: %s/token
    client_id: signed-app
    client_auth: private_key_jwt
    private_key_file: %s
%s
    tls: {ca_file: %s, cert_file: %s, key_file: %s}`, idp.URL, signKey, signing, idpCA.file, clientCert, clientKey),
				fmt.Sprintf("    tls: {ca_file: %s, cert_file: %s, key_file: %s}", apiCA.file, clientCert, clientKey)))

			r := get(t, p.base+"/api/orders")
			if r.status != 200 {
				t.Fatalf("GET through the proxy: %d %s", r.status, r.body)
			}
			if n := idp.hits.Load(); n != 2 {
				t.Errorf("%d token requests, want 2 (the first token was refused once)", n)
			}
			v.mu.Lock()
			if len(v.jtis) != 2 {
				t.Errorf("%d distinct jtis verified, want 2", len(v.jtis))
			}
			v.mu.Unlock()
			if cn := up.last(t).header.Get(clientCNHeader); cn != "proxy" {
				t.Errorf("the upstream saw client certificate %q", cn)
			}
		})
	}
}

// TestTLSClientAuth: RFC 8705 tls_client_auth: the certificate is the
// credential, client_id is in the body, no secret anywhere.
func TestTLSClientAuth(t *testing.T) {
	idpCA, clientCA := newPKI(t, "idp CA"), newPKI(t, "client CA")
	cert, key, _ := clientCA.issue(t, "mtls-app", nil)
	idp := newTLSTokenServer(t, idpCA, clientCA, nil)
	setReply(idp, func(n int64, req tokenRequest) (int, map[string]string, string) {
		if req.header.Get(clientCNHeader) != "mtls-app" || req.params["client_id"] != "mtls-app" ||
			req.params["client_secret"] != "" || req.params["client_assertion"] != "" || req.header.Get("Authorization") != "" {
			return 401, nil, `{"error":"invalid_client"}`
		}
		return 200, nil, idp.okBody(idp.issue(), 3600, "")
	})
	up := newAPI(t, idp.verify)
	p := startProxy(t, config(up.URL, fmt.Sprintf(`    token_url: %s/token
    client_id: mtls-app
    client_auth: tls_client_auth
    tls: {ca_file: %s, cert_file: %s, key_file: %s}`, idp.URL, idpCA.file, cert, key)))
	if r := get(t, p.base+"/api/x"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
}

// TestClientSecretJWT: the secret signs an HS256 assertion and never
// travels itself.
func TestClientSecretJWT(t *testing.T) {
	secret := randomString("csjwt-secret-of-32-bytes-")
	addCanary(secret)
	v := &assertionVerifier{secret: []byte(secret), alg: "HS256"}
	idp := newTokenServer(t, nil)
	setReply(idp, func(n int64, req tokenRequest) (int, map[string]string, string) {
		if _, _, err := v.verify(req.params["client_assertion"], "hs-app", "hs-app", "https://idp.example.com"); err != nil {
			t.Errorf("assertion: %v", err)
			return 401, nil, `{"error":"invalid_client"}`
		}
		return 200, nil, idp.okBody(idp.issue(), 3600, "")
	})
	up := newAPI(t, idp.verify)
	p := startProxy(t, config(up.URL, fmt.Sprintf(`    token_url: %s/token
    client_id: hs-app
    client_secret: %s
    client_auth: client_secret_jwt
    assertion_audience: https://idp.example.com`, idp.URL, secret)))
	if r := get(t, p.base+"/api/x"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	for _, req := range idp.requests() {
		for k, val := range req.params {
			if strings.Contains(val, secret) {
				t.Errorf("the secret was sent in %s", k)
			}
		}
	}
}

// TestJWTBearerGrant: RFC 7523 §2.1: the proxy signs an assertion for
// assertion_subject and exchanges it; without client_auth, client_id
// goes in the body and the assertion is the only credential.
func TestJWTBearerGrant(t *testing.T) {
	ca := newPKI(t, "idp CA")
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, keyFile, _ := ca.issue(t, "signer", key)
	v := &assertionVerifier{pub: key.Public(), alg: "PS256"}
	idp := newTLSTokenServer(t, ca, nil, nil)
	setReply(idp, func(n int64, req tokenRequest) (int, map[string]string, string) {
		_, claims, err := v.verify(req.params["assertion"], "svc@e2e.test", "svc-reporting", idp.URL+"/token")
		switch {
		case req.params["grant_type"] != "urn:ietf:params:oauth:grant-type:jwt-bearer":
			return 400, nil, `{"error":"unsupported_grant_type"}`
		case err != nil:
			t.Errorf("assertion: %v", err)
			return 400, nil, `{"error":"invalid_grant"}`
		case claims["scope"] != "reports.read" || req.params["scope"] != "reports.read":
			t.Errorf("scope claim %v, parameter %q", claims["scope"], req.params["scope"])
		case req.params["client_id"] != "my-app" || req.basicUser != "":
			t.Errorf("client_id %q, basic user %q", req.params["client_id"], req.basicUser)
		}
		return 200, nil, idp.okBody(idp.issue(), 3600, "")
	})
	up := newAPI(t, idp.verify)
	p := startProxy(t, config(up.URL, fmt.Sprintf(`    grant_type: jwt_bearer
    token_url: %s/token
    client_id: my-app
    private_key_file: %s
    signing_alg: PS256
    assertion_subject: svc-reporting
    assertion_issuer: svc@e2e.test
    assertion_claims: {scope: reports.read}
    scopes: [reports.read]
    tls: {ca_file: %s}`, idp.URL, keyFile, ca.file)))
	if r := get(t, p.base+"/api/report"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var st []map[string]any
	if err := json.Unmarshal([]byte(get(t, p.admin+"/tokens").body), &st); err != nil || len(st) != 1 || st[0]["grant_type"] != "jwt_bearer" {
		t.Errorf("/tokens: %v %v", st, err)
	}
}

// TestUntrustedCertificates: a token endpoint or upstream whose
// certificate does not verify gives 502 with a message naming the
// certificate problem; insecure_skip_verify warns at start.
func TestUntrustedCertificates(t *testing.T) {
	ca := newPKI(t, "private CA")
	idp := newTLSTokenServer(t, ca, nil, nil)
	up := newTLSAPI(t, ca, nil, idp.verify)

	// The token endpoint is not trusted (no ca_file).
	p := startProxy(t, config(up.URL, fmt.Sprintf(`    token_url: %s/token
    client_id: a
    client_secret: %s`, idp.URL, randomString("cs-")), "    tls: {ca_file: "+ca.file+"}"))
	r := get(t, p.base+"/api/x")
	if msg := r.proxyError(t)["message"]; r.status != 502 || r.errorCode() != "token_unavailable" || !strings.Contains(msg, "certificate signed by unknown authority") {
		t.Errorf("untrusted token endpoint: %d %s", r.status, r.body)
	}

	// The upstream is not trusted; the token endpoint is, by insecure_skip_verify.
	p = startProxy(t, config(up.URL, fmt.Sprintf(`    token_url: %s/token
    client_id: a
    client_secret: %s
    tls: {insecure_skip_verify: true}`, idp.URL, randomString("cs-"))))
	r = get(t, p.base+"/api/x")
	if msg := r.proxyError(t)["message"]; r.status != 502 || r.errorCode() != "upstream_unreachable" || !strings.Contains(msg, "certificate signed by unknown authority") {
		t.Errorf("untrusted upstream: %d %s", r.status, r.body)
	}
	if !strings.Contains(p.out.String(), "tls.insecure_skip_verify: the server's certificate is not verified") {
		t.Errorf("no warning for insecure_skip_verify at start")
	}
}

// TestUpstreamClientCertificateRotation: the route's client certificate
// files are replaced (atomic renames) while the proxy serves; new
// connections present the new certificate within 5 s, with no restart
// and no reload.
func TestUpstreamClientCertificateRotation(t *testing.T) {
	apiCA, clientCA := newPKI(t, "api CA"), newPKI(t, "client CA")
	cert, key, _ := clientCA.issue(t, "first", nil)
	idp := newTokenServer(t, nil)
	up := newTLSAPI(t, apiCA, clientCA, idp.verify)
	up.Config.SetKeepAlivesEnabled(false) // every request a new connection
	p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-"),
		fmt.Sprintf("    tls: {ca_file: %s, cert_file: %s, key_file: %s}", apiCA.file, cert, key)))
	if r := get(t, p.base+"/api/x"); r.status != 200 || up.last(t).header.Get(clientCNHeader) != "first" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	// The new pair lands file by file, by atomic renames: for a moment the
	// certificate does not match the key, and the old pair must stay.
	newCert, newKey, _ := clientCA.issue(t, "second", nil)
	os.Rename(newCert, cert)
	os.Rename(newKey, key)
	rotated := time.Now()
	for {
		r := get(t, p.base+"/api/x")
		if r.status != 200 {
			t.Fatalf("during the rotation: %d %s", r.status, r.body)
		}
		if up.last(t).header.Get(clientCNHeader) == "second" {
			break
		}
		if time.Since(rotated) > 5*time.Second {
			t.Fatal("new connections still present the old certificate 5s after the rotation")
		}
		time.Sleep(100 * time.Millisecond) // polling the contract's deadline, not synchronising
	}
}

// setReply sets a token server's script under its lock, so that the
// server's goroutines see it.
func setReply(s *tokenServer, reply func(n int64, req tokenRequest) (int, map[string]string, string)) {
	s.mu.Lock()
	s.reply = reply
	s.mu.Unlock()
}

// TestCheckNamesBadFiles: `oauthproxy check` names the file and what is
// wrong with it.
func TestCheckNamesBadFiles(t *testing.T) {
	ca := newPKI(t, "ca")
	cert, _, _ := ca.issue(t, "a", nil)
	_, otherKey, _ := ca.issue(t, "b", nil)
	empty := ca.write(t, "empty-ca.pem", []byte("# no certificates here\n"))
	path := writeConfig(t, config("https://api.example.com", fmt.Sprintf(`    token_url: https://idp.example.com/token
    client_id: a
    client_auth: tls_client_auth
    tls: {ca_file: %s, cert_file: %s, key_file: %s}`, empty, cert, otherKey)))
	out, code := run(t, nil, "check", "-config", path)
	for _, want := range []string{
		"oauth2.e2e.tls.ca_file: " + empty + " is not PEM",
		"oauth2.e2e.tls.key_file: key " + otherKey + " does not match certificate " + cert,
	} {
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("exit %d, output lacks %q:\n%s", code, want, out)
		}
	}
}

// TestOIDCProviderSignedClients: oidc-provider, a certified OpenID
// Provider, checks the assertions: private_key_jwt with RS256 and ES256,
// and client_secret_jwt.
func TestOIDCProviderSignedClients(t *testing.T) {
	needOIDC(t) // node and node_modules are there
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	hsSecret := randomString("oidc-hs-secret-that-is-long-enough-")
	addCanary(hsSecret)
	dir := t.TempDir()
	keyFile := func(name string, k crypto.Signer) string {
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		path := filepath.Join(dir, name)
		os.WriteFile(path, pemOf("PRIVATE KEY", der), 0o600)
		return path
	}
	b64 := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	rsaJWK := map[string]any{"kty": "RSA", "kid": "rs-1", "use": "sig", "alg": "RS256",
		"n": b64(rsaKey.N.Bytes()), "e": b64(big.NewInt(int64(rsaKey.E)).Bytes())}
	ecPub, _ := ecKey.PublicKey.Bytes() // 0x04 || X || Y
	ecJWK := map[string]any{"kty": "EC", "kid": "es-1", "use": "sig", "alg": "ES256", "crv": "P-256",
		"x": b64(ecPub[1:33]), "y": b64(ecPub[33:])}
	client := func(id, method string, extra map[string]any) map[string]any {
		c := map[string]any{"client_id": id, "grant_types": []string{"client_credentials"}, "redirect_uris": []string{},
			"response_types": []string{}, "token_endpoint_auth_method": method}
		for k, v := range extra {
			c[k] = v
		}
		return c
	}
	iss := startOwnOIDC(t, []map[string]any{
		client("pk-rs", "private_key_jwt", map[string]any{"jwks": map[string]any{"keys": []any{rsaJWK}}}),
		client("pk-es", "private_key_jwt", map[string]any{"jwks": map[string]any{"keys": []any{ecJWK}}}),
		client("hs", "client_secret_jwt", map[string]any{"client_secret": hsSecret}),
	})
	for _, tc := range []struct{ name, client, keys string }{
		{"private_key_jwt RS256", "pk-rs", "    client_auth: private_key_jwt\n    private_key_id: rs-1\n    private_key_file: " + keyFile("rs.pem", rsaKey)},
		{"private_key_jwt ES256", "pk-es", "    client_auth: private_key_jwt\n    private_key_id: es-1\n    private_key_file: " + keyFile("es.pem", ecKey)},
		{"client_secret_jwt", "hs", "    client_auth: client_secret_jwt\n    client_secret: " + hsSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newAPI(t, func(tok string) error {
				if strings.Count(tok, ".") != 2 {
					return errors.New("not a JWT")
				}
				return nil
			})
			p := startProxy(t, config(up.URL, fmt.Sprintf("    token_url: %s/token\n    client_id: %s\n%s\n    resource: %s",
				iss.url, tc.client, tc.keys, apiResource)))
			if r := get(t, p.base+"/api/x"); r.status != 200 {
				t.Fatalf("%d %s\noidc-provider:\n%s", r.status, r.body, iss.out)
			}
			if !strings.Contains(iss.out.String(), "issued "+tc.client+"\n") {
				t.Errorf("oidc-provider did not issue for %s:\n%s", tc.client, iss.out)
			}
		})
	}
}

type ownOIDC struct {
	url string
	out *syncBuffer
}

// startOwnOIDC runs an oidc-provider of the test's own, with clients
// whose keys the test made.
func startOwnOIDC(t *testing.T, clients []map[string]any) *ownOIDC {
	t.Helper()
	js, _ := json.Marshal(clients)
	cmd := exec.Command("node", "idp/oidc.mjs")
	cmd.Env = append(os.Environ(), "OIDC_CLIENTS="+string(js), "OIDC_TOKEN_TTL=300")
	o := &ownOIDC{out: &syncBuffer{}}
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = o.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if iss, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
				first <- iss
			}
			o.out.Write([]byte(sc.Text() + "\n"))
		}
	}()
	select {
	case o.url = <-first:
	case <-time.After(20 * time.Second):
		t.Fatalf("oidc-provider did not start:\n%s", o.out)
	}
	return o
}

// TestListenerInboundMTLS: the proxy serves HTTPS (HTTP/2) with its own
// certificate and requires client certificates from client_ca_file: no
// certificate, or one from another CA, is refused at the handshake. The
// listener's certificate is rotated on disk while the proxy serves. And
// check accepts a non-loopback listen whose only control is inbound mTLS.
func TestListenerInboundMTLS(t *testing.T) {
	serverCA, clientCA, otherCA := newPKI(t, "listener CA"), newPKI(t, "clients CA"), newPKI(t, "other CA")
	cert, key, _ := serverCA.issue(t, "first", nil, "127.0.0.1")
	_, _, good := clientCA.issue(t, "app", nil)
	_, _, stranger := otherCA.issue(t, "stranger", nil)
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	entry := "    token_url: " + idp.URL + "/t\n    client_id: a\n    client_secret: " + randomString("cs-")
	tlsSection := fmt.Sprintf("tls: {cert_file: %s, key_file: %s, client_ca_file: %s, require_client_cert: true}\n", cert, key, clientCA.file)

	out, code := run(t, nil, "check", "-config", writeConfig(t, strings.Replace(tlsSection+config(up.URL, entry), "listen: 127.0.0.1:0", "listen: 0.0.0.0:8443", 1)))
	if code != 0 {
		t.Errorf("check refuses a non-loopback listen with inbound mTLS: exit %d\n%s", code, out)
	}

	p := startProxy(t, tlsSection+config(up.URL, entry))
	base := strings.Replace(p.base, "http://", "https://", 1)
	client := func(c *tls.Certificate) *http.Client {
		tc := &tls.Config{RootCAs: serverCA.pool()}
		if c != nil {
			tc.Certificates = []tls.Certificate{*c}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true, DisableKeepAlives: true}}
	}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
	}{{"no certificate", nil}, {"another CA", &stranger}} {
		if resp, err := client(tc.cert).Get(base + "/api/x"); err == nil {
			resp.Body.Close()
			t.Errorf("%s: got through (%d)", tc.name, resp.StatusCode)
		}
	}
	// Plain HTTP gets net/http's 400 "client sent an HTTP request to an HTTPS server", never the API.
	if resp, err := http.Get(p.base + "/api/x"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("plain HTTP on the TLS listener: %d", resp.StatusCode)
		}
	}
	served := func() (string, string) {
		resp, err := client(&good).Get(base + "/api/x")
		if err != nil {
			t.Fatalf("with a good client certificate: %v", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		return resp.TLS.PeerCertificates[0].Subject.CommonName, resp.Proto
	}
	if cn, proto := served(); cn != "first" || proto != "HTTP/2.0" {
		t.Fatalf("served %q over %s", cn, proto)
	}
	newCert, newKey, _ := serverCA.issue(t, "second", nil, "127.0.0.1")
	os.Rename(newKey, key)
	os.Rename(newCert, cert)
	rotated := time.Now()
	for {
		if cn, _ := served(); cn == "second" {
			break
		}
		if time.Since(rotated) > 5*time.Second {
			t.Fatal("the listener still presents the old certificate 5s after the rotation")
		}
		time.Sleep(100 * time.Millisecond) // polling the contract's deadline, not synchronising
	}
	if len(p.logLines("key or certificate file reloaded")) == 0 {
		t.Error("the rotation is not in the JSON log")
	}
}
