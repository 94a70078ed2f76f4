package upstreams

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"net/http"
	"net/url"
	"time"

	"github.com/oauthproxy/oauthproxy/proxy"
)

// transports is the one place outbound connections are made: to upstreams
// and to token endpoints. Routes and entries that reach the same origin the
// same way (TLS settings included) share a pool. A runtime owns its
// transports; a reload takes over the ones it still needs and closes the
// idle connections of the rest. Keys never hold a secret (a proxy's URL is
// a digest; TLS is file paths and the CA's digest).
type transports struct {
	m map[string]*pool
	// prev is the previous runtime's set, whose pools a reload takes over.
	prev map[string]*pool
}

// pool is one transport and the TLS it dials with (nil: Go's default).
type pool struct {
	tr  *http.Transport
	tls *clientTLS
}

func newTransports(prev *transports) *transports {
	t := &transports{m: map[string]*pool{}}
	if prev != nil {
		t.prev = prev.m
	}
	return t
}

// Upstream pools keep many idle connections; token endpoint pools few.
const (
	upstreamIdlePerHost = 256
	tokenIdlePerHost    = 2
	dialTimeout         = 10 * time.Second
	tlsHandshakeTimeout = 10 * time.Second
)

// upstream returns the transport of a route's upstream.
func (t *transports) upstream(r *Route) http.RoundTripper {
	u := r.Upstream.URL
	key := "upstream " + u.Scheme + "://" + u.Host + " timeout=" + r.Timeout.String() + " proxy=" + digest(r.ProxyURL.URL()) +
		" tls=" + r.TLS.transportKey()
	return t.get(key, r.TLS, func(tc *tls.Config) *http.Transport {
		return newTransport(r.ProxyURL.URL(), dialTimeout, tlsHandshakeTimeout, r.Timeout, upstreamIdlePerHost, tc)
	})
}

// token returns the transport to an oauth2 entry's authorization server.
func (t *transports) token(o *OAuth2) http.RoundTripper {
	u := o.TokenURL.URL
	key := "token " + u.Scheme + "://" + u.Host + " timeout=" + o.Timeout.String() + " proxy=" + digest(o.ProxyURL.URL()) +
		" tls=" + o.TLS.transportKey()
	return t.get(key, o.TLS, func(tc *tls.Config) *http.Transport {
		return newTransport(o.ProxyURL.URL(), o.Timeout, o.Timeout, o.Timeout, tokenIdlePerHost, tc)
	})
}

// get returns the pool under key: this runtime's, the previous runtime's,
// or a new one dialling with the TLS of cfg. The pool's TLS becomes cfg's
// active one: the client certificate that tls_client_auth reloads.
func (t *transports) get(key string, cfg *TLS, build func(*tls.Config) *http.Transport) *http.Transport {
	p, ok := t.m[key]
	if !ok {
		if p, ok = t.prev[key]; !ok {
			p = &pool{}
			var tc *tls.Config
			if cfg != nil && cfg.ready != nil {
				p.tls, tc = cfg.ready, cfg.ready.config
			}
			p.tr = build(tc)
			if p.tls != nil {
				p.tls.closeIdle = p.tr.CloseIdleConnections
			}
		}
		t.m[key] = p
	}
	if cfg != nil && p.tls != nil {
		cfg.active.Store(p.tls)
	}
	return p.tr
}

// retire closes the idle connections of every transport keep does not use.
func (t *transports) retire(keep *transports) {
	for key, p := range t.m {
		if keep == nil || keep.m[key] != p {
			p.tr.CloseIdleConnections()
		}
	}
}

// newTransport builds a pool with proxy.NewTransport, the one builder of
// outbound transports.
func newTransport(via *url.URL, dial, handshake, header time.Duration, idle int, tc *tls.Config) *http.Transport {
	return proxy.NewTransport(proxy.TransportOptions{
		Proxy:                 via,
		DialTimeout:           dial,
		TLSHandshakeTimeout:   handshake,
		ResponseHeaderTimeout: header,
		MaxIdleConnsPerHost:   idle,
		TLS:                   tc,
	})
}

// digest names a URL that may hold credentials without showing them.
func digest(u *url.URL) string {
	if u == nil {
		return "none"
	}
	sum := sha256.Sum256([]byte(u.String()))
	return hex.EncodeToString(sum[:8])
}
