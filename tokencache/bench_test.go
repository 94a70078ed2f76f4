package tokencache

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkColdBurst: 1000 concurrent requests for a token that is not
// cached yet. It reports the token requests each burst made (goal: 1).
func BenchmarkColdBurst(b *testing.B) {
	var hits atomic.Int64
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		time.Sleep(20 * time.Millisecond) // a real IdP takes a while: everyone piles up
		io.WriteString(w, `{"access_token":"t","token_type":"Bearer","expires_in":3600}`)
	}))
	defer idp.Close()
	const burst = 1000
	for b.Loop() {
		src, err := New(Config{
			Endpoint: Endpoint{Name: "bench", TokenURL: idp.URL, ClientID: "c", ClientSecret: "s"},
			Grant:    Grant{Type: GrantClientCredentials},
			Logger:   slog.New(slog.DiscardHandler),
		})
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		for range burst {
			wg.Go(func() {
				if _, err := src.Token(context.Background()); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		src.Close()
	}
	b.ReportMetric(float64(hits.Load())/float64(b.N), "token-requests/burst")
}

// BenchmarkCachedToken is the hot path of every proxied request.
func BenchmarkCachedToken(b *testing.B) {
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"access_token":"t","token_type":"Bearer","expires_in":3600}`)
	}))
	defer idp.Close()
	src, _ := New(Config{
		Endpoint: Endpoint{Name: "bench", TokenURL: idp.URL, ClientID: "c", ClientSecret: "s"},
		Grant:    Grant{Type: GrantClientCredentials},
		Logger:   slog.New(slog.DiscardHandler),
	})
	ctx := context.Background()
	src.Token(ctx)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := src.Token(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
