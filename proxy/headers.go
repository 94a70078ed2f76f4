package proxy

import (
	"net/http"
	"strings"
)

// sanitize removes from an outgoing request's headers (keys canonical, as
// net/http reads them; hop-by-hop headers and those named in Connection
// already gone) everything that must not reach the upstream:
//
//   - credentials: Authorization, Proxy-Authorization, the route's inject
//     header and the inbound shared-secret header;
//   - claims about the client: Forwarded, X-Forwarded-*, X-Real-IP. A
//     third-party API must not trust what a caller wrote there;
//   - names with an underscore, which some servers read as a dash
//     (X_Forwarded_For would pass for X-Forwarded-For);
//   - the route's remove_headers.
func (rt *route) sanitize(h http.Header) {
	for k := range h {
		if rt.drop(k) {
			delete(h, k)
		}
	}
}

func (rt *route) drop(k string) bool {
	switch k {
	case "Authorization", "Proxy-Authorization", "Forwarded", "X-Real-Ip":
		return true
	case rt.header, rt.inbound:
		return true
	}
	return strings.HasPrefix(k, "X-Forwarded-") || strings.IndexByte(k, '_') >= 0 || rt.remove[k]
}
