package tokencache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// ClientAuth is how a client authenticates to the token endpoint
// (RFC 6749 §2.3). There is no auto-detection: trying one method and then
// another sends the secret twice, to a server that already refused it once.
type ClientAuth int

const (
	// ClientSecretBasic sends client_id and client_secret as HTTP Basic
	// credentials, each form-urlencoded first (RFC 6749 §2.3.1).
	ClientSecretBasic ClientAuth = iota
	// ClientSecretPost sends client_id and client_secret in the request body.
	ClientSecretPost
	// ClientAuthNone is a public client: client_id in the body, no secret.
	ClientAuthNone
)

// String returns the config name of a.
func (a ClientAuth) String() string {
	switch a {
	case ClientSecretBasic:
		return "client_secret_basic"
	case ClientSecretPost:
		return "client_secret_post"
	case ClientAuthNone:
		return "none"
	}
	return fmt.Sprintf("ClientAuth(%d)", int(a))
}

// RequestFormat is the encoding of a token request's body.
type RequestFormat int

const (
	// FormRequest is application/x-www-form-urlencoded, as RFC 6749 §4 says.
	FormRequest RequestFormat = iota
	// JSONRequest is a flat JSON object of strings, for servers that want one.
	JSONRequest
)

// ResponseFields names where a token response keeps each field. A dotted
// path reaches into nested objects ("data.token"); a key that itself holds
// a dot is found first. Empty fields take the RFC 6749 §5.1 names.
type ResponseFields struct {
	AccessToken  string
	ExpiresIn    string
	RefreshToken string
	TokenType    string
	Scope        string
}

func (f ResponseFields) withDefaults() ResponseFields {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&f.AccessToken, "access_token")
	def(&f.ExpiresIn, "expires_in")
	def(&f.RefreshToken, "refresh_token")
	def(&f.TokenType, "token_type")
	def(&f.Scope, "scope")
	return f
}

// Endpoint is a token endpoint and how to ask it for tokens. Its fields are
// read-only once a Source uses it.
type Endpoint struct {
	// Name is the oauth2 entry's name; errors, logs and metrics carry it.
	Name         string
	TokenURL     string
	ClientID     string
	ClientSecret Secret
	ClientAuth   ClientAuth

	Scopes   []string
	Audience string // sent as `audience` when set
	Resource string // RFC 8707 `resource` when set
	Params   map[string]Secret
	Headers  map[string]Secret
	Format   RequestFormat
	Fields   ResponseFields

	// DefaultTTL is the lifetime of a token whose response gives none
	// (no expires_in, or 0) and that is not a JWT with an exp claim.
	DefaultTTL time.Duration
	// AnyTokenType accepts a token_type other than Bearer; set it when the
	// token is not injected as "Bearer {token}".
	AnyTokenType bool
	// Timeout bounds one token request, connection included.
	Timeout time.Duration
	// Proxy is an HTTP(S) or SOCKS5 proxy for token requests. The
	// environment's HTTP_PROXY is never used: only this.
	Proxy *url.URL
	// Client sends the requests. Nil means NewHTTPClient(Timeout, Proxy).
	Client *http.Client
}

// Defaults for an Endpoint's zero fields.
const (
	DefaultTimeout    = 10 * time.Second
	DefaultTokenTTL   = 5 * time.Minute
	MinDefaultTTL     = time.Second
	MaxTokenLifetime  = 24 * time.Hour // longer lifetimes are capped: refresh at least daily
	maxResponseBytes  = 1 << 20
	maxDescriptionLen = 200
)

// NewHTTPClient returns the client a token endpoint is called with: its own
// transport with timeouts, no cookie jar, no proxy but the one given (never
// the environment's), and no redirects followed (a 307 would re-send the
// client secret elsewhere).
func NewHTTPClient(timeout time.Duration, proxy *url.URL) *http.Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	tr := &http.Transport{
		DialContext:           (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		MaxIdleConnsPerHost:   2,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	if proxy != nil {
		tr.Proxy = http.ProxyURL(proxy)
	}
	return &http.Client{
		Timeout:   timeout,
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// param is one token request parameter; a slice keeps them in a stable order.
type param struct {
	key   string
	value Secret
}

// request is a prepared token request: everything but the grant's own
// parameters is computed once.
type request struct {
	ep        *Endpoint
	endpoint  string // TokenURL without userinfo or query: safe to print
	static    []param
	client    *http.Client
	fields    ResponseFields
	needsAuth bool
}

func newRequest(ep *Endpoint) (*request, error) {
	u, err := url.Parse(ep.TokenURL)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("oauth2 %q: token_url %q is not an http(s) URL", ep.Name, ep.TokenURL)
	}
	r := &request{ep: ep, endpoint: safeURL(u), client: ep.Client, fields: ep.Fields.withDefaults()}
	if r.client == nil {
		r.client = NewHTTPClient(ep.Timeout, ep.Proxy)
	}
	if ep.ClientAuth != ClientSecretBasic {
		r.static = append(r.static, param{"client_id", Secret(ep.ClientID)})
	}
	if ep.ClientAuth == ClientSecretPost {
		r.static = append(r.static, param{"client_secret", ep.ClientSecret})
	}
	if len(ep.Scopes) > 0 {
		r.static = append(r.static, param{"scope", Secret(strings.Join(ep.Scopes, " "))})
	}
	if ep.Audience != "" {
		r.static = append(r.static, param{"audience", Secret(ep.Audience)})
	}
	if ep.Resource != "" {
		r.static = append(r.static, param{"resource", Secret(ep.Resource)})
	}
	keys := make([]string, 0, len(ep.Params))
	for k := range ep.Params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		r.static = append(r.static, param{k, ep.Params[k]})
	}
	return r, nil
}

// safeURL is u without userinfo, query or fragment: what errors and logs may show.
func safeURL(u *url.URL) string {
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}).String()
}

// do sends one token request with the grant's parameters and parses the answer.
// secrets lists values (refresh token, password) to scrub from IdP text.
func (r *request) do(ctx context.Context, grant []param, secrets ...Secret) (*response, error) {
	resp, raw, err := r.send(ctx, grant)
	if err != nil {
		return nil, err
	}
	return r.interpret(resp, raw, append([]Secret{r.ep.ClientSecret}, secrets...))
}

// send posts the request and reads at most 1 MiB of the answer.
func (r *request) send(ctx context.Context, grant []param) (*http.Response, []byte, error) {
	ep := r.ep
	all := make([]param, 0, len(grant)+len(r.static))
	all = append(all, grant...)
	all = append(all, r.static...)
	var body []byte
	var ctype string
	switch ep.Format {
	case JSONRequest:
		m := make(map[string]string, len(all))
		for _, p := range all {
			m[p.key] = p.value.Reveal()
		}
		body, _ = json.Marshal(m) // a map of strings always encodes
		ctype = "application/json"
	default:
		v := make(url.Values, len(all))
		for _, p := range all {
			v.Set(p.key, p.value.Reveal())
		}
		body = []byte(v.Encode())
		ctype = "application/x-www-form-urlencoded"
	}

	timeout := ep.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.TokenURL, bytes.NewReader(body))
	if err != nil {
		return nil, nil, r.errorf(0, fmt.Errorf("building request: %w", err))
	}
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Accept", "application/json")
	for k, v := range ep.Headers {
		req.Header.Set(k, v.Reveal())
	}
	if ep.ClientAuth == ClientSecretBasic {
		// RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
		req.SetBasicAuth(url.QueryEscape(ep.ClientID), url.QueryEscape(ep.ClientSecret.Reveal()))
	}

	timedOut := func(status int) *Error {
		e := r.errorf(status, context.DeadlineExceeded)
		e.Timeout = timeout
		return e
	}
	resp, err := r.client.Do(req)
	if err != nil {
		if ctx.Err() != nil || isTimeout(err) {
			return nil, nil, timedOut(0)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the URL, query and all
		}
		return nil, nil, r.errorf(0, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	switch {
	case err != nil && (ctx.Err() != nil || isTimeout(err)):
		return nil, nil, timedOut(resp.StatusCode)
	case err != nil:
		return nil, nil, r.errorf(resp.StatusCode, fmt.Errorf("reading the response: %w", err))
	case len(raw) > maxResponseBytes:
		return nil, nil, r.errorf(resp.StatusCode, errors.New("the response is larger than 1 MiB"))
	}
	return resp, raw, nil
}

// interpret turns an answer into a token response or a classified *Error.
func (r *request) interpret(resp *http.Response, raw []byte, scrub []Secret) (*response, error) {
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		e := r.errorf(resp.StatusCode, errors.New("redirect not followed: token endpoints must not redirect (the client credentials would be sent again)"))
		e.Permanent = true
		return nil, e
	case resp.StatusCode < 200 || resp.StatusCode >= 300:
		e := r.errorf(resp.StatusCode, nil)
		e.Code, e.Description = parseErrorBody(raw, scrub)
		e.RetryAfter, _ = ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		e.Permanent = permanent(resp.StatusCode, e.Code)
		return nil, e
	}
	tr, err := parseTokenResponse(raw, r.fields)
	if err != nil {
		return nil, r.errorf(resp.StatusCode, describeBadBody(err, resp.Header.Get("Content-Type")))
	}
	return tr, nil
}

func (r *request) errorf(status int, err error) *Error {
	return &Error{OAuth2: r.ep.Name, Endpoint: r.endpoint, Status: status, Err: err}
}

func describeBadBody(err error, ctype string) error {
	var syn *json.SyntaxError
	if errors.As(err, &syn) || errors.Is(err, errNotObject) {
		mt, _, _ := mime.ParseMediaType(ctype)
		if mt == "" {
			mt = "no content type"
		}
		return fmt.Errorf("the body is not a JSON token response (%s)", sanitize(mt, 64))
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// permanent reports whether retrying soon cannot help: the IdP refused this
// client's request as configured. 408, 425, 429 and 5xx are transient, and so
// is temporarily_unavailable (RFC 6749 §4.1.2.1).
func permanent(status int, code string) bool {
	switch {
	case status == http.StatusRequestTimeout, status == http.StatusTooEarly, status == http.StatusTooManyRequests, status >= 500:
		return false
	case code == "temporarily_unavailable", code == "slow_down":
		return false
	}
	return status >= 400
}

// parseErrorBody reads RFC 6749 §5.2 error and error_description from an
// error response. Only a well-formed error code survives; the description
// is trimmed, made printable and scrubbed of the given secrets.
func parseErrorBody(raw []byte, scrub []Secret) (code, desc string) {
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
		desc = sanitize(scrubSecrets(s, scrub), maxDescriptionLen)
	}
	return code, desc
}

// validErrorCode accepts the error codes this proxy repeats to clients:
// RFC 6749 §5.2 allows more characters, but a code made of them is
// more likely an echo of something else than a code.
func validErrorCode(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
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

func scrubSecrets(s string, secrets []Secret) string {
	for _, sec := range secrets {
		if v := sec.Reveal(); len(v) >= 4 {
			s = strings.ReplaceAll(s, v, redacted)
		}
	}
	return s
}
