package proxy

import (
	"context"
	"net/http"
	"time"
)

// Outcome is what happened to one request: filled along the way, handed
// once to Options.Observe when the request is done (an access log, a
// trace). It exists only when something observes it: without an observer
// the request path allocates nothing for it.
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
}

type outcomeKey struct{}

// outcomeOf returns the request's Outcome, or nil when none is observed.
func outcomeOf(ctx context.Context) *Outcome {
	o, _ := ctx.Value(outcomeKey{}).(*Outcome)
	return o
}

// observe starts an Outcome for r when the handler has an observer.
func (h *Handler) observe(w http.ResponseWriter, r *http.Request) (http.ResponseWriter, *http.Request, *Outcome) {
	if h.observer == nil {
		return w, r, nil
	}
	o := &Outcome{Start: time.Now(), Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery}
	r = r.WithContext(context.WithValue(r.Context(), outcomeKey{}, o))
	o.Request = r
	return &countingWriter{ResponseWriter: w, o: o}, r, o
}

// record counts a request's status, once, and notes it in its Outcome:
// the one place a request's result is recorded, whatever path it took
// (refused, proxied, failed).
func record(r *http.Request, met *routeMetrics, status int, code, detail string) {
	met.count(status)
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
