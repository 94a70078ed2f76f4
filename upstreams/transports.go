package upstreams

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"time"

	"github.com/oauthproxy/oauthproxy/proxy"
)

// transports is the one place outbound connections are made: to upstreams
// and to token endpoints. Routes and entries that reach the same origin the
// same way share a pool. A runtime owns its transports; a reload takes over
// the ones it still needs and closes the idle connections of the rest.
// Keys never hold a secret (a proxy's URL is a digest).
type transports struct {
	m map[string]*http.Transport
	// prev is the previous runtime's set, whose pools a reload takes over.
	prev map[string]*http.Transport
}

func newTransports(prev *transports) *transports {
	t := &transports{m: map[string]*http.Transport{}}
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
	key := "upstream " + u.Scheme + "://" + u.Host + " timeout=" + r.Timeout.String() + " proxy=" + digest(r.ProxyURL.URL())
	return t.get(key, func() *http.Transport {
		return newTransport(r.ProxyURL.URL(), dialTimeout, tlsHandshakeTimeout, r.Timeout, upstreamIdlePerHost)
	})
}

// token returns the transport to an oauth2 entry's authorization server.
func (t *transports) token(o *OAuth2) http.RoundTripper {
	u := o.TokenURL.URL
	key := "token " + u.Scheme + "://" + u.Host + " timeout=" + o.Timeout.String() + " proxy=" + digest(o.ProxyURL.URL())
	return t.get(key, func() *http.Transport {
		return newTransport(o.ProxyURL.URL(), o.Timeout, o.Timeout, o.Timeout, tokenIdlePerHost)
	})
}

func (t *transports) get(key string, build func() *http.Transport) *http.Transport {
	if tr, ok := t.m[key]; ok {
		return tr
	}
	tr, ok := t.prev[key]
	if !ok {
		tr = build()
	}
	t.m[key] = tr
	return tr
}

// retire closes the idle connections of every transport keep does not use.
func (t *transports) retire(keep *transports) {
	for key, tr := range t.m {
		if keep == nil || keep.m[key] != tr {
			tr.CloseIdleConnections()
		}
	}
}

// newTransport builds a pool with proxy.NewTransport, the one builder of
// outbound transports.
func newTransport(via *url.URL, dial, handshake, header time.Duration, idle int) *http.Transport {
	return proxy.NewTransport(proxy.TransportOptions{
		Proxy:                 via,
		DialTimeout:           dial,
		TLSHandshakeTimeout:   handshake,
		ResponseHeaderTimeout: header,
		MaxIdleConnsPerHost:   idle,
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
