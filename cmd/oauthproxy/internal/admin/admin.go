// Package admin is oauthproxy's admin listener: the probes /healthz and
// /readyz, /metrics, the JSON of /tokens, /routes and /status, the admin
// page at / that shows them, sign-in and the actions. It reads the
// runtime in service at each request, so that a reload shows at once and
// nothing keeps a copy of the sources.
package admin

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync/atomic"

	"github.com/oauthproxy/oauthproxy/tokencache"
	"github.com/oauthproxy/oauthproxy/upstreams"
)

// Options configure the admin handler.
type Options struct {
	// Runtime returns the runtime in service.
	Runtime func() *upstreams.Runtime
	// Metrics serves /metrics.
	Metrics http.Handler
	// Serving is false before the proxy serves and once it shuts down:
	// /readyz then answers 503.
	Serving *atomic.Bool
	// Loopback says the admin listener is on loopback (or a unix
	// socket). Beyond loopback the page, its JSON, sign-in and the
	// actions need the config's admin_auth, and answer 403 without it.
	Loopback bool
	// ClientCerts says the admin listener verifies client certificates
	// (admin_tls): a request with a verified one is admitted beyond
	// loopback as admin_auth admits.
	ClientCerts bool
	// AdminHosts are Host names accepted besides localhost, loopback
	// addresses and the config's admin_hosts.
	AdminHosts []string
	// Scrub cleans messages of secrets; nil: none.
	Scrub *tokencache.Scrubber
}

// Handler serves the admin endpoints. Safe for concurrent use.
type Handler struct {
	opts   Options
	mux    *http.ServeMux
	logins logins
	csrf   string // the page's CSRF token, one per process (access.go)
}

// New returns the admin handler.
func New(opts Options) *Handler {
	csrf, err := randomToken()
	if err != nil {
		panic("admin: no randomness for the CSRF token: " + err.Error()) // crypto/rand does not fail on Linux
	}
	h := &Handler{opts: opts, mux: http.NewServeMux(), csrf: csrf}
	// Open to anyone: probes and scrapers carry no credentials.
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	h.mux.HandleFunc("GET /readyz", h.readyz)
	if opts.Metrics != nil {
		h.mux.Handle("GET /metrics", opts.Metrics)
	}
	// The page and what it reads: this machine, or admin_auth.
	h.mux.HandleFunc("GET /{$}", h.protect(h.page))
	h.mux.HandleFunc("GET /assets/{file}", h.protect(serveAsset))
	h.mux.HandleFunc("GET /tokens", h.protect(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, h.statuses())
	}))
	h.mux.HandleFunc("GET /routes", h.protect(h.routes))
	h.mux.HandleFunc("GET /status", h.protect(h.status))
	h.mux.HandleFunc("GET /oauth2/{name}/login", h.protect(h.login))
	h.mux.HandleFunc("GET /oauth2/{name}/callback", h.protect(h.callback))
	h.mux.HandleFunc("GET /oauth2/autosubmit.js", h.protect(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fmt.Fprint(w, autosubmit)
	}))
	// Actions: POST only (a GET answers 405), same origin, CSRF token.
	h.mux.HandleFunc("POST /oauth2/{name}/login", h.action(h.login))
	h.mux.HandleFunc("POST /oauth2/{name}/revoke", h.action(h.revoke))
	h.mux.HandleFunc("POST /oauth2/{name}/renew", h.action(h.renew))
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// statuses lists every token source of the runtime in service, by name.
func (h *Handler) statuses() []tokencache.Status {
	rt := h.opts.Runtime()
	out := make([]tokencache.Status, 0, len(rt.Sources))
	for _, name := range slices.Sorted(maps.Keys(rt.Sources)) {
		out = append(out, rt.Sources[name].Status())
	}
	return out
}

func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	reasons, notes := []string{}, []string{}
	if !h.opts.Serving.Load() {
		reasons = append(reasons, "shutting down")
	}
	for _, st := range h.statuses() {
		if st.Cache == "degraded" {
			notes = append(notes, fmt.Sprintf("oauth2 %s: the shared token cache is unreachable; serving with this process's own tokens", st.OAuth2))
		}
		if st.Ready() {
			continue
		}
		reason := fmt.Sprintf("oauth2 %s: no token yet", st.OAuth2)
		switch {
		case st.State == tokencache.StateLoginRequired || st.State == tokencache.StateDevicePending:
			reason = fmt.Sprintf("oauth2 %s: %s", st.OAuth2, st.State)
			if st.LoginURL != "" {
				reason += " (sign in at " + st.LoginURL + ")"
			}
		case st.LastError != "":
			reason = fmt.Sprintf("oauth2 %s: %s", st.OAuth2, st.LastError)
		}
		reasons = append(reasons, reason)
	}
	status := http.StatusOK
	if len(reasons) > 0 {
		status = http.StatusServiceUnavailable
	}
	out := map[string]any{"ready": len(reasons) == 0, "reasons": reasons}
	if len(notes) > 0 {
		out["notes"] = notes
	}
	writeJSON(w, status, out)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
