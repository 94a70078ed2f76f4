package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestIonAPIFiles runs the binary on generated Infor .ionapi files, both
// variants, against a token endpoint that checks what Infor's would: the
// client's Basic credentials, and for a service account the password
// grant with saak as the username (tenant prefix and all) and sask as the
// password. No value of a file may reach the output, /tokens or /readyz.
func TestIonAPIFiles(t *testing.T) {
	cases := []struct {
		name      string
		service   bool
		wantGrant string
	}{
		{"service account", true, "password"},
		{"client only", false, "client_credentials"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ci, cs := "TENANT_TST~"+randomString("ci-"), randomString("cs-")
			saak, sask := "TENANT_TST#"+randomString("saak-"), randomString("sask-")
			addCanary(cs, sask, saak, ci)
			idp := newTokenServer(t, nil)
			idp.reply = func(_ int64, req tokenRequest) (int, map[string]string, string) {
				ok := req.basicUser == ci && req.basicPass == cs && req.params["grant_type"] == tc.wantGrant
				if tc.service {
					ok = ok && req.params["username"] == saak && req.params["password"] == sask
				}
				if !ok {
					return 401, nil, `{"error":"invalid_client"}`
				}
				return 200, nil, idp.okBody(idp.issue(), 3600, "")
			}
			up := newAPI(t, idp.verify)
			file := map[string]string{
				"ti": "TENANT_TST", "cn": "oauthproxy e2e", "dt": "12", "ci": ci, "cs": cs,
				"iu": up.URL, "pu": idp.URL + "/TENANT_TST/as/", "oa": "authorization.oauth2",
				"ot": "token.oauth2", "or": "revoke_token.oauth2", "ev": "U1234567890", "v": "1.0",
			}
			if tc.service {
				file["saak"], file["sask"] = saak, sask
			}
			data, _ := json.MarshalIndent(file, "", "  ")
			dir := t.TempDir()
			path := filepath.Join(dir, "tenant.ionapi")
			if err := os.WriteFile(path, append([]byte("\ufeff"), data...), 0o600); err != nil { // Infor's tools write a BOM
				t.Fatal(err)
			}
			p := startProxy(t, config(up.URL+"/TENANT_TST/M3", "    ionapi_file: "+path))
			r := get(t, p.base+"/api/m3api-rest/v2/execute/CRS610MI/LstByNumber")
			if r.status != 200 {
				t.Fatalf("%d %s\n%s", r.status, r.body, p.out)
			}
			if got := up.last(t).uri; got != "/TENANT_TST/M3/m3api-rest/v2/execute/CRS610MI/LstByNumber" {
				t.Errorf("upstream saw %s", got)
			}
			if reqs := idp.requests(); len(reqs) != 1 || !strings.HasPrefix(reqs[0].header.Get("Authorization"), "Basic ") {
				t.Errorf("token requests: %d", len(reqs))
			}
			for _, where := range []string{"/tokens", "/readyz", "/metrics"} {
				noLeak(t, where, get(t, p.admin+where).body)
			}
			out, code := run(t, nil, "check", "-config", p.cmd.Args[len(p.cmd.Args)-1])
			if code != 0 {
				t.Errorf("check: exit %d: %s", code, out)
			}
			noLeak(t, "check", out)
			noLeak(t, "the log", p.out.String())
		})
	}
}
