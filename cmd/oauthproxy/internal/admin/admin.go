// Package admin is oauthproxy's admin listener: /healthz, /readyz,
// /metrics and /tokens. It reads the runtime in service at each request,
// so that a reload shows at once and nothing keeps a copy of the sources.
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
	// socket): only then do sign-in and the actions answer.
	Loopback bool
	// AdminHosts are Host names accepted besides localhost and loopback
	// addresses.
	AdminHosts []string
	// Scrub cleans messages of secrets; nil: none.
	Scrub *tokencache.Scrubber
}

// Handler serves the admin endpoints. Safe for concurrent use.
type Handler struct {
	opts   Options
	mux    *http.ServeMux
	logins logins
}

// New returns the admin handler.
func New(opts Options) *Handler {
	h := &Handler{opts: opts, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	h.mux.HandleFunc("GET /readyz", h.readyz)
	h.mux.HandleFunc("GET /tokens", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, h.statuses())
	})
	h.mux.Handle("GET /metrics", opts.Metrics)
	h.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "oauthproxy admin: /healthz /readyz /metrics /tokens")
	})
	h.mux.HandleFunc("GET /oauth2/{name}/login", h.guard(h.login))
	h.mux.HandleFunc("POST /oauth2/{name}/login", h.guard(h.login))
	h.mux.HandleFunc("GET /oauth2/{name}/callback", h.guard(h.callback))
	h.mux.HandleFunc("POST /oauth2/{name}/revoke", h.guard(h.revoke))
	h.mux.HandleFunc("POST /oauth2/{name}/renew", h.guard(h.renew))
	h.mux.HandleFunc("GET /oauth2/autosubmit.js", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fmt.Fprint(w, autosubmit)
	})
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
