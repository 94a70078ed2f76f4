package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a log destination the tests read while handlers write.
type syncBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes chan struct{} // told of each write, when set
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.writes != nil {
		select {
		case b.writes <- struct{}{}:
		default:
		}
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// records decodes the JSON lines written so far.
func (b *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, sc.Text())
		}
		out = append(out, m)
	}
	return out
}

const canary = "canary-7d3f0c1e9a"

// TestAccessLogLine: one line per request with the fixed keys; the query
// only when asked for; never a header value.
func TestAccessLogLine(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		if r.URL.Path == "/v2/reject-once" && r.Header.Get("Authorization") == "Bearer tok1" {
			w.WriteHeader(401)
			return
		}
		w.Write([]byte("hello"))
	})
	broken := testRoute(t, "/broken/", up.URL)
	broken.Tokens = &fakeTokens{err: errors.New("token endpoint https://idp/token answered 401 invalid_client")}
	for _, tc := range []struct {
		name   string
		query  bool
		target string
		want   map[string]any
	}{
		{"proxied", false, "/api/orders?id=1&key=" + canary, map[string]any{
			"route": "/api/", "oauth2": "test", "method": "GET", "path": "/api/orders", "status": 200.0,
			"bytes": 5.0, "upstream": up.URL, "retried": false, "trace_id": ""}},
		{"with query", true, "/api/orders?id=1&key=" + canary, map[string]any{
			"path": "/api/orders", "query": "id=1&key=" + canary, "status": 200.0}},
		{"retried", false, "/api/reject-once", map[string]any{"route": "/api/", "status": 200.0, "retried": true}},
		{"no route", false, "/nowhere?key=" + canary, map[string]any{
			"route": "", "oauth2": "", "path": "/nowhere", "status": 404.0, "error": CodeNoRoute, "upstream": ""}},
		{"token failure", false, "/broken/x", map[string]any{
			"route": "/broken/", "oauth2": "test", "status": 502.0, "error": CodeTokenUnavailable, "upstream": up.URL}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &syncBuffer{}
			acc := NewAccessLog(out, AccessLogOptions{Query: tc.query, FlushInterval: time.Hour})
			t.Cleanup(func() { acc.Close() })
			observed := make(chan struct{}, 1)
			h := newHandler(t, Options{Logger: slog.New(slog.DiscardHandler), Observe: func(o *Outcome) {
				acc.Observe(o)
				observed <- struct{}{}
			}}, Inbound{}, withDefaults(testRoute(t, "/api/", up.URL+"/v2/")), withDefaults(broken))
			srv := httptest.NewServer(h)
			t.Cleanup(srv.Close)
			get(t, srv.URL+tc.target, "Authorization", "Bearer "+canary, "X-Api-Key", canary)
			<-observed // the line is logged after the response is handed back
			if out.String() != "" {
				t.Fatalf("written before a flush: %s", out)
			}
			if err := acc.Flush(); err != nil {
				t.Fatal(err)
			}
			recs := out.records(t)
			if len(recs) != 1 {
				t.Fatalf("%d lines, want 1: %s", len(recs), out)
			}
			rec := recs[0]
			for _, k := range []string{"route", "oauth2", "method", "path", "status", "bytes", "duration_ms", "upstream", "retried", "token_wait_ms", "trace_id"} {
				if _, ok := rec[k]; !ok {
					t.Errorf("no key %q in %v", k, rec)
				}
			}
			if _, ok := rec["query"]; ok != tc.query {
				t.Errorf("query logged = %v, want %v", ok, tc.query)
			}
			for k, want := range tc.want {
				if rec[k] != want {
					t.Errorf("%s = %#v, want %#v", k, rec[k], want)
				}
			}
			if d, _ := rec["duration_ms"].(float64); d <= 0 {
				t.Errorf("duration_ms = %v", rec["duration_ms"])
			}
			if !tc.query && strings.Contains(out.String(), canary) {
				t.Errorf("a header value or the query reached the access log: %s", out)
			}
			if tc.query && strings.Count(out.String(), canary) != 1 {
				t.Errorf("the canary appears other than in the query: %s", out)
			}
		})
	}
}

// withDefaults fills a route's transport and tokens as newProxy does.
func withDefaults(r Route) Route {
	if r.Transport == nil {
		r.Transport = NewTransport(TransportOptions{ResponseHeaderTimeout: 2 * time.Second})
	}
	if r.Tokens == nil {
		r.Tokens = &fakeTokens{}
	}
	return r
}

// TestAccessLogFlush: lines wait in the buffer until the interval or a
// Flush; Close flushes them and what follows is written at once.
func TestAccessLogFlush(t *testing.T) {
	o := &Outcome{Route: "/api/", Method: "GET", Path: "/api/x", Status: 200}
	t.Run("interval", func(t *testing.T) {
		out := &syncBuffer{writes: make(chan struct{}, 1)}
		acc := NewAccessLog(out, AccessLogOptions{FlushInterval: 10 * time.Millisecond})
		defer acc.Close()
		acc.Observe(o)
		select {
		case <-out.writes:
		case <-time.After(5 * time.Second):
			t.Fatal("the line was not flushed within 5s of a 10ms interval")
		}
		if n := len(out.records(t)); n != 1 {
			t.Errorf("%d lines, want 1", n)
		}
	})
	t.Run("close", func(t *testing.T) {
		out := &syncBuffer{}
		acc := NewAccessLog(out, AccessLogOptions{FlushInterval: time.Hour})
		acc.Observe(o)
		acc.Observe(o)
		if out.String() != "" {
			t.Fatalf("written before a flush: %s", out)
		}
		if err := acc.Close(); err != nil {
			t.Fatal(err)
		}
		if n := len(out.records(t)); n != 2 {
			t.Errorf("%d lines after Close, want 2", n)
		}
		acc.Observe(o)
		if n := len(out.records(t)); n != 3 {
			t.Errorf("a line after Close is not written at once: %d lines, want 3", n)
		}
		if err := acc.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	t.Run("full buffer", func(t *testing.T) {
		out := &syncBuffer{}
		acc := NewAccessLog(out, AccessLogOptions{FlushInterval: time.Hour, BufferSize: 512})
		defer acc.Close()
		for range 10 {
			acc.Observe(o)
		}
		if out.String() == "" {
			t.Error("a full buffer was not written")
		}
	})
}

// TestDefaultLogLines: refusals, failures, retries and upstream 5xx get
// one line each with the fixed keys, whether or not requests are
// observed; a plain success gets none; no header value or query appears.
func TestDefaultLogLines(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		switch {
		case r.URL.Path == "/v2/down":
			w.WriteHeader(503)
		case r.URL.Path == "/v2/reject-once" && r.Header.Get("Authorization") == "Bearer tok1":
			w.WriteHeader(401)
		}
	})
	broken := testRoute(t, "/broken/", up.URL)
	broken.Tokens = &fakeTokens{err: errors.New("token endpoint https://idp/token answered 401 invalid_client")}
	for _, observed := range []bool{false, true} {
		for _, tc := range []struct {
			target, msg, level, path string
			status                   float64
			extra                    map[string]any
		}{
			{"/api/ok", "", "", "", 200, nil},
			{"/nowhere", "request refused", "INFO", "/nowhere", 404, map[string]any{"route": "", "error": CodeNoRoute}},
			{"/api/../x", "request refused", "INFO", "/api/../x", 400, map[string]any{"route": "/api/", "error": CodeBadPath}},
			{"/broken/x", "request failed", "WARN", "/broken/x", 502, map[string]any{"route": "/broken/", "error": CodeTokenUnavailable, "retried": false}},
			{"/api/down", "upstream error", "WARN", "/api/down", 503, map[string]any{"route": "/api/", "upstream": up.URL, "retried": false}},
			{"/api/reject-once", "upstream rejected the token; retried with a fresh one", "INFO", "/api/reject-once", 200, map[string]any{"retried": true}},
		} {
			name := strings.TrimPrefix(tc.target, "/")
			if observed {
				name += "/observed"
			}
			t.Run(name, func(t *testing.T) {
				out := &syncBuffer{}
				opts := Options{Logger: slog.New(slog.NewJSONHandler(out, nil))}
				if observed {
					opts.Observe = func(*Outcome) {}
				}
				h := newHandler(t, opts, Inbound{}, withDefaults(testRoute(t, "/api/", up.URL+"/v2/")), withDefaults(broken))
				srv := httptest.NewServer(h)
				t.Cleanup(srv.Close)
				status, _, _ := rawGet(t, srv.URL, tc.target+"?key="+canary, "Authorization: Bearer "+canary)
				if float64(status) != tc.status {
					t.Fatalf("status %d, want %v", status, tc.status)
				}
				recs := out.records(t)
				if tc.msg == "" {
					if len(recs) != 0 {
						t.Errorf("a plain success logged %d lines: %s", len(recs), out)
					}
					return
				}
				if len(recs) != 1 {
					t.Fatalf("%d lines, want 1: %s", len(recs), out)
				}
				rec := recs[0]
				want := map[string]any{"msg": tc.msg, "level": tc.level, "path": tc.path, "status": tc.status, "method": "GET"}
				for k, v := range tc.extra {
					want[k] = v
				}
				for k, v := range want {
					if rec[k] != v {
						t.Errorf("%s = %#v, want %#v", k, rec[k], v)
					}
				}
				for _, k := range []string{"route", "oauth2", "duration_ms"} {
					if _, ok := rec[k]; !ok {
						t.Errorf("no key %q in %v", k, rec)
					}
				}
				if strings.Contains(out.String(), canary) {
					t.Errorf("a header value or the query was logged: %s", out)
				}
			})
		}
	}
}
