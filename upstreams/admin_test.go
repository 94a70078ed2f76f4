package upstreams

import (
	"strings"
	"testing"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

func TestAdminAccess(t *testing.T) {
	const rest = `
oauth2:
  a: {token_url: "https://idp/t", client_id: x, client_secret: y}
routes:
  - {prefix: /a/, upstream: "https://api/", oauth2: a}
`
	tests := []struct {
		name, yaml string
		warn       string // a warning that must appear; "" means none about admin_*
	}{
		{"loopback without auth", "admin_listen: 127.0.0.1:9090", ""},
		{"beyond loopback without auth", "admin_listen: 0.0.0.0:9090",
			`admin_listen: "0.0.0.0:9090" is reachable beyond this machine: the admin page, /tokens, sign-in and the actions answer 403 there until admin_auth or admin_tls with client_ca_file is set`},
		{"beyond loopback with auth", "admin_listen: 0.0.0.0:9090\nadmin_auth: {username: ops, password: \"${P}\"}", ""},
		{"password in the file", "admin_auth: {username: ops, password: a-long-password-in-the-file}",
			"admin_auth.password: written in the file"},
		{"short password", "admin_auth: {username: ops, password: \"${SHORT}\"}",
			"admin_auth.password: only 5 characters"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("c.yaml", []byte(tc.yaml+rest), env("P", "a-password-of-some-length", "SHORT", "short"))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range cfg.Warnings {
				if strings.Contains(w.Msg, "admin_") {
					got = append(got, w.Msg)
				}
			}
			switch {
			case tc.warn == "" && len(got) > 0:
				t.Errorf("warnings = %q, want none about admin_*", got)
			case tc.warn != "" && (len(got) != 1 || !strings.Contains(got[0], tc.warn)):
				t.Errorf("warnings = %q, want one containing %q", got, tc.warn)
			}
		})
	}
}

func TestAdminPasswordIsASecret(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`
admin_auth: {username: ops, password: "${P}"}
admin_hosts: [admin.example.com]
oauth2:
  a: {token_url: "https://idp/t", client_id: x, client_secret: y}
routes:
  - {prefix: /a/, upstream: "https://api/", oauth2: a}
`), env("P", "canary-admin-password"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AdminAuth == nil || cfg.AdminAuth.Username != "ops" || cfg.AdminAuth.Password.Reveal() != "canary-admin-password" {
		t.Fatalf("admin_auth = %+v, want username ops and the password of ${P}", cfg.AdminAuth)
	}
	if len(cfg.AdminHosts) != 1 || cfg.AdminHosts[0] != "admin.example.com" {
		t.Errorf("admin_hosts = %q", cfg.AdminHosts)
	}
	sc := tokencache.NewScrubber()
	cfg.AddSecrets(sc)
	if got := sc.Scrub("pw canary-admin-password"); strings.Contains(got, "canary") {
		t.Errorf("after AddSecrets, Scrub = %q; want the admin password removed", got)
	}
}
