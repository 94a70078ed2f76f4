package tokencache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// idp is a fake token endpoint that counts requests and issues t1, t2, ...
type idp struct {
	*httptest.Server
	hits    atomic.Int64
	mu      sync.Mutex
	reply   func(n int64, r *http.Request) (int, string) // status, body
	release chan struct{}                                // when set, requests wait for it
}

func newIdP(t *testing.T, reply func(n int64, r *http.Request) (int, string)) *idp {
	t.Helper()
	i := &idp{reply: reply}
	i.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := i.hits.Add(1)
		i.mu.Lock()
		rel, reply := i.release, i.reply
		i.mu.Unlock()
		if rel != nil {
			<-rel
		}
		status, body := 200, fmt.Sprintf(`{"access_token":"t%d","token_type":"Bearer","expires_in":3600}`, n)
		if reply != nil {
			status, body = reply(n, r)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(i.Close)
	return i
}

func newSource(t *testing.T, url string, mod func(*Config)) *Source {
	t.Helper()
	cfg := Config{
		Endpoint: Endpoint{Name: "test", TokenURL: url, ClientID: "id", ClientSecret: "secret"},
		Grant:    Grant{Type: GrantClientCredentials},
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestConcurrentColdRequestsFetchOnce(t *testing.T) {
	i := newIdP(t, nil)
	release := make(chan struct{})
	i.release = release
	s := newSource(t, i.URL, nil)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			tok, err := s.Token(context.Background())
			if err == nil && tok != "t1" {
				err = fmt.Errorf("token %q, want t1", tok)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	time.Sleep(50 * time.Millisecond) // let them all pile up on the one fetch
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := i.hits.Load(); got != 1 {
		t.Errorf("token requests = %d, want 1", got)
	}
}

func TestCancelledWaiterDoesNotFailOthers(t *testing.T) {
	i := newIdP(t, nil)
	release := make(chan struct{})
	i.release = release
	s := newSource(t, i.URL, nil)

	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := s.Token(ctx); first <- err }()
	for i.hits.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	second := make(chan error, 1)
	go func() { _, err := s.Token(context.Background()); second <- err }()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled waiter: err = %v, want context.Canceled", err)
	}
	close(release)
	if err := <-second; err != nil {
		t.Errorf("other waiter failed: %v", err)
	}
	if got := i.hits.Load(); got != 1 {
		t.Errorf("token requests = %d, want 1", got)
	}
}

func TestInvalidateDropsOnlyCurrentToken(t *testing.T) {
	i := newIdP(t, nil)
	s := newSource(t, i.URL, func(c *Config) { c.ForceInterval = time.Nanosecond })
	ctx := context.Background()
	t1, _ := s.Token(ctx)
	s.Invalidate("stale-token") // not the current one: nothing happens
	if got, _ := s.Token(ctx); got != t1 || i.hits.Load() != 1 {
		t.Fatalf("Invalidate of another token replaced the current one: %q after %d requests", got, i.hits.Load())
	}
	time.Sleep(minFetchInterval) // the pacing floor between fetches
	s.Invalidate(t1)
	t2, err := s.Token(ctx)
	if err != nil || t2 == t1 {
		t.Fatalf("after Invalidate: %q, %v; want a new token", t2, err)
	}
}

func TestConcurrentInvalidatesRefreshOnce(t *testing.T) {
	i := newIdP(t, nil)
	s := newSource(t, i.URL, nil)
	ctx := context.Background()
	t1, _ := s.Token(ctx)
	time.Sleep(minFetchInterval)
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			s.Invalidate(t1)
			if tok, err := s.Token(ctx); err != nil || tok == t1 {
				t.Errorf("Token() = %q, %v after invalidation", tok, err)
			}
		})
	}
	wg.Wait()
	if got := i.hits.Load(); got != 2 {
		t.Errorf("token requests = %d, want 2 (one cold, one after the 401s)", got)
	}
}

func TestInvalidateIsRateLimited(t *testing.T) {
	i := newIdP(t, nil)
	s := newSource(t, i.URL, func(c *Config) { c.ForceInterval = time.Hour })
	ctx := context.Background()
	t1, _ := s.Token(ctx)
	time.Sleep(minFetchInterval)
	s.Invalidate(t1)
	t2, _ := s.Token(ctx)
	s.Invalidate(t2) // within the interval: kept
	if t3, _ := s.Token(ctx); t3 != t2 {
		t.Errorf("second forced renewal within ForceInterval went through: %q -> %q", t2, t3)
	}
	if got := i.hits.Load(); got != 2 {
		t.Errorf("token requests = %d, want 2", got)
	}
}

func TestBackoffAnswersAtOnce(t *testing.T) {
	i := newIdP(t, func(n int64, r *http.Request) (int, string) {
		return 503, `{"error":"temporarily_unavailable"}`
	})
	s := newSource(t, i.URL, nil)
	ctx := context.Background()
	for range 20 {
		if _, err := s.Token(ctx); err == nil {
			t.Fatal("Token() succeeded against a failing endpoint")
		}
	}
	if got := i.hits.Load(); got != 1 {
		t.Errorf("token requests = %d during backoff, want 1", got)
	}
	st := s.Status()
	if st.State != "failing" || st.Failures != 1 || st.NextAttempt == nil {
		t.Errorf("Status() = %+v", st)
	}
}

func TestBackoffHonoursRetryAfter(t *testing.T) {
	te := &Error{Status: 429, RetryAfter: 90 * time.Second}
	if d := backoff(1, te); d != 90*time.Second {
		t.Errorf("backoff with Retry-After 90s = %v", d)
	}
	te.RetryAfter = 24 * time.Hour
	if d := backoff(1, te); d != retryAfterMax {
		t.Errorf("backoff with Retry-After 24h = %v, want capped at %v", d, retryAfterMax)
	}
	for n := 1; n < 40; n++ {
		d := backoff(n, &Error{Permanent: true})
		if d < permanentBackoff/2 || d > permanentBackoffMax {
			t.Errorf("permanent backoff(%d) = %v", n, d)
		}
		d = backoff(n, nil)
		if d < transientBackoff/2 || d > transientBackoffMax {
			t.Errorf("transient backoff(%d) = %v", n, d)
		}
	}
}

func TestCachedTokenServesWhileEndpointFails(t *testing.T) {
	var fail atomic.Bool
	i := newIdP(t, func(n int64, r *http.Request) (int, string) {
		if fail.Load() {
			return 500, "down"
		}
		return 200, `{"access_token":"good","expires_in":3600}`
	})
	s := newSource(t, i.URL, nil)
	ctx := context.Background()
	if tok, err := s.Token(ctx); err != nil || tok != "good" {
		t.Fatal(tok, err)
	}
	fail.Store(true)
	if _, err := s.Fetch(ctx); err == nil {
		t.Fatal("Fetch succeeded against a failing endpoint")
	}
	if tok, err := s.Token(ctx); err != nil || tok != "good" {
		t.Errorf("Token() = %q, %v; want the cached token while the endpoint fails", tok, err)
	}
	if st := s.Status(); st.State != "refresh_failing" {
		t.Errorf("state = %q, want refresh_failing", st.State)
	}
}

func TestTokenNeverUsedPastExpiry(t *testing.T) {
	i := newIdP(t, nil)
	now := time.Unix(1_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := newSource(t, i.URL, func(c *Config) { c.Now = clock })
	ctx := context.Background()
	t1, _ := s.Token(ctx)
	mu.Lock()
	now = now.Add(time.Hour) // exactly at expiry
	mu.Unlock()
	t2, err := s.Token(ctx)
	if err != nil || t2 == t1 {
		t.Errorf("Token() at expiry = %q, %v; want a new token", t2, err)
	}
}

func TestRefreshTokenRotation(t *testing.T) {
	var got []string
	var mu sync.Mutex
	i := newIdP(t, func(n int64, r *http.Request) (int, string) {
		r.ParseForm()
		mu.Lock()
		got = append(got, r.PostForm.Get("grant_type")+":"+r.PostForm.Get("refresh_token"))
		mu.Unlock()
		return 200, fmt.Sprintf(`{"access_token":"a%d","refresh_token":"r%d","expires_in":3600}`, n, n)
	})
	s := newSource(t, i.URL, func(c *Config) {
		c.Grant = Grant{Type: GrantRefreshToken, RefreshToken: "r0"}
		c.ForceInterval = time.Nanosecond
	})
	ctx := context.Background()
	for k := range 3 {
		tok, err := s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if k < 2 {
			time.Sleep(minFetchInterval)
			s.Invalidate(tok)
		}
	}
	want := []string{"refresh_token:r0", "refresh_token:r1", "refresh_token:r2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("requests = %v, want %v", got, want)
	}
}

func TestPasswordGrantFallsBackFromRefusedRefreshToken(t *testing.T) {
	var got []string
	var mu sync.Mutex
	i := newIdP(t, func(n int64, r *http.Request) (int, string) {
		r.ParseForm()
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r.PostForm.Get("grant_type"))
		switch r.PostForm.Get("grant_type") {
		case "password":
			if r.PostForm.Get("username") != "svc" || r.PostForm.Get("password") != "pw" {
				return 400, `{"error":"invalid_grant"}`
			}
			return 200, fmt.Sprintf(`{"access_token":"a%d","refresh_token":"r%d","expires_in":3600}`, n, n)
		default:
			return 400, `{"error":"invalid_grant","error_description":"refresh token expired"}`
		}
	})
	s := newSource(t, i.URL, func(c *Config) {
		c.Grant = Grant{Type: GrantPassword, Username: "svc", Password: "pw"}
		c.ForceInterval = time.Nanosecond
	})
	ctx := context.Background()
	tok, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(minFetchInterval)
	s.Invalidate(tok)
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"password", "refresh_token", "password"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("grants = %v, want %v", got, want)
	}
}

func TestClientSecretReloadedAfterInvalidClient(t *testing.T) {
	i := newIdP(t, func(n int64, r *http.Request) (int, string) {
		if _, pass, _ := r.BasicAuth(); pass != "new" {
			return 401, `{"error":"invalid_client"}`
		}
		return 200, `{"access_token":"ok","expires_in":60}`
	})
	var reloads atomic.Int64
	s := newSource(t, i.URL, func(c *Config) {
		c.Endpoint.ClientSecret = "old"
		c.ReloadSecret = func() (Secret, error) { reloads.Add(1); return "new", nil }
	})
	if tok, err := s.Token(context.Background()); err != nil || tok != "ok" {
		t.Fatalf("Token() = %q, %v", tok, err)
	}
	if reloads.Load() != 1 || i.hits.Load() != 2 {
		t.Errorf("reloads=%d requests=%d, want 1 and 2", reloads.Load(), i.hits.Load())
	}
}

func TestTokenTypeMustBeBearer(t *testing.T) {
	i := newIdP(t, func(n int64, r *http.Request) (int, string) {
		return 200, `{"access_token":"x","token_type":"mac","expires_in":60}`
	})
	s := newSource(t, i.URL, nil)
	_, err := s.Token(context.Background())
	if err == nil || !strings.Contains(err.Error(), `token_type "mac" is not Bearer`) {
		t.Errorf("err = %v", err)
	}
	s2 := newSource(t, i.URL, func(c *Config) { c.Endpoint.AnyTokenType = true })
	if tok, err := s2.Token(context.Background()); err != nil || tok != "x" {
		t.Errorf("with AnyTokenType: %q, %v", tok, err)
	}
}

func TestExpiryAndRenewalSchedule(t *testing.T) {
	obtained := time.Unix(1_000_000, 0)
	tests := []struct {
		name       string
		body       string
		before     time.Duration
		wantLife   time.Duration
		wantRenew  time.Duration // after obtained
		wantSource string
	}{
		{"hour", `{"access_token":"a","expires_in":3600}`, time.Minute, time.Hour, 59 * time.Minute, "expires_in"},
		{"short lifetime renews at half-life", `{"access_token":"a","expires_in":60}`, time.Minute, time.Minute, 30 * time.Second, "expires_in"},
		{"very short lifetime paced to 1s", `{"access_token":"a","expires_in":1}`, time.Minute, time.Second, time.Second, "expires_in"},
		{"no lifetime: default ttl", `{"access_token":"a"}`, time.Minute, 5 * time.Minute, 4 * time.Minute, "default_ttl"},
		{"no lifetime: jwt exp", fmt.Sprintf(`{"access_token":%q}`, jwt(`{"exp":1000600}`)), time.Minute, 10 * time.Minute, 9 * time.Minute, "jwt exp"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSource(t, "http://127.0.0.1:1/token", func(c *Config) { c.RefreshBefore = tc.before })
			r, err := parseTokenResponse([]byte(tc.body), ResponseFields{}.withDefaults())
			if err != nil {
				t.Fatal(err)
			}
			tok, err := s.newToken(r, obtained)
			if err != nil {
				t.Fatal(err)
			}
			if life := tok.Expiry.Sub(obtained); life != tc.wantLife {
				t.Errorf("lifetime = %v, want %v", life, tc.wantLife)
			}
			if renew := tok.refreshAt.Sub(obtained); renew != tc.wantRenew {
				t.Errorf("renew after %v, want %v", renew, tc.wantRenew)
			}
			if tok.ExpirySource != tc.wantSource {
				t.Errorf("expiry source = %q, want %q", tok.ExpirySource, tc.wantSource)
			}
			if !tok.usableUntil.Before(tok.Expiry) || tok.usableUntil.Before(obtained) {
				t.Errorf("usable until %v, expiry %v", tok.usableUntil, tok.Expiry)
			}
		})
	}
}

func TestBackgroundRenewal(t *testing.T) {
	i := newIdP(t, func(n int64, r *http.Request) (int, string) {
		return 200, fmt.Sprintf(`{"access_token":"t%d","expires_in":2}`, n)
	})
	s := newSource(t, i.URL, nil)
	s.Start()
	deadline := time.Now().Add(5 * time.Second)
	for i.hits.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := i.hits.Load(); got < 3 {
		t.Fatalf("background renewals = %d after 5s of 2s tokens, want >= 3", got)
	}
	// Renewal is ahead of expiry: a request never finds the cache empty.
	start := time.Now()
	for time.Since(start) < 1500*time.Millisecond {
		if !s.Status().Ready() {
			t.Fatal("no usable token between background renewals")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.Close()
	n := i.hits.Load()
	time.Sleep(1500 * time.Millisecond)
	if i.hits.Load() != n {
		t.Error("renewal went on after Close")
	}
}

// TestClientCredentialsIgnoresRefreshTokens: RFC 6749 §4.4.3 says no
// refresh token should come back; if one does, renewals still use the
// client credentials.
func TestClientCredentialsIgnoresRefreshTokens(t *testing.T) {
	var grants []string
	var mu sync.Mutex
	i := newIdP(t, func(n int64, r *http.Request) (int, string) {
		r.ParseForm()
		mu.Lock()
		grants = append(grants, r.PostForm.Get("grant_type"))
		mu.Unlock()
		return 200, fmt.Sprintf(`{"access_token":"a%d","refresh_token":"r%d","expires_in":3600}`, n, n)
	})
	s := newSource(t, i.URL, func(c *Config) { c.ForceInterval = time.Nanosecond })
	tok, _ := s.Token(context.Background())
	time.Sleep(minFetchInterval)
	s.Invalidate(tok)
	s.Token(context.Background())
	if fmt.Sprint(grants) != "[client_credentials client_credentials]" {
		t.Errorf("grants = %v", grants)
	}
}
