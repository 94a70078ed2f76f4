package upstreams

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const acmeRest = `
oauth2:
  a: {token_url: "https://idp.test/t", client_id: x, client_secret: y}
routes:
  - {prefix: /a/, upstream: "https://api.test/", oauth2: a}
`

// TestACMEDefaults: what an acme section without the optional keys means,
// and the listener's TLS it leads to before certmagic supplies a
// certificate.
func TestACMEDefaults(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	for _, tc := range []struct {
		name, doc   string
		env         []string
		wantStorage string
	}{
		{"without STATE_DIRECTORY", "tls: {acme: {domains: [proxy.example.com]}}", nil, DefaultACMEStorage},
		{"systemd's StateDirectory", "tls: {acme: {domains: [proxy.example.com]}}", []string{"STATE_DIRECTORY", state + ":/other"}, filepath.Join(state, "acme")},
		{"a relative storage is next to the config", "tls: {acme: {domains: [proxy.example.com], storage: certs}}", nil, filepath.Join(dir, "certs")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := "inbound: {allowed_hosts: [proxy.example.com]}\n" + tc.doc + acmeRest
			cfg, err := Parse(filepath.Join(dir, "c.yaml"), []byte(doc), env(tc.env...))
			if err != nil && tc.wantStorage == DefaultACMEStorage && writableDir(DefaultACMEStorage) != nil &&
				strings.Contains(err.Error(), "tls.acme.storage: "+DefaultACMEStorage) {
				return // not root: check refuses the default, as it should
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Warnings) > 0 {
				t.Errorf("warnings: %v", Problems(cfg.Warnings))
			}
			a := cfg.ListenACME()
			if a == nil {
				t.Fatal("ListenACME() = nil")
			}
			if a.CA != LetsEncryptCA || a.Challenge != ChallengeTLSALPN01 || a.Storage != tc.wantStorage || a.RootCAs() != nil {
				t.Errorf("ca %q, challenge %q, storage %q, roots %v; want %q, tls-alpn-01, %q, nil", a.CA, a.Challenge, a.Storage, a.RootCAs(), LetsEncryptCA, tc.wantStorage)
			}
			tc := cfg.ListenTLSConfig()
			if tc == nil || tc.GetCertificate == nil {
				t.Fatal("no listener TLS config")
			}
			if _, err := tc.GetCertificate(&tls.ClientHelloInfo{ServerName: "proxy.example.com"}); err == nil {
				t.Error("the listener has a certificate before the ACME manager runs")
			}
		})
	}
	if (&Config{}).ListenACME() != nil {
		t.Error("ListenACME() without tls is not nil")
	}
}

func TestACMEProblems(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "ca")
	c, k, _ := ca.issue(t, "srv", time.Now().Add(time.Hour))
	certFile, keyFile := writeTo(t, filepath.Join(dir, "tls.crt"), c), writeTo(t, filepath.Join(dir, "tls.key"), k)
	caFile := writeTo(t, filepath.Join(dir, "acme-ca.pem"), ca.pem)
	aFile := writeTo(t, filepath.Join(dir, "a-file"), []byte("x"))
	storage := "storage: " + filepath.Join(dir, "acme") + ", "
	tests := []struct {
		name, doc, want string
	}{
		{"no domains", "tls: {acme: {" + storage + "domains: []}}", "tls.acme.domains: needs at least one domain"},
		{"domains left out", "tls: {acme: {" + storage + "email: ops@example.com}}", "tls.acme.domains: needs at least one domain"},
		{"a wildcard", "tls: {acme: {" + storage + "domains: ['*.example.com']}}", `tls.acme.domains[0]: "*.example.com": wildcards need the dns-01 challenge`},
		{"not a host name", "tls: {acme: {" + storage + "domains: [proxy.example.com, 'a b.example.com']}}", `tls.acme.domains[1]: "a b.example.com": not a host name`},
		{"a URL for a domain", "tls: {acme: {" + storage + "domains: ['https://proxy.example.com']}}", `"https://proxy.example.com": not a host name`},
		{"a domain twice", "tls: {acme: {" + storage + "domains: [a.example.com, A.example.com]}}", `tls.acme.domains[1]: "A.example.com" is listed twice`},
		{"with cert_file", "tls: {cert_file: " + certFile + ", acme: {" + storage + "domains: [a.example.com]}}", "tls.cert_file: set acme or cert_file and key_file, not both"},
		{"with key_file", "tls: {key_file: " + keyFile + ", acme: {" + storage + "domains: [a.example.com]}}", "tls.key_file: set acme or cert_file and key_file, not both"},
		{"an http CA", "tls: {acme: {" + storage + "domains: [a.example.com], ca: 'http://acme.internal/directory'}}", `tls.acme.ca: "http://acme.internal/directory": want the https URL of an ACME directory`},
		{"an empty CA", "tls: {acme: {" + storage + "domains: [a.example.com], ca: ''}}", "tls.acme.ca: is empty"},
		{"ca_root_file without certificates", "tls: {acme: {" + storage + "domains: [a.example.com], ca_root_file: " + keyFile + "}}", "tls.acme.ca_root_file: " + keyFile + " contains no certificates"},
		{"ca_root_file missing", "tls: {acme: {" + storage + "domains: [a.example.com], ca_root_file: " + filepath.Join(dir, "none.pem") + "}}", "tls.acme.ca_root_file: "},
		{"a bad email", "tls: {acme: {" + storage + "domains: [a.example.com], email: ops}}", `tls.acme.email: "ops" is not an email address`},
		{"storage is a file", "tls: {acme: {storage: " + aFile + ", domains: [a.example.com]}}", "tls.acme.storage: " + aFile + ": " + aFile + " is not a directory"},
		{"storage under a file", "tls: {acme: {storage: " + aFile + "/acme, domains: [a.example.com]}}", "is not a directory"},
		{"an empty storage", "tls: {acme: {storage: '', domains: [a.example.com]}}", "tls.acme.storage: is empty"},
		{"an unknown challenge", "tls: {acme: {" + storage + "domains: [a.example.com], challenge: dns-01}}", `"dns-01" is not one of tls-alpn-01, http-01`},
		{"http-01 without http_listen", "tls: {acme: {" + storage + "domains: [a.example.com], challenge: http-01}}", "tls.acme: missing http_listen (the host:port that answers http-01 challenges"},
		{"http_listen with tls-alpn-01", "tls: {acme: {" + storage + "domains: [a.example.com], http_listen: ':80'}}", "tls.acme.http_listen: only applies to challenge: http-01"},
		{"http_listen not host:port", "tls: {acme: {" + storage + "domains: [a.example.com], challenge: http-01, http_listen: '80'}}", `tls.acme.http_listen: "80" is not host:port`},
		{"http_listen on listen's port", "listen: 127.0.0.1:8443\ntls: {acme: {" + storage + "domains: [a.example.com], challenge: http-01, http_listen: ':8443'}}", `tls.acme.http_listen: ":8443" takes the port of listen or admin_listen`},
		{"on the admin listener", "admin_tls: {acme: {" + storage + "domains: [a.example.com]}}", "admin_tls.acme: is for the proxy listener (tls) only"},
		{"an unknown key", "tls: {acme: {" + storage + "domains: [a.example.com], agree: true}}", "agree"},
		{"on a unix socket", "listen: unix:/tmp/p.sock\ntls: {acme: {" + storage + "domains: [a.example.com], ca_root_file: " + caFile + "}}", "tls: listen is a unix socket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(filepath.Join(dir, "c.yaml"), []byte(tc.doc+acmeRest), env())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse = %v\nwant a problem with %q", err, tc.want)
			}
		})
	}
}

// TestACMEValid: configs check accepts, and the warning for a domain the
// Host check would refuse.
func TestACMEValid(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "acme CA")
	caFile := writeTo(t, filepath.Join(dir, "acme-ca.pem"), ca.pem)
	storage := filepath.Join(dir, "acme")
	tests := []struct {
		name, doc string
		warn      string // "" for none
	}{
		{"private CA, http-01",
			"inbound: {allowed_hosts: [proxy.internal]}\ntls: {acme: {ca: 'https://acme.internal/directory', ca_root_file: " + caFile + ", email: ops@example.com, domains: [proxy.internal], storage: " + storage + ", challenge: http-01, http_listen: ':80'}}", ""},
		{"inbound mTLS and an IP", "listen: 0.0.0.0:8443\ninbound: {allowed_hosts: [proxy.internal]}\ntls: {client_ca_file: " + caFile + ", require_client_cert: true, acme: {domains: [proxy.internal, 192.0.2.10], storage: " + storage + "}}", ""},
		{"the listen host is allowed", "listen: proxy.internal:8443\ninbound: {allow_cidrs: [10.0.0.0/8]}\ntls: {acme: {domains: [proxy.internal], storage: " + storage + "}}", ""},
		{"the certificate's domains pass the Host check by themselves", "tls: {acme: {domains: [proxy.internal], storage: " + storage + "}}", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse(filepath.Join(dir, "c.yaml"), []byte(tc.doc+acmeRest), env())
			if err != nil {
				t.Fatal(err)
			}
			got := Problems(cfg.Warnings).Error()
			if tc.warn == "" && len(cfg.Warnings) > 0 || tc.warn != "" && !strings.Contains(got, tc.warn) {
				t.Errorf("warnings: %q, want %q", got, tc.warn)
			}
			if _, err := os.Stat(storage); err == nil {
				t.Error("check created the storage directory")
			}
		})
	}
}

func TestCheckACMEDomain(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"proxy.example.com", true},
		{"xn--bcher-kva.example", true},
		{"localhost", true},
		{"192.0.2.1", true},
		{"2001:db8::1", true},
		{"", false},
		{"*.example.com", false},
		{"proxy.example.com.", false},
		{".example.com", false},
		{"a..b", false},
		{"-a.example.com", false},
		{"a_b.example.com", false},
		{"bücher.example", false},
		{"proxy.example.com:443", false},
		{strings.Repeat("a", 64) + ".example", false},
	} {
		if got := checkACMEDomain(tc.in) == ""; got != tc.ok {
			t.Errorf("checkACMEDomain(%q) = %q, want ok=%v", tc.in, checkACMEDomain(tc.in), tc.ok)
		}
	}
}
