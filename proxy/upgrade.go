package proxy

import (
	"net/http"
	"strings"
)

// onlyWebSocket removes any protocol upgrade but WebSocket from a request
// (RFC 9110 §7.8). Another upgrade turns the connection into a raw pipe to
// the upstream: an upstream that accepts h2c would let the client speak
// HTTP/2 to any of its paths, past the route prefix and every path check.
// Without its Upgrade header the request is an ordinary one, which is what
// a client that offers h2c falls back to anyway.
func onlyWebSocket(h http.Header) {
	up, ok := h["Upgrade"]
	if !ok {
		return
	}
	if len(up) == 1 && strings.EqualFold(strings.TrimSpace(up[0]), "websocket") {
		return
	}
	delete(h, "Upgrade")
}
