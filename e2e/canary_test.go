package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSecretCanaries configures a unique canary as every secret the proxy
// holds, lets a token endpoint echo back everything it receives in its
// error descriptions and HTML pages, drives every error path, and asserts
// that no canary appears in any log line, error body, /tokens or /metrics.
// (TestMain also scans every output of the whole suite.)
func TestSecretCanaries(t *testing.T) {
	c := map[string]string{
		"client secret":   randomString("canary-cs-"),
		"password":        randomString("canary-pw-"),
		"refresh token":   randomString("canary-rt-"),
		"inbound key":     randomString("canary-key-"),
		"file secret":     randomString("canary-file-"),
		"proxy password":  randomString("canary-proxypw-"),
		"issued (echoed)": randomString("canary-issued-"),
	}
	for _, v := range c {
		addCanary(v)
	}
	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte(c["file secret"]+"\n"), 0o600)

	// The worst token endpoint: every error repeats the request back.
	idp := newTokenServer(t, nil)
	idp.reply = func(n int64, req tokenRequest) (int, map[string]string, string) {
		echo := fmt.Sprintf("%v %s %s %s", req.params, req.basicUser, req.basicPass, req.header.Get("Authorization"))
		switch n % 4 {
		case 0:
			return 401, nil, fmt.Sprintf(`{"error":"invalid_client","error_description":%q}`, "bad credentials: "+echo)
		case 1:
			return 500, map[string]string{"Content-Type": "text/html"}, "<html>" + echo + "</html>"
		case 2:
			return 200, nil, fmt.Sprintf(`{"access_token":%q,"token_type":"mac"}`, c["issued (echoed)"])
		}
		return 400, nil, fmt.Sprintf(`{"error":%q}`, echo)
	}
	up := newAPI(t, idp.verify)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()

	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
log: {level: debug, format: json}
inbound:
  require_header: {name: X-Proxy-Key, value: %[1]s}
oauth2:
  cc:
    token_url: %[2]s/token?api_key=%[3]s
    client_id: app
    client_secret: ${file:%[4]s}
    params: {pin: "%[3]s"}
  pw:
    grant_type: password
    token_url: %[2]s/token
    client_id: app
    client_secret: %[3]s
    client_auth: client_secret_post
    username: svc
    password: %[5]s
  rt:
    grant_type: refresh_token
    token_url: %[2]s/token
    client_id: app
    client_secret: %[3]s
    refresh_token: %[6]s
    proxy_url: http://user:%[7]s@%[8]s
routes:
  - {prefix: /cc/, upstream: "%[9]s/", oauth2: cc, max_body: 16}
  - {prefix: /pw/, upstream: "%[9]s/", oauth2: pw}
  - {prefix: /rt/, upstream: "%[9]s/", oauth2: rt}
  - {prefix: /down/, upstream: "http://%[8]s/", oauth2: cc}
`, c["inbound key"], idp.URL, c["client secret"], secretFile, c["password"], c["refresh token"], c["proxy password"], closed, up.URL)
	p := startProxy(t, cfg)
	key := []string{"X-Proxy-Key", c["inbound key"]}
	var seen []string
	for range 3 { // a few rounds, so every IdP failure mode comes up
		for _, path := range []string{"/cc/x", "/pw/x", "/rt/x", "/down/x", "/nowhere", "/cc/%2e%2e/x"} {
			r := get(t, p.base+path, key...)
			if r.status < 400 {
				t.Errorf("%s: %d, want an error", path, r.status)
			}
			seen = append(seen, r.body)
		}
		r := send(t, "POST", p.base+"/cc/x", strings.NewReader(strings.Repeat("z", 64)), key...)
		seen = append(seen, r.body, get(t, p.base+"/cc/x").body)
		time.Sleep(1100 * time.Millisecond) // past the backoff floor
		for _, name := range []string{"cc", "pw", "rt"} {
			run(t, nil, "token", name, "-config", writeConfig(t, cfg))
		}
	}
	seen = append(seen, get(t, p.admin+"/tokens").body, get(t, p.admin+"/metrics").body, get(t, p.admin+"/readyz").body)

	// A config whose problems sit next to secrets: check names them, never shows them.
	broken := strings.Replace(cfg, "proxy_url: http://user:", "proxy_url: ftp://user:", 1)
	broken = strings.Replace(broken, "client_id: app\n    client_secret: ${file:", "client_id: app\n    client_secrte: ${file:", 1)
	out, code := run(t, nil, "check", "-config", writeConfig(t, broken))
	if code != 1 {
		t.Errorf("check of a broken config: exit %d\n%s", code, out)
	}
	seen = append(seen, out)

	all := strings.Join(seen, "\n") + "\n" + p.out.String()
	if os.Getenv("CANARY_DUMP") != "" {
		t.Log(all)
	}
	for name, v := range c {
		if strings.Contains(all, v) {
			t.Errorf("the %s canary leaked", name)
		}
		if enc := url.QueryEscape(v); enc != v && strings.Contains(all, enc) {
			t.Errorf("the %s canary leaked, URL-encoded", name)
		}
	}
	if !bytes.Contains([]byte(all), []byte("invalid_client")) || !strings.Contains(all, "answered 500") {
		t.Errorf("the error paths were not driven:\n%s", all)
	}
}
