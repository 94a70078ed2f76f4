package tokencache

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var discard = slog.New(slog.DiscardHandler)

// Keys are generated once: RSA generation is slow under -race.
var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	rsaKey2  *rsa.PrivateKey
	ecKey    *ecdsa.PrivateKey
)

func testKeys(t *testing.T) (*rsa.PrivateKey, *rsa.PrivateKey, *ecdsa.PrivateKey) {
	t.Helper()
	keysOnce.Do(func() {
		rsaKey, _ = rsa.GenerateKey(rand.Reader, 2048)
		rsaKey2, _ = rsa.GenerateKey(rand.Reader, 2048)
		ecKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	})
	return rsaKey, rsaKey2, ecKey
}

// keyPEM encodes key as PKCS#1, SEC1 or PKCS#8.
func keyPEM(t *testing.T, key crypto.Signer, format string) []byte {
	t.Helper()
	var b *pem.Block
	switch format {
	case "pkcs1":
		b = &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key.(*rsa.PrivateKey))}
	case "sec1":
		der, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		b = &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
	default:
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		b = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	}
	return pem.EncodeToMemory(b)
}

// selfSigned returns a PEM certificate for key.
func selfSigned(t *testing.T, key crypto.Signer, cn string) ([]byte, *x509.Certificate) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), c
}

func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// decodeJWS checks a compact JWS's signature with pub (or the HMAC
// secret) the way a server would, with crypto/* only, and returns its
// header and claims.
func decodeJWS(t *testing.T, jws string, pub crypto.PublicKey, secret []byte) (hdr, claims map[string]any) {
	t.Helper()
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		t.Fatalf("%d parts in %q", len(parts), jws)
	}
	dec := func(s string) []byte {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatalf("not base64url: %q", s)
		}
		return b
	}
	if err := json.Unmarshal(dec(parts[0]), &hdr); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(dec(parts[1]), &claims); err != nil {
		t.Fatal(err)
	}
	input, sig := []byte(parts[0]+"."+parts[1]), dec(parts[2])
	digest := sha256.Sum256(input)
	var ok bool
	switch hdr["alg"] {
	case "RS256":
		ok = rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), crypto.SHA256, digest[:], sig) == nil
	case "PS256":
		ok = rsa.VerifyPSS(pub.(*rsa.PublicKey), crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	case "ES256":
		ok = len(sig) == 64 && ecdsa.Verify(pub.(*ecdsa.PublicKey), digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	case "HS256":
		m := hmac.New(sha256.New, secret)
		m.Write(input)
		ok = hmac.Equal(m.Sum(nil), sig)
	default:
		t.Fatalf("alg %v", hdr["alg"])
	}
	if !ok {
		t.Fatalf("the %v signature does not verify", hdr["alg"])
	}
	return hdr, claims
}

func TestSignerVerifies(t *testing.T) {
	rsaK, _, ecK := testKeys(t)
	tests := []struct {
		name    string
		key     crypto.Signer
		format  string
		alg     string // configured
		wantAlg string
		keyID   string
		cert    bool
	}{
		{"rsa pkcs1 default", rsaK, "pkcs1", "", "RS256", "k1", false},
		{"rsa pkcs8 PS256", rsaK, "pkcs8", "PS256", "PS256", "k2", false},
		{"ec sec1 default", ecK, "sec1", "", "ES256", "k3", false},
		{"ec pkcs8 ES256 with cert", ecK, "pkcs8", "ES256", "ES256", "", true},
		{"rsa with cert: x5t#S256", rsaK, "pkcs1", "", "RS256", "", true},
		{"kid wins over the cert", rsaK, "pkcs8", "", "RS256", "kid-2026", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			keyFile := writeFile(t, filepath.Join(dir, "key.pem"), keyPEM(t, tc.key, tc.format))
			var certFile string
			var cert *x509.Certificate
			if tc.cert {
				var p []byte
				p, cert = selfSigned(t, tc.key, "client")
				certFile = writeFile(t, filepath.Join(dir, "cert.pem"), p)
			}
			kp, err := LoadKeyPair(keyFile, certFile, KeyPairOptions{})
			if err != nil {
				t.Fatal(err)
			}
			s, err := NewSigner(kp, tc.alg, tc.keyID)
			if err != nil {
				t.Fatal(err)
			}
			jws, err := s.Sign(map[string]any{"sub": "x"})
			if err != nil {
				t.Fatal(err)
			}
			hdr, claims := decodeJWS(t, jws, tc.key.Public(), nil)
			if hdr["alg"] != tc.wantAlg || hdr["typ"] != "JWT" || claims["sub"] != "x" {
				t.Errorf("header %v claims %v; want alg %s", hdr, claims, tc.wantAlg)
			}
			kid, hasKid := hdr["kid"]
			x5t, hasX5t := hdr["x5t#S256"]
			switch {
			case tc.keyID != "":
				if kid != tc.keyID || hasX5t {
					t.Errorf("kid = %v, x5t#S256 present %v; want kid %q only", kid, hasX5t, tc.keyID)
				}
			case tc.cert:
				sum := sha256.Sum256(cert.Raw)
				if want := base64.RawURLEncoding.EncodeToString(sum[:]); x5t != want || hasKid {
					t.Errorf("x5t#S256 = %v (kid present %v), want %s", x5t, hasKid, want)
				}
			}
		})
	}
}

func TestSigningAlgRefuses(t *testing.T) {
	rsaK, _, ecK := testKeys(t)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  crypto.Signer
		alg  string
		want string
	}{
		{"rsa as ES256", rsaK, "ES256", "holds an RSA key: signing_alg ES256 needs an EC P-256 key"},
		{"ec as RS256", ecK, "RS256", "holds an EC P-256 key: signing_alg RS256 needs an RSA key"},
		{"ec as PS256", ecK, "PS256", "signing_alg PS256 needs an RSA key"},
		{"P-384", p384, "", "unsupported key type: an EC key on P-384"},
		{"ed25519", ed, "", "unsupported key type ed25519.PrivateKey"},
		{"1024-bit rsa", small, "", "1024-bit RSA key: RS256 needs at least 2048 bits"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := SigningAlg("/k.pem", tc.key, tc.alg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "/k.pem") {
				t.Errorf("SigningAlg = %v, want an error naming /k.pem with %q", err, tc.want)
			}
		})
	}
}

func TestParsePrivateKey(t *testing.T) {
	rsaK, _, ecK := testKeys(t)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	certPEM, _ := selfSigned(t, ecK, "c")
	pkcs8 := keyPEM(t, rsaK, "pkcs8")
	body := strings.Join(strings.Split(string(pkcs8), "\n")[1:4], "") // key material, to find in errors
	encrypted := strings.Replace(string(keyPEM(t, rsaK, "pkcs1")), "-----\n", "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\n", 1)
	corrupt := strings.Replace(string(pkcs8), body[:40], strings.Repeat("A", 40), 1)
	tests := []struct {
		name string
		data string
		want string // "" parses
	}{
		{"pkcs1 rsa", string(keyPEM(t, rsaK, "pkcs1")), ""},
		{"pkcs8 rsa", string(pkcs8), ""},
		{"sec1 ec", string(keyPEM(t, ecK, "sec1")), ""},
		{"pkcs8 ec", string(keyPEM(t, ecK, "pkcs8")), ""},
		{"pkcs8 ed25519", string(keyPEM(t, ed, "pkcs8")), ""},
		{"cert then key", string(certPEM) + string(keyPEM(t, ecK, "sec1")), ""},
		{"empty", "\n", "is empty"},
		{"not PEM", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ", "is not PEM"},
		{"legacy encrypted", encrypted, "is encrypted (passphrase-protected keys are not supported"},
		{"pkcs8 encrypted", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n", "is encrypted"},
		{"dsa", "-----BEGIN DSA PRIVATE KEY-----\nMIIBuwIBAAKBgQDA\n-----END DSA PRIVATE KEY-----\n", "unsupported key type"},
		{"openssh", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n", "is an OpenSSH key"},
		{"certificate only", string(certPEM), "holds no private key (it has CERTIFICATE)"},
		{"corrupt", corrupt, `the "PRIVATE KEY" block does not parse as a private key`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := ParsePrivateKey("/secrets/key.pem", []byte(tc.data))
			switch {
			case tc.want == "" && (err != nil || key == nil):
				t.Fatalf("ParsePrivateKey: %v", err)
			case tc.want == "":
				return
			case err == nil:
				t.Fatalf("ParsePrivateKey parsed it; want %q", tc.want)
			case !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/secrets/key.pem"):
				t.Errorf("error %q; want it to name the file and say %q", err, tc.want)
			}
			for i := 0; i+16 <= len(body); i += 16 {
				if strings.Contains(err.Error(), body[i:i+16]) {
					t.Errorf("the error holds key material: %q", err)
				}
			}
		})
	}
}

func TestParseCertificates(t *testing.T) {
	_, _, ecK := testKeys(t)
	certPEM, _ := selfSigned(t, ecK, "c")
	tests := []struct {
		name, data, want string
		n                int
	}{
		{"one", string(certPEM), "", 1},
		{"bundle", string(certPEM) + string(certPEM), "", 2},
		{"key only", string(keyPEM(t, ecK, "sec1")), "contains no certificates", 0},
		{"not PEM", "hello", "is not PEM", 0},
		{"empty", "", "is empty", 0},
		{"garbage block", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "certificate 1 does not parse", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			certs, err := ParseCertificates("/certs/ca.pem", []byte(tc.data))
			if tc.want == "" {
				if err != nil || len(certs) != tc.n {
					t.Fatalf("ParseCertificates = %d certs, %v; want %d", len(certs), err, tc.n)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/certs/ca.pem") {
				t.Errorf("error %v; want it to name the file and say %q", err, tc.want)
			}
		})
	}
}

func TestLoadKeyPairMismatch(t *testing.T) {
	rsaK, rsaK2, _ := testKeys(t)
	dir := t.TempDir()
	keyFile := writeFile(t, filepath.Join(dir, "key.pem"), keyPEM(t, rsaK, "pkcs8"))
	p, _ := selfSigned(t, rsaK2, "other")
	certFile := writeFile(t, filepath.Join(dir, "cert.pem"), p)
	_, err := LoadKeyPair(keyFile, certFile, KeyPairOptions{})
	if want := "key " + keyFile + " does not match certificate " + certFile; err == nil || err.Error() != want {
		t.Errorf("LoadKeyPair = %v, want %q", err, want)
	}
	if _, err := LoadKeyPair(filepath.Join(dir, "missing.pem"), "", KeyPairOptions{}); err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Errorf("a missing file: %v", err)
	}
	// A FIFO would block a reader until someone writes: refused at once.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skip(err)
	}
	if _, err := LoadKeyPair(fifo, "", KeyPairOptions{}); err == nil || !strings.Contains(err.Error(), "is not a regular file") {
		t.Errorf("a FIFO: %v", err)
	}
}

// TestKeyPairFollowsFiles: a rotated pair is picked up at the next check,
// whether written in place, renamed over the old one or swapped in by a
// symlink (a Kubernetes secret volume); a half-written pair keeps the old.
func TestKeyPairFollowsFiles(t *testing.T) {
	rsaK, rsaK2, ecK := testKeys(t)
	pub := func(c *Credential) crypto.PublicKey { return c.Key.Public() }
	type pair struct {
		key  crypto.Signer
		cert []byte
	}
	mk := func(k crypto.Signer) pair { c, _ := selfSigned(t, k, "c"); return pair{k, c} }
	a, b, c := mk(rsaK), mk(rsaK2), mk(ecK)

	for _, how := range []string{"in place", "rename", "symlink swap"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			keyFile, certFile := filepath.Join(dir, "tls.key"), filepath.Join(dir, "tls.crt")
			gen := 0
			install := func(p pair, keyData []byte) {
				if keyData == nil {
					keyData = keyPEM(t, p.key, "pkcs8")
				}
				gen++
				switch how {
				case "in place":
					writeFile(t, keyFile, keyData)
					writeFile(t, certFile, p.cert)
				case "rename":
					writeFile(t, keyFile+".tmp", keyData)
					writeFile(t, certFile+".tmp", p.cert)
					os.Rename(keyFile+".tmp", keyFile)
					os.Rename(certFile+".tmp", certFile)
				case "symlink swap": // ..data -> ..N, tls.key -> ..data/tls.key
					d := filepath.Join(dir, "..v"+string(rune('0'+gen)))
					os.Mkdir(d, 0o700)
					writeFile(t, filepath.Join(d, "tls.key"), keyData)
					writeFile(t, filepath.Join(d, "tls.crt"), p.cert)
					os.Symlink(filepath.Base(d), filepath.Join(dir, "..tmp"))
					os.Rename(filepath.Join(dir, "..tmp"), filepath.Join(dir, "..data"))
					if gen == 1 {
						os.Symlink("..data/tls.key", keyFile)
						os.Symlink("..data/tls.crt", certFile)
					}
				}
			}
			install(a, nil)
			now := time.Unix(1_800_000_000, 0)
			clock := func() time.Time { return now }
			kp, err := LoadKeyPair(keyFile, certFile, KeyPairOptions{CheckEvery: time.Second, Now: clock, Logger: discard})
			if err != nil {
				t.Fatal(err)
			}
			if !samePublicKey(pub(kp.Current()), rsaK.Public()) {
				t.Fatal("not key a at first")
			}
			install(b, nil)
			if !samePublicKey(pub(kp.Current()), rsaK.Public()) {
				t.Error("checked again before CheckEvery passed")
			}
			now = now.Add(time.Second)
			if got := kp.Current(); !samePublicKey(pub(got), rsaK2.Public()) || got.TLSCertificate() == nil {
				t.Fatal("the rotated pair b is not in use after CheckEvery")
			}
			// Half written: the key is not PEM yet. b stays.
			install(c, []byte("-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"))
			now = now.Add(time.Second)
			if !samePublicKey(pub(kp.Current()), rsaK2.Public()) {
				t.Fatal("a half-written pair replaced b")
			}
			install(c, nil)
			now = now.Add(time.Second)
			if !samePublicKey(pub(kp.Current()), ecK.Public()) {
				t.Fatal("the completed pair c is not in use")
			}
			if changed, err := kp.Reload(); changed || err != nil {
				t.Errorf("Reload with nothing new = %v, %v", changed, err)
			}
		})
	}
}

// TestKeyPairMismatchKeepsOld: a certificate written before its key (a
// pair that does not match yet) keeps the old pair.
func TestKeyPairMismatchKeepsOld(t *testing.T) {
	rsaK, rsaK2, _ := testKeys(t)
	dir := t.TempDir()
	keyFile := writeFile(t, filepath.Join(dir, "k"), keyPEM(t, rsaK, "pkcs1"))
	ca, _ := selfSigned(t, rsaK, "a")
	certFile := writeFile(t, filepath.Join(dir, "c"), ca)
	now := time.Unix(1_800_000_000, 0)
	kp, err := LoadKeyPair(keyFile, certFile, KeyPairOptions{Now: func() time.Time { return now }, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := selfSigned(t, rsaK2, "b")
	writeFile(t, certFile, cb)
	now = now.Add(time.Minute)
	if got := kp.Current(); !samePublicKey(got.Certs[0].PublicKey, rsaK.Public()) {
		t.Error("a certificate that does not match the key was put in use")
	}
	if _, err := kp.Reload(); err == nil || !strings.Contains(err.Error(), "does not match certificate") {
		t.Errorf("Reload = %v, want a mismatch", err)
	}
	writeFile(t, keyFile, keyPEM(t, rsaK2, "pkcs1"))
	if changed, err := kp.Reload(); !changed || err != nil {
		t.Errorf("Reload after the key arrived = %v, %v; want changed", changed, err)
	}
}

func TestPrivateKeyJWT(t *testing.T) {
	_, _, ecK := testKeys(t)
	dir := t.TempDir()
	kp, err := LoadKeyPair(writeFile(t, filepath.Join(dir, "k.pem"), keyPEM(t, ecK, "sec1")), "", KeyPairOptions{})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := NewSigner(kp, "", "key-1")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	auth := PrivateKeyJWT{ClientID: "my-app", Audience: "https://idp.test/token", Signer: signer, Now: func() time.Time { return now }}
	if auth.Method() != "private_key_jwt" {
		t.Errorf("Method = %q", auth.Method())
	}
	jtis := map[string]bool{}
	for range 50 {
		var f Form
		h := make(map[string][]string)
		if err := auth.Authenticate(&f, h); err != nil {
			t.Fatal(err)
		}
		if len(h) != 0 {
			t.Errorf("headers set: %v", h)
		}
		if f.Get("client_id") != "my-app" || f.Get("client_assertion_type") != ClientAssertionType {
			t.Fatalf("form %v", f)
		}
		_, c := decodeJWS(t, f.Get("client_assertion").Reveal(), ecK.Public(), nil)
		if c["iss"] != "my-app" || c["sub"] != "my-app" || c["aud"] != "https://idp.test/token" {
			t.Errorf("iss/sub/aud = %v %v %v", c["iss"], c["sub"], c["aud"])
		}
		if c["iat"] != float64(now.Unix()) || c["exp"] != float64(now.Unix()+60) || c["nbf"] != float64(now.Unix()) {
			t.Errorf("iat %v nbf %v exp %v; want %d, %d, +60s", c["iat"], c["nbf"], c["exp"], now.Unix(), now.Unix())
		}
		jti, _ := c["jti"].(string)
		if len(jti) < 20 || jtis[jti] {
			t.Fatalf("jti %q is short or reused", jti)
		}
		jtis[jti] = true
	}
}

func TestClientSecretJWT(t *testing.T) {
	secret := Secret("a-client-secret-of-32-bytes-or-more!")
	dir := t.TempDir()
	file := writeFile(t, filepath.Join(dir, "s"), []byte("rotated-secret-also-long-enough-123"))
	cs := NewClientSecret(secret, func() (Secret, error) {
		b, err := os.ReadFile(file)
		return Secret(b), err
	})
	auth := ClientSecretJWT{ClientID: "app", Audience: "https://idp.test/token", Secret: cs}
	var f Form
	if err := auth.Authenticate(&f, nil); err != nil {
		t.Fatal(err)
	}
	if f.Get("client_secret") != "" {
		t.Error("the secret itself was sent")
	}
	hdr, c := decodeJWS(t, f.Get("client_assertion").Reveal(), nil, []byte(secret.Reveal()))
	if hdr["alg"] != "HS256" || c["iss"] != "app" || c["sub"] != "app" || c["aud"] != "https://idp.test/token" || c["jti"] == "" {
		t.Errorf("header %v claims %v", hdr, c)
	}
	if strings.Contains(f.Get("client_assertion").Reveal(), secret.Reveal()) {
		t.Error("the assertion holds the secret")
	}
	if changed, err := auth.Rotate(); !changed || err != nil {
		t.Fatalf("Rotate = %v, %v", changed, err)
	}
	f = nil
	auth.Authenticate(&f, nil)
	decodeJWS(t, f.Get("client_assertion").Reveal(), nil, []byte("rotated-secret-also-long-enough-123"))
}

func TestTLSClientAuth(t *testing.T) {
	reloads := 0
	auth := TLSClientAuth{ClientID: "mtls-app", Reload: func() (bool, error) { reloads++; return true, nil }}
	var f Form
	h := make(map[string][]string)
	auth.Authenticate(&f, h)
	if len(f) != 1 || f.Get("client_id") != "mtls-app" || len(h) != 0 {
		t.Errorf("form %v header %v: want client_id only", f, h)
	}
	if changed, _ := auth.Rotate(); !changed || reloads != 1 {
		t.Errorf("Rotate did not reload")
	}
	if changed, err := (TLSClientAuth{}).Rotate(); changed || err != nil {
		t.Errorf("Rotate without Reload = %v, %v", changed, err)
	}
}

func TestJWTBearerGrant(t *testing.T) {
	rsaK, _, _ := testKeys(t)
	dir := t.TempDir()
	kp, _ := LoadKeyPair(writeFile(t, filepath.Join(dir, "k.pem"), keyPEM(t, rsaK, "pkcs8")), "", KeyPairOptions{})
	signer, err := NewSigner(kp, "PS256", "")
	if err != nil {
		t.Fatal(err)
	}
	g := JWTBearer{Signer: signer, Assertion: Assertion{
		Issuer: "svc@example.iam", Subject: "svc-reporting", Audience: "https://idp.test/token",
		Claims:   map[string]string{"scope": "reports.read", "iss": "ignored", "jti": "fixed"},
		Lifetime: 5 * time.Minute,
	}}
	if g.Type() != "jwt_bearer" || g.KeepsRefreshToken() {
		t.Errorf("Type %q keeps refresh token %v", g.Type(), g.KeepsRefreshToken())
	}
	f1, err := g.Params(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f2, _ := g.Params(context.Background())
	if f1.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" || len(f1) != 2 {
		t.Fatalf("form %v", f1)
	}
	hdr, c := decodeJWS(t, f1.Get("assertion").Reveal(), rsaK.Public(), nil)
	_, c2 := decodeJWS(t, f2.Get("assertion").Reveal(), rsaK.Public(), nil)
	if hdr["alg"] != "PS256" || c["iss"] != "svc@example.iam" || c["sub"] != "svc-reporting" || c["aud"] != "https://idp.test/token" || c["scope"] != "reports.read" {
		t.Errorf("header %v claims %v", hdr, c)
	}
	if c["jti"] == "fixed" || c["jti"] == c2["jti"] {
		t.Errorf("jti %v then %v: want fresh ones", c["jti"], c2["jti"])
	}
	if exp, iat := c["exp"].(float64), c["iat"].(float64); exp-iat != 300 {
		t.Errorf("exp - iat = %v, want 300", exp-iat)
	}
}

// TestPrivateKeyJWTRotatesAfterInvalidClient: the server refuses the
// assertion (invalid_client); the Source reads the key file again and,
// as it changed, tries once more with the new key.
func TestPrivateKeyJWTRotatesAfterInvalidClient(t *testing.T) {
	rsaK, rsaK2, _ := testKeys(t)
	dir := t.TempDir()
	keyFile := writeFile(t, filepath.Join(dir, "k.pem"), keyPEM(t, rsaK, "pkcs8"))
	kp, err := LoadKeyPair(keyFile, "", KeyPairOptions{CheckEvery: time.Hour, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := NewSigner(kp, "", "")
	writeFile(t, keyFile, keyPEM(t, rsaK2, "pkcs8")) // rotated; the hourly check has not seen it
	idp := &fakeIdP{reply: func(n int64, r seen) (int, string) {
		parts := strings.Split(r.form.Get("client_assertion"), ".")
		digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
		sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
		if rsa.VerifyPKCS1v15(&rsaK2.PublicKey, crypto.SHA256, digest[:], sig) != nil {
			return 401, `{"error":"invalid_client"}`
		}
		return 200, `{"access_token":"ok","token_type":"Bearer","expires_in":3600}`
	}}
	s := newSource(t, idp, func(c *Config) {
		c.Client.Auth = PrivateKeyJWT{ClientID: "id", Audience: testTokenURL, Signer: signer}
	})
	mustToken(t, s)
	if n := idp.hits.Load(); n != 2 {
		t.Errorf("%d token requests, want 2 (refused, then the new key)", n)
	}
}
