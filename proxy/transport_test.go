package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// roundTripFunc is a base transport made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// transportRoute is a built route whose upstream is base.
func transportRoute(t *testing.T, tokens TokenSource, base http.RoundTripper, mod func(*Route)) *route {
	t.Helper()
	h, err := NewHandler(Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := Route{Prefix: "/t/", Upstream: &url.URL{Scheme: "http", Host: "up.test"}, OAuth2: "e", Tokens: tokens,
		RetryOn: []int{401}, RetryBodyLimit: 1 << 10, Transport: base}
	if mod != nil {
		mod(&r)
	}
	g, _ := newGuard(Inbound{})
	rt, err := h.newRoute(r, g)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

func answer(r *http.Request, status int) *http.Response {
	return &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("x")), Request: r}
}

func outgoing(body string) *http.Request {
	req, _ := http.NewRequest("POST", "http://up.test/x", strings.NewReader(body))
	req.Header.Set("Authorization", "Basic client-sent")
	return req
}

func TestAuthTransport(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		statuses  []int // the upstream's answers, in turn
		tokens    *fakeTokens
		mod       func(*Route)
		header    string   // where the token goes; default Authorization
		wantSent  []string // that header in each attempt
		wantInv   []string
		wantErr   string
		wantFinal int
	}{
		{name: "token attached", body: "b", statuses: []int{200}, tokens: &fakeTokens{},
			wantSent: []string{"Bearer tok1"}, wantFinal: 200},
		{name: "401 retried once with a new token and the same body", body: "payload", statuses: []int{401, 200}, tokens: &fakeTokens{},
			wantSent: []string{"Bearer tok1", "Bearer tok2"}, wantInv: []string{"tok1"}, wantFinal: 200},
		{name: "second 401 is the answer", body: "payload", statuses: []int{401, 401}, tokens: &fakeTokens{},
			wantSent: []string{"Bearer tok1", "Bearer tok2"}, wantInv: []string{"tok1"}, wantFinal: 401},
		{name: "body over the limit streams, no retry", body: strings.Repeat("z", 2<<10), statuses: []int{401}, tokens: &fakeTokens{},
			wantSent: []string{"Bearer tok1"}, wantInv: []string{"tok1"}, wantFinal: 401},
		{name: "custom header and format", body: "", statuses: []int{200}, tokens: &fakeTokens{},
			mod:    func(r *Route) { r.InjectHeader, r.InjectFormat = "x-api-key", "key={token};" },
			header: "X-Api-Key", wantSent: []string{"key=tok1;"}, wantFinal: 200},
		{name: "token source fails", body: "b", tokens: &fakeTokens{err: errors.New("idp down")}, wantErr: "idp down"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var sent, bodies []string
			n := 0
			base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
				b, _ := io.ReadAll(r.Body)
				r.Body.Close()
				mu.Lock()
				defer mu.Unlock()
				h := tc.header
				if h == "" {
					h = "Authorization"
				}
				sent = append(sent, r.Header.Get(h))
				bodies = append(bodies, string(b))
				status := tc.statuses[n]
				n++
				return answer(r, status), nil
			})
			rt := transportRoute(t, tc.tokens, base, tc.mod)
			resp, err := authTransport{rt}.RoundTrip(outgoing(tc.body))
			if tc.wantErr != "" {
				var te *TokenError
				if !errors.As(err, &te) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a TokenError with %q", err, tc.wantErr)
				}
				if len(sent) != 0 {
					t.Errorf("the upstream was called without a token")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.wantFinal {
				t.Errorf("status = %d, want %d", resp.StatusCode, tc.wantFinal)
			}
			if fmt.Sprint(sent) != fmt.Sprint(tc.wantSent) {
				t.Errorf("token header sent = %q, want %q", sent, tc.wantSent)
			}
			for i, b := range bodies {
				if len(tc.body) <= 1<<10 && b != tc.body || i == 0 && b != tc.body {
					t.Errorf("attempt %d body = %d bytes, want the %d sent", i+1, len(b), len(tc.body))
				}
			}
			if fmt.Sprint(tc.tokens.invalidated) != fmt.Sprint(tc.wantInv) {
				t.Errorf("invalidated = %v, want %v", tc.tokens.invalidated, tc.wantInv)
			}
		})
	}
}

// badTokens hands out a token that cannot be a header.
type badTokens struct{ invalidated []string }

func (b *badTokens) Token(context.Context) (string, error) { return "a\r\nX-Evil: 1", nil }
func (b *badTokens) Invalidate(tok string)                 { b.invalidated = append(b.invalidated, tok) }

// TestGarbageTokenIsATokenError: a token that cannot be put in a header
// never reaches the upstream, and the client hears of a token problem, not
// an upstream one.
func TestGarbageTokenIsATokenError(t *testing.T) {
	called := false
	base := roundTripFunc(func(r *http.Request) (*http.Response, error) { called = true; return answer(r, 200), nil })
	tokens := &badTokens{}
	rt := transportRoute(t, tokens, base, nil)
	_, err := authTransport{rt}.RoundTrip(outgoing("b"))
	if status, code := errorStatus(err); status != 502 || code != CodeTokenUnavailable {
		t.Errorf("err = %v → %d %s, want 502 token_unavailable", err, status, code)
	}
	if called || len(tokens.invalidated) != 1 {
		t.Errorf("upstream called = %v, invalidated = %v", called, tokens.invalidated)
	}
}

// TestReplayBodyClosedLate: a transport may close a request body from
// another goroutine after RoundTrip returned, while the next request
// reuses pooled buffers. Run under -race: the bytes each attempt sent must
// be its own, and no read may race a release.
func TestReplayBodyClosedLate(t *testing.T) {
	var wg sync.WaitGroup
	var late sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			want := bytes.Repeat([]byte{byte('a' + i%26)}, 100+i)
			base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
				got, _ := io.ReadAll(r.Body)
				if !bytes.Equal(got, want) {
					t.Errorf("request %d sent %d bytes of something else", i, len(got))
				}
				body := r.Body
				late.Go(func() { body.Close() }) // after RoundTrip returns
				if r.GetBody != nil {
					again, err := r.GetBody()
					if err == nil {
						late.Go(func() { io.Copy(io.Discard, again); again.Close() })
					}
				}
				return answer(r, 200), nil
			})
			rt := transportRoute(t, &fakeTokens{}, base, func(r *Route) { r.RetryBodyLimit = 1 << 20 })
			resp, err := authTransport{rt}.RoundTrip(outgoing(string(want)))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		})
	}
	wg.Wait()
	late.Wait()
}
