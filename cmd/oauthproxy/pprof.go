//go:build pprof

package main

import (
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
)

// Built with -tags pprof, the binary serves net/http/pprof on
// $OAUTHPROXY_PPROF (e.g. 127.0.0.1:6060): for performance work only, never
// in a release build.
func init() {
	if addr := os.Getenv("OAUTHPROXY_PPROF"); addr != "" {
		go http.ListenAndServe(addr, nil)
	}
}
