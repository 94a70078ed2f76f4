package e2e

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is an OTLP/HTTP trace collector on loopback: it decodes
// every export the proxy sends and keeps the spans.
type otlpReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	spans    []*tracepb.Span
	services []string // service.name of each export
	raw      []string // every export as JSON, for the canary check
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	r := &otlpReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.Close)
	return r
}

func (r *otlpReceiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != "POST" || req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want POST /v1/traces application/x-protobuf", http.StatusBadRequest)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	data, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var export coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(data, &export); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	js, _ := protojson.Marshal(&export)
	r.mu.Lock()
	r.raw = append(r.raw, string(js))
	for _, rs := range export.ResourceSpans {
		r.services = append(r.services, attrString(rs.Resource.GetAttributes(), "service.name"))
		for _, ss := range rs.ScopeSpans {
			r.spans = append(r.spans, ss.Spans...)
		}
	}
	r.mu.Unlock()
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func (r *otlpReceiver) collected() ([]*tracepb.Span, []string, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.Span(nil), r.spans...), append([]string(nil), r.services...), strings.Join(r.raw, "\n")
}

func attrString(attrs []*commonpb.KeyValue, key string) string {
	for _, a := range attrs {
		if a.Key == key {
			switch v := a.Value.GetValue().(type) {
			case *commonpb.AnyValue_StringValue:
				return v.StringValue
			case *commonpb.AnyValue_IntValue:
				return fmt.Sprint(v.IntValue)
			case *commonpb.AnyValue_BoolValue:
				return fmt.Sprint(v.BoolValue)
			}
		}
	}
	return ""
}

func hexID(b []byte) string { return hex.EncodeToString(b) }

// TestTracesAndAccessLog runs the binary with OTEL_* pointing at a loopback
// collector. A client's traced request whose first token the upstream
// rejects makes one trace: the proxy's server span, the wait for a fresh
// token with its fetch, and a client span per attempt; the upstream and
// the token endpoint receive traceparents of that trace. The start-up
// fetch is a root span of its own. No exported span holds a secret, a
// token, a header value or the query; the access log and the default log
// lines name the trace.
func TestTracesAndAccessLog(t *testing.T) {
	col := newOTLPReceiver(t)
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	up.reject = func(n int64, _ string) bool { return n == 1 } // the start-up token
	secret, query, header := randomString("cs-"), randomString("query-"), randomString("header-")
	addCanary(secret, query, header)
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
log: {level: info, format: json, access: true}
oauth2:
  e2e:
    token_url: %s/token
    client_id: app
    client_secret: %s
routes:
  - prefix: /api/
    upstream: %s/v1/
    oauth2: e2e
`, idp.URL, secret, up.URL)
	p := startProxy(t, cfg,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+col.URL,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_SERVICE_NAME=oauthproxy-e2e",
		"OTEL_TRACES_SAMPLER=parentbased_always_on",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	)
	// The start-up fetch must be under way before the request, or the
	// request would start it.
	for deadline := time.Now().Add(5 * time.Second); idp.hits.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no start-up token request within 5s")
		}
	}
	const traceID, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	r := get(t, p.base+"/api/orders?key="+query, "Traceparent", "00-"+traceID+"-"+clientSpan+"-01", "X-Api-Key", header)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	p.stop() // SIGTERM: the proxy flushes its spans and its access log before it exits
	if code := p.wait(5 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}

	spans, services, raw := col.collected()
	if len(spans) == 0 {
		t.Fatal("the collector received no span")
	}
	for _, s := range services {
		if s != "oauthproxy-e2e" {
			t.Errorf("service.name = %q, want OTEL_SERVICE_NAME's", s)
		}
	}
	byID := map[string]*tracepb.Span{}
	var inTrace []*tracepb.Span
	for _, s := range spans {
		byID[hexID(s.SpanId)] = s
		if hexID(s.TraceId) == traceID {
			inTrace = append(inTrace, s)
		}
	}
	find := func(name string, kind tracepb.Span_SpanKind) []*tracepb.Span {
		var out []*tracepb.Span
		for _, s := range inTrace {
			if s.Name == name && s.Kind == kind {
				out = append(out, s)
			}
		}
		return out
	}
	servers := find("GET /api/", tracepb.Span_SPAN_KIND_SERVER)
	if len(servers) != 1 {
		t.Fatalf("%d server spans in the client's trace, want 1; spans: %s", len(servers), describe(spans))
	}
	server := servers[0]
	if got := hexID(server.ParentSpanId); got != clientSpan {
		t.Errorf("server span's parent = %s, want the client's %s", got, clientSpan)
	}
	if got := attrString(server.Attributes, "http.route"); got != "/api/" {
		t.Errorf("server span http.route = %q", got)
	}
	if got := attrString(server.Attributes, "oauthproxy.retried"); got != "true" {
		t.Errorf("server span oauthproxy.retried = %q", got)
	}
	fetches := find("oauth2 token fetch", tracepb.Span_SPAN_KIND_CLIENT)
	if len(fetches) != 1 {
		t.Fatalf("%d token fetch spans in the request's trace, want 1; spans: %s", len(fetches), describe(spans))
	}
	fetch := fetches[0]
	wait := byID[hexID(fetch.ParentSpanId)]
	if wait == nil || wait.Name != "oauth2 token wait" || hexID(wait.ParentSpanId) != hexID(server.SpanId) {
		t.Errorf("the fetch is not under the request's wait span: parent %v", wait)
	}
	for k, want := range map[string]string{"oauthproxy.oauth2": "e2e", "oauthproxy.grant": "client_credentials", "oauthproxy.result": "ok"} {
		if got := attrString(fetch.Attributes, k); got != want {
			t.Errorf("fetch span %s = %q, want %q", k, got, want)
		}
	}
	attempts := find("GET", tracepb.Span_SPAN_KIND_CLIENT)
	if len(attempts) != 2 {
		t.Fatalf("%d client spans to the upstream, want 2 (401, then the retry)", len(attempts))
	}
	sent := map[string]bool{}
	for _, a := range attempts {
		if hexID(a.ParentSpanId) != hexID(server.SpanId) {
			t.Errorf("client span %s is not a child of the server span", hexID(a.SpanId))
		}
		sent["00-"+traceID+"-"+hexID(a.SpanId)+"-01"] = true
	}
	got := map[string]bool{}
	for _, req := range up.requests() {
		got[req.header.Get("Traceparent")] = true
	}
	for tp := range sent {
		if !got[tp] {
			t.Errorf("the upstream never received traceparent %s (got %v)", tp, got)
		}
	}
	var idpGot []string
	for _, req := range idp.requests() {
		idpGot = append(idpGot, req.header.Get("Traceparent"))
	}
	want := "00-" + traceID + "-" + hexID(fetch.SpanId) + "-01"
	if !containsString(idpGot, want) {
		t.Errorf("the token endpoint got traceparents %v, want one of %s", idpGot, want)
	}
	// The start-up fetch is a root span in a trace of its own.
	var roots int
	for _, s := range spans {
		if s.Name == "oauth2 token fetch" && len(s.ParentSpanId) == 0 && hexID(s.TraceId) != traceID {
			roots++
		}
	}
	if roots != 1 {
		t.Errorf("%d root token fetch spans, want 1 (start-up)", roots)
	}
	noLeak(t, "exported spans", raw)
	for _, c := range []string{query, header, secret} {
		if strings.Contains(raw, c) {
			t.Errorf("exported spans hold %q", c)
		}
	}

	// Logs: the access line and the retry line name the trace; the query
	// stays out.
	access := p.logLines("access")
	if len(access) != 1 {
		t.Fatalf("%d access lines, want 1", len(access))
	}
	if a := access[0]; a["trace_id"] != traceID || a["path"] != "/api/orders" || a["retried"] != true || a["status"] != 200.0 {
		t.Errorf("access line = %v", a)
	}
	if _, ok := access[0]["query"]; ok {
		t.Error("the access line holds the query without log.access_query")
	}
	retry := p.logLines("upstream rejected the token; retried with a fresh one")
	if len(retry) != 1 || retry[0]["trace_id"] != traceID || retry[0]["route"] != "/api/" {
		t.Errorf("retry lines = %v", retry)
	}
	var fetchLines int
	for _, l := range p.logLines("token obtained") {
		if l["trace_id"] == traceID {
			fetchLines++
			if _, ok := l["duration_ms"]; !ok {
				t.Errorf("token fetch line without duration_ms: %v", l)
			}
		}
	}
	if fetchLines != 1 {
		t.Errorf("%d token fetch lines in the request's trace, want 1", fetchLines)
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func describe(spans []*tracepb.Span) string {
	var b bytes.Buffer
	for _, s := range spans {
		fmt.Fprintf(&b, "\n  %s %v trace=%s span=%s parent=%s", s.Name, s.Kind, hexID(s.TraceId), hexID(s.SpanId), hexID(s.ParentSpanId))
	}
	return b.String()
}
