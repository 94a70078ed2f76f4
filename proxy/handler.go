// Package proxy is oauthproxy's request path: it matches a request to a
// route by path prefix, cleans the path and headers, attaches the route's
// token, forwards with httputil.ReverseProxy, retries once when the
// upstream rejects the token, and answers its own failures as JSON.
//
// Everything a request needs is built by NewHandler; serving a request
// reads no config. The package knows nothing of YAML or of how tokens are
// obtained: it asks a TokenSource.
package proxy

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// TokenSource is what the proxy needs of a token cache.
type TokenSource interface {
	// Token returns the access token to attach; it may wait for a fetch.
	Token(ctx context.Context) (string, error)
	// Invalidate drops token if it is still the current one: the upstream
	// rejected it.
	Invalidate(token string)
}

// Route is one entry of the route table, as the config describes it.
type Route struct {
	Prefix      string   // path prefix, as configured ("/example/")
	Upstream    *url.URL // scheme, host and base path of the upstream
	StripPrefix bool     // drop Prefix before joining the path onto Upstream's
	OAuth2      string   // the oauth2 entry's name, for errors and logs
	Tokens      TokenSource
	// InjectHeader and InjectFormat say how the token reaches the
	// upstream; the defaults are Authorization and "Bearer {token}".
	InjectHeader     string
	InjectFormat     string
	RetryOn          []int // statuses meaning "token rejected": drop it, retry once
	RetryBodyLimit   int64 // larger bodies stream through, never retried
	MaxBody          int64 // larger bodies get 413; 0 is no limit
	SetHeaders       map[string]string
	RemoveHeaders    []string
	ForwardedHeaders bool // add X-Forwarded-For/-Host/-Proto
	RewriteLocation  bool // map an upstream Location back under Prefix
	// Transport carries requests to the upstream; routes to one upstream
	// share it (NewTransport).
	Transport http.RoundTripper
}

// Options configure a Handler.
type Options struct {
	Logger  *slog.Logger // nil: slog.Default()
	Meter   metric.Meter // nil: no metrics
	Inbound Inbound
}

// Handler is the proxy's http.Handler. It is safe for concurrent use; its
// routes can be replaced while it serves (SetRoutes).
type Handler struct {
	table atomic.Pointer[table]
	guard *guard
	log   *slog.Logger
	met   *metrics
	none  *routeMetrics // requests no route took
}

// NewHandler builds the request path for routes.
func NewHandler(routes []Route, opts Options) (*Handler, error) {
	h := &Handler{log: opts.Logger}
	if h.log == nil {
		h.log = slog.Default()
	}
	var err error
	if h.met, err = newMetrics(opts.Meter); err != nil {
		return nil, err
	}
	h.none = h.met.forRoute("none")
	if h.guard, err = newGuard(opts.Inbound); err != nil {
		return nil, err
	}
	if err := h.SetRoutes(routes); err != nil {
		return nil, err
	}
	return h, nil
}

// SetRoutes replaces the route table. Requests in flight finish on the
// routes they started with.
func (h *Handler) SetRoutes(routes []Route) error {
	t := &table{}
	seen := map[string]bool{}
	for i := range routes {
		rt, err := h.newRoute(routes[i])
		if err != nil {
			return err
		}
		if seen[rt.prefix] {
			return fmt.Errorf("route %q: duplicate prefix", routes[i].Prefix)
		}
		seen[rt.prefix] = true
		t.routes = append(t.routes, rt)
	}
	t.sort()
	h.table.Store(t)
	return nil
}

type table struct{ routes []*route }

// sort puts the longest prefix first, so that the first match is the longest.
func (t *table) sort() {
	slices.SortStableFunc(t.routes, func(a, b *route) int { return len(b.prefix) - len(a.prefix) })
}

// match returns the route whose prefix is the longest whole-segment prefix
// of path ("/svc" matches "/svc" and "/svc/x", never "/svcx"), and the rest
// of the path after it.
func (t *table) match(path string) (*route, string) {
	for _, rt := range t.routes {
		if !strings.HasPrefix(path, rt.prefix) {
			continue
		}
		if rest := path[len(rt.prefix):]; rest == "" || rest[0] == '/' {
			return rt, rest
		}
	}
	return nil, ""
}

// route is a Route built for serving.
type route struct {
	Route
	prefix   string // Prefix without its trailing slash; "" for "/"
	base     string // the upstream's escaped path without its trailing slash
	root     string // the upstream's escaped path as configured, or "/"
	origin   string // scheme://host of the upstream, for messages
	header   string // canonical InjectHeader
	before   string // InjectFormat before {token}
	after    string // InjectFormat after {token}
	cred     atomic.Pointer[credential]
	set      map[string][]string
	remove   map[string]bool
	inbound  string // the inbound secret header, never forwarded
	rp       *httputil.ReverseProxy
	met      *routeMetrics
	log      *slog.Logger
	location string // upstream URL prefix that rewrite_location maps back...
	locTo    string // ...to this
}

var bufPool = &byteBufferPool{}

func (h *Handler) newRoute(r Route) (*route, error) {
	if r.Upstream == nil || r.Upstream.Host == "" || (r.Upstream.Scheme != "http" && r.Upstream.Scheme != "https") {
		return nil, fmt.Errorf("route %q: upstream must be an absolute http(s) URL", r.Prefix)
	}
	if r.Tokens == nil || r.Transport == nil {
		return nil, fmt.Errorf("route %q: no token source or transport", r.Prefix)
	}
	if !strings.HasPrefix(r.Prefix, "/") {
		return nil, fmt.Errorf("route %q: prefix must start with /", r.Prefix)
	}
	if r.InjectHeader == "" {
		r.InjectHeader = "Authorization"
	}
	if r.InjectFormat == "" {
		r.InjectFormat = "Bearer {token}"
	}
	before, after, ok := strings.Cut(r.InjectFormat, "{token}")
	if !ok {
		return nil, fmt.Errorf("route %q: inject format %q has no {token}", r.Prefix, r.InjectFormat)
	}
	upPath := r.Upstream.EscapedPath()
	rt := &route{
		Route:   r,
		prefix:  strings.TrimRight(r.Prefix, "/"),
		base:    strings.TrimRight(upPath, "/"),
		root:    upPath,
		origin:  r.Upstream.Scheme + "://" + r.Upstream.Host,
		header:  http.CanonicalHeaderKey(r.InjectHeader),
		before:  before,
		after:   after,
		set:     map[string][]string{},
		remove:  map[string]bool{},
		inbound: h.guard.header,
		met:     h.met.forRoute(r.Prefix),
		log:     h.log.With("route", r.Prefix, "oauth2", r.OAuth2),
	}
	if rt.root == "" {
		rt.root = "/"
	}
	// Without strip_prefix the upstream path already holds the prefix.
	rt.location, rt.locTo = rt.origin+rt.base+"/", rt.prefix+"/"
	if !r.StripPrefix {
		rt.locTo = "/"
	}
	for k, v := range r.SetHeaders {
		rt.set[http.CanonicalHeaderKey(k)] = []string{v}
	}
	for _, k := range r.RemoveHeaders {
		rt.remove[http.CanonicalHeaderKey(k)] = true
	}
	rt.rp = &httputil.ReverseProxy{
		Rewrite:        rt.rewrite,
		Transport:      authTransport{rt},
		ModifyResponse: rt.modifyResponse,
		ErrorHandler:   rt.handleError,
		BufferPool:     bufPool,
		ErrorLog:       log.New(&slogWriter{rt.log}, "", 0),
	}
	return rt, nil
}

// outPath maps the rest of a request path (after the prefix) to the
// upstream's escaped path, or reports that it must not be forwarded.
func (rt *route) outPath(rest string) (string, bool) {
	clean, ok := cleanPath(rest)
	if !ok {
		return "", false
	}
	if !rt.StripPrefix {
		clean = rt.prefix + clean
	}
	if clean == "" {
		return rt.root, true
	}
	return rt.base + clean, true
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if status, code, msg := h.guard.check(r); status != 0 {
		h.reject(w, r, h.none, "", "", status, code, msg)
		return
	}
	path, ok := targetPath(r)
	if !ok {
		h.reject(w, r, h.none, "", "", http.StatusBadRequest, CodeBadPath, "the request target must be a path: this is not a forward proxy")
		return
	}
	rt, rest := h.table.Load().match(path)
	if rt == nil {
		h.reject(w, r, h.none, "", "", http.StatusNotFound, CodeNoRoute, "no route matches "+trim(path, 200))
		return
	}
	if _, ok := cleanPath(rest); !ok { // Rewrite builds the path; here it is only checked
		h.reject(w, r, rt.met, rt.Prefix, rt.OAuth2, http.StatusBadRequest, CodeBadPath,
			"the path leaves its route prefix, or holds an encoded slash, backslash, dot segment or control character")
		return
	}
	if rt.MaxBody > 0 && r.ContentLength != 0 {
		if r.ContentLength > rt.MaxBody {
			h.reject(w, r, rt.met, rt.Prefix, rt.OAuth2, http.StatusRequestEntityTooLarge, CodeBodyTooLarge,
				fmt.Sprintf("the request body is larger than this route's max_body (%d bytes)", rt.MaxBody))
			return
		}
		if r.ContentLength < 0 { // chunked: count as it streams
			r.Body = http.MaxBytesReader(w, r.Body, rt.MaxBody)
		}
	}
	rt.rp.ServeHTTP(w, r)
	rt.met.observe(time.Since(start).Seconds())
}

func (h *Handler) reject(w http.ResponseWriter, r *http.Request, met *routeMetrics, prefix, oauth2 string, status int, code, msg string) {
	met.count(status)
	if h.log.Enabled(r.Context(), slog.LevelDebug) {
		h.log.Debug("request refused", "status", status, "error", code, "method", r.Method, "path", trim(r.URL.Path, 200), "remote", r.RemoteAddr)
	}
	writeError(w, status, code, msg, prefix, oauth2)
}

// rewrite builds the outgoing request (httputil.ReverseProxy.Rewrite).
// Hop-by-hop headers and Forwarded/X-Forwarded-{For,Host,Proto} are already
// gone from pr.Out.
func (rt *route) rewrite(pr *httputil.ProxyRequest) {
	in, out := pr.In, pr.Out
	path, _ := targetPath(in)
	raw, _ := rt.outPath(path[len(rt.prefix):]) // ServeHTTP checked it
	out.URL.Scheme, out.URL.Host = rt.Upstream.Scheme, rt.Upstream.Host
	out.URL.RawPath, out.URL.Path = raw, raw
	if strings.IndexByte(raw, '%') >= 0 {
		out.URL.Path, _ = url.PathUnescape(raw)
	}
	// ReverseProxy drops query parameters it cannot parse; the query is
	// passed on byte for byte instead, and the proxy decides nothing on it.
	out.URL.RawQuery, out.URL.ForceQuery = in.URL.RawQuery, in.URL.ForceQuery
	out.Host = "" // the upstream's host, from out.URL

	rt.sanitize(out.Header)
	if rt.ForwardedHeaders {
		pr.SetXForwarded()
	}
	for k, v := range rt.set {
		out.Header[k] = v
	}
}

func (rt *route) modifyResponse(resp *http.Response) error {
	rt.met.count(resp.StatusCode)
	if rt.RewriteLocation {
		if loc := resp.Header.Get("Location"); loc != "" {
			if rest, ok := strings.CutPrefix(loc, rt.location); ok {
				resp.Header.Set("Location", rt.locTo+rest)
			}
		}
	}
	if rt.log.Enabled(resp.Request.Context(), slog.LevelDebug) {
		rt.log.Debug("proxied", "method", resp.Request.Method, "path", trim(resp.Request.URL.Path, 200), "status", resp.StatusCode)
	}
	return nil
}

func (rt *route) handleError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil && !isTimeout(err) {
		rt.met.count(499) // the client went away; nobody to answer
		rt.log.Debug("client went away", "method", r.Method, "error", err)
		return
	}
	status, code := errorStatus(err)
	var msg string
	switch code {
	case CodeTokenUnavailable:
		msg = err.Error()
	case CodeUpstreamTimeout:
		msg = fmt.Sprintf("upstream %s did not answer within the route's timeout", rt.origin)
	case CodeBodyTooLarge:
		msg = fmt.Sprintf("the request body is larger than this route's max_body (%d bytes)", rt.MaxBody)
	case CodeBadRequest:
		msg = trim(err.Error(), 200)
	default:
		msg = fmt.Sprintf("upstream %s unreachable: %s", rt.origin, trim(err.Error(), 200))
	}
	rt.met.count(status)
	rt.log.Warn("request failed", "status", status, "error", code, "detail", msg, "method", r.Method)
	writeError(w, status, code, msg, rt.Prefix, rt.OAuth2)
}

func trim(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// slogWriter turns ReverseProxy's log.Logger lines into slog records.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	w.log.Warn(strings.TrimSpace(string(p)))
	return len(p), nil
}

// byteBufferPool recycles the 32 KiB buffers ReverseProxy copies bodies with.
type byteBufferPool struct{ p sync.Pool }

func (b *byteBufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *byteBufferPool) Put(v []byte) { b.p.Put(&v) }
