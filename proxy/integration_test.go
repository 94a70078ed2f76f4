package proxy_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauthproxy/oauthproxy/proxy"
	"github.com/oauthproxy/oauthproxy/tokencache"
)

// TestConcurrent401sRefreshOnce: 100 requests carry the same token, the
// upstream rejects it for all of them, and the token endpoint is asked for
// exactly one new token.
func TestConcurrent401sRefreshOnce(t *testing.T) {
	var issued atomic.Int64
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := issued.Add(1)
		fmt.Fprintf(w, `{"access_token":"tok%d","token_type":"Bearer","expires_in":3600}`, n)
	}))
	defer idp.Close()
	var rejected atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer tok1" {
			rejected.Add(1)
			w.WriteHeader(401)
			return
		}
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	src, err := tokencache.New(tokencache.Config{
		Name: "e", TokenURL: idp.URL,
		Client: &tokencache.Client{Name: "e", Auth: tokencache.ClientSecretBasic{ClientID: "c", Secret: tokencache.NewClientSecret("s", nil)}},
		Grant:  tokencache.ClientCredentials{},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.Token(context.Background()); err != nil { // everyone starts with tok1
		t.Fatal(err)
	}
	upURL, _ := url.Parse(up.URL)
	h, err := newTestHandler([]proxy.Route{{Prefix: "/api/", Upstream: upURL, StripPrefix: true, OAuth2: "e", Tokens: src,
		RetryOn: []int{401}, RetryBodyLimit: 1 << 20, Transport: proxy.NewTransport(proxy.TransportOptions{})}}, proxy.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	const n = 100
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range n {
		wg.Go(func() {
			resp, err := http.Get(srv.URL + "/api/x")
			if err != nil || resp.StatusCode != 200 {
				failed.Add(1)
			}
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d of %d requests failed", failed.Load(), n)
	}
	if got := issued.Load(); got != 2 {
		t.Errorf("tokens issued = %d after %d rejections, want 2 (the first and one refresh)", got, rejected.Load())
	}
}

// TestSetRoutesUnderLoad: replacing the route table while requests are in
// flight fails none of them.
func TestSetRoutesUnderLoad(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
		io.WriteString(w, "ok")
	}))
	defer up.Close()
	upURL, _ := url.Parse(up.URL)
	routes := func(extra string) []proxy.Route {
		rs := []proxy.Route{{Prefix: "/api/", Upstream: upURL, StripPrefix: true, Tokens: staticTokens{}, Transport: http.DefaultTransport}}
		if extra != "" {
			rs = append(rs, proxy.Route{Prefix: extra, Upstream: upURL, Tokens: staticTokens{}, Transport: http.DefaultTransport})
		}
		return rs
	}
	h, err := newTestHandler(routes(""), proxy.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	stop := make(chan struct{})
	var swaps sync.WaitGroup
	swaps.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := h.SetRoutes(routes(fmt.Sprintf("/extra%d/", i%3))); err != nil {
				t.Error(err)
			}
		}
	})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 8 {
		wg.Go(func() {
			for range 50 {
				resp, err := http.Get(srv.URL + "/api/x")
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
				}
				if err == nil {
					resp.Body.Close()
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	swaps.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d requests failed while routes were swapped", failed.Load())
	}
}

type staticTokens struct{}

func (staticTokens) Token(context.Context) (string, error) { return "static", nil }
func (staticTokens) Invalidate(string)                     {}

// newTestHandler is a Handler serving routes, for the external tests.
func newTestHandler(routes []proxy.Route, opts proxy.Options) (*proxy.Handler, error) {
	h, err := proxy.NewHandler(opts)
	if err != nil {
		return nil, err
	}
	t, err := h.NewTable(routes, proxy.Inbound{})
	if err != nil {
		return nil, err
	}
	h.Swap(t)
	return h, nil
}
