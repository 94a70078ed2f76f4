package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// adminHandler serves /healthz, /readyz, /metrics and /tokens.
func adminHandler(sources map[string]*tokencache.Source, metrics http.Handler, serving *atomic.Bool) http.Handler {
	names := make([]string, 0, len(sources))
	for name := range sources {
		names = append(names, name)
	}
	slices.Sort(names)
	statuses := func() []tokencache.Status {
		out := make([]tokencache.Status, 0, len(names))
		for _, name := range names {
			out = append(out, sources[name].Status())
		}
		return out
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		reasons := []string{}
		if !serving.Load() {
			reasons = append(reasons, "shutting down")
		}
		for _, st := range statuses() {
			if !st.Ready() {
				reason := fmt.Sprintf("oauth2 %s: no token yet", st.OAuth2)
				if st.LastError != "" {
					reason = fmt.Sprintf("oauth2 %s: %s", st.OAuth2, st.LastError)
				}
				reasons = append(reasons, reason)
			}
		}
		status := http.StatusOK
		if len(reasons) > 0 {
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, map[string]any{"ready": len(reasons) == 0, "reasons": reasons})
	})
	mux.HandleFunc("GET /tokens", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, statuses())
	})
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "oauthproxy admin: /healthz /readyz /metrics /tokens")
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
