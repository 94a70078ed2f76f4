package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/oauthproxy/oauthproxy/upstreams"
)

// Who may use what on the admin listener (the contract's "The admin
// page"; issue 13):
//
//   - /healthz, /readyz and /metrics answer anyone: probes and scrapers
//     carry no credentials.
//   - The page, its assets, /tokens, /routes, /status and sign-in
//     (protect) need a Host that names this machine (loopback, localhost,
//     admin_hosts; a DNS-rebinding page's name is none of them), and the
//     admin_auth login when it is set. Without admin_auth they answer on
//     a loopback (or unix socket) listener only, and 403 beyond it.
//   - The actions (action) are POSTs that also need the admin origin and,
//     from a browser, the page's CSRF token.
//
// The CSRF token is one random value per process, written into the page
// (a meta tag) and sent back by app.js in the X-CSRF-Token header. A
// page of another origin can make a browser send a POST, and the Basic
// credentials and cookies with it, but it cannot read our page (the
// same-origin policy, and the Host check against rebinding), and it
// cannot add a custom header without a CORS preflight, which this
// listener never approves. A cookie (double submit) would add nothing to
// that and would need SameSite and Secure care; the admin has no
// sessions for a per-session token to belong to. A restart draws a new
// token: a page open across one is told (403) to reload.
//
// A request with neither Origin nor Sec-Fetch-Site is a script (curl,
// `oauthproxy revoke`), which no web page can make a browser send; it
// needs no CSRF token.

// csrfHeader carries the page's CSRF token on a browser's POST.
const csrfHeader = "X-CSRF-Token"

// protect admits a request to the page, its JSON, and sign-in.
func (h *Handler) protect(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !h.hostAllowed(r) {
			deny(w, http.StatusForbidden, "forbidden: the Host header does not name this admin listener (localhost, a loopback address or admin_hosts)")
			return
		}
		switch a := h.adminAuth(); {
		case a != nil:
			if !basicOK(r, a) {
				w.Header().Set("WWW-Authenticate", `Basic realm="oauthproxy admin", charset="UTF-8"`)
				deny(w, http.StatusUnauthorized, "unauthorized: the admin page, its JSON, sign-in and actions need the admin_auth login")
				return
			}
		case h.opts.ClientCerts && r.TLS != nil && len(r.TLS.VerifiedChains) > 0:
			// admin_tls verified the client's certificate
		case !h.opts.Loopback:
			deny(w, http.StatusForbidden, "forbidden: admin_listen is beyond loopback and neither admin_auth nor admin_tls with client certificates is set; only /healthz, /readyz and /metrics answer")
			return
		}
		next(w, r)
	}
}

// action admits a POST that changes something: protect, then the origin
// checks and the CSRF token of a browser's request.
func (h *Handler) action(next http.HandlerFunc) http.HandlerFunc {
	return h.protect(func(w http.ResponseWriter, r *http.Request) {
		origin, site := r.Header.Get("Origin"), r.Header.Get("Sec-Fetch-Site")
		if origin != "" {
			if u, err := url.Parse(origin); err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
				deny(w, http.StatusForbidden, "forbidden: cross-origin request")
				return
			}
		}
		if site != "" && site != "same-origin" && site != "none" {
			deny(w, http.StatusForbidden, "forbidden: cross-site request")
			return
		}
		if origin != "" || site != "" {
			got := r.Header.Get(csrfHeader)
			if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(h.csrf)) != 1 {
				deny(w, http.StatusForbidden, "forbidden: missing or stale CSRF token: reload the admin page")
				return
			}
		}
		next(w, r)
	})
}

// deny answers a refusal as text, never cached.
func deny(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, msg, status)
}

// adminAuth is the admin_auth of the config in service, so that a reload
// (a rotated password) applies at once; nil when unset.
func (h *Handler) adminAuth() *upstreams.AdminAuth {
	if cfg := h.config(); cfg != nil {
		return cfg.AdminAuth
	}
	return nil
}

func (h *Handler) config() *upstreams.Config {
	if rt := h.opts.Runtime(); rt != nil {
		return rt.Config
	}
	return nil
}

// basicOK checks HTTP Basic credentials in constant time: both the name
// and the password are always compared, as hashes of equal length, so
// the time taken tells nothing of either.
func basicOK(r *http.Request, a *upstreams.AdminAuth) bool {
	user, pass, ok := r.BasicAuth()
	if !ok || a.Password.Reveal() == "" {
		return false
	}
	u1, u2 := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(a.Username))
	p1, p2 := sha256.Sum256([]byte(pass)), sha256.Sum256([]byte(a.Password.Reveal()))
	return subtle.ConstantTimeCompare(u1[:], u2[:])&subtle.ConstantTimeCompare(p1[:], p2[:]) == 1
}

// hostAllowed reports whether the request's Host names this machine. On a
// unix socket any Host is: no web page reaches it by name.
func (h *Handler) hostAllowed(r *http.Request) bool {
	if _, ok := r.Context().Value(http.LocalAddrContextKey).(*net.UnixAddr); ok {
		return true
	}
	return h.isAdminHost(r.Host)
}

// isAdminHost reports whether host (host[:port]) names this machine:
// localhost, a loopback address, or one of admin_hosts.
func (h *Handler) isAdminHost(host string) bool {
	host = normHost(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return true
	}
	hosts := h.opts.AdminHosts
	if cfg := h.config(); cfg != nil {
		hosts = append(hosts[:len(hosts):len(hosts)], cfg.AdminHosts...)
	}
	for _, a := range hosts {
		if a != "" && normHost(a) == host {
			return true
		}
	}
	return false
}

// normHost is a Host header's name, lower case, without port, brackets
// or a trailing dot.
func normHost(host string) string {
	if hh, _, err := net.SplitHostPort(host); err == nil {
		host = hh
	}
	return strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
}
