package upstreams

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ACME is tls.acme: the listener's certificate from an ACME CA (RFC 8555),
// obtained at start and renewed in the background by certmagic, instead
// of cert_file and key_file. cmd/oauthproxy/internal/acme runs it.
type ACME struct {
	// Domains are the names the certificate is for; the first is served
	// to clients that send no server name.
	Domains []string `yaml:"domains"`
	// Email is the ACME account's contact for expiry notices; optional.
	Email string `yaml:"email"`
	// CA is the ACME directory URL (default: Let's Encrypt production).
	CA string `yaml:"ca"`
	// CARootFile holds PEM certificates that the CA's HTTPS is verified
	// against besides the system roots: a private ACME CA.
	CARootFile string `yaml:"ca_root_file"`
	// Storage is the directory of the account, keys and certificates,
	// kept across restarts (default $STATE_DIRECTORY/acme, else
	// /var/lib/oauthproxy/acme).
	Storage string `yaml:"storage"`
	// Challenge is tls-alpn-01 (default), answered on listen itself, or
	// http-01, answered on HTTPListen.
	Challenge ACMEChallenge `yaml:"challenge"`
	// HTTPListen is the host:port that answers http-01 challenges (the CA
	// asks on port 80); only with challenge: http-01.
	HTTPListen string    `yaml:"http_listen"`
	Pos        Positions `yaml:"-"`

	roots *x509.CertPool
}

// ACMEChallenge is tls.acme.challenge.
type ACMEChallenge string

// The challenges the listener answers. dns-01 (wildcards) is not offered:
// it needs a DNS provider's API and credentials.
const (
	ChallengeTLSALPN01 ACMEChallenge = "tls-alpn-01"
	ChallengeHTTP01    ACMEChallenge = "http-01"
)

// UnmarshalText implements encoding.TextUnmarshaler.
func (c *ACMEChallenge) UnmarshalText(b []byte) error {
	return enum(c, b, ChallengeTLSALPN01, ChallengeHTTP01)
}

// LetsEncryptCA is tls.acme.ca's default: Let's Encrypt's production
// directory.
const LetsEncryptCA = "https://acme-v02.api.letsencrypt.org/directory"

// DefaultACMEStorage is tls.acme.storage without $STATE_DIRECTORY (which
// systemd's StateDirectory= sets): where the container image and the
// systemd unit keep state.
const DefaultACMEStorage = "/var/lib/oauthproxy/acme"

// RootCAs is the pool the CA's HTTPS is verified against: the system's
// roots plus ca_root_file's; nil means the system's.
func (a *ACME) RootCAs() *x509.CertPool { return a.roots }

// ListenACME is tls.acme, nil when the listener has no ACME certificate.
func (c *Config) ListenACME() *ACME {
	if c.TLS == nil {
		return nil
	}
	return c.TLS.ACME
}

// acme checks tls.acme and applies its defaults. It reads ca_root_file and
// looks at the storage directory, which must be one the proxy can write.
func (v *validator) acme(t *ListenTLS) bool {
	a := t.ACME
	p, path := a.Pos, "tls.acme"
	ok := true
	if _, set := t.Pos["cert_file"]; set {
		v.addAt(at(t.Pos, "cert_file"), "tls.cert_file", "set acme or cert_file and key_file, not both: the certificate comes from one of them")
		ok = false
	} else if _, set := t.Pos["key_file"]; set {
		v.addAt(at(t.Pos, "key_file"), "tls.key_file", "set acme or cert_file and key_file, not both: the certificate comes from one of them")
		ok = false
	}

	if len(a.Domains) == 0 {
		v.addAt(at(p, "domains"), sub(path, "domains"), "needs at least one domain: the names the certificate is for")
		ok = false
	}
	seen := map[string]bool{}
	for i, d := range a.Domains {
		k := fmt.Sprintf("%s.domains[%d]", path, i)
		if msg := checkACMEDomain(d); msg != "" {
			v.addAt(at(p, "domains"), k, "%q: %s", d, msg)
			ok = false
		}
		if seen[strings.ToLower(d)] {
			v.addAt(at(p, "domains"), k, "%q is listed twice", d)
			ok = false
		}
		seen[strings.ToLower(d)] = true
	}
	if a.Email != "" && (!strings.Contains(a.Email, "@") || strings.ContainsAny(a.Email, " \t<>,")) {
		v.addAt(at(p, "email"), sub(path, "email"), "%q is not an email address", a.Email)
		ok = false
	}

	if a.CA == "" {
		if _, written := p["ca"]; written {
			v.addAt(at(p, "ca"), sub(path, "ca"), "is empty (the ACME directory URL; leave it out for Let's Encrypt)")
			ok = false
		}
		a.CA = LetsEncryptCA
	} else if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" || u.Host == "" {
		v.addAt(at(p, "ca"), sub(path, "ca"), "%q: want the https URL of an ACME directory (like %s)", a.CA, LetsEncryptCA)
		ok = false
	}
	if a.CARootFile != "" {
		pool, _, err := v.caPool(a.CARootFile, false)
		a.CARootFile = v.res.path(a.CARootFile)
		if err != nil {
			v.addAt(at(p, "ca_root_file"), sub(path, "ca_root_file"), "%v", err)
			ok = false
		} else {
			a.roots = pool
		}
	}

	if a.Storage == "" {
		if _, written := p["storage"]; written {
			v.addAt(at(p, "storage"), sub(path, "storage"), "is empty (the directory for the ACME account and certificates)")
			ok = false
		}
		a.Storage = DefaultACMEStorage
		if dirs, set := v.res.getenv("STATE_DIRECTORY"); set && dirs != "" {
			a.Storage = filepath.Join(strings.Split(dirs, ":")[0], "acme")
		}
	} else {
		a.Storage = v.res.path(a.Storage)
	}
	if err := writableDir(a.Storage); err != nil {
		v.addAt(at(p, "storage"), sub(path, "storage"), "%v", err)
		ok = false
	}

	defEnum(&a.Challenge, ChallengeTLSALPN01, p, "challenge")
	switch a.Challenge {
	case ChallengeHTTP01:
		v.missing(p, path, "http_listen", a.HTTPListen, " (the host:port that answers http-01 challenges; the CA asks on port 80)")
		if a.HTTPListen == "" {
			ok = false
			break
		}
		if _, hok := v.hostPort(at(p, "http_listen"), sub(path, "http_listen"), a.HTTPListen); !hok {
			ok = false
		} else if sameListener(a.HTTPListen, v.cfg.Listen) || sameListener(a.HTTPListen, v.cfg.AdminListen) {
			v.addAt(at(p, "http_listen"), sub(path, "http_listen"), "%q takes the port of listen or admin_listen", a.HTTPListen)
			ok = false
		}
	case ChallengeTLSALPN01:
		if a.HTTPListen != "" {
			v.addAt(at(p, "http_listen"), sub(path, "http_listen"), "only applies to challenge: http-01 (tls-alpn-01 is answered on listen)")
			ok = false
		}
	default: // did not decode: reported already
		ok = false
	}
	return ok
}

// checkACMEDomain says what is wrong with a domain to get a certificate
// for, or "".
func checkACMEDomain(d string) string {
	switch {
	case d == "":
		return "empty"
	case strings.HasPrefix(d, "*."):
		return "wildcards need the dns-01 challenge, which this version does not offer: list each name"
	case net.ParseIP(d) != nil:
		return "" // RFC 8738 IP identifiers: Let's Encrypt and private CAs issue them
	case strings.HasSuffix(d, ".") || strings.HasPrefix(d, ".") || len(d) > 253:
		return "not a host name"
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "not a host name"
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return "not a host name (want letters, digits, - and dots; an IDN in its xn-- form)"
			}
		}
	}
	return ""
}

// writableDir says why the proxy could not keep its ACME state in dir:
// dir, or the nearest directory above it that exists (certmagic creates
// the rest), must be a directory it may write to.
func writableDir(dir string) error {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if (errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) && d != filepath.Dir(d) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s: %s is not a directory", dir, d)
		}
		// access(2), not the mode bits: it answers for this process's user,
		// root included, and for read-only mounts.
		if err := syscall.Access(d, 0o2|0o1); err != nil { // W_OK|X_OK
			if d != filepath.Clean(dir) {
				return fmt.Errorf("%s does not exist and %s, where it would be created, is not writable by this process (%w)", dir, d, err)
			}
			return fmt.Errorf("%s is not writable by this process (%w): the ACME account and certificates are kept there", dir, err)
		}
		return nil
	}
}
