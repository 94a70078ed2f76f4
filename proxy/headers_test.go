package proxy

import (
	"net/http"
	"net/textproto"
	"strings"
	"testing"
)

func headerRoute() *route {
	return &route{
		header:  "X-Api-Token",
		inbound: "X-Proxy-Key",
		remove:  map[string]bool{"Cookie": true},
	}
}

// forbidden reports whether a header name must never reach the upstream.
func forbidden(k string) bool {
	l := strings.ToLower(k)
	switch l {
	case "authorization", "proxy-authorization", "forwarded", "x-real-ip", "x-api-token", "x-proxy-key", "cookie":
		return true
	}
	return strings.HasPrefix(l, "x-forwarded-") || strings.Contains(l, "_")
}

func TestSanitize(t *testing.T) {
	h := http.Header{}
	for _, k := range []string{"Authorization", "Proxy-Authorization", "Forwarded", "X-Real-Ip", "X-Forwarded-For",
		"X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Prefix", "X_forwarded_for", "X-Api-Token", "X-Proxy-Key",
		"Cookie", "Accept", "Accept-Encoding", "Content-Type", "X-Request-Id"} {
		h[k] = []string{"v"}
	}
	headerRoute().sanitize(h)
	for k := range h {
		if forbidden(k) {
			t.Errorf("%s survived", k)
		}
	}
	for _, k := range []string{"Accept", "Accept-Encoding", "Content-Type", "X-Request-Id"} {
		if h.Get(k) != "v" {
			t.Errorf("%s was dropped", k)
		}
	}
}

// FuzzSanitizeHeaders: whatever headers a client sends, none that must not
// reach an upstream survives, every other one does, and nothing panics.
func FuzzSanitizeHeaders(f *testing.F) {
	for _, s := range []string{
		"authorization: Bearer x\nx-forwarded-for: 1.2.3.4",
		"X_Forwarded_For: 1\nx-real-ip: 2\nFORWARDED: for=x",
		"x-forwarded-: a\nx-forwarded-x-y: b\nproxy-authorization: c",
		"x-api-token: forged\nx-proxy-key: guess\ncookie: a=b\naccept: */*",
		"Authorization_: x\n_: y\nx--forwarded-for: z",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		h := http.Header{}
		var kept []string
		for line := range strings.SplitSeq(raw, "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok || k == "" || !validToken(k) {
				continue // net/http refuses such a request
			}
			k = textproto.CanonicalMIMEHeaderKey(k)
			h[k] = append(h[k], strings.TrimSpace(v))
			if !forbidden(k) {
				kept = append(kept, k)
			}
		}
		headerRoute().sanitize(h)
		for k := range h {
			if forbidden(k) {
				t.Fatalf("%q reached the upstream (input %q)", k, raw)
			}
		}
		for _, k := range kept {
			if _, ok := h[k]; !ok {
				t.Fatalf("%q was dropped (input %q)", k, raw)
			}
		}
	})
}

func validToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
