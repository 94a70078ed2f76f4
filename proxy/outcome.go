package proxy

import (
	"context"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Outcome is what happened to one request: filled along the way, handed
// once to Options.Observe when the request is done (an access log), and
// read by the request's trace. It exists only when something observes or
// traces requests: otherwise the request path allocates nothing for it.
type Outcome struct {
	Start    time.Time
	Duration time.Duration
	Route    string // the route's prefix; "" when no route took the request
	OAuth2   string
	Method   string
	Path     string // the request path as received, without the query
	Query    string
	Upstream string // scheme://host of the route's upstream
	Status   int    // what the client got; 499 when it left first
	// Error is the code of a proxy-made error (X-Oauthproxy-Error).
	Error string
	// Detail says why, for proxy-made errors: safe to log.
	Detail    string
	Retried   bool
	TokenWait time.Duration // time spent waiting for tokens
	Bytes     int64         // response body bytes written to the client
	// Request is the request as received: its context carries the trace.
	Request *http.Request

	span trace.Span // the server span; nil when not traced
}

// TraceID is the id of the request's trace in hex, or "" when the request
// is not traced (or not sampled: an id no backend has would mislead).
func (o *Outcome) TraceID() string {
	if o.Request == nil {
		return ""
	}
	return traceID(o.Request.Context())
}

// traceID is the sampled trace of ctx in hex, or "".
func traceID(ctx context.Context) string {
	if sc := trace.SpanContextFromContext(ctx); sc.IsSampled() {
		return sc.TraceID().String()
	}
	return ""
}

type outcomeKey struct{}

// outcomeOf returns the request's Outcome, or nil when none is observed.
func outcomeOf(ctx context.Context) *Outcome {
	o, _ := ctx.Value(outcomeKey{}).(*Outcome)
	return o
}

// traceContext reads and writes W3C traceparent/tracestate headers.
var traceContext propagation.TraceContext

// observe starts an Outcome for r when the handler has an observer or a
// tracer, and the request's server span when it has a tracer: a child of
// the client's traceparent, if it sent one.
func (h *Handler) observe(w http.ResponseWriter, r *http.Request, start time.Time) (http.ResponseWriter, *http.Request, *Outcome) {
	if h.observer == nil && h.tracer == nil {
		return w, r, nil
	}
	o := &Outcome{Start: start, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery}
	ctx := r.Context()
	if h.tracer != nil {
		ctx, o.span = h.tracer.Start(traceContext.Extract(ctx, propagation.HeaderCarrier(r.Header)), r.Method,
			trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(o.Start),
			trace.WithAttributes(attrMethod.String(r.Method), attrPath.String(trim(r.URL.Path, maxLoggedPath))))
	}
	r = r.WithContext(context.WithValue(ctx, outcomeKey{}, o))
	o.Request = r
	return &countingWriter{ResponseWriter: w, o: o}, r, o
}

// done ends the request's span and hands its Outcome to the observer.
func (h *Handler) done(o *Outcome) {
	if o.span != nil {
		endServerSpan(o)
	}
	if h.observer != nil {
		h.observer(o)
	}
}

// record counts a request's status, once, and notes it in its Outcome:
// the one place a request's result is recorded, whatever path it took
// (refused, proxied, failed).
func record(r *http.Request, met *routeMetrics, status int, code, detail string) {
	met.count(status)
	if !met.m.observed {
		return // no Outcome to look for
	}
	if o := outcomeOf(r.Context()); o != nil {
		o.Status, o.Error, o.Detail = status, code, detail
	}
}

// countingWriter counts the body bytes of an observed request. Unwrap
// keeps http.ResponseController (flushes, deadlines, hijacking) working.
type countingWriter struct {
	http.ResponseWriter
	o *Outcome
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.o.Bytes += int64(n)
	return n, err
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush implements http.Flusher, which ReverseProxy and SSE rely on.
func (w *countingWriter) Flush() { http.NewResponseController(w.ResponseWriter).Flush() }
