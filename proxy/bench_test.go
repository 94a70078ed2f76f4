package proxy_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/oauthproxy/oauthproxy/proxy"
	"github.com/oauthproxy/oauthproxy/tokencache"
)

// The hot path: a request through the proxy with a cached token, against a
// loopback upstream, next to a bare httputil.ReverseProxy that sets a static
// header (the floor). Compare the two in one run:
//
//	go test ./proxy -run '^$' -bench . -benchmem -count 6 | tee bench.txt
//	benchstat bench.txt

var upstreamBody = []byte(strings.Repeat("x", 200))

func upstream(b *testing.B) *url.URL {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			w.WriteHeader(401)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(upstreamBody)
	}))
	b.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL + "/v2/")
	return u
}

// cachedSource is a real tokencache.Source holding a fresh token.
func cachedSource(b *testing.B) *tokencache.Source {
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"access_token":"`+strings.Repeat("t", 800)+`","token_type":"Bearer","expires_in":86400}`)
	}))
	b.Cleanup(idp.Close)
	src, err := tokencache.New(tokencache.Config{
		Name: "bench", TokenURL: idp.URL,
		Client: &tokencache.Client{Name: "bench", Auth: tokencache.ClientSecretBasic{ClientID: "c", Secret: tokencache.NewClientSecret("s", nil)}},
		Grant:  tokencache.ClientCredentials{},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := src.Token(context.Background()); err != nil {
		b.Fatal(err)
	}
	return src
}

func oauthproxyHandler(b *testing.B, up *url.URL) http.Handler {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	h, err := newTestHandler([]proxy.Route{{
		Prefix: "/api/", Upstream: up, StripPrefix: true, OAuth2: "bench", Tokens: cachedSource(b),
		RetryOn: []int{401}, RetryBodyLimit: 1 << 20, MaxBody: 10 << 20,
		// As shipped: the route's timeout bounds the wait for response headers.
		Transport: proxy.NewTransport(proxy.TransportOptions{ResponseHeaderTimeout: time.Minute}),
	}}, proxy.Options{Meter: mp.Meter("bench")})
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// bareHandler is the floor: what bench/goproxy runs.
func bareHandler(up *url.URL) http.Handler {
	bearer := []string{"Bearer " + strings.Repeat("t", 800)}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(up)
			pr.Out.Header["Authorization"] = bearer
		},
		Transport:  proxy.NewTransport(proxy.TransportOptions{}),
		BufferPool: &pool{},
	}
}

type pool struct{ p sync.Pool }

func (b *pool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}
func (b *pool) Put(v []byte) { b.p.Put(&v) }

type benchCase struct {
	name string
	h    http.Handler
}

// handlers are the floor and oauthproxy, in front of one loopback upstream.
func handlers(b *testing.B) []benchCase {
	up := upstream(b)
	return []benchCase{{"bare-reverseproxy", bareHandler(up)}, {"oauthproxy", oauthproxyHandler(b, up)}}
}

// BenchmarkServeHTTP calls the handler directly, so that only the proxy's
// own work and the loopback round trip to the upstream are measured.
func BenchmarkServeHTTP(b *testing.B) {
	for _, tc := range handlers(b) {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req := httptest.NewRequest("GET", "/api/orders?id=1", nil)
					req.Host = "127.0.0.1:8080"
					rec := httptest.NewRecorder()
					tc.h.ServeHTTP(rec, req)
					if rec.Code != 200 {
						b.Fatalf("status %d: %s", rec.Code, rec.Body)
					}
				}
			})
		})
	}
}

// BenchmarkLoopback adds a client and an inbound server: the whole path an
// app's request takes, minus the app.
func BenchmarkLoopback(b *testing.B) {
	for _, tc := range handlers(b) {
		b.Run(tc.name, func(b *testing.B) {
			srv := httptest.NewServer(tc.h)
			defer srv.Close()
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Get(srv.URL + "/api/orders?id=1")
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Fatalf("status %d", resp.StatusCode)
					}
				}
			})
		})
	}
}
