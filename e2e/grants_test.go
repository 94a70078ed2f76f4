package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPasswordGrant: a service account (the Infor ION API Gateway way):
// client_secret_post plus username and password; the refresh token that
// comes back is used for the next token.
func TestPasswordGrant(t *testing.T) {
	secret, password := randomString("cs-"), randomString("pw-")
	addCanary(secret, password)
	idp := newTokenServer(t, nil)
	var refreshes atomic.Int64
	idp.reply = func(n int64, req tokenRequest) (int, map[string]string, string) {
		if req.params["client_id"] != "ion-app" || req.params["client_secret"] != secret {
			return 401, nil, `{"error":"invalid_client"}`
		}
		switch req.params["grant_type"] {
		case "password":
			if req.params["username"] != "TENANT#svc" || req.params["password"] != password {
				return 400, nil, `{"error":"invalid_grant"}`
			}
		case "refresh_token":
			if !strings.HasPrefix(req.params["refresh_token"], "e2e-token-") {
				return 400, nil, `{"error":"invalid_grant"}`
			}
			refreshes.Add(1)
		default:
			return 400, nil, `{"error":"unsupported_grant_type"}`
		}
		return 200, nil, idp.okBody(idp.issue(), 3600, fmt.Sprintf(`,"refresh_token":%q`, idp.issue()))
	}
	up := newAPI(t, idp.verify)
	up.reject = func(n int64, tok string) bool { return n == 1 } // the first token is refused once
	p := startProxy(t, config(up.URL, `    grant_type: password
    token_url: `+idp.URL+`/as/token.oauth2
    client_id: ion-app
    client_secret: `+secret+`
    client_auth: client_secret_post
    username: "TENANT#svc"
    password: `+password))
	r := get(t, p.base+"/api/M3/m3api-rest/execute")
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	reqs := idp.requests()
	if len(reqs) != 2 || reqs[0].params["grant_type"] != "password" || reqs[1].params["grant_type"] != "refresh_token" {
		t.Fatalf("token requests: %+v", reqs)
	}
	if reqs[0].basicUser != "" {
		t.Error("client_secret_post also sent Basic credentials")
	}
	if up.hits.Load() != 2 {
		t.Errorf("upstream saw %d requests, want 2 (one 401, one retry)", up.hits.Load())
	}
}

// TestRefreshTokenGrant starts from a configured refresh token and uses
// each rotated one for the next renewal.
func TestRefreshTokenGrant(t *testing.T) {
	first := randomString("rt-")
	addCanary(first)
	idp := newTokenServer(t, nil)
	var mu sync.Mutex
	current := first
	idp.reply = func(n int64, req tokenRequest) (int, map[string]string, string) {
		mu.Lock()
		defer mu.Unlock()
		if req.params["grant_type"] != "refresh_token" || req.params["refresh_token"] != current {
			return 400, nil, `{"error":"invalid_grant","error_description":"refresh token reused or unknown"}`
		}
		current = idp.issue() // rotate
		return 200, nil, idp.okBody(idp.issue(), 3600, fmt.Sprintf(`,"refresh_token":%q`, current))
	}
	up := newAPI(t, idp.verify)
	up.reject = func(n int64, tok string) bool { return n == 1 }
	p := startProxy(t, config(up.URL, `    grant_type: refresh_token
    token_url: `+idp.URL+`/token
    client_id: app
    client_secret: `+randomString("cs-")+`
    refresh_token: `+first))
	if r := get(t, p.base+"/api/x"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	reqs := idp.requests()
	if len(reqs) != 2 || reqs[0].params["refresh_token"] != first || reqs[1].params["refresh_token"] == first {
		t.Errorf("refresh tokens sent: %d requests, first %v", len(reqs), reqs[0].params["refresh_token"] == first)
	}
}

// TestRetryReplaysTheBody: the upstream rejects the first token; the proxy
// gets a new one and sends the same bytes again, once. A body over
// retry_body_limit streams through once and its 401 reaches the client.
func TestRetryReplaysTheBody(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	up.reject = func(n int64, tok string) bool { return n == 1 || n == 3 }
	p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-"),
		"    retry_body_limit: 256KiB"))

	body := make([]byte, 200<<10)
	rand.Read(body)
	sum := sha256.Sum256(body)
	r := send(t, "POST", p.base+"/api/upload", bytes.NewReader(body), "Content-Type", "application/octet-stream")
	if r.status != 200 || !strings.Contains(r.body, hex.EncodeToString(sum[:])) {
		t.Fatalf("%d %s", r.status, r.body)
	}
	reqs := up.requests()
	if len(reqs) != 2 || !bytes.Equal(reqs[0].body, body) || !bytes.Equal(reqs[1].body, body) || reqs[0].token == reqs[1].token {
		t.Fatalf("upstream saw %d requests; want 2 with the same body and different tokens", len(reqs))
	}
	if m := get(t, p.admin+"/metrics").body; !strings.Contains(m, `oauthproxy_upstream_retries_total{route="/api/"} 1`) {
		t.Errorf("retry not counted:\n%s", grep(m, "retries"))
	}

	big := make([]byte, 300<<10)
	r = send(t, "POST", p.base+"/api/upload", bytes.NewReader(big))
	if r.status != http.StatusUnauthorized || len(up.requests()) != 3 {
		t.Errorf("over the limit: %d after %d upstream requests; want the 401 after 1 more", r.status, len(up.requests()))
	}
	if last := up.last(t); len(last.body) != len(big) {
		t.Errorf("the streamed body arrived with %d bytes, want %d", len(last.body), len(big))
	}
}

// TestColdBurst: 1000 concurrent requests to a proxy with no token yet make
// one token request.
func TestColdBurst(t *testing.T) {
	idp := newTokenServer(t, nil)
	idp.delay = 300 * 1e6 // the token takes a while: everyone piles up
	up := newAPI(t, idp.verify)
	p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-")))
	const n = 1000
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for range n {
		wg.Go(func() {
			resp, err := client.Get(p.base + "/api/burst")
			if err != nil || resp.StatusCode != 200 {
				bad.Add(1)
			}
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if bad.Load() > 0 {
		t.Errorf("%d of %d requests failed", bad.Load(), n)
	}
	if got := idp.hits.Load(); got != 1 {
		t.Errorf("token requests for a cold burst of %d = %d, want 1", n, got)
	}
	t.Logf("cold burst of %d concurrent requests: %d token request(s)", n, idp.hits.Load())
}

// TestClientSecretRotation: the client secret lives in a file (a Kubernetes
// secret). It is rotated: the IdP stops taking the old one, the file gets
// the new one. The proxy carries on with the new secret, no restart: the
// file watcher reloads the entry, or, if a renewal comes first, the
// invalid_client answer makes it read the file again (the tokencache
// tests pin that path down).
func TestClientSecretRotation(t *testing.T) {
	oldSecret, newSecret := randomString("cs-old-"), randomString("cs-new-")
	addCanary(oldSecret, newSecret)
	var mu sync.Mutex
	accepted := oldSecret
	idp := newTokenServer(t, nil)
	idp.reply = func(n int64, req tokenRequest) (int, map[string]string, string) {
		mu.Lock()
		defer mu.Unlock()
		if req.basicPass != accepted {
			return 401, nil, `{"error":"invalid_client"}`
		}
		return 200, nil, idp.okBody(idp.issue(), 3600, "")
	}
	file := filepath.Join(t.TempDir(), "client-secret")
	os.WriteFile(file, []byte(oldSecret+"\n"), 0o600)
	up := newAPI(t, idp.verify)
	p := startProxy(t, config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: ${file:"+file+"}"))
	if r := get(t, p.base+"/api/x"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}

	mu.Lock()
	accepted = newSecret
	mu.Unlock()
	os.WriteFile(file, []byte(newSecret+"\n"), 0o600)
	up.mu.Lock()
	up.reject = func(n int64, tok string) bool { return n == 2 } // the old token is revoked too
	up.mu.Unlock()
	time.Sleep(1100 * time.Millisecond) // past the pacing floor between token requests
	if r := get(t, p.base+"/api/x"); r.status != 200 {
		t.Fatalf("after rotation: %d %s", r.status, r.body)
	}
	reloaded := false
	for _, l := range p.logLines("config reloaded") {
		reloaded = reloaded || l["oauth2_new"] == float64(1)
	}
	if !reloaded && len(p.logLines("the client credentials changed on disk; trying the new ones")) != 1 {
		t.Errorf("no log line about the rotation:\n%s", p.out)
	}
}
