package tokencache

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Error is a failed token request. Its message is safe to show a client: it
// names the endpoint, the HTTP status and the IdP's error code, never a
// secret, a token or the response body.
type Error struct {
	OAuth2   string // the oauth2 entry
	Endpoint string // token URL without userinfo or query
	Status   int    // HTTP status of the answer; 0 when there was none
	// Code is the RFC 6749 §5.2 error code, when the answer had a valid one.
	Code string
	// Description is the IdP's error_description made safe: scrubbed of
	// every known secret in every encoding, printable, trimmed, and with
	// long opaque runs masked (safeDescription). It goes to logs and to the
	// operator's `oauthproxy token` command, never to a proxied client.
	Description string
	// Permanent means the IdP refused the request as configured
	// (invalid_client, invalid_grant, ...): retrying soon cannot help.
	Permanent bool
	// RetryAfter is the answer's Retry-After, if any.
	RetryAfter time.Duration
	// Timeout is set when the endpoint did not answer in time.
	Timeout time.Duration
	// Err is the cause: a network error, a timeout, a malformed body.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("token endpoint ")
	b.WriteString(e.Endpoint)
	switch {
	case e.Timeout > 0:
		fmt.Fprintf(&b, " did not answer within %s", e.Timeout)
	case e.Status == 0:
		b.WriteString(" unreachable")
		if e.Err != nil {
			b.WriteString(": ")
			b.WriteString(e.Err.Error())
		}
	default:
		fmt.Fprintf(&b, " answered %d", e.Status)
		if e.Code != "" {
			b.WriteString(" ")
			b.WriteString(e.Code)
		}
		if e.Err != nil {
			b.WriteString(": ")
			b.WriteString(e.Err.Error())
		}
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// HTTPStatus and ErrorCode say how the proxy answers a request that could
// not get a token: 502 token_unavailable.
func (e *Error) HTTPStatus() int   { return http.StatusBadGateway }
func (e *Error) ErrorCode() string { return "token_unavailable" }

// LoginRequiredError: the entry's grant needs a person to sign in
// (authorization code, device code) and no refresh token is stored, or the
// server refused the stored one. Its message names where to sign in.
type LoginRequiredError struct {
	OAuth2 string
	// LoginURL is where to sign in, when the entry has a login page; the
	// device code grant names its verification URL instead.
	LoginURL string
	// Reason says why, when it is more than "no refresh token yet"
	// (invalid_grant, access_denied, a pending device code).
	Reason string
	// Device is the pending device code, for the device code grant.
	Device *DeviceAuthorization
}

func (e *LoginRequiredError) Error() string {
	msg := "oauth2 " + e.OAuth2 + ": sign-in required"
	if e.Reason != "" {
		msg += " (" + e.Reason + ")"
	}
	if e.LoginURL != "" {
		msg += ": sign in at " + e.LoginURL
	}
	return msg
}

// HTTPStatus and ErrorCode: 503 login_required.
func (e *LoginRequiredError) HTTPStatus() int   { return http.StatusServiceUnavailable }
func (e *LoginRequiredError) ErrorCode() string { return "login_required" }

// Detail is Error() with the IdP's description, for logs and the operator.
func (e *Error) Detail() string {
	if e.Description == "" {
		return e.Error()
	}
	return e.Error() + " (" + e.Description + ")"
}

// ParseRetryAfter reads a Retry-After value: delay-seconds or an HTTP-date
// (RFC 9110 §10.2.3). A date in the past is a zero delay.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseUint(v, 10, 32); err == nil {
		return time.Duration(n) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	if d := t.Sub(now); d > 0 {
		return d.Truncate(time.Second), true
	}
	return 0, true
}
