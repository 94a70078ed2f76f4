// Package proxy is oauthproxy's request path: it matches a request to a
// route by path prefix, cleans the path and headers, attaches the route's
// token, forwards with httputil.ReverseProxy, retries once when the
// upstream rejects the token, and answers its own failures as JSON.
//
// Everything a request needs is built into a Table before it serves;
// serving a request reads no config. The package knows nothing of YAML or
// of how tokens are obtained: it asks a TokenSource.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// TokenSource is what the proxy needs of a token cache.
type TokenSource interface {
	// Token returns the access token to attach; it may wait for a fetch.
	// An error that implements StatusError says how to answer the client;
	// any other is 502 token_unavailable.
	Token(ctx context.Context) (string, error)
	// Invalidate drops token if it is still the current one: the upstream
	// rejected it.
	Invalidate(token string)
}

// StatusError is an error that knows how the proxy answers it: a token
// source's "sign-in required" is 503 login_required, not the upstream's
// fault. The message must be safe to show a client.
type StatusError interface {
	error
	HTTPStatus() int
	ErrorCode() string
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
	Logger *slog.Logger // nil: slog.Default()
	Meter  metric.Meter // nil: no metrics
	// Observe, when set, is handed the Outcome of every request once it is
	// done: the access log hangs here. Nil costs nothing.
	Observe func(*Outcome)
	// TracerProvider, when set, traces every request: a server span (the
	// child of the client's traceparent, if any) and a client span for
	// each attempt upstream, whose context the upstream receives in
	// traceparent. The request's context carries the server span, so that
	// the TokenSource can hang its own spans under it. Nil: no tracing,
	// and the request path pays nothing for it.
	TracerProvider trace.TracerProvider
	// BodyIdleTimeout cuts a request whose body stops arriving for this
	// long (a trickling client would hold a connection and an upstream
	// request forever); 0 is none.
	BodyIdleTimeout time.Duration
	// BodyBufferDir is where replayable request bodies (up to a route's
	// RetryBodyLimit) keep what does not fit their 64 KiB in memory, in
	// files removed as soon as they are created; "" is os.TempDir().
	BodyBufferDir string
}

// Handler is the proxy's http.Handler. It lives as long as the process;
// its route table is replaced while it serves (Swap), and requests in
// flight finish on the table they started with. Safe for concurrent use.
// Until a table is swapped in, every request gets 404 no_route.
type Handler struct {
	table    atomic.Pointer[Table]
	log      *slog.Logger
	met      *metrics
	none     *routeMetrics // requests no route took
	errLog   *log.Logger   // ReverseProxy's own complaints
	bodyIdl  time.Duration
	observer func(*Outcome)
	tracer   trace.Tracer // nil: not traced
	spill    *spillFiles

	mu       sync.Mutex
	routeMet map[string]*routeMetrics // by prefix: series outlive tables
}

// NewHandler returns a Handler with an empty table.
func NewHandler(opts Options) (*Handler, error) {
	h := &Handler{log: opts.Logger, bodyIdl: opts.BodyIdleTimeout, spill: newSpillFiles(opts.BodyBufferDir), observer: opts.Observe, routeMet: map[string]*routeMetrics{}}
	if h.log == nil {
		h.log = slog.Default()
	}
	if opts.TracerProvider != nil {
		h.tracer = opts.TracerProvider.Tracer(tracerName)
	}
	var err error
	if h.met, err = newMetrics(opts.Meter); err != nil {
		return nil, err
	}
	h.met.observed = h.observer != nil || h.tracer != nil
	h.none = h.met.forRoute("none")
	h.errLog = log.New(&slogWriter{h.log}, "", 0)
	empty, err := h.NewTable(nil, Inbound{})
	if err != nil {
		return nil, err
	}
	h.table.Store(empty)
	return h, nil
}

// Swap puts t in service and returns the table it replaces.
func (h *Handler) Swap(t *Table) *Table { return h.table.Swap(t) }

// SetRoutes builds a table of routes, keeping the inbound rules of the
// current one, and puts it in service.
func (h *Handler) SetRoutes(routes []Route) error {
	t, err := h.NewTable(routes, h.table.Load().guard.in)
	if err != nil {
		return err
	}
	h.Swap(t)
	return nil
}

// Table is a route table with its inbound rules, built once and never
// changed: a reload builds another and swaps it in.
type Table struct {
	guard  *guard
	routes map[string]*route // by prefix without its trailing slash ("" for "/")
	depth  int               // the most segments any prefix has
}

// NewTable builds the request path for routes, admitted by in.
func (h *Handler) NewTable(routes []Route, in Inbound) (*Table, error) {
	g, err := newGuard(in)
	if err != nil {
		return nil, err
	}
	t := &Table{guard: g, routes: make(map[string]*route, len(routes))}
	for i := range routes {
		rt, err := h.newRoute(routes[i], g)
		if err != nil {
			return nil, err
		}
		if _, dup := t.routes[rt.prefix]; dup {
			return nil, fmt.Errorf("route %q: duplicate prefix", routes[i].Prefix)
		}
		t.routes[rt.prefix] = rt
		t.depth = max(t.depth, strings.Count(rt.prefix, "/"))
	}
	return t, nil
}

// Len is the number of routes.
func (t *Table) Len() int { return len(t.routes) }

// match returns the route whose prefix is the longest whole-segment prefix
// of path ("/svc" matches "/svc" and "/svc/x", never "/svcx"), and the rest
// of the path after it. It looks the path's own prefixes up, longest
// first, so its cost depends on the path's depth, not on the table's size.
func (t *Table) match(path string) (*route, string) {
	// Start at the deepest prefix any route has: "/a/b/c/d" against routes
	// at most two segments deep starts with "/a/b".
	end, segs := len(path), 0
	for i := 1; i < len(path); i++ {
		if path[i] == '/' {
			if segs++; segs == t.depth {
				end = i
				break
			}
		}
	}
	for {
		if rt, ok := t.routes[path[:end]]; ok {
			return rt, path[end:]
		}
		if end == 0 {
			return nil, ""
		}
		end = strings.LastIndexByte(path[:end], '/')
		if end < 0 {
			return nil, ""
		}
	}
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
	inbound  string                 // the inbound secret header, never forwarded
	rp       *httputil.ReverseProxy // upgrade requests; the rest take forward
	errLog   *log.Logger
	spill    *spillFiles // Options.BodyBufferDir
	observed bool        // requests carry an Outcome
	met      *routeMetrics
	log      *slog.Logger
	tracer   trace.Tracer // nil: not traced
	host     string       // the upstream's server.address and server.port, for spans
	port     int
	location string // upstream URL prefix that rewrite_location maps back...
	locPath  string // ...and its path-absolute form...
	locTo    string // ...to this
}

var bufPool = &byteBufferPool{}

func (h *Handler) newRoute(r Route, g *guard) (*route, error) {
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
		inbound: g.header,
		met:     h.routeMetrics(r.Prefix),
		log:     h.log,
		tracer:  h.tracer,
		errLog:  h.errLog,
		spill:   h.spill,
		// observe starts an Outcome exactly then: otherwise nothing looks
		// for one in the request's context.
		observed: h.met.observed,
	}
	rt.host, rt.port = hostPort(r.Upstream)
	if rt.root == "" {
		rt.root = "/"
	}
	// Without strip_prefix the upstream path already holds the prefix.
	rt.location, rt.locPath, rt.locTo = rt.origin+rt.base+"/", rt.base+"/", rt.prefix+"/"
	if !r.StripPrefix {
		rt.locTo = "/"
	}
	if len(r.SetHeaders) > 0 {
		rt.set = make(map[string][]string, len(r.SetHeaders))
		for k, v := range r.SetHeaders {
			rt.set[http.CanonicalHeaderKey(k)] = []string{v}
		}
	}
	if len(r.RemoveHeaders) > 0 {
		rt.remove = make(map[string]bool, len(r.RemoveHeaders))
		for _, k := range r.RemoveHeaders {
			rt.remove[http.CanonicalHeaderKey(k)] = true
		}
	}
	rt.rp = &httputil.ReverseProxy{
		Rewrite:        rt.rewrite,
		Transport:      authTransport{rt},
		ModifyResponse: rt.modifyResponse,
		ErrorHandler:   rt.handleError,
		BufferPool:     bufPool,
		ErrorLog:       h.errLog,
	}
	return rt, nil
}

// routeMetrics returns the instruments of a route prefix, shared by every
// table that has it.
func (h *Handler) routeMetrics(prefix string) *routeMetrics {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m, ok := h.routeMet[prefix]; ok {
		return m
	}
	m := h.met.forRoute(prefix)
	h.routeMet[prefix] = m
	return m
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
	w, r, o := h.observe(w, r, start)
	if o != nil {
		defer func() {
			o.Duration = time.Since(start)
			h.done(o)
		}()
	}
	t := h.table.Load()
	if status, code, msg := t.guard.check(r); status != 0 {
		h.reject(w, r, start, nil, status, code, msg)
		return
	}
	path, ok := targetPath(r)
	if !ok {
		h.reject(w, r, start, nil, http.StatusBadRequest, CodeBadPath, "the request target must be a path: this is not a forward proxy")
		return
	}
	rt, rest := t.match(path)
	if o != nil && rt != nil {
		o.Route, o.OAuth2, o.Upstream = rt.Prefix, rt.OAuth2, rt.origin
	}
	if rt == nil {
		h.reject(w, r, start, nil, http.StatusNotFound, CodeNoRoute, "no route matches "+trim(path, 200))
		return
	}
	if _, ok := cleanPath(rest); !ok { // Rewrite builds the path; here it is only checked
		h.reject(w, r, start, rt, http.StatusBadRequest, CodeBadPath,
			"the path leaves its route prefix, or holds an encoded slash, backslash, dot segment or control character")
		return
	}
	if rt.MaxBody > 0 && r.ContentLength != 0 {
		if r.ContentLength > rt.MaxBody {
			h.reject(w, r, start, rt, http.StatusRequestEntityTooLarge, CodeBodyTooLarge,
				fmt.Sprintf("the request body is larger than this route's max_body (%d bytes)", rt.MaxBody))
			return
		}
		if r.ContentLength < 0 { // chunked: count as it streams
			r.Body = http.MaxBytesReader(w, r.Body, rt.MaxBody)
		}
	}
	if h.bodyIdl > 0 && r.ContentLength != 0 && r.Body != http.NoBody {
		ib := &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), idle: h.bodyIdl}
		r.Body = ib
		// The error handler sees ReverseProxy's clone of r, whose body is
		// wrapped: the context carries ib to it.
		r = r.WithContext(context.WithValue(r.Context(), idleBodyKey{}, ib))
	}
	onlyWebSocket(r.Header)
	// A response without a Content-Type keeps none: net/http would sniff
	// one, changing what the upstream said. The upstream's own replaces
	// this nil entry.
	w.Header()["Content-Type"] = nil
	if _, up := r.Header["Upgrade"]; up {
		rt.rp.ServeHTTP(w, r)
	} else {
		rt.forward(w, r, start, o)
	}
	rt.met.observe(time.Since(start).Seconds())
}

// reject answers a request the proxy refuses before forwarding it (rt is
// nil when no route took it), and logs it.
func (h *Handler) reject(w http.ResponseWriter, r *http.Request, start time.Time, rt *route, status int, code, msg string) {
	met, prefix, oauth2 := h.none, "", ""
	if rt != nil {
		met, prefix, oauth2 = rt.met, rt.Prefix, rt.OAuth2
	}
	record(r, met, status, code, msg)
	if ctx := r.Context(); h.log.Enabled(ctx, slog.LevelInfo) {
		e := event{route: prefix, oauth2: oauth2, method: r.Method, path: r.URL.Path, status: status, start: start}
		h.log.LogAttrs(ctx, slog.LevelInfo, "request refused", e.attrs(ctx,
			slog.String("error", code), slog.String("detail", msg), slog.String("remote", r.RemoteAddr))...)
	}
	writeError(w, status, code, msg, prefix, oauth2)
}

// rewrite builds the outgoing request (httputil.ReverseProxy.Rewrite).
// Hop-by-hop headers and Forwarded/X-Forwarded-{For,Host,Proto} are already
// gone from pr.Out.
func (rt *route) rewrite(pr *httputil.ProxyRequest) {
	rt.setURL(pr.In, pr.Out)
	rt.sanitize(pr.Out.Header)
	if rt.ForwardedHeaders {
		pr.SetXForwarded()
	}
	for k, v := range rt.set {
		pr.Out.Header[k] = v
	}
}

// setURL points the outgoing request at the upstream.
func (rt *route) setURL(in, out *http.Request) {
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
}

func (rt *route) modifyResponse(resp *http.Response) error {
	record(resp.Request, rt.met, resp.StatusCode, "", "")
	// Clients trust X-Oauthproxy-Error as the proxy's own word.
	delete(resp.Header, "X-Oauthproxy-Error")
	if rt.RewriteLocation {
		if loc := resp.Header.Get("Location"); loc != "" {
			resp.Header.Set("Location", rt.mapLocation(loc))
		}
	}
	keepTrailers(resp)
	if rt.log.Enabled(resp.Request.Context(), slog.LevelDebug) {
		rt.log.Debug("proxied", "route", rt.Prefix, "oauth2", rt.OAuth2, "method", resp.Request.Method,
			"path", trim(resp.Request.URL.Path, 200), "status", resp.StatusCode)
	}
	return nil
}

// mapLocation maps an upstream Location under the upstream's base back
// under the route's prefix: absolute (https://api/v2/x), network-path
// (//api/v2/x) and path-absolute (/v2/x, as http.Redirect writes it).
// Relative references resolve the same on both sides and stay as they are.
func (rt *route) mapLocation(loc string) string {
	switch {
	case strings.HasPrefix(loc, rt.location):
		return rt.locTo + loc[len(rt.location):]
	case strings.HasPrefix(loc, "//"):
		if rest, ok := strings.CutPrefix(loc, rt.location[len(rt.Upstream.Scheme)+1:]); ok {
			return rt.locTo + rest
		}
	case strings.HasPrefix(loc, "/"):
		if rest, ok := strings.CutPrefix(loc, rt.locPath); ok {
			return rt.locTo + rest
		}
	}
	return loc
}

// keepTrailers makes a response whose trailers must reach the client go out
// chunked: an HTTP/2 upstream may send trailers after a body with a
// Content-Length, which HTTP/1.1 cannot carry. Announced trailers always
// qualify; unannounced ones from an HTTP/2 upstream when the client said it
// takes them (TE: trailers, as gRPC clients do).
func keepTrailers(resp *http.Response) {
	if resp.ContentLength < 0 {
		return
	}
	announced := len(resp.Trailer) > 0
	wanted := resp.ProtoMajor == 2 && resp.Request != nil && strings.EqualFold(resp.Request.Header.Get("Te"), "trailers")
	if announced || wanted {
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
	}
}

func (rt *route) handleError(w http.ResponseWriter, r *http.Request, err error) {
	if bodyCut(r) {
		// The client stopped sending its body: answer it (the connection
		// still writes), whatever the cut did to the request's context.
		msg := "the request body stopped arriving for longer than the server's body_idle_timeout"
		record(r, rt.met, http.StatusRequestTimeout, CodeRequestTimeout, msg)
		rt.log.Warn("request failed", "route", rt.Prefix, "oauth2", rt.OAuth2, "status", http.StatusRequestTimeout, "error", CodeRequestTimeout, "method", r.Method)
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusRequestTimeout, CodeRequestTimeout, msg, rt.Prefix, rt.OAuth2)
		return
	}
	if r.Context().Err() != nil && !isTimeout(err) {
		record(r, rt.met, 499, "", "the client went away") // nobody to answer
		rt.log.Debug("client went away", "route", rt.Prefix, "method", r.Method, "error", err)
		return
	}
	status, code := errorStatus(err)
	var start time.Time
	var retried bool
	var ae *attemptError
	if errors.As(err, &ae) {
		start, retried = ae.start, ae.retried
	}
	var msg string
	var se StatusError
	switch {
	case errors.As(err, &se):
		msg = se.Error()
	case code == CodeTokenUnavailable:
		msg = err.Error()
	case code == CodeUpstreamTimeout:
		msg = fmt.Sprintf("upstream %s did not answer within the route's timeout", rt.origin)
	case code == CodeBodyTooLarge:
		msg = fmt.Sprintf("the request body is larger than this route's max_body (%d bytes)", rt.MaxBody)
	case code == CodeBadRequest:
		msg = trim(err.Error(), 200)
	default:
		msg = fmt.Sprintf("upstream %s unreachable: %s", rt.origin, trim(err.Error(), 200))
	}
	record(r, rt.met, status, code, msg)
	e := rt.event(r, start, status)
	rt.log.LogAttrs(r.Context(), slog.LevelWarn, "request failed", e.attrs(r.Context(),
		slog.Bool("retried", retried), slog.String("error", code), slog.String("detail", msg))...)
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

// idleBody cuts a request body that stops arriving: each Read must make
// progress within idle.
type idleBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	cut  atomic.Bool // the client stopped sending: its fault, not the upstream's
}

func (b *idleBody) Read(p []byte) (int, error) {
	b.rc.SetReadDeadline(time.Now().Add(b.idle))
	n, err := b.ReadCloser.Read(p)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		b.cut.Store(true)
	}
	return n, err
}

type idleBodyKey struct{}

// bodyCut reports whether r's body was cut by body_idle_timeout.
func bodyCut(r *http.Request) bool {
	b, ok := r.Context().Value(idleBodyKey{}).(*idleBody)
	return ok && b.cut.Load()
}
