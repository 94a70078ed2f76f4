// Package acme gets the proxy listener's certificate from an ACME CA
// (RFC 8555) with certmagic: it loads what tls.acme.storage holds at start,
// so that a restart reuses it, obtains what is missing in the background
// (retrying with backoff), and renews before expiry.
//
// Challenges are answered on the proxy's own TLS listener (tls-alpn-01,
// RFC 8737) or on tls.acme.http_listen (http-01); no other port is opened.
package acme

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

// alpnProtocol is the ALPN protocol a tls-alpn-01 validation offers, and
// nothing else (RFC 8737 §3).
const alpnProtocol = "acme-tls/1"

// Manager runs tls.acme for one process. A nil *Manager is no ACME: its
// methods do nothing, so callers need not branch. It is safe for
// concurrent use once started.
type Manager struct {
	log     *slog.Logger
	acme    *upstreams.ACME
	cache   *certmagic.Cache
	magic   *certmagic.Config
	issuer  *certmagic.ACMEIssuer
	httpSrv *http.Server // http-01 only
	cancel  context.CancelFunc
	stop    sync.Once
}

// options are what tests change: certmagic's defaults otherwise.
type options struct {
	renewCheck   time.Duration // how often the cache looks for certificates to renew (10 minutes)
	renewalRatio float64       // renew when less than this part of the lifetime is left (1/3)
}

// New prepares tls.acme of cfg; it returns nil without one. With
// challenge http-01 it opens tls.acme.http_listen now, so that a port in
// use fails the start. Call Start once the proxy listener listens.
func New(cfg *upstreams.Config, log *slog.Logger) (*Manager, error) {
	return newManager(cfg, log, options{})
}

func newManager(cfg *upstreams.Config, log *slog.Logger, o options) (*Manager, error) {
	a := cfg.ListenACME()
	if a == nil {
		return nil, nil
	}
	m := &Manager{log: log, acme: a}
	zl := newZapLogger(log.Handler())
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return m.magic, nil },
		RenewCheckInterval: o.renewCheck,
		Logger:             zl,
	})
	m.magic = certmagic.New(m.cache, certmagic.Config{
		Storage: &certmagic.FileStorage{Path: a.Storage},
		// Clients that send no server name (an IP in the URL) get the
		// first domain's certificate rather than a failed handshake.
		DefaultServerName: a.Domains[0],
		// Let's Encrypt ended OCSP in 2025; stapling would only add
		// requests that fail.
		OCSP:               certmagic.OCSPConfig{DisableStapling: true},
		RenewalWindowRatio: o.renewalRatio,
		Logger:             zl,
		OnEvent:            m.event,
		ShouldEmitFunc:     func(event string) bool { return event != "tls_get_certificate" }, // every handshake
	})
	m.issuer = certmagic.NewACMEIssuer(m.magic, certmagic.ACMEIssuer{
		CA:    a.CA,
		Email: a.Email,
		// Configuring an ACME CA is agreeing to its subscriber agreement,
		// as with Caddy; there is nobody to ask at a prompt.
		Agreed:                  true,
		TrustedRoots:            a.RootCAs(),
		DisableHTTPChallenge:    a.Challenge != upstreams.ChallengeHTTP01,
		DisableTLSALPNChallenge: a.Challenge != upstreams.ChallengeTLSALPN01,
		Logger:                  zl,
	})
	m.magic.Issuers = []certmagic.Issuer{m.issuer}

	if a.Challenge == upstreams.ChallengeHTTP01 {
		ln, err := net.Listen("tcp", a.HTTPListen)
		if err != nil {
			m.cache.Stop()
			return nil, fmt.Errorf("tls.acme.http_listen: %w", err)
		}
		// certmagic's solver tries to bind ListenHost:AltHTTPPort; finding
		// it taken by this server, it leaves the challenge to it.
		m.issuer.ListenHost, m.issuer.AltHTTPPort = hostPort(ln.Addr())
		m.httpSrv = &http.Server{
			Handler:           m.issuer.HTTPChallengeHandler(http.HandlerFunc(notChallenge)),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       time.Minute,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
		go m.httpSrv.Serve(ln)
		log.Info("acme: answering http-01 challenges", "http_listen", ln.Addr().String())
	}
	return m, nil
}

// notChallenge answers what reaches http_listen besides a challenge: the
// proxy is not served over plain HTTP.
func notChallenge(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "this port answers ACME http-01 challenges only", http.StatusNotFound)
}

// TLSConfig is base, the listener's TLS without a certificate, with the
// managed certificates and, for tls-alpn-01, the challenge answered. A nil
// Manager returns base.
func (m *Manager) TLSConfig(base *tls.Config) *tls.Config {
	if m == nil || base == nil {
		return base
	}
	c := base.Clone()
	c.GetCertificate = m.magic.GetCertificate
	if m.acme.Challenge != upstreams.ChallengeTLSALPN01 {
		return c
	}
	c.NextProtos = append(slices.Clone(base.NextProtos), alpnProtocol)
	if c.ClientAuth != tls.NoClientCert {
		// The CA's validation presents no client certificate: with
		// require_client_cert it would be refused, and the certificate
		// never issued. It gets the challenge certificate and no HTTP.
		challenge := c.Clone()
		challenge.ClientAuth, challenge.ClientCAs = tls.NoClientCert, nil
		challenge.NextProtos = []string{alpnProtocol}
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if slices.Equal(hello.SupportedProtos, challenge.NextProtos) {
				return challenge, nil
			}
			return nil, nil
		}
	}
	return c
}

// Start loads the certificates storage holds and has the missing ones
// obtained in the background, then renewed before they expire, until ctx
// ends or Stop. addr is where the proxy listener listens: tls-alpn-01 is
// answered there. It fails only when storage cannot be read. Call it once,
// before the listener serves.
func (m *Manager) Start(ctx context.Context, addr net.Addr) error {
	if m == nil {
		return nil
	}
	if m.acme.Challenge == upstreams.ChallengeTLSALPN01 {
		// As for http-01: the solver finds the port taken and leaves the
		// challenge to the listener, rather than opening :443.
		m.issuer.ListenHost, m.issuer.AltTLSALPNPort = hostPort(addr)
	}
	ctx, m.cancel = context.WithCancel(ctx)
	m.log.Info("acme: managing certificates", "domains", m.acme.Domains, "ca", m.acme.CA,
		"challenge", string(m.acme.Challenge), "storage", m.acme.Storage)
	// Load what storage holds here rather than in certmagic's background:
	// a restart serves its certificate from the first handshake, and a
	// storage that cannot be read fails the start, naming it.
	due := false
	for _, d := range m.acme.Domains {
		cert, err := m.magic.CacheManagedCertificate(ctx, d)
		switch {
		case errors.Is(err, fs.ErrNotExist): // obtained below
		case err != nil:
			return fmt.Errorf("tls.acme: loading the certificate of %s from storage %s: %w", d, m.acme.Storage, err)
		default:
			due = due || cert.NeedsRenewal(m.magic)
		}
	}
	// Obtains the missing certificates; the loaded ones it leaves to the
	// cache's maintenance, which renews them.
	if err := m.magic.ManageAsync(ctx, m.acme.Domains); err != nil {
		return fmt.Errorf("tls.acme (storage %s): %w", m.acme.Storage, err)
	}
	if due {
		// Maintenance looks every 10 minutes; a renewal already due (the
		// proxy was down for weeks) starts now.
		go m.cache.RenewManagedCertificates(ctx)
	}
	return nil
}

// Stop ends obtaining and renewing, and closes http_listen. Calls after
// the first do nothing.
func (m *Manager) Stop() {
	if m == nil {
		return
	}
	m.stop.Do(func() {
		if m.cancel != nil {
			m.cancel()
		}
		if m.httpSrv != nil {
			m.httpSrv.Close()
		}
		m.cache.Stop()
	})
}

// event logs what an operator needs from certmagic's events, with stable
// messages; certmagic's own lines go to the debug level (zap.go).
func (m *Manager) event(_ context.Context, name string, data map[string]any) error {
	switch name {
	case "cert_obtaining":
		m.log.Info("acme: obtaining a certificate", "domain", data["identifier"], "renewal", data["renewal"] == true, "ca", m.acme.CA)
	case "cert_obtained":
		m.log.Info("acme: certificate obtained", "domain", data["identifier"], "renewal", data["renewal"] == true, "ca", m.acme.CA)
	case "cert_failed":
		err, _ := data["error"].(error)
		if err == nil {
			err = errors.New("unknown error")
		}
		m.log.Error("acme: getting a certificate failed; retrying with backoff", "domain", data["identifier"],
			"renewal", data["renewal"] == true, "ca", m.acme.CA, "error", err.Error())
	case "cached_managed_cert":
		sans, _ := data["sans"].([]string)
		attrs := []any{"domains", sans}
		if len(sans) > 0 {
			for _, c := range m.cache.AllMatchingCertificates(sans[0]) {
				if c.Leaf != nil {
					attrs = append(attrs, "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
					break
				}
			}
		}
		m.log.Info("acme: certificate in use", attrs...)
	}
	return nil
}

// hostPort splits a listening address for certmagic's solver settings.
func hostPort(a net.Addr) (string, int) {
	host, port, _ := net.SplitHostPort(a.String())
	n, _ := strconv.Atoi(port)
	return host, n
}
