package tokencache

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// slowIdP answers after a while, as a real IdP does: everyone piles up.
type slowIdP struct{ hits atomic.Int64 }

func (i *slowIdP) RoundTrip(r *http.Request) (*http.Response, error) {
	i.hits.Add(1)
	time.Sleep(20 * time.Millisecond)
	return &http.Response{StatusCode: 200, Header: http.Header{}, Request: r,
		Body: io.NopCloser(strings.NewReader(`{"access_token":"t","token_type":"Bearer","expires_in":3600}`))}, nil
}

func benchConfig(idp http.RoundTripper) Config {
	c := testConfig(idp)
	c.Logger = slog.New(slog.DiscardHandler)
	return c
}

// BenchmarkColdBurst: 1000 concurrent requests for a token that is not
// cached yet. It reports the token requests each burst made (goal: 1).
func BenchmarkColdBurst(b *testing.B) {
	idp := &slowIdP{}
	const burst = 1000
	for b.Loop() {
		src, err := New(benchConfig(idp))
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
	b.ReportMetric(float64(idp.hits.Load())/float64(b.N), "token-requests/burst")
}

// BenchmarkCachedToken is the hot path of every proxied request.
func BenchmarkCachedToken(b *testing.B) {
	src, _ := New(benchConfig(&fakeIdP{}))
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

// BenchmarkScrub is the cost the scrubber adds to a log line, with the
// secrets of 50 oauth2 entries known.
func BenchmarkScrub(b *testing.B) {
	sc := NewScrubber()
	for i := range 50 {
		sc.AddClient("client-"+strings.Repeat("x", i), Secret("secret-value-"+strings.Repeat("y", i)))
	}
	line := `{"time":"2026-12-02T10:00:00Z","level":"WARN","msg":"token request failed","oauth2":"corp","error":"token endpoint https://idp.example.com/token answered 401 invalid_client"}`
	b.ReportAllocs()
	for b.Loop() {
		sc.Scrub(line)
	}
}
