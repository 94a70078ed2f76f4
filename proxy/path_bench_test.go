package proxy

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The request path's shape, pinned: if forward, the transport's round trip
// or the body buffer change signature, these benchmarks stop compiling
// instead of quietly measuring something else (docs/benchmarks.md).
var (
	_ func(*route, http.ResponseWriter, *http.Request, time.Time, *Outcome)    = (*route).forward
	_ func(*route, *http.Request, time.Time, *Outcome) (*http.Response, error) = (*route).roundTrip
	_ func(*http.Request, int64, *spillFiles) (*replay, error)                 = bufferBody
)

// BenchmarkForward is the cached GET path below ServeHTTP's routing: the
// outgoing request, the token, the upstream round trip, the response.
func BenchmarkForward(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, strings.Repeat("x", 200))
	}))
	b.Cleanup(up.Close)
	h := newHandler(b, Options{Logger: slog.New(slog.DiscardHandler)}, Inbound{}, Route{
		Prefix: "/api/", Upstream: mustURLB(b, up.URL+"/v2/"), StripPrefix: true, OAuth2: "bench",
		Tokens: &fakeTokens{}, RetryOn: []int{401}, RetryBodyLimit: 1 << 20,
		Transport: NewTransport(TransportOptions{ResponseHeaderTimeout: time.Minute}),
	})
	rt, _ := h.table.Load().match("/api/orders")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req := httptest.NewRequest("GET", "/api/orders?id=1", nil)
			rec := httptest.NewRecorder()
			rt.forward(rec, req, time.Now(), nil)
			if rec.Code != 200 {
				b.Fatalf("status %d", rec.Code)
			}
		}
	})
}

// BenchmarkReplayBody buffers a 1 MiB body for a retry (64 KiB in memory,
// the rest in a reused temporary file) and reads it back once, as a first
// attempt does.
func BenchmarkReplayBody(b *testing.B) {
	body := bytes.Repeat([]byte("b"), 1<<20)
	files := newSpillFiles(b.TempDir())
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/api/x", bytes.NewReader(body))
		rp, err := bufferBody(req, 1<<20, files)
		if err != nil || rp == nil {
			b.Fatal(err)
		}
		if n, _ := io.CopyBuffer(io.Discard, struct{ io.Reader }{req.Body}, buf); n != int64(len(body)) {
			b.Fatalf("read back %d bytes", n)
		}
		req.Body.Close()
		rp.done()
	}
}

func mustURLB(b *testing.B, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		b.Fatal(err)
	}
	return u
}
