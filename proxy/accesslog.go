package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Log keys, the same in every line the proxy writes (docs/operations.md):
// route, oauth2, method, path, query, status, bytes, duration_ms,
// upstream, retried, token_wait_ms, trace_id.

// maxLoggedPath bounds the path a log line or span holds.
const maxLoggedPath = 2048

// event is a line of the default log: a refused or failed request, a
// retry, an upstream 5xx. These are logged whether or not the access log
// is on, so they cost nothing until they happen.
type event struct {
	route, oauth2, method, path, upstream string
	status                                int
	start                                 time.Time // zero: duration unknown
}

// event describes an outgoing request of rt: its path is mapped back to
// the one the client asked for (as cleaned).
func (rt *route) event(out *http.Request, start time.Time, status int) event {
	return event{route: rt.Prefix, oauth2: rt.OAuth2, method: out.Method, path: rt.inboundPath(out.URL),
		upstream: rt.origin, status: status, start: start}
}

// inboundPath maps an outgoing URL's path back under the route's prefix.
func (rt *route) inboundPath(out *url.URL) string {
	p := out.EscapedPath()
	rest, ok := strings.CutPrefix(p, rt.base)
	if !ok {
		return p
	}
	if rt.StripPrefix {
		return rt.prefix + rest
	}
	return rest
}

// attrs are e's keys, then extra. An observed request's Outcome knows
// the path exactly as received, when it started and its token wait.
func (e event) attrs(ctx context.Context, extra ...slog.Attr) []slog.Attr {
	var wait time.Duration
	if o := outcomeOf(ctx); o != nil {
		e.path, e.start, wait = o.Path, o.Start, o.TokenWait
	}
	a := make([]slog.Attr, 0, 10+len(extra))
	a = append(a, slog.String("route", e.route), slog.String("oauth2", e.oauth2), slog.String("method", e.method),
		slog.String("path", trim(e.path, maxLoggedPath)), slog.Int("status", e.status))
	if e.upstream != "" {
		a = append(a, slog.String("upstream", e.upstream))
	}
	if !e.start.IsZero() {
		a = append(a, slog.Float64("duration_ms", ms(time.Since(e.start))))
	}
	if wait > 0 {
		a = append(a, slog.Float64("token_wait_ms", ms(wait)))
	}
	if id := traceID(ctx); id != "" {
		a = append(a, slog.String("trace_id", id))
	}
	return append(a, extra...)
}

// AccessLogOptions configure an AccessLog.
type AccessLogOptions struct {
	// Query logs each request's query string. Off, the query never reaches
	// the log: it may hold an API key or personal data.
	Query bool
	// Handler formats the lines onto w (the buffer); nil is slog's JSON
	// handler. The process's own format and redaction belong here.
	Handler func(w io.Writer) slog.Handler
	// FlushInterval bounds how long a line waits in the buffer; default 1s.
	FlushInterval time.Duration
	// BufferSize is the buffer's size; default 64 KiB.
	BufferSize int
}

// AccessLog writes one line per request, with the fixed keys, through a
// buffer flushed at least every FlushInterval and on Close: a busy proxy
// makes one write per buffer, not one per request. Hand Observe to
// Options.Observe. Safe for concurrent use.
type AccessLog struct {
	log   *slog.Logger
	query bool
	buf   *flushWriter
}

// NewAccessLog returns an access log writing to w; Close it at exit.
func NewAccessLog(w io.Writer, opts AccessLogOptions) *AccessLog {
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = time.Second
	}
	if opts.BufferSize <= 0 {
		opts.BufferSize = 64 << 10
	}
	buf := newFlushWriter(w, opts.BufferSize, opts.FlushInterval)
	var h slog.Handler
	if opts.Handler != nil {
		h = opts.Handler(buf)
	} else {
		h = slog.NewJSONHandler(buf, nil)
	}
	return &AccessLog{log: slog.New(h), query: opts.Query, buf: buf}
}

// Observe logs o. It never holds a header value: the path, and the query
// only when asked for.
func (a *AccessLog) Observe(o *Outcome) {
	attrs := make([]slog.Attr, 0, 14)
	attrs = append(attrs,
		slog.String("route", o.Route),
		slog.String("oauth2", o.OAuth2),
		slog.String("method", o.Method),
		slog.String("path", trim(o.Path, maxLoggedPath)))
	if a.query {
		attrs = append(attrs, slog.String("query", trim(o.Query, maxLoggedPath)))
	}
	attrs = append(attrs,
		slog.Int("status", o.Status),
		slog.Int64("bytes", o.Bytes),
		slog.Float64("duration_ms", ms(o.Duration)),
		slog.String("upstream", o.Upstream),
		slog.Bool("retried", o.Retried),
		slog.Float64("token_wait_ms", ms(o.TokenWait)),
		slog.String("trace_id", o.TraceID()))
	if o.Error != "" {
		attrs = append(attrs, slog.String("error", o.Error))
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}

// Flush writes out what the buffer holds.
func (a *AccessLog) Flush() error { return a.buf.Flush() }

// Close stops the periodic flush and flushes; lines logged after it are
// written unbuffered.
func (a *AccessLog) Close() error { return a.buf.Close() }

// flushWriter is a bufio.Writer behind a mutex, flushed by a ticker.
type flushWriter struct {
	mu     sync.Mutex
	w      *bufio.Writer
	closed bool
	stop   chan struct{}
	done   chan struct{}
}

func newFlushWriter(w io.Writer, size int, every time.Duration) *flushWriter {
	f := &flushWriter{w: bufio.NewWriterSize(w, size), stop: make(chan struct{}), done: make(chan struct{})}
	go f.run(every)
	return f
}

func (f *flushWriter) run(every time.Duration) {
	defer close(f.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			f.Flush()
		case <-f.stop:
			return
		}
	}
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.w.Write(p)
	if err == nil && f.closed {
		err = f.w.Flush()
	}
	return n, err
}

func (f *flushWriter) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.w.Buffered() == 0 {
		return nil
	}
	return f.w.Flush()
}

func (f *flushWriter) Close() error {
	f.mu.Lock()
	already := f.closed
	f.closed = true
	f.mu.Unlock()
	if !already {
		close(f.stop)
		<-f.done
	}
	return f.Flush()
}
