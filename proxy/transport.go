package proxy

import (
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"
)

// TransportOptions tune the connection pool to one upstream.
type TransportOptions struct {
	// ResponseHeaderTimeout is the route's timeout: how long the upstream
	// may take to start answering once the request is sent.
	ResponseHeaderTimeout time.Duration
	DialTimeout           time.Duration // default 10s
	TLSHandshakeTimeout   time.Duration // default 10s
	MaxIdleConnsPerHost   int           // default 256
	TLS                   *tls.Config
	// Proxy is an HTTP(S) or SOCKS5 proxy to reach the upstream through;
	// nil is none. The environment's HTTP_PROXY is never used.
	Proxy *url.URL
}

// NewTransport returns a pooled transport to an upstream. It uses no proxy
// but o.Proxy, and passes Accept-Encoding and Content-Encoding through
// untouched.
func NewTransport(o TransportOptions) *http.Transport {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.TLSHandshakeTimeout <= 0 {
		o.TLSHandshakeTimeout = 10 * time.Second
	}
	if o.MaxIdleConnsPerHost <= 0 {
		o.MaxIdleConnsPerHost = 256
	}
	var proxy func(*http.Request) (*url.URL, error)
	if o.Proxy != nil {
		proxy = http.ProxyURL(o.Proxy)
	}
	return &http.Transport{
		Proxy:                 proxy,
		DialContext:           (&net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   o.MaxIdleConnsPerHost,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   o.TLSHandshakeTimeout,
		ResponseHeaderTimeout: o.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		TLSClientConfig:       o.TLS,
	}
}

// authTransport attaches the route's token to each request and, when the
// upstream answers a retry_on status, drops that token and sends the
// request once more with a fresh one. The request it is given is the
// ReverseProxy's own outgoing copy, which nothing else uses, so setting
// its header is safe.
//
// It logs what ops must see by default: a retry, a rejected token it could
// not retry, an upstream 5xx. Its errors carry what the error handler
// logs them with (attemptError).
type authTransport struct{ rt *route }

func (t authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var o *Outcome
	if t.rt.observed {
		o = outcomeOf(req.Context())
	}
	return t.rt.roundTrip(req, time.Now(), o)
}

// roundTrip is authTransport's RoundTrip for forward, which knows when the
// request started and its Outcome.
func (rt *route) roundTrip(req *http.Request, start time.Time, o *Outcome) (*http.Response, error) {
	tok, err := rt.token(req, o)
	if err != nil {
		closeBody(req)
		return rt.answered(req, start, nil, &TokenError{Err: err}, false, "")
	}
	canRetry := len(rt.RetryOn) > 0
	var body *replay
	if canRetry && req.Body != nil && req.Body != http.NoBody {
		if body, err = bufferBody(req, rt.RetryBodyLimit, rt.spill); err != nil {
			return rt.answered(req, start, nil, &bodyError{err}, false, "")
		}
		canRetry = body != nil
	}
	cred, err := rt.credential(tok)
	if err != nil {
		closeBody(req)
		body.done()
		return rt.answered(req, start, nil, err, false, "")
	}
	req.Header[rt.header] = cred
	resp, err := rt.send(req, 0)
	if err != nil || !slices.Contains(rt.RetryOn, resp.StatusCode) {
		body.done()
		return rt.answered(req, start, resp, err, false, "")
	}

	// The upstream rejected the token.
	rt.Tokens.Invalidate(tok)
	if !canRetry {
		return rt.answered(req, start, resp, nil, false, "the request body is larger than retry_body_limit")
	}
	fresh, err := rt.token(req, o)
	if err != nil {
		body.done()
		resp.Body.Close()
		return rt.answered(req, start, nil, &TokenError{Err: err}, false, "")
	}
	if fresh == tok { // renewal refused (rate limit): the same token would fail the same way
		body.done()
		return rt.answered(req, start, resp, nil, false, "the token was renewed moments ago (force_interval)")
	}
	cred, err = rt.credential(fresh)
	if err != nil {
		body.done()
		resp.Body.Close()
		return rt.answered(req, start, nil, err, false, "")
	}
	drain(resp.Body)
	again := req.Clone(req.Context())
	if body != nil {
		again.Body, _ = again.GetBody()
	}
	again.Header[rt.header] = cred
	rt.met.retried()
	if o != nil {
		o.Retried = true
	}
	resp, err = rt.send(again, 1)
	body.done()
	return rt.answered(again, start, resp, err, true, "")
}

// answered finishes a RoundTrip: an error goes to the error handler, which
// logs it; a response that ops must see (a retry, a rejection not
// retried, a 5xx) gets one log line here.
func (rt *route) answered(req *http.Request, start time.Time, resp *http.Response, err error, retried bool, notRetried string) (*http.Response, error) {
	if err != nil {
		return nil, &attemptError{err: err, start: start, retried: retried}
	}
	var msg string
	level := slog.LevelInfo
	switch {
	case notRetried != "":
		msg = "upstream rejected the token; not retried: " + notRetried
	case retried:
		msg = "upstream rejected the token; retried with a fresh one"
	case resp.StatusCode >= 500:
		msg, level = "upstream error", slog.LevelWarn
	default:
		return resp, nil
	}
	if ctx := req.Context(); rt.log.Enabled(ctx, level) {
		e := rt.event(req, start, resp.StatusCode)
		rt.log.LogAttrs(ctx, level, msg, e.attrs(ctx, slog.Bool("retried", retried))...)
	}
	return resp, nil
}

// attemptError is a failed RoundTrip, with what its log line needs.
type attemptError struct {
	err     error
	start   time.Time
	retried bool
}

func (e *attemptError) Error() string { return e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

// token asks the route's token source, timing the wait when observed.
func (rt *route) token(req *http.Request, o *Outcome) (string, error) {
	if o == nil {
		return rt.Tokens.Token(req.Context())
	}
	start := time.Now()
	tok, err := rt.Tokens.Token(req.Context())
	o.TokenWait += time.Since(start)
	return tok, err
}

// credential returns the header value carrying tok. The value of the
// current token is cached, so that steady state allocates nothing. A value
// that cannot be a header (the token source let garbage through) is a
// token error, never an upstream one: the upstream has not been asked.
func (rt *route) credential(tok string) ([]string, error) {
	if c := rt.cred.Load(); c != nil && c.token == tok {
		return c.value, nil
	}
	v := rt.before + tok + rt.after
	if !validHeaderValue(v) {
		rt.Tokens.Invalidate(tok)
		return nil, &TokenError{Err: fmt.Errorf("the token of oauth2 %q holds characters a header cannot carry", rt.OAuth2)}
	}
	c := &credential{token: tok, value: []string{v}}
	rt.cred.Store(c)
	return c.value, nil
}

// validHeaderValue reports whether v is a field value net/http will send
// (RFC 9110 §5.5: visible ASCII, spaces and tabs; no CR, LF or NUL).
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

type credential struct {
	token string
	value []string
}

// drain reads a little of a discarded response so that its connection can
// be reused, then closes it. A body that does not end soon is cut: the
// retry must not wait on an upstream that keeps its rejection open.
func drain(b io.ReadCloser) {
	cut := time.AfterFunc(drainTime, func() { b.Close() })
	io.CopyN(io.Discard, b, 64<<10)
	cut.Stop()
	b.Close()
}

// drainTime bounds drain.
const drainTime = 250 * time.Millisecond

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// bodyError is a failure reading the client's request body.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }
