package e2e

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAdminTLSClientCerts: an admin listener beyond loopback with
// admin_tls serves the page, /tokens and the actions to a client with a
// certificate from client_ca_file (no admin_auth needed), 403 to one
// without, and the probes to anyone; check does not warn.
func TestAdminTLSClientCerts(t *testing.T) {
	serverCA, adminsCA := newPKI(t, "admin listener CA"), newPKI(t, "admins CA")
	cert, key, _ := serverCA.issue(t, "admin", nil, "127.0.0.1")
	_, _, admin := adminsCA.issue(t, "ops", nil)
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	port := freePort(t)
	cfg := strings.Replace(config(up.URL, "    token_url: "+idp.URL+"/t\n    client_id: a\n    client_secret: "+randomString("cs-")),
		"admin_listen: 127.0.0.1:0", fmt.Sprintf("admin_listen: 0.0.0.0:%d\nadmin_tls: {cert_file: %s, key_file: %s, client_ca_file: %s}", port, cert, key, adminsCA.file), 1)
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, nil, "check", "-config", path); code != 0 || strings.Contains(out, "reachable beyond this machine") {
		t.Errorf("check: exit %d\n%s", code, out)
	}
	p := start(t, nil, "run", "-config", path)
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	client := func(c *tls.Certificate) *http.Client {
		tc := &tls.Config{RootCAs: serverCA.pool()}
		if c != nil {
			tc.Certificates = []tls.Certificate{*c}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	}
	var status int
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := client(&admin).Get(base + "/tokens"); err == nil {
			status = resp.StatusCode
			resp.Body.Close()
			break
		}
	}
	if status != 200 {
		t.Fatalf("/tokens with an admin's certificate: %d\n%s", status, p.out)
	}
	if resp, err := client(&admin).Post(base+"/oauth2/e2e/renew", "", nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("renew with an admin's certificate: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
	for path, want := range map[string]int{"/healthz": 200, "/tokens": 403, "/": 403} {
		resp, err := client(nil).Get(base + path)
		if err != nil {
			t.Errorf("%s without a client certificate: %v", path, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s without a client certificate: %d, want %d", path, resp.StatusCode, want)
		}
	}
}
