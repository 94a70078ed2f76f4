package proxy_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/oauthproxy/oauthproxy/proxy"
	"github.com/oauthproxy/oauthproxy/tokencache"
)

// traceparents records the traceparent of every request a server gets.
type traceparents struct {
	mu   sync.Mutex
	seen []string
}

func (tp *traceparents) add(r *http.Request) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	tp.seen = append(tp.seen, r.Header.Get("Traceparent"))
}

func (tp *traceparents) all() []string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return append([]string(nil), tp.seen...)
}

func traceparentOf(sc trace.SpanContext) string {
	return fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())
}

// tracedProxy is a traced handler with one route, /api/, to an upstream
// that answers 401 to the token rejectToken and 503 under /down, and a
// real token source whose endpoint issues canary tokens.
type tracedProxy struct {
	url       string
	spans     *tracetest.SpanRecorder
	done      chan struct{} // a request's server span ended
	upstream  *traceparents
	idp       *traceparents
	secrets   []string // must appear in no span
	mu        sync.Mutex
	rejectTok string // the upstream answers 401 to it
}

func newTracedProxy(t *testing.T, traced bool) *tracedProxy {
	p := &tracedProxy{spans: tracetest.NewSpanRecorder(), done: make(chan struct{}, 16), upstream: &traceparents{}, idp: &traceparents{}}
	secret, tokenPrefix := "secret-canary-41b7", "token-canary-"
	p.secrets = []string{secret, tokenPrefix, "query-canary", "header-canary"}
	issued := 0
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.idp.add(r)
		p.mu.Lock()
		issued++
		n := issued
		p.mu.Unlock()
		fmt.Fprintf(w, `{"access_token":"%s%d","token_type":"Bearer","expires_in":3600}`, tokenPrefix, n)
	}))
	t.Cleanup(idp.Close)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.upstream.add(r)
		p.mu.Lock()
		reject := p.rejectTok
		p.mu.Unlock()
		switch {
		case reject != "" && r.Header.Get("Authorization") == "Bearer "+reject:
			w.WriteHeader(401)
		case strings.HasPrefix(r.URL.Path, "/down"):
			w.WriteHeader(503)
		default:
			io.WriteString(w, "ok")
		}
	}))
	t.Cleanup(up.Close)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(p.spans))
	src, err := tokencache.New(tokencache.Config{
		Name: "e", TokenURL: idp.URL,
		Client: &tokencache.Client{Name: "e", Auth: tokencache.ClientSecretBasic{ClientID: "c", Secret: tokencache.NewClientSecret(tokencache.Secret(secret), nil)}},
		Grant:  tokencache.ClientCredentials{}, TracerProvider: tp,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	upURL, _ := url.Parse(up.URL)
	opts := proxy.Options{Logger: slog.New(slog.DiscardHandler), Observe: func(*proxy.Outcome) { p.done <- struct{}{} }}
	if traced {
		opts.TracerProvider = tp
	}
	h, err := newTestHandler([]proxy.Route{{Prefix: "/api/", Upstream: upURL, StripPrefix: true, OAuth2: "e", Tokens: src,
		RetryOn: []int{401}, RetryBodyLimit: 1 << 20, Transport: proxy.NewTransport(proxy.TransportOptions{})}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

// get sends a request with a query and a header that must not reach a
// span, and the client's traceparent if any; it returns once the
// request's server span has ended.
func (p *tracedProxy) get(t *testing.T, path, traceparent string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", p.url+path+"?key=query-canary", nil)
	req.Header.Set("X-Api-Key", "header-canary")
	if traceparent != "" {
		req.Header.Set("Traceparent", traceparent)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the request was not observed")
	}
	return resp.StatusCode
}

// spans are the ended spans of one trace, by name and kind.
type spans []sdktrace.ReadOnlySpan

func (ss spans) find(t *testing.T, name string, kind trace.SpanKind) []sdktrace.ReadOnlySpan {
	t.Helper()
	var out []sdktrace.ReadOnlySpan
	for _, s := range ss {
		if s.Name() == name && s.SpanKind() == kind {
			out = append(out, s)
		}
	}
	return out
}

func (ss spans) one(t *testing.T, name string, kind trace.SpanKind) sdktrace.ReadOnlySpan {
	t.Helper()
	found := ss.find(t, name, kind)
	if len(found) != 1 {
		var names []string
		for _, s := range ss {
			names = append(names, fmt.Sprintf("%s(%v)", s.Name(), s.SpanKind()))
		}
		t.Fatalf("%d %q %v spans, want 1; spans: %v", len(found), name, kind, names)
	}
	return found[0]
}

func attrOf(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value
		}
	}
	return attribute.Value{}
}

func childOf(t *testing.T, child, parent sdktrace.ReadOnlySpan) {
	t.Helper()
	if child.Parent().SpanID() != parent.SpanContext().SpanID() || child.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("%q is not a child of %q", child.Name(), parent.Name())
	}
}

// noSecrets fails if any span's attributes, status or name hold a secret.
func (p *tracedProxy) noSecrets(t *testing.T) {
	t.Helper()
	for _, s := range p.spans.Ended() {
		text := []string{s.Name(), s.Status().Description}
		for _, a := range s.Attributes() {
			text = append(text, string(a.Key)+"="+a.Value.Emit())
		}
		for _, l := range s.Links() {
			for _, a := range l.Attributes {
				text = append(text, a.Value.Emit())
			}
		}
		for _, x := range text {
			for _, sec := range p.secrets {
				if strings.Contains(x, sec) {
					t.Errorf("span %q holds %q: %s", s.Name(), sec, x)
				}
			}
		}
	}
}

// TestRequestTrace: a cold request's trace, continuing the client's:
// server span, the wait for the token with its fetch under it, and the
// client span whose context the upstream and the token endpoint receive.
func TestRequestTrace(t *testing.T) {
	p := newTracedProxy(t, true)
	const client = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	if status := p.get(t, "/api/orders", client); status != 200 {
		t.Fatalf("status %d", status)
	}
	ss := spans(p.spans.Ended())
	server := ss.one(t, "GET /api/", trace.SpanKindServer)
	if got := server.SpanContext().TraceID().String(); got != "0af7651916cd43dd8448eb211c80319c" {
		t.Errorf("server span in trace %s, not the client's", got)
	}
	if got := server.Parent().SpanID().String(); got != "b7ad6b7169203331" || !server.Parent().IsRemote() {
		t.Errorf("server span's parent = %s, want the client's b7ad6b7169203331", got)
	}
	for key, want := range map[string]any{
		"http.route": "/api/", "http.request.method": "GET", "url.path": "/api/orders",
		"http.response.status_code": int64(200), "oauthproxy.oauth2": "e", "oauthproxy.retried": false,
	} {
		if got := attrOf(server, key).AsInterface(); got != want {
			t.Errorf("server span %s = %#v, want %#v", key, got, want)
		}
	}
	if w := attrOf(server, "oauthproxy.token_wait_ms").AsFloat64(); w <= 0 {
		t.Errorf("server span token_wait_ms = %v for a cold token", w)
	}
	wait := ss.one(t, "oauth2 token wait", trace.SpanKindInternal)
	fetch := ss.one(t, "oauth2 token fetch", trace.SpanKindClient)
	upstream := ss.one(t, "GET", trace.SpanKindClient)
	childOf(t, wait, server)
	childOf(t, fetch, wait)
	childOf(t, upstream, server)
	if got := p.upstream.all(); len(got) != 1 || got[0] != traceparentOf(upstream.SpanContext()) {
		t.Errorf("upstream got traceparent %q, want the client span's %q", got, traceparentOf(upstream.SpanContext()))
	}
	if got := p.idp.all(); len(got) != 1 || got[0] != traceparentOf(fetch.SpanContext()) {
		t.Errorf("token endpoint got traceparent %q, want the fetch's %q", got, traceparentOf(fetch.SpanContext()))
	}
	if got := attrOf(upstream, "http.response.status_code").AsInt64(); got != 200 {
		t.Errorf("client span status = %d", got)
	}
	p.noSecrets(t)
}

// TestRetryTrace: a rejected token gives two client spans, the second
// marked as a resend, a fresh fetch under the request, and retried=true.
func TestRetryTrace(t *testing.T) {
	p := newTracedProxy(t, true)
	p.get(t, "/api/warm", "") // token-canary-1 cached
	p.spans.Reset()
	p.mu.Lock()
	p.rejectTok = "token-canary-1"
	p.mu.Unlock()
	if status := p.get(t, "/api/x", ""); status != 200 {
		t.Fatalf("status %d", status)
	}
	ss := spans(p.spans.Ended())
	server := ss.one(t, "GET /api/", trace.SpanKindServer)
	if !attrOf(server, "oauthproxy.retried").AsBool() {
		t.Error("server span not marked retried")
	}
	attempts := ss.find(t, "GET", trace.SpanKindClient)
	if len(attempts) != 2 {
		t.Fatalf("%d client spans, want 2", len(attempts))
	}
	for i, a := range attempts {
		childOf(t, a, server)
		if got := attrOf(a, "http.request.resend_count").AsInt64(); got != int64(i) {
			t.Errorf("attempt %d resend_count = %d", i, got)
		}
	}
	if got := attrOf(attempts[0], "http.response.status_code").AsInt64(); got != 401 {
		t.Errorf("first attempt status = %d, want 401", got)
	}
	childOf(t, ss.one(t, "oauth2 token fetch", trace.SpanKindClient), ss.one(t, "oauth2 token wait", trace.SpanKindInternal))
	p.noSecrets(t)
}

// TestErrorTraces: the status of spans when the upstream fails or is down.
func TestErrorTraces(t *testing.T) {
	p := newTracedProxy(t, true)
	if status := p.get(t, "/api/down", ""); status != 503 {
		t.Fatalf("status %d", status)
	}
	ss := spans(p.spans.Ended())
	if s := ss.one(t, "GET /api/", trace.SpanKindServer); s.Status().Code != codes.Error {
		t.Errorf("server span of a 503: status %v, want Error", s.Status())
	}
	p.spans.Reset()
	if status := p.get(t, "/nowhere", ""); status != 404 {
		t.Fatalf("status %d", status)
	}
	ss = spans(p.spans.Ended())
	s := ss.one(t, "GET", trace.SpanKindServer)
	if s.Status().Code == codes.Error || attrOf(s, "error.type").AsString() != proxy.CodeNoRoute || attrOf(s, "http.route").AsString() != "" {
		t.Errorf("server span of a 404: status %v, error.type %q, route %q", s.Status(), attrOf(s, "error.type").AsString(), attrOf(s, "http.route").AsString())
	}
	p.noSecrets(t)
}

// TestUntracedPassesTraceparent: without a TracerProvider the handler
// makes no span and the client's traceparent reaches the upstream
// untouched; the token fetch, started by no traced request, is a root.
func TestUntracedPassesTraceparent(t *testing.T) {
	p := newTracedProxy(t, false)
	const client = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	p.get(t, "/api/x", client)
	fetch := spans(p.spans.Ended()).one(t, "oauth2 token fetch", trace.SpanKindClient)
	if fetch.Parent().IsValid() {
		t.Errorf("a fetch no traced request started has parent %s", fetch.Parent().SpanID())
	}
	if n := len(p.spans.Ended()); n != 1 {
		t.Errorf("%d spans, want the fetch's alone", n)
	}
	if got := p.upstream.all(); len(got) != 1 || got[0] != client {
		t.Errorf("upstream got traceparent %q, want the client's", got)
	}
	if got := p.idp.all(); len(got) != 1 || got[0] != traceparentOf(fetch.SpanContext()) {
		t.Errorf("token endpoint got traceparent %q, want the fetch's", got)
	}
}
