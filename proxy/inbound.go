package proxy

import (
	"crypto/subtle"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
)

// Inbound says who may use the proxy. Whoever reaches the port makes calls
// with the proxy's tokens, so requests are refused unless they come from an
// allowed network, carry the shared secret header, name an allowed Host,
// and do not come from a browser page of another site.
type Inbound struct {
	// RequireHeader and RequireValue: every request must carry this header
	// with this value (compared in constant time). It is never forwarded.
	RequireHeader string
	RequireValue  string
	// AllowCIDRs, when set, lists the client networks allowed. Unix socket
	// clients are local and always allowed.
	AllowCIDRs []netip.Prefix
	// AllowedHosts are Host names accepted besides localhost and IP
	// addresses. A DNS rebinding attack needs a name it controls, so names
	// are refused unless listed here.
	AllowedHosts []string
	// AllowedOrigins are browser origins allowed to call the proxy; a
	// request with any other Origin, or with Sec-Fetch-Site cross-site or
	// same-site, is refused.
	AllowedOrigins []string
}

type guard struct {
	in      Inbound // as given, for SetRoutes
	header  string
	value   string
	cidrs   []netip.Prefix
	hosts   map[string]bool
	origins map[string]bool
}

func newGuard(in Inbound) (*guard, error) {
	g := &guard{in: in, cidrs: in.AllowCIDRs, hosts: map[string]bool{}, origins: map[string]bool{}}
	if in.RequireHeader != "" {
		if in.RequireValue == "" {
			return nil, fmt.Errorf("inbound header %q has no value", in.RequireHeader)
		}
		g.header, g.value = http.CanonicalHeaderKey(in.RequireHeader), in.RequireValue
	}
	for _, h := range in.AllowedHosts {
		g.hosts[strings.ToLower(strings.TrimSuffix(h, "."))] = true
	}
	for _, o := range in.AllowedOrigins {
		g.origins[strings.TrimSuffix(o, "/")] = true
	}
	return g, nil
}

// check returns the refusal for r, or status 0.
func (g *guard) check(r *http.Request) (status int, code, msg string) {
	switch r.Method {
	case http.MethodConnect:
		return http.StatusMethodNotAllowed, CodeMethodNotAllowed, "CONNECT is not supported: this is not a forward proxy"
	case http.MethodTrace:
		// The upstream would echo the request back, token included.
		return http.StatusMethodNotAllowed, CodeMethodNotAllowed, "TRACE is not forwarded: the reply would carry the token"
	}
	if len(g.cidrs) > 0 && !g.addrAllowed(r.RemoteAddr) {
		return http.StatusForbidden, CodeForbidden, "this client address is not in inbound.allow_cidrs"
	}
	if g.header != "" {
		v := r.Header[g.header]
		if len(v) != 1 || subtle.ConstantTimeCompare([]byte(v[0]), []byte(g.value)) != 1 {
			return http.StatusForbidden, CodeForbidden, "missing or wrong " + g.header + " header (inbound.require_header)"
		}
	}
	if !g.hostAllowed(r.Host) {
		return http.StatusMisdirectedRequest, CodeMisdirected, "Host is not localhost, an IP address or in inbound.allowed_hosts"
	}
	if s := r.Header["Sec-Fetch-Site"]; len(s) > 0 && (s[0] == "cross-site" || s[0] == "same-site") {
		return http.StatusForbidden, CodeCrossSite, "cross-site browser requests are refused"
	}
	if o := r.Header["Origin"]; len(o) > 0 && !g.origins[o[0]] {
		return http.StatusForbidden, CodeCrossSite, "this Origin is not in inbound.allowed_origins"
	}
	return 0, "", ""
}

func (g *guard) addrAllowed(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		// Not ip:port: a unix socket peer, which is local.
		return !strings.Contains(remote, ":")
	}
	a := ap.Addr().Unmap()
	for _, p := range g.cidrs {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// hostAllowed accepts localhost, IP literals and the configured names.
func (g *guard) hostAllowed(host string) bool {
	if host == "" {
		return true // HTTP/1.0 without Host: no browser sends that
	}
	h := host
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		h = h[:i]
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if h == "localhost" || g.hosts[h] {
		return true
	}
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	_, err := netip.ParseAddr(h)
	return err == nil
}
