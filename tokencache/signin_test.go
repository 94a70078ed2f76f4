package tokencache

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func authCodeGrant() AuthorizationCode {
	return AuthorizationCode{AuthURL: "https://idp.test/authorize?tenant=acme", RedirectURL: "http://127.0.0.1:9090/oauth2/test/callback",
		ClientID: "id", Scope: "openid offline_access", Prompt: "consent", Extra: Form{{"resource", "https://api.test"}}}
}

func TestAuthorizationCodeBegin(t *testing.T) {
	g := authCodeGrant()
	a, err := g.Begin()
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	want := map[string]string{"response_type": "code", "client_id": "id", "redirect_uri": g.RedirectURL, "scope": "openid offline_access",
		"prompt": "consent", "resource": "https://api.test", "tenant": "acme", "state": a.State, "code_challenge_method": "S256"}
	for k, v := range want {
		if q.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, q.Get(k), v)
		}
	}
	sum := sha256.Sum256([]byte(a.Verifier.Reveal()))
	if q.Get("code_challenge") != base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Error("code_challenge is not S256 of the verifier")
	}
	if len(a.Verifier.Reveal()) < 43 || len(a.State) < 32 {
		t.Errorf("verifier/state too short: %d %d", len(a.Verifier.Reveal()), len(a.State))
	}
	if strings.Contains(a.URL, a.Verifier.Reveal()) {
		t.Error("the verifier is in the authorization URL")
	}
	b, _ := g.Begin()
	if b.State == a.State || b.Verifier == a.Verifier {
		t.Error("two sign-ins share a state or verifier")
	}
}

func TestSignInAuthorizationCode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idToken := "x." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"u1","name":"Ada","email":"ada@example.com"}`)) + ".y"
		idp := &fakeIdP{reply: func(n int64, r seen) (int, string) {
			switch r.form.Get("grant_type") {
			case "authorization_code":
				return 200, `{"access_token":"at1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt1","id_token":"` + idToken + `"}`
			case "refresh_token":
				if r.form.Get("refresh_token") != "rt1" {
					return 400, `{"error":"invalid_grant"}`
				}
				return 200, `{"access_token":"at2","token_type":"Bearer","expires_in":3600,"refresh_token":"rt2"}`
			}
			return 400, `{"error":"unsupported_grant_type"}`
		}}
		store := &MemoryStore{}
		g := authCodeGrant()
		s := newSource(t, idp, func(c *Config) {
			c.Grant, c.Store, c.LoginURL = g, store, "http://127.0.0.1:9090/oauth2/test/login"
			c.Params = Form{{"scope", "openid offline_access"}, {"resource", "https://api.test"}}
		})
		// Before any sign-in: login_required, naming where.
		_, err := s.Token(context.Background())
		var lr *LoginRequiredError
		if !errors.As(err, &lr) || lr.LoginURL != "http://127.0.0.1:9090/oauth2/test/login" || lr.OAuth2 != "test" {
			t.Fatalf("Token() before sign-in = %v, want login_required naming the login URL", err)
		}
		if st := s.Status(); st.State != StateLoginRequired {
			t.Errorf("state = %s, want login_required", st.State)
		}
		if n := idp.hits.Load(); n != 0 {
			t.Errorf("%d token requests before sign-in, want 0", n)
		}
		in, err := s.SignIn(context.Background(), g.CodeParams("the-code", "the-verifier"))
		if err != nil {
			t.Fatal(err)
		}
		if in.Subject != "Ada <ada@example.com>" || !in.RefreshToken {
			t.Errorf("SignIn = %+v", in)
		}
		r := idp.requests()[0]
		if r.form.Get("code") != "the-code" || r.form.Get("code_verifier") != "the-verifier" || r.form.Get("redirect_uri") != g.RedirectURL ||
			r.form.Has("scope") || r.form.Get("resource") != "https://api.test" {
			t.Errorf("code exchange form = %v", r.form)
		}
		rec, err := store.Load(context.Background(), "test")
		if err != nil || rec.RefreshToken != "rt1" || rec.Subject != "Ada <ada@example.com>" {
			t.Fatalf("stored record = %+v, %v", rec, err)
		}
		if tok := mustToken(t, s); tok != "at1" {
			t.Errorf("token after sign-in = %q", tok)
		}
		st := s.Status()
		if st.State != StateValid || !st.RefreshToken || st.Subject == "" {
			t.Errorf("status after sign-in = %+v", st)
		}
		// Renewal uses the refresh token, and the rotated one is stored.
		if _, err := s.Fetch(context.Background()); err != nil {
			t.Fatal(err)
		}
		if rec, _ := store.Load(context.Background(), "test"); rec.RefreshToken != "rt2" {
			t.Errorf("rotated refresh token not stored: %q", rec.RefreshToken.Reveal())
		}
	})
}

func TestSignInRefusedCode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		idp := &fakeIdP{reply: func(int64, seen) (int, string) { return 400, `{"error":"invalid_grant"}` }}
		s := newSource(t, idp, func(c *Config) { c.Grant = authCodeGrant() })
		_, err := s.SignIn(context.Background(), authCodeGrant().CodeParams("stale", "v"))
		var te *Error
		if !errors.As(err, &te) || te.Code != "invalid_grant" {
			t.Fatalf("SignIn = %v, want invalid_grant", err)
		}
		if st := s.Status(); st.RefreshToken {
			t.Error("a refused code stored something")
		}
	})
}

func deviceIdP(polls *int, final func(n int) (int, string)) *fakeIdP {
	return &fakeIdP{reply: func(n int64, r seen) (int, string) {
		if r.url.Path == "/device" {
			return 200, `{"device_code":"dc-secret","user_code":"ABCD-EFGH","verification_uri":"https://idp.test/device","verification_uri_complete":"https://idp.test/device?user_code=ABCD-EFGH","expires_in":60,"interval":5}`
		}
		*polls++
		return final(*polls)
	}}
}

func TestDeviceCodeApproved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		polls := 0
		var gaps []time.Duration
		last := time.Now()
		idp := deviceIdP(&polls, func(n int) (int, string) {
			gaps = append(gaps, time.Since(last))
			last = time.Now()
			switch n {
			case 1:
				return 400, `{"error":"authorization_pending"}`
			case 2:
				return 400, `{"error":"slow_down"}`
			case 3:
				return 400, `{"error":"authorization_pending"}`
			}
			return 200, `{"access_token":"at","token_type":"Bearer","expires_in":3600,"refresh_token":"rt"}`
		})
		store := &MemoryStore{}
		g := &DeviceCode{DeviceAuthURL: "https://idp.test/device", Request: Form{{"scope", "openid offline_access"}}}
		s := newSource(t, idp, func(c *Config) { c.Grant, c.Store = g, store })
		s.Start()
		synctest.Wait()
		st := s.Status()
		if st.State != StateDevicePending || st.Device == nil || st.Device.UserCode != "ABCD-EFGH" || st.LoginURL != "https://idp.test/device?user_code=ABCD-EFGH" {
			t.Fatalf("status while pending = %+v", st)
		}
		_, err := s.Token(context.Background())
		var lr *LoginRequiredError
		if !errors.As(err, &lr) || lr.Device == nil {
			t.Fatalf("Token() while pending = %v", err)
		}
		time.Sleep(40 * time.Second)
		synctest.Wait()
		if polls != 4 {
			t.Fatalf("polls = %d, want 4", polls)
		}
		// interval 5s, then slow_down adds 5s.
		want := []time.Duration{5 * time.Second, 5 * time.Second, 10 * time.Second, 10 * time.Second}
		for i, g := range gaps {
			if g != want[i] {
				t.Errorf("poll %d after %v, want %v", i+1, g, want[i])
			}
		}
		if rec, _ := store.Load(context.Background(), "test"); rec.RefreshToken != "rt" {
			t.Error("refresh token not stored")
		}
		if tok := mustToken(t, s); tok != "at" {
			t.Errorf("token = %q", tok)
		}
		for _, r := range idp.requests() {
			if r.url.Path == "/device" && r.form.Get("scope") != "openid offline_access" {
				t.Errorf("device request form = %v", r.form)
			}
		}
	})
}

func TestDeviceCodeDeniedAndExpired(t *testing.T) {
	t.Run("denied", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			polls := 0
			idp := deviceIdP(&polls, func(int) (int, string) { return 400, `{"error":"access_denied"}` })
			g := &DeviceCode{DeviceAuthURL: "https://idp.test/device"}
			s := newSource(t, idp, func(c *Config) { c.Grant = g })
			s.Start()
			time.Sleep(10 * time.Minute)
			synctest.Wait()
			st := s.Status()
			if st.State != StateLoginRequired || !strings.Contains(st.LastError, "access_denied") {
				t.Errorf("status after denial = %+v", st)
			}
			devices := 0
			for _, r := range idp.requests() {
				if r.url.Path == "/device" {
					devices++
				}
			}
			if devices != 1 || polls != 1 {
				t.Errorf("after a denial: %d device codes, %d polls; want 1, 1", devices, polls)
			}
			g.Restart()
			synctest.Wait()
			if st := s.Status(); st.State != StateDevicePending {
				t.Errorf("after Restart: %s, want device_pending", st.State)
			}
		})
	})
	t.Run("expired", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			polls := 0
			idp := deviceIdP(&polls, func(int) (int, string) { return 400, `{"error":"authorization_pending"}` })
			g := &DeviceCode{DeviceAuthURL: "https://idp.test/device"}
			s := newSource(t, idp, func(c *Config) { c.Grant = g })
			s.Start()
			time.Sleep(70 * time.Second) // the code lives 60 s
			synctest.Wait()
			if st := s.Status(); st.State == StateDevicePending {
				t.Errorf("state after expiry = %s", st.State)
			}
			time.Sleep(30 * time.Second) // a new code 30 s after the first expired, found by the 10 s recheck
			synctest.Wait()
			if st := s.Status(); st.State != StateDevicePending {
				t.Errorf("no new code after the backoff: %+v", st)
			}
		})
	})
}

func TestRevoke(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		refuse := false
		idp := &fakeIdP{reply: func(n int64, r seen) (int, string) {
			if r.url.Path == "/revoke" {
				if refuse {
					return 400, `{"error":"unsupported_token_type"}`
				}
				return 200, ``
			}
			return 200, `{"access_token":"at","token_type":"Bearer","expires_in":3600,"refresh_token":"rt"}`
		}}
		store := &MemoryStore{}
		s := newSource(t, idp, func(c *Config) {
			c.Grant, c.Store = Password{Username: "u", Password: "p"}, store
			c.Revocation = Revocation{URL: "https://idp.test/revoke", Method: "GET"}
		})
		mustToken(t, s)
		refuse = true
		if _, err := s.Revoke(context.Background(), false); err == nil || !strings.Contains(err.Error(), "unsupported_token_type") {
			t.Fatalf("refused Revoke = %v", err)
		}
		if rec, _ := store.Load(context.Background(), "test"); rec.RefreshToken != "rt" {
			t.Fatal("a refused revocation deleted the record")
		}
		refuse = false
		done, err := s.Revoke(context.Background(), false)
		if err != nil || !done.RefreshToken || !done.AccessToken {
			t.Fatalf("Revoke = %+v, %v", done, err)
		}
		if _, err := store.Load(context.Background(), "test"); !errors.Is(err, ErrNotFound) {
			t.Error("record kept after revocation")
		}
		var hints []string
		for _, r := range idp.requests() {
			if r.url.Path == "/revoke" {
				if r.method != "GET" || !r.basic || r.url.Query().Get("client_secret") != "" {
					t.Errorf("revoke request: %s basic=%v query=%v", r.method, r.basic, r.url.Query())
				}
				hints = append(hints, r.form.Get("token_type_hint")+"="+r.form.Get("token"))
			}
		}
		if strings.Join(hints, ",") != "refresh_token=rt,refresh_token=rt,access_token=at" {
			t.Errorf("revoked %v", hints)
		}
		if _, err := s.Revoke(context.Background(), false); !errors.Is(err, ErrNothingToRevoke) {
			t.Errorf("second Revoke = %v, want ErrNothingToRevoke", err)
		}
	})
}
