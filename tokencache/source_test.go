package tokencache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestConcurrentColdRequestsFetchOnce: N requests for a token not cached
// yet make one token request. synctest.Wait proves they all piled up on
// the one fetch before it is let go.
func TestConcurrentColdRequestsFetchOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{gate: make(chan struct{})}
		s := newSource(t, idp, nil)
		const n = 200
		var started atomic.Int64
		errs := make(chan error, n)
		for range n {
			go func() {
				started.Add(1)
				tok, err := s.Token(context.Background())
				if err == nil && tok != "t1" {
					err = fmt.Errorf("token %q, want t1", tok)
				}
				errs <- err
			}()
		}
		synctest.Wait() // every goroutine is blocked: all waiting on one fetch
		if got := started.Load(); got != n {
			t.Fatalf("%d of %d requests started", got, n)
		}
		if got := idp.hits.Load(); got != 1 {
			t.Fatalf("token requests while waiting = %d, want 1", got)
		}
		close(idp.gate)
		for range n {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		if got := idp.hits.Load(); got != 1 {
			t.Errorf("token requests = %d, want 1", got)
		}
	})
}

func TestCancelledWaiterDoesNotFailOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{gate: make(chan struct{})}
		s := newSource(t, idp, nil)
		ctx, cancel := context.WithCancel(context.Background())
		first, second := make(chan error, 1), make(chan error, 1)
		go func() { _, err := s.Token(ctx); first <- err }()
		synctest.Wait()
		go func() { _, err := s.Token(context.Background()); second <- err }()
		synctest.Wait()
		cancel()
		if err := <-first; !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled waiter: err = %v, want context.Canceled", err)
		}
		close(idp.gate)
		if err := <-second; err != nil {
			t.Errorf("other waiter failed: %v", err)
		}
		if got := idp.hits.Load(); got != 1 {
			t.Errorf("token requests = %d, want 1", got)
		}
	})
}

func TestInvalidateDropsOnlyCurrentToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{}
		s := newSource(t, idp, func(c *Config) { c.ForceInterval = time.Nanosecond })
		t1 := mustToken(t, s)
		s.Invalidate("stale-token") // not the current one: nothing happens
		if got := mustToken(t, s); got != t1 || idp.hits.Load() != 1 {
			t.Fatalf("Invalidate of another token replaced the current one: %q after %d requests", got, idp.hits.Load())
		}
		s.Invalidate(t1)
		if t2 := mustToken(t, s); t2 == t1 {
			t.Fatalf("after Invalidate: %q, want a new token", t2)
		}
	})
}

func TestConcurrentInvalidatesRefreshOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{}
		s := newSource(t, idp, nil)
		t1 := mustToken(t, s)
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				s.Invalidate(t1)
				if tok, err := s.Token(context.Background()); err != nil || tok == t1 {
					t.Errorf("Token() = %q, %v after invalidation", tok, err)
				}
			})
		}
		wg.Wait()
		if got := idp.hits.Load(); got != 2 {
			t.Errorf("token requests = %d, want 2 (one cold, one after the 401s)", got)
		}
	})
}

func TestInvalidateIsRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{}
		s := newSource(t, idp, func(c *Config) { c.ForceInterval = time.Hour })
		t1 := mustToken(t, s)
		s.Invalidate(t1)
		t2 := mustToken(t, s)
		s.Invalidate(t2) // within the interval: kept
		if t3 := mustToken(t, s); t3 != t2 {
			t.Errorf("second forced renewal within ForceInterval went through: %q -> %q", t2, t3)
		}
		if got := idp.hits.Load(); got != 2 {
			t.Errorf("token requests = %d, want 2", got)
		}
	})
}

// TestPacing: however often a token is invalidated, requests are at least
// minFetchInterval apart.
func TestPacing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var at []time.Time
		idp := &fakeIdP{reply: func(n int64, _ seen) (int, string) {
			at = append(at, time.Now())
			return 200, fmt.Sprintf(`{"access_token":"t%d","expires_in":3600}`, n)
		}}
		s := newSource(t, idp, func(c *Config) { c.ForceInterval = time.Nanosecond })
		for range 4 {
			s.Invalidate(mustToken(t, s))
		}
		for i := 1; i < len(at); i++ {
			if d := at[i].Sub(at[i-1]); d < minFetchInterval {
				t.Errorf("requests %d and %d were %v apart, want >= %v", i, i+1, d, minFetchInterval)
			}
		}
	})
}

func TestBackoffAnswersAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{reply: func(int64, seen) (int, string) { return 503, `{"error":"temporarily_unavailable"}` }}
		s := newSource(t, idp, nil)
		for range 20 {
			if _, err := s.Token(context.Background()); err == nil {
				t.Fatal("Token() succeeded against a failing endpoint")
			}
		}
		if got := idp.hits.Load(); got != 1 {
			t.Errorf("token requests = %d during backoff, want 1", got)
		}
		st := s.Status()
		if st.State != StateFailing || st.Failures != 1 || st.NextAttempt == nil {
			t.Errorf("Status() = %+v", st)
		}
		// Past the backoff, the next request goes out.
		time.Sleep(transientBackoff + time.Millisecond)
		s.Token(context.Background())
		if got := idp.hits.Load(); got != 2 {
			t.Errorf("token requests after the backoff = %d, want 2", got)
		}
	})
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
	synctest.Test(t, func(t *testing.T) {
		var fail atomic.Bool
		idp := &fakeIdP{reply: func(int64, seen) (int, string) {
			if fail.Load() {
				return 500, "down"
			}
			return 200, `{"access_token":"good","expires_in":3600}`
		}}
		s := newSource(t, idp, nil)
		if tok := mustToken(t, s); tok != "good" {
			t.Fatal(tok)
		}
		fail.Store(true)
		if _, err := s.Fetch(context.Background()); err == nil {
			t.Fatal("Fetch succeeded against a failing endpoint")
		}
		if tok := mustToken(t, s); tok != "good" {
			t.Errorf("Token() = %q; want the cached token while the endpoint fails", tok)
		}
		if st := s.Status(); st.State != StateRefreshFailing {
			t.Errorf("state = %q, want refresh_failing", st.State)
		}
	})
}

func TestTokenNeverUsedPastExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{}
		s := newSource(t, idp, nil)
		t1 := mustToken(t, s)
		time.Sleep(time.Hour) // exactly at expiry
		if t2 := mustToken(t, s); t2 == t1 {
			t.Errorf("Token() at expiry = %q; want a new token", t2)
		}
	})
}

func TestRefreshTokenRotation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &MemoryStore{}
		var got []string
		idp := &fakeIdP{reply: func(n int64, r seen) (int, string) {
			got = append(got, r.form.Get("grant_type")+":"+r.form.Get("refresh_token"))
			// A rotated refresh token is stored before its access token is used.
			return 200, fmt.Sprintf(`{"access_token":"a%d","refresh_token":"r%d","expires_in":3600}`, n, n)
		}}
		s := newSource(t, idp, func(c *Config) {
			c.Grant = RefreshToken{Token: "r0"}
			c.Store = store
			c.ForceInterval = time.Nanosecond
		})
		for k := range 3 {
			tok := mustToken(t, s)
			rec, err := store.Load(context.Background(), "test")
			if want := Secret(fmt.Sprintf("r%d", k+1)); err != nil || rec.RefreshToken != want {
				t.Fatalf("when %s is handed out the store holds %v (%v), want %s", tok, rec.RefreshToken.Reveal(), err, want)
			}
			s.Invalidate(tok)
		}
		want := []string{"refresh_token:r0", "refresh_token:r1", "refresh_token:r2"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("requests = %v, want %v", got, want)
		}
		if st := s.Status(); !st.RefreshToken {
			t.Errorf("Status().RefreshToken = false with a stored refresh token")
		}
	})
}

// TestStoredRefreshTokenWinsOverSeed: a store that holds a rotated refresh
// token is newer than the one in the config.
func TestStoredRefreshTokenWinsOverSeed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &MemoryStore{}
		store.CompareAndSwap(context.Background(), "test", 0, Record{RefreshToken: "rotated"})
		idp := &fakeIdP{}
		s := newSource(t, idp, func(c *Config) { c.Grant = RefreshToken{Token: "from-config"}; c.Store = store })
		mustToken(t, s)
		if got := idp.requests()[0].form.Get("refresh_token"); got != "rotated" {
			t.Errorf("refresh_token sent = %q, want the stored one", got)
		}
	})
}

func TestPasswordGrantFallsBackFromRefusedRefreshToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{reply: func(n int64, r seen) (int, string) {
			switch r.form.Get("grant_type") {
			case "password":
				if r.form.Get("username") != "svc" || r.form.Get("password") != "pw" {
					return 400, `{"error":"invalid_grant"}`
				}
				return 200, fmt.Sprintf(`{"access_token":"a%d","refresh_token":"r%d","expires_in":3600}`, n, n)
			default:
				return 400, `{"error":"invalid_grant","error_description":"refresh token expired"}`
			}
		}}
		s := newSource(t, idp, func(c *Config) {
			c.Grant = Password{Username: "svc", Password: "pw"}
			c.ForceInterval = time.Nanosecond
		})
		s.Invalidate(mustToken(t, s))
		mustToken(t, s)
		want := []string{"password", "refresh_token", "password"}
		if got := idp.grants(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("grants = %v, want %v", got, want)
		}
	})
}

// TestRefreshTokenKeptOnOtherRefusals: only invalid_grant means the refresh
// token is dead. A refused client (invalid_client) or a server error must
// not throw away a stored refresh token that took a person to obtain.
func TestRefreshTokenKeptOnOtherRefusals(t *testing.T) {
	for _, answer := range []string{`{"error":"invalid_client"}`, `{"error":"unauthorized_client"}`, `{"error":"server_error"}`} {
		t.Run(answer, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := &MemoryStore{}
				idp := &fakeIdP{reply: func(int64, seen) (int, string) { return 400, answer }}
				s := newSource(t, idp, func(c *Config) { c.Grant = RefreshToken{Token: "precious"}; c.Store = store })
				if _, err := s.Token(context.Background()); err == nil {
					t.Fatal("Token() succeeded")
				}
				if rec, err := store.Load(context.Background(), "test"); err != nil || rec.RefreshToken != "precious" {
					t.Errorf("after %s the store holds %q, %v; want the refresh token kept", answer, rec.RefreshToken.Reveal(), err)
				}
			})
		})
	}
}

func TestRefreshTokenGrantRefusedIsPermanent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{reply: func(int64, seen) (int, string) { return 400, `{"error":"invalid_grant"}` }}
		s := newSource(t, idp, func(c *Config) { c.Grant = RefreshToken{Token: "r0"} })
		_, err := s.Token(context.Background())
		var te *Error
		if !errors.As(err, &te) || !te.Permanent || !strings.Contains(err.Error(), "configure a new refresh_token") {
			t.Fatalf("err = %v, want a permanent error asking for a new refresh_token", err)
		}
		if st := s.Status(); st.RefreshToken {
			t.Error("the refused refresh token is still stored")
		}
	})
}

func TestClientSecretRereadAfterInvalidClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{reply: func(_ int64, r seen) (int, string) {
			if r.pass != "new" {
				return 401, `{"error":"invalid_client"}`
			}
			return 200, `{"access_token":"ok","expires_in":60}`
		}}
		var rereads atomic.Int64
		s := newSource(t, idp, func(c *Config) {
			c.Client.Auth = ClientSecretBasic{ClientID: "id", Secret: NewClientSecret("old", func() (Secret, error) { rereads.Add(1); return "new", nil })}
		})
		if tok := mustToken(t, s); tok != "ok" {
			t.Fatalf("Token() = %q", tok)
		}
		if rereads.Load() != 1 || idp.hits.Load() != 2 {
			t.Errorf("rereads=%d requests=%d, want 1 and 2", rereads.Load(), idp.hits.Load())
		}
	})
}

func TestTokenTypeMustBeBearer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{reply: func(int64, seen) (int, string) {
			return 200, `{"access_token":"x","token_type":"mac","expires_in":60}`
		}}
		s := newSource(t, idp, nil)
		_, err := s.Token(context.Background())
		if err == nil || !strings.Contains(err.Error(), `token_type "mac" is not Bearer`) {
			t.Errorf("err = %v", err)
		}
		s2 := newSource(t, idp, func(c *Config) { c.AnyTokenType = true })
		if tok := mustToken(t, s2); tok != "x" {
			t.Errorf("with AnyTokenType: %q", tok)
		}
	})
}

// TestGarbageTokensRefused: a token that cannot go into a header is the
// token endpoint's garbage (502 token_unavailable, backoff), never cached.
func TestGarbageTokensRefused(t *testing.T) {
	for _, body := range []string{
		`{"access_token":"abc\r\nX-Evil: 1","expires_in":60}`,
		`{"access_token":"abc\ndef","expires_in":60}`,
		`{"access_token":"ab\u0000c","expires_in":60}`,
		`{"access_token":"tökén","expires_in":60}`,
		`{"access_token":" padded ","expires_in":60}`,
		`{"access_token":"ok","token_type":"Bearer\r\n","expires_in":60}`,
		`{"access_token":"ok","token_type":"Be arer","expires_in":60}`,
		`{"access_token":"ok","refresh_token":"r\u0007","expires_in":60}`,
	} {
		t.Run(body, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				idp := &fakeIdP{reply: func(int64, seen) (int, string) { return 200, body }}
				s := newSource(t, idp, func(c *Config) { c.AnyTokenType = true })
				_, err := s.Token(context.Background())
				var te *Error
				if !errors.As(err, &te) || te.Permanent {
					t.Fatalf("err = %v, want a transient *Error", err)
				}
				if te.HTTPStatus() != 502 || te.ErrorCode() != "token_unavailable" {
					t.Errorf("answered %d %s", te.HTTPStatus(), te.ErrorCode())
				}
				if s.cache.cur.Load() != nil {
					t.Error("the garbage token was cached")
				}
			})
		})
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
			r, err := parseTokenResponse([]byte(tc.body), ResponseFields{}.withDefaults())
			if err != nil {
				t.Fatal(err)
			}
			tok, err := lifetime{refreshBefore: tc.before}.newToken(r, obtained)
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

// TestBackgroundRenewal: 2-second tokens renewed ahead of expiry, so that a
// request never finds the cache empty; nothing is renewed after Close.
func TestBackgroundRenewal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{reply: func(n int64, _ seen) (int, string) {
			return 200, fmt.Sprintf(`{"access_token":"t%d","expires_in":2}`, n)
		}}
		s, err := New(testConfig(idp))
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		synctest.Wait()
		for range 100 { // 10 s in steps of 100 ms
			if !s.Status().Ready() {
				t.Fatalf("no usable token at %v", time.Now())
			}
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
		}
		if got := idp.hits.Load(); got < 9 || got > 11 {
			t.Errorf("renewals in 10 s of 2 s tokens renewed at half-life = %d, want about 10", got)
		}
		s.Close()
		n := idp.hits.Load()
		time.Sleep(10 * time.Second)
		if idp.hits.Load() != n {
			t.Error("renewal went on after Close")
		}
	})
}

// TestBackgroundRenewalBacksOff: a failing endpoint is asked again at the
// backoff's pace, not in a tight loop.
func TestBackgroundRenewalBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{reply: func(int64, seen) (int, string) { return 500, "down" }}
		s := newSource(t, idp, nil)
		s.Start()
		time.Sleep(time.Minute)
		synctest.Wait()
		// 1, 2, 4, 8, 16, 32 s (with jitter in [d/2, d]) fit at most ~9 in a minute.
		if got := idp.hits.Load(); got < 4 || got > 12 {
			t.Errorf("requests in a minute of failures = %d, want a handful", got)
		}
	})
}

// TestClientCredentialsIgnoresRefreshTokens: RFC 6749 §4.4.3 says no
// refresh token should come back; if one does, renewals still use the
// client credentials.
func TestClientCredentialsIgnoresRefreshTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{reply: func(n int64, _ seen) (int, string) {
			return 200, fmt.Sprintf(`{"access_token":"a%d","refresh_token":"r%d","expires_in":3600}`, n, n)
		}}
		s := newSource(t, idp, func(c *Config) { c.ForceInterval = time.Nanosecond })
		s.Invalidate(mustToken(t, s))
		mustToken(t, s)
		if got := idp.grants(); fmt.Sprint(got) != "[client_credentials client_credentials]" {
			t.Errorf("grants = %v", got)
		}
	})
}

// TestScrubberLearnsTokens: the tokens a source holds are scrubbed from
// what is logged, and replaced when they rotate.
func TestScrubberLearnsTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := NewScrubber()
		idp := &fakeIdP{reply: func(n int64, _ seen) (int, string) {
			return 200, fmt.Sprintf(`{"access_token":"access-%d","refresh_token":"refresh-%d","expires_in":3600}`, n, n)
		}}
		s := newSource(t, idp, func(c *Config) {
			c.Grant = Password{Username: "u", Password: "pw-secret"}
			c.Scrub = sc
			c.ForceInterval = time.Nanosecond
		})
		s.Invalidate(mustToken(t, s))
		s.Invalidate(mustToken(t, s))
		mustToken(t, s)
		// The current tokens and the ones before them (a server may echo
		// the token it was just sent) are removed; older ones are
		// forgotten, so that the set stays bounded.
		got := sc.Scrub("access-3 refresh-3 access-2 refresh-2 access-1")
		if got != "[redacted] [redacted] [redacted] [redacted] access-1" {
			t.Errorf("Scrub = %q: want the current and previous tokens removed and older ones forgotten", got)
		}
	})
}
