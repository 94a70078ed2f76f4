package tokencache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/propagation"
)

// Param is one request parameter. Its value is a Secret because some are
// (client_secret, password, refresh_token, assertion...).
type Param struct {
	Key   string
	Value Secret
}

// Form is the parameters of a request to an authorization server, in the
// order they are sent.
type Form []Param

// Add appends a parameter.
func (f *Form) Add(key string, value Secret) { *f = append(*f, Param{key, value}) }

// Get returns the first value of key, or "".
func (f Form) Get(key string) Secret {
	for _, p := range f {
		if p.Key == key {
			return p.Value
		}
	}
	return ""
}

// Without returns f without the parameters named key.
func (f Form) Without(key string) Form {
	out := make(Form, 0, len(f))
	for _, p := range f {
		if p.Key != key {
			out = append(out, p)
		}
	}
	return out
}

// RequestFormat is the encoding of a request's body.
type RequestFormat int

const (
	// FormRequest is application/x-www-form-urlencoded, as RFC 6749 says.
	FormRequest RequestFormat = iota
	// JSONRequest is a flat JSON object of strings, for servers that want one.
	JSONRequest
)

// Client is an OAuth2 client as its authorization server sees it: the
// credentials it authenticates with and the HTTP client that reaches the
// server. It sends any form to any of the server's endpoints (token,
// device authorization, revocation). Its connection pool outlives secret
// rotations. Safe for concurrent use; its fields are read-only once used.
type Client struct {
	// Name is the oauth2 entry's name; errors carry it.
	Name string
	Auth ClientAuth
	// Format is the body encoding of POST requests.
	Format RequestFormat
	// Headers are sent with every request (`headers:` in the config).
	Headers map[string]Secret
	// Timeout bounds one request, connection included (default DefaultTimeout).
	Timeout time.Duration
	// HTTP sends the requests. Nil means NewHTTPClient(Timeout, nil).
	HTTP *http.Client
	// Scrub removes secrets from what servers answer; nil removes nothing.
	Scrub *Scrubber
}

// Defaults and limits of requests to authorization servers.
const (
	DefaultTimeout    = 10 * time.Second
	maxResponseBytes  = 1 << 20
	maxDescriptionLen = 200
)

// NewHTTPClient returns an HTTP client for an authorization server over tr:
// no cookie jar, and no redirects followed (a 307 would re-send the
// client's credentials elsewhere). The transport decides proxies and TLS;
// nil is a plain one that never uses the environment's HTTP_PROXY.
func NewHTTPClient(timeout time.Duration, tr http.RoundTripper) *http.Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if tr == nil {
		tr = plainTransport
	}
	return &http.Client{
		Timeout:   timeout,
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// plainTransport serves clients built without a transport (tests, tools):
// HTTP_PROXY is never read.
var plainTransport = &http.Transport{
	DialContext:         (&net.Dialer{Timeout: DefaultTimeout, KeepAlive: 30 * time.Second}).DialContext,
	TLSHandshakeTimeout: DefaultTimeout,
	MaxIdleConnsPerHost: 2,
	IdleConnTimeout:     90 * time.Second,
	ForceAttemptHTTP2:   true,
}

// Request is one request to an authorization server endpoint.
type Request struct {
	// Method is POST (the default) or GET. A GET carries the form in the
	// query; the client's credentials go in headers only, so GET needs a
	// ClientAuth that sends none in the body.
	Method string
	URL    string
	Form   Form
}

// Answer is what an endpoint answered, its body read up to 1 MiB.
type Answer struct {
	Status int
	Header http.Header
	Body   []byte
	// Endpoint is the URL without userinfo, query or fragment: safe to print.
	Endpoint string
}

// Send authenticates req with the client's credentials and sends it. Its
// error is an *Error that names the endpoint and never holds a secret.
// An answer with any status is not an error.
func (c *Client) Send(ctx context.Context, req Request) (*Answer, error) {
	endpoint, err := safeEndpoint(req.URL)
	if err != nil {
		return nil, &Error{OAuth2: c.Name, Endpoint: "(invalid URL)", Err: err}
	}
	fail := func(status int, err error) *Error {
		return &Error{OAuth2: c.Name, Endpoint: endpoint, Status: status, Err: err}
	}
	form := append(Form(nil), req.Form...)
	hdr := http.Header{}
	if c.Auth != nil {
		if err := c.Auth.Authenticate(&form, hdr); err != nil {
			return nil, fail(0, fmt.Errorf("client authentication (%s): %w", c.Auth.Method(), err))
		}
	}
	method, target, body, ctype := http.MethodPost, req.URL, []byte(nil), ""
	switch {
	case req.Method == http.MethodGet:
		method, target = http.MethodGet, withQuery(req.URL, form)
	case c.Format == JSONRequest:
		m := make(map[string]string, len(form))
		for _, p := range form {
			m[p.Key] = p.Value.Reveal()
		}
		body, _ = json.Marshal(m) // a map of strings always encodes
		ctype = "application/json"
	default:
		body, ctype = []byte(encodeForm(form)), "application/x-www-form-urlencoded"
	}

	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, fail(0, errors.New("building the request failed"))
	}
	for k, v := range c.Headers {
		hreq.Header.Set(k, v.Reveal())
	}
	for k, v := range hdr {
		hreq.Header[k] = v
	}
	if ctype != "" {
		hreq.Header.Set("Content-Type", ctype)
	}
	hreq.Header.Set("Accept", "application/json")
	// The token endpoint joins the fetch's trace (W3C Trace Context).
	traceContext.Inject(ctx, propagation.HeaderCarrier(hreq.Header))

	timedOut := func(status int) *Error {
		e := fail(status, context.DeadlineExceeded)
		e.Timeout = timeout
		return e
	}
	hc := c.HTTP
	if hc == nil {
		hc = NewHTTPClient(timeout, nil)
	}
	resp, err := hc.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return nil, timedOut(0)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL, query and all
		}
		return nil, fail(0, errors.New(c.Scrub.Scrub(err.Error())))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, timedOut(resp.StatusCode)
	case err != nil:
		return nil, fail(resp.StatusCode, errors.New("reading the response failed"))
	case len(raw) > maxResponseBytes:
		return nil, fail(resp.StatusCode, errors.New("the response is larger than 1 MiB"))
	}
	return &Answer{Status: resp.StatusCode, Header: resp.Header, Body: raw, Endpoint: endpoint}, nil
}

// Refusal turns an answer that is not a success into a classified *Error:
// a redirect, or an RFC 6749 §5.2 error with its code and a description
// fit for logs. It returns nil for a 2xx answer.
func (c *Client) Refusal(a *Answer) *Error {
	switch {
	case a.Status >= 200 && a.Status < 300:
		return nil
	case a.Status >= 300 && a.Status < 400:
		e := &Error{OAuth2: c.Name, Endpoint: a.Endpoint, Status: a.Status, Permanent: true,
			Err: errors.New("redirect not followed: authorization server endpoints must not redirect (the client's credentials would be sent again)")}
		return e
	}
	e := &Error{OAuth2: c.Name, Endpoint: a.Endpoint, Status: a.Status}
	var desc string
	e.Code, desc = parseErrorBody(a.Body)
	if e.Code != "" && c.Scrub.Scrub(e.Code) != e.Code {
		// A server that echoes what it received may put a secret (or its
		// base64) where the code goes.
		e.Code = "unrecognized_error"
	}
	e.Description = safeDescription(c.Scrub.Scrub(desc))
	e.RetryAfter, _ = ParseRetryAfter(a.Header.Get("Retry-After"), time.Now())
	e.Permanent = permanent(a.Status, e.Code)
	return e
}

// safeEndpoint is a URL without userinfo, query or fragment: what errors
// and logs may show (a query can hold an API key).
func safeEndpoint(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", errors.New("not an absolute http(s) URL")
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}).String(), nil
}

// SafeURL is raw without userinfo, query or fragment, for messages.
func SafeURL(raw string) string {
	s, err := safeEndpoint(raw)
	if err != nil {
		return "(invalid URL)"
	}
	return s
}

func encodeForm(f Form) string {
	var b strings.Builder
	for i, p := range f {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(p.Key))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(p.Value.Reveal()))
	}
	return b.String()
}

// withQuery appends the form to raw's query.
func withQuery(raw string, f Form) string {
	if len(f) == 0 {
		return raw
	}
	sep := "?"
	if strings.Contains(raw, "?") {
		sep = "&"
	}
	return raw + sep + encodeForm(f)
}

// permanent reports whether retrying soon cannot help: the server refused
// this client's request as configured. 408, 425, 429 and 5xx are
// transient, and so are temporarily_unavailable (RFC 6749 §4.1.2.1) and
// slow_down.
func permanent(status int, code string) bool {
	switch {
	case status == http.StatusRequestTimeout, status == http.StatusTooEarly, status == http.StatusTooManyRequests, status >= 500:
		return false
	case code == "temporarily_unavailable", code == "slow_down":
		return false
	}
	return status >= 400
}

// parseErrorBody reads RFC 6749 §5.2 error and error_description. Only a
// well-formed error code survives.
func parseErrorBody(raw []byte) (code, desc string) {
	var body struct {
		Error       any `json:"error"`
		Description any `json:"error_description"`
	}
	if json.Unmarshal(raw, &body) != nil {
		return "", ""
	}
	if s, ok := body.Error.(string); ok && validErrorCode(s) {
		code = s
	} else if body.Error != nil {
		code = "unrecognized_error"
	}
	if s, ok := body.Description.(string); ok {
		desc = s
	}
	return code, desc
}

// validErrorCode accepts the error codes this proxy repeats to clients:
// RFC 6749 §5.2 allows more characters, but a code made of them is more
// likely an echo of something else than a code.
//
// Codes reach clients' error bodies, /tokens and /readyz, so a code that
// could be an echoed token is refused even when no known secret matches:
// snake_case words (every registered code is one) pass at any length;
// anything else only without a run of 20 token characters (opaque).
func validErrorCode(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	snake := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
		if !(c >= 'a' && c <= 'z' || c == '_' && i > 0 && s[i-1] != '_') {
			snake = false
		}
	}
	return snake || !opaque(s)
}

// safeDescription is an error_description fit for a log line: printable
// ASCII, at most 200 bytes, and with every long opaque run (20 characters
// or more of a token's alphabet, no spaces) masked. The known secrets are
// already scrubbed; the mask catches what an echoing server may have sent
// back that the proxy does not know as a secret (a value another process
// sent, a transformed one). Error codes such as AADSTS7000215 survive.
func safeDescription(s string) string {
	s = sanitize(s, 4*maxDescriptionLen)
	var b strings.Builder
	for len(s) > 0 {
		i := strings.IndexFunc(s, func(r rune) bool { return r == ' ' })
		word := s
		if i >= 0 {
			word, s = s[:i], s[i+1:]
		} else {
			s = ""
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		if opaque(word) {
			b.WriteString(redacted)
		} else {
			b.WriteString(word)
		}
	}
	return strings.TrimSpace(sanitize(b.String(), maxDescriptionLen))
}

// opaque reports whether word holds a run of 20 or more characters that
// could be a token: letters, digits and + / = - _ . % ~.
func opaque(word string) bool {
	run := 0
	for i := 0; i < len(word); i++ {
		c := word[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+/=-_.%~", c) >= 0 {
			if run++; run >= 20 {
				return true
			}
		} else {
			run = 0
		}
	}
	return false
}

// sanitize keeps printable ASCII and cuts s to at most n bytes.
func sanitize(s string, n int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < n; i++ {
		c := s[i]
		if c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		} else if c == '\n' || c == '\t' || c == '\r' {
			b.WriteByte(' ')
		}
	}
	return b.String()
}
