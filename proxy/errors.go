package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
)

// Error codes of the responses the proxy makes itself; the
// X-Oauthproxy-Error header carries them.
const (
	CodeNoRoute             = "no_route"
	CodeBadPath             = "bad_path"
	CodeTokenUnavailable    = "token_unavailable"
	CodeUpstreamUnreachable = "upstream_unreachable"
	CodeUpstreamTimeout     = "upstream_timeout"
	CodeBodyTooLarge        = "body_too_large"
	CodeMisdirected         = "misdirected"
	CodeCrossSite           = "cross_site"
	CodeForbidden           = "forbidden"
	CodeMethodNotAllowed    = "method_not_allowed"
	CodeBadRequest          = "bad_request"
	CodeRequestTimeout      = "request_timeout" // the client's body stopped arriving
)

// TokenError is a failure to get a token for a request. Its message comes
// from the TokenSource, which must keep secrets out of it.
type TokenError struct{ Err error }

func (e *TokenError) Error() string { return e.Err.Error() }
func (e *TokenError) Unwrap() error { return e.Err }

type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
	Route   string `json:"route,omitempty"`
	OAuth2  string `json:"oauth2,omitempty"`
}

// writeError sends a proxy-made error: JSON, with the code in a header too.
func writeError(w http.ResponseWriter, status int, code, msg, route, oauth2 string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Oauthproxy-Error", code)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errorBody{Error: code, Message: msg, Route: route, OAuth2: oauth2})
}

// errorStatus maps a forwarding error to the status and code the client gets.
func errorStatus(err error) (int, string) {
	var se StatusError
	var te *TokenError
	var mbe *http.MaxBytesError
	var be *bodyError
	var op *net.OpError
	switch {
	case errors.As(err, &se):
		return se.HTTPStatus(), se.ErrorCode()
	case errors.As(err, &te):
		return http.StatusBadGateway, CodeTokenUnavailable
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, CodeBodyTooLarge
	case errors.As(err, &be):
		return http.StatusBadRequest, CodeBadRequest
	case errors.As(err, &op) && op.Op == "dial":
		return http.StatusBadGateway, CodeUpstreamUnreachable
	case strings.Contains(err.Error(), "TLS handshake timeout"):
		return http.StatusBadGateway, CodeUpstreamUnreachable
	case isTimeout(err):
		return http.StatusGatewayTimeout, CodeUpstreamTimeout
	}
	return http.StatusBadGateway, CodeUpstreamUnreachable
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
