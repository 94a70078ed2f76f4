package e2e

import (
	"bufio"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The oidc-provider clients. Their secrets are canaries.
var (
	basicSecret = randomString("oidc-basic-secret-")
	postSecret  = randomString("oidc-post-secret-")
)

const apiResource = "https://api.e2e.test"

var oidc struct {
	once   sync.Once
	err    error
	issuer string
	cmd    *exec.Cmd
	out    *syncBuffer
	keys   map[string]*rsa.PublicKey
}

// needOIDC starts oidc-provider once for the suite and returns its issuer.
// Without Node.js it skips, unless OAUTHPROXY_E2E_REQUIRE_OIDC is set (CI).
func needOIDC(t *testing.T) string {
	t.Helper()
	oidc.once.Do(func() { oidc.err = startOIDC() })
	if oidc.err != nil {
		if os.Getenv("OAUTHPROXY_E2E_REQUIRE_OIDC") != "" {
			t.Fatalf("oidc-provider: %v", oidc.err)
		}
		t.Skipf("oidc-provider unavailable (%v): install Node.js and run npm ci in e2e/", oidc.err)
	}
	return oidc.issuer
}

func startOIDC() error {
	addCanary(basicSecret, postSecret)
	if _, err := exec.LookPath("node"); err != nil {
		return err
	}
	if _, err := os.Stat("node_modules/oidc-provider"); err != nil {
		// A fresh clone: install the locked version, as .ci/run does.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		npm := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		if out, err := npm.CombinedOutput(); err != nil {
			return fmt.Errorf("npm ci: %v\n%s", err, out)
		}
	}
	clients, _ := json.Marshal([]map[string]any{
		{"client_id": "basic-app", "client_secret": basicSecret, "grant_types": []string{"client_credentials"},
			"redirect_uris": []string{}, "response_types": []string{}, "token_endpoint_auth_method": "client_secret_basic"},
		{"client_id": "post-app", "client_secret": postSecret, "grant_types": []string{"client_credentials"},
			"redirect_uris": []string{}, "response_types": []string{}, "token_endpoint_auth_method": "client_secret_post"},
	})
	cmd := exec.Command("node", "idp/oidc.mjs")
	cmd.Env = append(os.Environ(), "OIDC_CLIENTS="+string(clients), "OIDC_TOKEN_TTL=300")
	out := &syncBuffer{}
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return err
	}
	oidc.cmd, oidc.out = cmd, out
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if iss, ok := strings.CutPrefix(line, "listening "); ok {
				first <- iss
			}
			out.Write([]byte(line + "\n"))
		}
	}()
	select {
	case oidc.issuer = <-first:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		return fmt.Errorf("did not start:\n%s", out)
	}
	keys, err := fetchJWKS(oidc.issuer)
	if err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	oidc.keys = keys
	return nil
}

func stopOIDC() {
	if oidc.cmd != nil {
		oidc.cmd.Process.Signal(syscall.SIGTERM)
		oidc.cmd.Wait()
	}
}

// oidcIssued counts the tokens oidc-provider has granted to a client.
func oidcIssued(clientID string) int {
	return strings.Count(oidc.out.String(), "issued "+clientID+"\n")
}

func fetchJWKS(issuer string) (map[string]*rsa.PublicKey, error) {
	resp, err := http.Get(issuer + "/.well-known/openid-configuration")
	if err != nil {
		return nil, err
	}
	var disc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	json.NewDecoder(resp.Body).Decode(&disc)
	resp.Body.Close()
	resp, err = http.Get(disc.JWKSURI)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct{ Kty, Kid, N, E string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return nil, err
	}
	keys := map[string]*rsa.PublicKey{}
	for _, k := range set.Keys {
		if k.Kty != "RSA" {
			continue
		}
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		e, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if err1 != nil || err2 != nil {
			return nil, errors.New("bad RSA key")
		}
		keys[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	if len(keys) == 0 {
		return nil, errors.New("no RSA keys")
	}
	return keys, nil
}

// verifyJWT checks an RS256 access token against the provider's JWKS, as a
// resource server would: signature, issuer, audience, expiry, client.
func verifyJWT(tok, wantClient string) (map[string]any, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errors.New("not a JWT")
	}
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var h struct{ Alg, Kid, Typ string }
	if err := json.Unmarshal(hb, &h); err != nil || h.Alg != "RS256" {
		return nil, fmt.Errorf("header %s", hb)
	}
	key, ok := oidc.keys[h.Kid]
	if !ok {
		return nil, fmt.Errorf("unknown kid %q", h.Kid)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, sum[:], sig); err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c map[string]any
	if err := json.Unmarshal(cb, &c); err != nil {
		return nil, err
	}
	if c["iss"] != oidc.issuer || c["aud"] != apiResource || c["client_id"] != wantClient {
		return nil, fmt.Errorf("claims %v", c)
	}
	if exp, _ := c["exp"].(float64); time.Now().Unix() >= int64(exp) {
		return nil, errors.New("expired")
	}
	return c, nil
}

func TestOIDCProviderClientCredentials(t *testing.T) {
	iss := needOIDC(t)
	for _, tc := range []struct {
		name, client, secret, auth string
	}{
		{"client_secret_basic", "basic-app", basicSecret, "client_secret_basic"},
		{"client_secret_post", "post-app", postSecret, "client_secret_post"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := newAPI(t, func(tok string) error { _, err := verifyJWT(tok, tc.client); return err })
			before := oidcIssued(tc.client)
			p := startProxy(t, config(up.URL, fmt.Sprintf(`    token_url: %s/token
    client_id: %s
    client_secret: %s
    client_auth: %s
    scopes: [orders.read]
    resource: %s`, iss, tc.client, tc.secret, tc.auth, apiResource)))

			r := get(t, p.base+"/api/orders?id=7&x=a%20b", "Authorization", "Bearer forged-by-the-client")
			if r.status != 200 {
				t.Fatalf("GET through the proxy: %d %s", r.status, r.body)
			}
			seen := up.last(t)
			claims, err := verifyJWT(seen.token, tc.client)
			if err != nil {
				t.Fatalf("the upstream got a token that does not verify: %v", err)
			}
			if claims["scope"] != "orders.read" {
				t.Errorf("scope claim = %v, want orders.read", claims["scope"])
			}
			if seen.uri != "/orders?id=7&x=a%20b" {
				t.Errorf("upstream saw %q", seen.uri)
			}
			for range 5 {
				if r := get(t, p.base+"/api/orders"); r.status != 200 {
					t.Fatalf("%d %s", r.status, r.body)
				}
			}
			if n := oidcIssued(tc.client) - before; n != 1 {
				t.Errorf("oidc-provider issued %d tokens for 6 requests, want 1 (cached)", n)
			}
		})
	}
}

func TestOIDCProviderRefusesWrongSecret(t *testing.T) {
	iss := needOIDC(t)
	wrong := randomString("wrong-secret-")
	addCanary(wrong)
	up := newAPI(t, func(string) error { return nil })
	p := startProxy(t, config(up.URL, fmt.Sprintf(`    token_url: %s/token
    client_id: basic-app
    client_secret: %s
    resource: %s`, iss, wrong, apiResource)))
	r := get(t, p.base+"/api/x")
	if r.status != 502 || r.errorCode() != "token_unavailable" {
		t.Fatalf("%d %s", r.status, r.body)
	}
	e := r.proxyError(t)
	if want := "token endpoint " + iss + "/token answered 401 invalid_client"; e["message"] != want {
		t.Errorf("message = %q, want %q", e["message"], want)
	}
	if up.hits.Load() != 0 {
		t.Error("a request reached the upstream without a token")
	}
	noLeak(t, "error body", r.body)
}

func TestTokenCommandAgainstOIDCProvider(t *testing.T) {
	iss := needOIDC(t)
	path := writeConfig(t, config("https://api.example.com", fmt.Sprintf(`    token_url: %s/token
    client_id: basic-app
    client_secret: %s
    scopes: [orders.read]
    resource: %s`, iss, basicSecret, apiResource)))
	out, code := run(t, nil, "token", "e2e", "-config", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	for _, want := range []string{"token_type:   Bearer", "scopes:       orders.read", `"iss": "` + iss + `"`, `"aud": "` + apiResource + `"`, "NOT verified", "-show prints it"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	noLeak(t, "token command output", out)
}
