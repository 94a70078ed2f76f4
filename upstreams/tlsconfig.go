package upstreams

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// TLS is the `tls:` of an oauth2 entry (its token, device and revocation
// endpoints) or of a route (its upstream): how outbound connections are
// verified and which client certificate they present.
type TLS struct {
	// CAFile holds PEM certificates trusted besides the system's roots;
	// with CAOnly, instead of them.
	CAFile string `yaml:"ca_file"`
	CAOnly bool   `yaml:"ca_only"`
	// CertFile and KeyFile are the client certificate (mTLS, and the
	// credential of tls_client_auth). Both are read again when they
	// change: new connections use the new pair.
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"` // default: the URL's host
	// MinVersion is 1.2 (default) or 1.3.
	MinVersion TLSVersion `yaml:"min_version"`
	// InsecureSkipVerify accepts any server certificate: a warning at
	// every start and on /tokens.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// CADigest is the SHA-256 of ca_file's content as loaded, so that a
	// changed CA file makes a changed entry (fingerprint) and a new pool.
	CADigest string    `yaml:"-"`
	Pos      Positions `yaml:"-"`

	ready *clientTLS // built by validation
	// active is the clientTLS of the transport the entry's requests use
	// (shared with other entries, or taken over from the previous runtime).
	active atomic.Pointer[clientTLS]
}

// TLSVersion is tls.min_version.
type TLSVersion string

// UnmarshalText implements encoding.TextUnmarshaler.
func (v *TLSVersion) UnmarshalText(b []byte) error { return enum(v, b, "1.2", "1.3") }

// clientTLS is a tls: section made ready to dial with: the tls.Config and
// the client certificate it re-reads.
type clientTLS struct {
	config *tls.Config
	keys   *tokencache.KeyPair // nil without cert_file
	// closeIdle closes the idle connections of the one transport that
	// dials with config; set when that transport is built.
	closeIdle func()
}

// transportKey identifies what the transport's TLS does, so that routes and
// entries with the same settings share a pool and different ones never do.
// File paths and the CA's digest, never a secret.
func (t *TLS) transportKey() string {
	if t == nil {
		return "none"
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "%q %v %q %q %q %q %v %s", t.CAFile, t.CAOnly, t.CertFile, t.KeyFile,
		t.ServerName, t.MinVersion, t.InsecureSkipVerify, t.CADigest))
	return hex.EncodeToString(sum[:8])
}

// reloadClientCert reads the client certificate of the entry's transport
// again (tls_client_auth after invalid_client) and, when it changed,
// closes idle connections so that the retry handshakes with it.
func (t *TLS) reloadClientCert() (bool, error) {
	if t == nil {
		return false, nil
	}
	ct := t.active.Load()
	if ct == nil || ct.keys == nil {
		return false, nil
	}
	changed, err := ct.keys.Reload()
	if changed && ct.closeIdle != nil {
		ct.closeIdle()
	}
	return changed, err
}

// checkTLS checks a tls: section and loads its files, reporting every
// problem at its line: check names the file and what is wrong with it.
// Unlike the rest of validation it reads files; relative paths are read
// next to the config file. ca_file is part of the config (a change reloads
// it); the client certificate is re-read on its own.
func (v *validator) checkTLS(path string, t *TLS) {
	if t == nil {
		return
	}
	path = sub(path, "tls")
	p := t.Pos
	for _, f := range []*string{&t.CertFile, &t.KeyFile} { // ca_file: caPool reads it through the resolver
		if *f != "" {
			*f = v.res.path(*f)
		}
	}
	ct := &clientTLS{config: &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}}
	if t.MinVersion == "1.3" {
		ct.config.MinVersion = tls.VersionTLS13
	}
	ok := true
	if t.ServerName != "" && strings.ContainsAny(t.ServerName, ":/ []") {
		v.addAt(at(p, "server_name"), path+".server_name", "%q: want a host name without port or scheme", t.ServerName)
		ok = false
	}
	if t.CAOnly && t.CAFile == "" {
		v.addAt(at(p, "ca_only"), path+".ca_only", "needs ca_file: the only CA to trust")
		ok = false
	}
	if t.InsecureSkipVerify {
		ct.config.InsecureSkipVerify = true
		v.warnAt(at(p, "insecure_skip_verify"), path+".insecure_skip_verify",
			"the server's certificate is not verified: whoever sits on the network path can impersonate the server and read the tokens and credentials sent to it")
	}
	if t.CAFile != "" {
		pool, digest, err := v.caPool(t.CAFile, t.CAOnly)
		t.CAFile = v.res.path(t.CAFile)
		if err != nil {
			v.addAt(at(p, "ca_file"), path+".ca_file", "%v", err)
			ok = false
		} else {
			ct.config.RootCAs, t.CADigest = pool, digest
		}
	}
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		v.addAt(at(p, "cert_file"), path+".cert_file", "needs key_file: the private key of the client certificate")
		ok = false
	case t.KeyFile != "" && t.CertFile == "":
		v.addAt(at(p, "key_file"), path+".key_file", "needs cert_file: the client certificate of the key")
		ok = false
	case t.CertFile != "":
		kp, err := tokencache.LoadKeyPair(t.KeyFile, t.CertFile, tokencache.KeyPairOptions{})
		if err != nil {
			key := "key_file"
			if msg := err.Error(); strings.Contains(msg, t.CertFile) && !strings.Contains(msg, "does not match") {
				key = "cert_file"
			}
			v.addAt(at(p, key), path+"."+key, "%v", err)
			ok = false
			break
		}
		v.certExpiry(at(p, "cert_file"), path+".cert_file", t.CertFile, kp.Current().Certs[0])
		ct.keys = kp
		ct.config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			// Whatever CAs the server asks for: it decides, and a
			// certificate it refuses says more than none.
			return kp.Current().TLSCertificate(), nil
		}
	}
	if ok {
		t.ready = ct
	}
}

// routeTLS checks a route's tls: section.
func (v *validator) routeTLS(path string, r *Route) {
	v.checkTLS(path, r.TLS)
	if r.TLS != nil && !r.Upstream.IsZero() && r.Upstream.Scheme == "http" {
		v.warnAt(at(r.Pos, "tls"), sub(path, "tls"), "upstream is plain http: tls applies to https upstreams only")
	}
}

// maxCABytes bounds a ca_file: the Mozilla bundle is about 250 KiB.
const maxCABytes = 4 << 20

// caPool reads a CA file into a pool: the system's roots plus the file's,
// or with only the file's.
func (v *validator) caPool(file string, only bool) (*x509.CertPool, string, error) {
	data, err := v.res.readFile(file, maxCABytes) // recorded: a changed CA file reloads the config
	file = v.res.path(file)
	if err != nil {
		return nil, "", err
	}
	certs, err := tokencache.ParseCertificates(file, data)
	if err != nil {
		return nil, "", err
	}
	pool := x509.NewCertPool()
	if !only {
		if sys, err := x509.SystemCertPool(); err == nil {
			pool = sys
		}
	}
	for _, c := range certs {
		pool.AddCert(c)
	}
	sum := sha256.Sum256(data)
	return pool, hex.EncodeToString(sum[:]), nil
}

// certExpiry warns about a certificate the server will refuse.
func (v *validator) certExpiry(p Pos, path, file string, c *x509.Certificate) {
	now := time.Now()
	switch {
	case now.After(c.NotAfter):
		v.warnAt(p, path, "the certificate in %s expired on %s: servers will refuse it", file, c.NotAfter.UTC().Format(time.DateOnly))
	case now.Before(c.NotBefore):
		v.warnAt(p, path, "the certificate in %s is not valid before %s", file, c.NotBefore.UTC().Format(time.RFC3339))
	}
}

// tlsWarnings are what /tokens shows of an entry's TLS settings: the
// contract's "warnings": ["tls.insecure_skip_verify"].
func (o *OAuth2) tlsWarnings() []string {
	if o.TLS != nil && o.TLS.InsecureSkipVerify {
		return []string{"tls.insecure_skip_verify"}
	}
	return nil
}

// SetLogger sends what the key and certificate files of c report when they
// are read again (a rotation, a half-written file) to log.
func (c *Config) SetLogger(log *slog.Logger) {
	set := func(kp *tokencache.KeyPair) {
		if kp != nil {
			kp.SetLogger(log)
		}
	}
	for _, o := range c.OAuth2 {
		if o == nil {
			continue
		}
		if o.TLS != nil && o.TLS.ready != nil {
			set(o.TLS.ready.keys)
		}
		if o.signer != nil {
			set(o.signer.Keys)
		}
	}
	for _, r := range c.Routes {
		if r != nil && r.TLS != nil && r.TLS.ready != nil {
			set(r.TLS.ready.keys)
		}
	}
	if c.TLS != nil {
		set(c.TLS.keys)
	}
}

// ListenTLS is the top-level tls: HTTPS on listen, with a certificate and
// key from files that are read again when they change, or from an ACME CA,
// and inbound mTLS.
type ListenTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ACME, instead of CertFile and KeyFile, gets the certificate from an
	// ACME CA and renews it.
	ACME *ACME `yaml:"acme"`
	// ClientCAFile holds the CAs whose client certificates are accepted.
	ClientCAFile string `yaml:"client_ca_file"`
	// RequireClientCert refuses, at the handshake, a client without a
	// certificate from ClientCAFile. It counts as an inbound control.
	RequireClientCert bool       `yaml:"require_client_cert"`
	MinVersion        TLSVersion `yaml:"min_version"` // 1.2 (default) | 1.3
	// ClientCADigest is the SHA-256 of client_ca_file as loaded.
	ClientCADigest string    `yaml:"-"`
	Pos            Positions `yaml:"-"`

	keys  *tokencache.KeyPair
	ready *tls.Config
}

func (t *ListenTLS) requiresClientCert() bool { return t != nil && t.RequireClientCert }

// AdminTLSConfig is the TLS of the admin listener (admin_tls), nil for
// plain HTTP.
func (c *Config) AdminTLSConfig() *tls.Config {
	if c.AdminTLS == nil {
		return nil
	}
	return c.AdminTLS.ready
}

// AdminClientCerts reports whether the admin listener verifies client
// certificates (admin_tls.client_ca_file): a request with a verified one
// is admitted as one with the admin_auth login is. Without
// require_client_cert, probes still connect without a certificate.
func (c *Config) AdminClientCerts() bool { return c.AdminTLS != nil && c.AdminTLS.ClientCAFile != "" }

// ListenTLSConfig is the TLS of the proxy listener, nil for plain HTTP.
// Its certificate is read again when its files change: new connections
// get the new one. Other changes to tls take a restart. With tls.acme it
// has no certificate until cmd/oauthproxy/internal/acme supplies them:
// its handshakes fail rather than go without.
func (c *Config) ListenTLSConfig() *tls.Config {
	if c.TLS == nil {
		return nil
	}
	return c.TLS.ready
}

// listenTLS checks the top-level tls: section and loads its files.
func (v *validator) listenTLS() {
	v.serverTLS(v.cfg.TLS, "tls", "listen", v.cfg.Listen)
	v.serverTLS(v.cfg.AdminTLS, "admin_tls", "admin_listen", v.cfg.AdminListen)
}

// serverTLS checks a listener's tls section (path) for the listener of
// the key listenKey, and loads its files.
func (v *validator) serverTLS(t *ListenTLS, path, listenKey, listen string) {
	if t == nil {
		return
	}
	p := t.Pos
	ok := true
	if strings.HasPrefix(listen, "unix:") {
		v.addAt(p[""], path, "%s is a unix socket: %s applies to a host:port listener", listenKey, path)
		ok = false
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if t.MinVersion == "1.3" {
		cfg.MinVersion = tls.VersionTLS13
	}
	switch {
	case t.ACME != nil && path != "tls":
		// One certificate manager per process, for the proxy listener.
		v.addAt(at(p, "acme"), path+".acme", "is for the proxy listener (tls) only: give %s cert_file and key_file", path)
		ok = false
	case t.ACME != nil:
		ok = v.acme(t) && ok
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return nil, errors.New("tls.acme: the certificate manager is not running")
		}
	case t.CertFile != "" && t.KeyFile != "":
		t.CertFile, t.KeyFile = v.res.path(t.CertFile), v.res.path(t.KeyFile)
		kp, err := tokencache.LoadKeyPair(t.KeyFile, t.CertFile, tokencache.KeyPairOptions{})
		if err != nil {
			key := "key_file"
			if msg := err.Error(); strings.Contains(msg, t.CertFile) && !strings.Contains(msg, "does not match") {
				key = "cert_file"
			}
			v.addAt(at(p, key), path+"."+key, "%v", err)
			ok = false
			break
		}
		v.certExpiry(at(p, "cert_file"), path+".cert_file", t.CertFile, kp.Current().Certs[0])
		t.keys = kp
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return kp.Current().TLSCertificate(), nil
		}
	default:
		v.missing(p, path, "cert_file", t.CertFile, " (the certificate the listener presents), or acme")
		v.missing(p, path, "key_file", t.KeyFile, "")
		ok = false
	}
	switch {
	case t.ClientCAFile != "":
		pool, digest, err := v.caPool(t.ClientCAFile, true)
		t.ClientCAFile = v.res.path(t.ClientCAFile)
		if err != nil {
			v.addAt(at(p, "client_ca_file"), path+".client_ca_file", "%v", err)
			ok = false
			break
		}
		cfg.ClientCAs, t.ClientCADigest = pool, digest
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if t.RequireClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	case t.RequireClientCert:
		v.addAt(at(p, "require_client_cert"), path+".require_client_cert", "needs client_ca_file: the CAs whose client certificates are accepted")
		ok = false
	}
	if ok {
		t.ready = cfg
	}
}
