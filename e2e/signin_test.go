package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
	"github.com/oauthproxy/oauthproxy/tokencache/filestore"
)

// The sign-in tests drive the built binary through oidc-provider's own
// pages (devInteractions: a login form that takes any login and password,
// then a consent form; the device flow's code entry and confirmation) with
// an HTTP client that keeps cookies, as a person's browser would. Each test
// registers clients of its own (RFC 7591), so grants and refresh tokens do
// not cross tests.

// signinUser is the login the tests sign in with; oidc-provider makes it
// the subject.
const signinUser = "ada@e2e.test"

// signinClient is a client registered at oidc-provider for one test.
type signinClient struct {
	id, secret string
}

// registerClient registers a client with the given metadata.
func registerClient(t *testing.T, iss string, meta map[string]any) signinClient {
	t.Helper()
	body, _ := json.Marshal(meta)
	resp, err := http.Post(iss+"/reg", "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		ClientID                string `json:"client_id"`
		ClientSecret            string `json:"client_secret"`
		RegistrationAccessToken string `json:"registration_access_token"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &out) != nil || out.ClientID == "" {
		t.Fatalf("registering a client at oidc-provider: %d %s", resp.StatusCode, b)
	}
	addCanary(out.ClientSecret, out.RegistrationAccessToken)
	return signinClient{out.ClientID, out.ClientSecret}
}

// authCodeClient registers a confidential native client for the
// authorization code grant: its loopback redirect URI matches whatever
// port the admin listener has (RFC 8252 §7.3).
func authCodeClient(t *testing.T, iss string) signinClient {
	return registerClient(t, iss, map[string]any{
		"application_type":           "native",
		"redirect_uris":              []string{"http://127.0.0.1/oauth2/e2e/callback"},
		"grant_types":                []string{"authorization_code", "refresh_token"},
		"response_types":             []string{"code"},
		"token_endpoint_auth_method": "client_secret_basic",
	})
}

// deviceClient registers a public client for the device code grant, as a
// headless sidecar has no secret to keep.
func deviceClient(t *testing.T, iss string) signinClient {
	return registerClient(t, iss, map[string]any{
		"application_type":           "native",
		"redirect_uris":              []string{},
		"grant_types":                []string{"urn:ietf:params:oauth:grant-type:device_code", "refresh_token"},
		"response_types":             []string{},
		"token_endpoint_auth_method": "none",
	})
}

// freeAddr returns a loopback address nothing listens on. The admin
// listener needs a port known before the config is written: the login URL
// and the default redirect_url name it.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// newStoreKey returns a fresh store_key (32 bytes, base64): a secret the
// proxy must never print.
func newStoreKey() string {
	b := make([]byte, 32)
	rand.Read(b)
	k := base64.StdEncoding.EncodeToString(b)
	addCanary(k)
	return k
}

// signinConfig is a proxy config with one oauth2 entry "e2e" (entry: its
// keys, indented by 4) on a fixed admin address, routed at /api/.
func signinConfig(admin, upstream, entry string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: %s
log: {level: debug, format: json}
oauth2:
  e2e:
%s
routes:
  - prefix: /api/
    upstream: %s/
    oauth2: e2e
`, admin, entry, upstream)
}

// authCodeEntry is an authorization_code entry for client c, with a
// refresh token asked for and kept in store.
func authCodeEntry(iss string, c signinClient, store, key string) string {
	return fmt.Sprintf(`    grant_type: authorization_code
    auth_url: %[1]s/auth
    token_url: %[1]s/token
    revoke_url: %[1]s/token/revocation
    client_id: %[2]s
    client_secret: %[3]s
    scopes: [openid, orders.read]
    request_refresh_token: true
    prompt: consent
    resource: %[4]s
    store: %[5]s
    store_key: %[6]s`, iss, c.id, c.secret, apiResource, store, key)
}

// deviceEntry is a device_code entry for the public client c.
func deviceEntry(iss string, c signinClient, store, key string) string {
	return fmt.Sprintf(`    grant_type: device_code
    device_auth_url: %[1]s/device/auth
    token_url: %[1]s/token
    revoke_url: %[1]s/token/revocation
    client_id: %[2]s
    client_auth: none
    scopes: [openid, offline_access, orders.read]
    resource: %[3]s
    store: %[4]s
    store_key: %[5]s`, iss, c.id, apiResource, store, key)
}

// tokenStatus is one entry of /tokens.
type tokenStatus struct {
	OAuth2       string `json:"oauth2"`
	State        string `json:"state"`
	RefreshToken bool   `json:"refresh_token_stored"`
	Subject      string `json:"subject"`
	LoginURL     string `json:"login_url"`
	LastError    string `json:"last_error"`
	Device       *struct {
		UserCode                string `json:"user_code"`
		VerificationURI         string `json:"verification_uri"`
		VerificationURIComplete string `json:"verification_uri_complete"`
	} `json:"device"`
}

// status returns /tokens' entry for e2e.
func (p *proc) status(t *testing.T) tokenStatus {
	t.Helper()
	r := get(t, p.admin+"/tokens")
	noLeak(t, "/tokens", r.body)
	var all []tokenStatus
	if err := json.Unmarshal([]byte(r.body), &all); err != nil || r.status != 200 {
		t.Fatalf("/tokens: %d %s", r.status, r.body)
	}
	for _, st := range all {
		if st.OAuth2 == "e2e" {
			return st
		}
	}
	t.Fatalf("/tokens has no entry e2e: %s", r.body)
	return tokenStatus{}
}

// waitStatus polls /tokens until ok accepts e2e's entry.
func (p *proc) waitStatus(t *testing.T, what string, ok func(tokenStatus) bool) tokenStatus {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st := p.status(t)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("/tokens never showed %s; last: %+v", what, st)
		}
		select {
		case <-p.done:
			t.Fatalf("oauthproxy exited waiting for %s: %v", what, p.err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitLog waits for a log line whose msg is msg.
func (p *proc) waitLog(t *testing.T, msg string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for len(p.logLines(msg)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q", msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isState(s string) func(tokenStatus) bool {
	return func(st tokenStatus) bool { return st.State == s }
}

// readStore returns e2e's record in the store file, and whether there is one.
func readStore(t *testing.T, path, key string) (tokencache.Record, bool) {
	t.Helper()
	k, err := filestore.ParseKey(key)
	if err != nil {
		t.Fatal(err)
	}
	st, err := filestore.Open(path, k)
	if err != nil {
		t.Fatalf("opening the store: %v", err)
	}
	defer st.Close()
	rec, err := st.Load(context.Background(), "e2e")
	if errors.Is(err, tokencache.ErrNotFound) {
		return rec, false
	}
	if err != nil {
		t.Fatalf("reading the store: %v", err)
	}
	addCanary(rec.RefreshToken.Reveal())
	return rec, true
}

// introspect asks oidc-provider whether token is active (RFC 7662), as
// client c.
func introspect(t *testing.T, iss string, c signinClient, token string) bool {
	t.Helper()
	active, err := introspection(iss, c, token)
	if err != nil {
		t.Fatal(err)
	}
	return active
}

func introspection(iss string, c signinClient, token string) (bool, error) {
	form := url.Values{"token": {token}}
	if c.secret == "" {
		form.Set("client_id", c.id)
	}
	req, _ := http.NewRequest("POST", iss+"/token/introspection", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if c.secret != "" {
		req.SetBasicAuth(url.QueryEscape(c.id), url.QueryEscape(c.secret))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var out struct {
		Active   *bool  `json:"active"`
		ClientID string `json:"client_id"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || json.Unmarshal(b, &out) != nil || out.Active == nil {
		return false, fmt.Errorf("introspection: %d %s", resp.StatusCode, b)
	}
	if *out.Active && out.ClientID != c.id {
		return false, fmt.Errorf("introspection: token of client %q, want %q", out.ClientID, c.id)
	}
	return *out.Active, nil
}

// oidcGranted counts the tokens oidc-provider granted to a client with
// grant type gt.
func oidcGranted(clientID, gt string) int {
	return strings.Count(oidc.out.String(), "granted "+clientID+" "+gt+"\n")
}

// oidcRefused returns the token requests of a client oidc-provider refused.
func oidcRefused(clientID string) []string {
	var out []string
	for _, l := range strings.Split(oidc.out.String(), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "grant.error" && f[2] == clientID {
			out = append(out, l)
		}
	}
	return out
}

// browser is a person's browser without the person: an HTTP client with a
// cookie jar that follows redirects and fills in forms.
type browser struct {
	t *testing.T
	c *http.Client
}

// page is where a browser ended up.
type page struct {
	url    *url.URL
	status int
	body   string
}

func newBrowser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, c: &http.Client{Jar: jar, Timeout: 10 * time.Second}}
}

func (b *browser) do(req *http.Request) page {
	b.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if code := resp.Request.URL.Query().Get("code"); code != "" {
		addCanary(code)
	}
	return page{resp.Request.URL, resp.StatusCode, string(body)}
}

func (b *browser) get(u string) page {
	b.t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.do(req)
}

var (
	formRE  = regexp.MustCompile(`(?s)<form\b([^>]*)>(.*?)</form>`)
	inputRE = regexp.MustCompile(`(?s)<input\b([^>]*)>`)
	attrRE  = regexp.MustCompile(`(\w+)="([^"]*)"`)
)

func attrs(s string) map[string]string {
	m := map[string]string{}
	for _, a := range attrRE.FindAllStringSubmatch(s, -1) {
		m[a[1]] = html.UnescapeString(a[2])
	}
	return m
}

// submit posts the page's first form with its inputs' values, set
// overriding them, and follows where it leads.
func (b *browser) submit(pg page, set map[string]string) page {
	b.t.Helper()
	f := formRE.FindStringSubmatch(pg.body)
	if f == nil {
		b.t.Fatalf("no form on %s (%d):\n%s", pg.url, pg.status, pg.body)
	}
	action, err := pg.url.Parse(attrs(f[1])["action"])
	if err != nil {
		b.t.Fatal(err)
	}
	form := url.Values{}
	for _, in := range inputRE.FindAllStringSubmatch(f[2], -1) {
		a := attrs(in[1])
		if a["name"] != "" {
			form.Set(a["name"], a["value"])
		}
	}
	for k, v := range set {
		form.Set(k, v)
	}
	req, _ := http.NewRequest("POST", action.String(), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

// signInAt signs in at an oauthproxy login URL: the proxy redirects to
// oidc-provider, whose login and consent pages the browser fills in, and
// oidc-provider sends it back to the proxy's callback. It returns the
// callback's page.
func (b *browser) signInAt(login string) page {
	b.t.Helper()
	pg := b.get(login)
	if !strings.Contains(pg.body, `name="login"`) {
		b.t.Fatalf("GET %s did not lead to the provider's login page: %s %d\n%s", login, pg.url, pg.status, pg.body)
	}
	pg = b.submit(pg, map[string]string{"login": signinUser, "password": "any"})
	if !strings.Contains(pg.body, `value="consent"`) {
		b.t.Fatalf("signing in did not lead to the consent page: %s %d\n%s", pg.url, pg.status, pg.body)
	}
	return b.submit(pg, nil)
}

// approveDevice enters userCode on oidc-provider's device pages, confirms
// it, signs in and consents.
func (b *browser) approveDevice(verificationURI, userCode string) {
	b.t.Helper()
	pg := b.get(verificationURI)
	pg = b.submit(pg, map[string]string{"user_code": userCode})
	if !strings.Contains(pg.body, `name="confirm"`) {
		b.t.Fatalf("entering the user code did not lead to the confirmation: %s %d\n%s", pg.url, pg.status, pg.body)
	}
	pg = b.submit(pg, nil)
	if !strings.Contains(pg.body, `name="login"`) {
		b.t.Fatalf("confirming did not lead to the login page: %s %d\n%s", pg.url, pg.status, pg.body)
	}
	pg = b.submit(pg, map[string]string{"login": signinUser, "password": "any"})
	pg = b.submit(pg, nil)
	if !strings.Contains(pg.body, "Sign-in Success") {
		b.t.Fatalf("the device sign-in did not succeed: %s %d\n%s", pg.url, pg.status, pg.body)
	}
}

// signedIn checks a sign-in's end: the proxy's callback page, 200, naming
// who signed in.
func signedIn(t *testing.T, pg page) {
	t.Helper()
	if pg.status != 200 || pg.url.Path != "/oauth2/e2e/callback" || !strings.Contains(pg.body, "Signed in as "+signinUser) ||
		!strings.Contains(pg.body, "The refresh token is stored") {
		t.Fatalf("the sign-in did not end on the proxy's callback page: %s %d\n%s", pg.url, pg.status, pg.body)
	}
	noLeak(t, "callback page", pg.body)
}

// checkRoute sends a request through the proxy and checks that the
// upstream got a token oidc-provider signed for client c on behalf of the
// person who signed in.
func checkRoute(t *testing.T, p *proc, up *api, c signinClient) string {
	t.Helper()
	r := get(t, p.base+"/api/orders?id=1", "Authorization", "Bearer forged-by-the-client")
	if r.status != 200 {
		t.Fatalf("GET through the proxy: %d %s", r.status, r.body)
	}
	tok := up.last(t).token
	claims, err := verifyJWT(tok, c.id)
	if err != nil {
		t.Fatalf("the upstream got a token that does not verify: %v", err)
	}
	if claims["sub"] != signinUser {
		t.Errorf("sub = %v, want %s", claims["sub"], signinUser)
	}
	return tok
}

func verifyFor(c *signinClient) func(string) error {
	return func(tok string) error { _, err := verifyJWT(tok, c.id); return err }
}

// TestSignInAuthorizationCode signs in with the authorization code grant
// (PKCE) through the admin listener and oidc-provider's pages, then renews
// with the rotated refresh token and restarts the proxy on the same store.
func TestSignInAuthorizationCode(t *testing.T) {
	iss := needOIDC(t)
	c := authCodeClient(t, iss)
	up := newAPI(t, verifyFor(&c))
	admin := freeAddr(t)
	store, key := filepath.Join(t.TempDir(), "tokens.db"), newStoreKey()
	cfg := signinConfig(admin, up.URL, authCodeEntry(iss, c, store, key))
	loginURL := "http://" + admin + "/oauth2/e2e/login"

	p := startProxy(t, cfg)
	// Before anyone signs in: the route, /readyz and /tokens all say where.
	r := get(t, p.base+"/api/orders")
	if r.status != 503 || r.errorCode() != "login_required" {
		t.Fatalf("before sign-in: %d %s", r.status, r.body)
	}
	if msg := r.proxyError(t)["message"]; !strings.Contains(msg, "sign in at "+loginURL) {
		t.Errorf("login_required message %q does not name %s", msg, loginURL)
	}
	if up.hits.Load() != 0 {
		t.Error("a request reached the upstream without a token")
	}
	rz := get(t, p.admin+"/readyz")
	want := "oauth2 e2e: login_required (sign in at " + loginURL + ")"
	if rz.status != 503 || !strings.Contains(rz.body, want) {
		t.Errorf("/readyz = %d %s, want 503 with %q", rz.status, rz.body, want)
	}
	if st := p.status(t); st.State != "login_required" || st.LoginURL != loginURL || st.RefreshToken {
		t.Errorf("/tokens before sign-in: %+v", st)
	}

	b := newBrowser(t)
	cb := b.signInAt(loginURL)
	signedIn(t, cb)
	if n := oidcGranted(c.id, "authorization_code"); n != 1 {
		t.Errorf("oidc-provider granted %d authorization codes, want 1", n)
	}
	st := p.waitStatus(t, "valid", isState("valid"))
	if !st.RefreshToken || st.Subject != signinUser {
		t.Errorf("/tokens after sign-in: %+v, want refresh_token_stored and subject %s", st, signinUser)
	}
	if rz := get(t, p.admin+"/readyz"); rz.status != 200 {
		t.Errorf("/readyz after sign-in: %d %s", rz.status, rz.body)
	}
	first := checkRoute(t, p, up, c)
	rec1, ok := readStore(t, store, key)
	if !ok || rec1.RefreshToken == "" || rec1.Subject != signinUser {
		t.Fatalf("the store holds no refresh token after the sign-in: %+v", rec1)
	}
	if !introspect(t, iss, c, rec1.RefreshToken.Reveal()) {
		t.Fatal("oidc-provider says the stored refresh token is not active")
	}

	// The callback's URL once more: its state is spent, so nothing is
	// exchanged (oidc-provider would revoke the grant for a code used twice).
	again := b.get(cb.url.String())
	if again.status != 400 || !strings.Contains(again.body, "used already") {
		t.Errorf("a replayed callback: %d\n%s", again.status, again.body)
	}
	if n := oidcGranted(c.id, "authorization_code"); n != 1 {
		t.Errorf("a replayed callback exchanged the code again (%d exchanges)", n)
	}

	// Renewal rotates the refresh token; the new one is stored and the old
	// one is spent.
	refreshes := oidcGranted(c.id, "refresh_token")
	rn := send(t, "POST", p.admin+"/oauth2/e2e/renew", nil)
	if rn.status != 200 {
		t.Fatalf("renew: %d %s", rn.status, rn.body)
	}
	noLeak(t, "renew answer", rn.body)
	if n := oidcGranted(c.id, "refresh_token") - refreshes; n != 1 {
		t.Fatalf("renew made %d refresh_token grants, want 1", n)
	}
	rec2, ok := readStore(t, store, key)
	if !ok || rec2.RefreshToken == rec1.RefreshToken || rec2.Generation <= rec1.Generation {
		t.Fatalf("the rotated refresh token was not stored (generation %d -> %d, same token: %v)",
			rec1.Generation, rec2.Generation, rec2.RefreshToken == rec1.RefreshToken)
	}
	if introspect(t, iss, c, rec1.RefreshToken.Reveal()) {
		t.Error("oidc-provider says the first refresh token is still active after rotation")
	}
	if !introspect(t, iss, c, rec2.RefreshToken.Reveal()) {
		t.Error("oidc-provider says the rotated refresh token is not active")
	}
	if second := checkRoute(t, p, up, c); second == first {
		t.Error("the upstream still gets the first access token after a renewal")
	}

	// A restart on the same store serves without a new sign-in, renewing
	// with the rotated refresh token (a spent one would be refused).
	p.stop()
	refreshes = oidcGranted(c.id, "refresh_token")
	p2 := startProxy(t, cfg)
	st = p2.waitStatus(t, "valid", isState("valid"))
	if !st.RefreshToken || st.Subject != signinUser {
		t.Errorf("/tokens after the restart: %+v", st)
	}
	checkRoute(t, p2, up, c)
	if n := oidcGranted(c.id, "refresh_token") - refreshes; n != 1 {
		t.Errorf("the restarted proxy made %d refresh_token grants, want 1", n)
	}
	if refused := oidcRefused(c.id); len(refused) > 0 {
		t.Errorf("oidc-provider refused token requests of the proxy: %q", refused)
	}
	rec3, _ := readStore(t, store, key)
	if rec3.RefreshToken == rec2.RefreshToken || !introspect(t, iss, c, rec3.RefreshToken.Reveal()) {
		t.Error("after the restart the store does not hold the newest, active refresh token")
	}
	if introspect(t, iss, c, rec2.RefreshToken.Reveal()) {
		t.Error("the refresh token the restart used is still active: it was not rotated")
	}
}

// TestSignInCallbackRejects sends callbacks that must exchange nothing: a
// wrong state, a state without its cookie, a state used already, and the
// provider's error=access_denied when the person cancels.
func TestSignInCallbackRejects(t *testing.T) {
	iss := needOIDC(t)
	c := authCodeClient(t, iss)
	up := newAPI(t, verifyFor(&c))
	admin := freeAddr(t)
	store, key := filepath.Join(t.TempDir(), "tokens.db"), newStoreKey()
	p := startProxy(t, signinConfig(admin, up.URL, authCodeEntry(iss, c, store, key)))
	loginURL := "http://" + admin + "/oauth2/e2e/login"
	callback := "http://" + admin + "/oauth2/e2e/callback"

	// begin starts a sign-in in b and returns its state, stopping at the
	// redirect to the provider.
	begin := func(b *browser) string {
		t.Helper()
		hc := *b.c
		hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, err := hc.Get(loginURL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusFound || err != nil || !strings.HasPrefix(loc.String(), iss+"/auth?") {
			t.Fatalf("login: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		q := loc.Query()
		if q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 || q.Get("redirect_uri") != callback ||
			q.Get("client_id") != c.id || q.Get("prompt") != "consent" || q.Get("resource") != apiResource {
			t.Errorf("authorization request: %v", q)
		}
		return q.Get("state")
	}
	cbURL := func(state string) string {
		return callback + "?" + url.Values{"state": {state}, "code": {"made-up-code"}}.Encode()
	}

	b := newBrowser(t)
	s1 := begin(b)
	b2 := newBrowser(t) // another browser: it has no cookie of s2's sign-in
	s2 := begin(b)
	tests := []struct {
		name string
		b    *browser
		url  string
		want string
	}{
		{"wrong state", b, cbURL(s1 + "x"), "missing, unknown, used already or expired"},
		{"no state", b, callback + "?code=made-up-code", "missing, unknown, used already or expired"},
		{"no cookie", b2, cbURL(s2), "does not belong to a sign-in started in this browser"},
		{"replayed state", b, cbURL(s2), "missing, unknown, used already or expired"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pg := tc.b.get(tc.url)
			if pg.status != 400 || !strings.Contains(pg.body, tc.want) {
				t.Errorf("callback: %d, want 400 with %q:\n%s", pg.status, tc.want, pg.body)
			}
		})
	}

	// The person cancels on the provider's login page: it sends the
	// browser back with error=access_denied.
	t.Run("access_denied", func(t *testing.T) {
		b := newBrowser(t)
		pg := b.get(loginURL)
		abort, _ := pg.url.Parse(pg.url.Path + "/abort")
		if !strings.HasPrefix(pg.url.Path, "/interaction/") {
			t.Fatalf("not on the provider's login page: %s", pg.url)
		}
		pg = b.get(abort.String())
		if pg.url.Path != "/oauth2/e2e/callback" || pg.url.Query().Get("error") != "access_denied" {
			t.Fatalf("cancelling did not come back with error=access_denied: %s", pg.url)
		}
		if pg.status != 400 || !strings.Contains(pg.body, "access_denied") || !strings.Contains(pg.body, "still needs a sign-in") {
			t.Errorf("callback with error=access_denied: %d\n%s", pg.status, pg.body)
		}
	})

	if n := oidcGranted(c.id, "authorization_code"); n != 0 {
		t.Errorf("oidc-provider exchanged %d codes, want none", n)
	}
	if st := p.status(t); st.State != "login_required" || st.RefreshToken {
		t.Errorf("/tokens after the refused callbacks: %+v", st)
	}
	if r := get(t, p.base+"/api/orders"); r.status != 503 || r.errorCode() != "login_required" {
		t.Errorf("the route after the refused callbacks: %d %s", r.status, r.body)
	}
	if _, ok := readStore(t, store, key); ok {
		t.Error("the store holds a record though nobody signed in")
	}
}

// TestDeviceCodeSignIn approves the device code the proxy shows through
// oidc-provider's device pages.
func TestDeviceCodeSignIn(t *testing.T) {
	iss := needOIDC(t)
	c := deviceClient(t, iss)
	up := newAPI(t, verifyFor(&c))
	store, key := filepath.Join(t.TempDir(), "tokens.db"), newStoreKey()
	p := startProxy(t, signinConfig(freeAddr(t), up.URL, deviceEntry(iss, c, store, key)))

	st := p.waitStatus(t, "device_pending", isState("device_pending"))
	d := st.Device
	if d == nil || d.UserCode == "" || d.VerificationURI != iss+"/device" || !strings.Contains(d.VerificationURIComplete, "user_code=") {
		t.Fatalf("device_pending without a usable code: %+v", d)
	}
	if lines := p.logLines("sign-in required: open the verification URL on any device and enter the code"); len(lines) != 1 || lines[0]["user_code"] != d.UserCode {
		t.Errorf("the log does not show the user code once: %v", lines)
	}
	if r := get(t, p.base+"/api/orders"); r.status != 503 || r.errorCode() != "login_required" || !strings.Contains(r.body, d.UserCode) {
		t.Errorf("route while the code is pending: %d %s", r.status, r.body)
	}

	newBrowser(t).approveDevice(d.VerificationURI, d.UserCode)
	st = p.waitStatus(t, "valid", isState("valid"))
	if !st.RefreshToken || st.Subject != signinUser || st.Device != nil {
		t.Errorf("/tokens after approval: %+v", st)
	}
	checkRoute(t, p, up, c)
	if n := oidcGranted(c.id, "urn:ietf:params:oauth:grant-type:device_code"); n != 1 {
		t.Errorf("oidc-provider granted %d device codes, want 1", n)
	}
	rec, ok := readStore(t, store, key)
	if !ok || rec.RefreshToken == "" || !introspect(t, iss, c, rec.RefreshToken.Reveal()) {
		t.Fatalf("the store holds no active refresh token after the device sign-in: %+v", rec)
	}
}

// TestDeviceLoginCommand signs in with `oauthproxy login` for a device code
// entry: it prints the user code, waits for the approval and stores the
// refresh token, which a proxy started afterwards uses.
func TestDeviceLoginCommand(t *testing.T) {
	iss := needOIDC(t)
	c := deviceClient(t, iss)
	up := newAPI(t, verifyFor(&c))
	store, key := filepath.Join(t.TempDir(), "tokens.db"), newStoreKey()
	cfg := signinConfig(freeAddr(t), up.URL, deviceEntry(iss, c, store, key))
	login := start(t, nil, "login", "e2e", "-config", writeConfig(t, cfg), "-timeout", "1m")

	codeRE := regexp.MustCompile(`enter the code\s+(\S+)\s`)
	uriRE := regexp.MustCompile(`open\s+(http\S+)\s`)
	var m, u []string
	deadline := time.Now().Add(15 * time.Second)
	for m == nil {
		out := login.out.String()
		m, u = codeRE.FindStringSubmatch(out), uriRE.FindStringSubmatch(out)
		if time.Now().After(deadline) {
			t.Fatalf("oauthproxy login printed no user code:\n%s", out)
		}
		select {
		case <-login.done:
			t.Fatalf("oauthproxy login exited: %v\n%s", login.err, login.out)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if u == nil || u[1] != iss+"/device" {
		t.Fatalf("oauthproxy login names no verification URI:\n%s", login.out)
	}
	newBrowser(t).approveDevice(u[1], m[1])
	if code := login.wait(20 * time.Second); code != 0 {
		t.Fatalf("oauthproxy login: exit %d\n%s", code, login.out)
	}
	out := login.out.String()
	if !strings.Contains(out, "signed in as "+signinUser) || !strings.Contains(out, "refresh token stored in "+store) {
		t.Errorf("oauthproxy login output:\n%s", out)
	}
	rec, ok := readStore(t, store, key)
	if !ok || !introspect(t, iss, c, rec.RefreshToken.Reveal()) {
		t.Fatalf("no active refresh token in the store after oauthproxy login")
	}

	p := startProxy(t, cfg)
	p.waitStatus(t, "valid", isState("valid"))
	checkRoute(t, p, up, c)
	if lines := p.logLines("sign-in required: open the verification URL on any device and enter the code"); len(lines) != 0 {
		t.Errorf("the proxy started a device code though oauthproxy login had stored a refresh token")
	}
}

// TestRevokeStoredRefreshToken revokes a signed-in entry's refresh token
// with `oauthproxy revoke`: oidc-provider no longer accepts it, the record
// is gone, and a proxy started afterwards needs a sign-in.
func TestRevokeStoredRefreshToken(t *testing.T) {
	iss := needOIDC(t)
	c := authCodeClient(t, iss)
	up := newAPI(t, verifyFor(&c))
	admin := freeAddr(t)
	store, key := filepath.Join(t.TempDir(), "tokens.db"), newStoreKey()
	cfg := signinConfig(admin, up.URL, authCodeEntry(iss, c, store, key))
	path := writeConfig(t, cfg)

	p := startProxy(t, cfg)
	signedIn(t, newBrowser(t).signInAt("http://"+admin+"/oauth2/e2e/login"))
	p.waitStatus(t, "valid", isState("valid"))
	p.stop()
	rec, ok := readStore(t, store, key)
	if !ok || !introspect(t, iss, c, rec.RefreshToken.Reveal()) {
		t.Fatal("no active refresh token stored after the sign-in")
	}

	out, code := run(t, nil, "revoke", "e2e", "-config", path)
	if code != 0 || !strings.Contains(out, "revoked the stored refresh token of e2e and deleted it from "+store) {
		t.Fatalf("oauthproxy revoke: exit %d\n%s", code, out)
	}
	if introspect(t, iss, c, rec.RefreshToken.Reveal()) {
		t.Error("oidc-provider says the revoked refresh token is still active")
	}
	if _, ok := readStore(t, store, key); ok {
		t.Error("the revoked refresh token's record is still in the store")
	}
	out, code = run(t, nil, "revoke", "e2e", "-config", path)
	if code != 1 || !strings.Contains(out, "nothing to revoke") {
		t.Errorf("a second oauthproxy revoke: exit %d, want 1 saying nothing to revoke\n%s", code, out)
	}

	p2 := startProxy(t, cfg)
	p2.waitStatus(t, "login_required", isState("login_required"))
	if r := get(t, p2.base+"/api/orders"); r.status != 503 || r.errorCode() != "login_required" {
		t.Errorf("route after the revocation: %d %s", r.status, r.body)
	}
}

// TestRevokeThroughAdmin revokes a client_credentials entry's access token
// through the running proxy's POST /oauth2/NAME/revoke. oidc-provider
// revokes only opaque tokens (a JWT cannot be recalled), so this entry
// asks for no resource, and the upstream checks tokens by introspection.
func TestRevokeThroughAdmin(t *testing.T) {
	iss := needOIDC(t)
	basic := signinClient{"basic-app", basicSecret}
	up := newAPI(t, func(tok string) error {
		if active, err := introspection(iss, basic, tok); err != nil || !active {
			return fmt.Errorf("inactive (%v)", err)
		}
		return nil
	})
	admin := freeAddr(t)
	cfg := signinConfig(admin, up.URL, fmt.Sprintf(`    token_url: %[1]s/token
    revoke_url: %[1]s/token/revocation
    client_id: basic-app
    client_secret: %[2]s`, iss, basicSecret))
	p := startProxy(t, cfg)

	if r := get(t, p.base+"/api/orders"); r.status != 200 {
		t.Fatalf("GET through the proxy: %d %s", r.status, r.body)
	}
	first := up.last(t).token
	rv := send(t, "POST", p.admin+"/oauth2/e2e/revoke", nil)
	if rv.status != 200 || !strings.Contains(rv.body, `"revoked_access_token": true`) {
		t.Fatalf("POST /oauth2/e2e/revoke: %d %s", rv.status, rv.body)
	}
	noLeak(t, "revoke answer", rv.body)
	if introspect(t, iss, basic, first) {
		t.Error("oidc-provider says the revoked access token is still active")
	}
	if r := get(t, p.base+"/api/orders"); r.status != 200 {
		t.Fatalf("GET after the revocation: %d %s", r.status, r.body)
	}
	if up.last(t).token == first {
		t.Error("the proxy still sends the revoked token")
	}

	// `oauthproxy revoke` for an entry without a store asks the running
	// proxy the same.
	second := up.last(t).token
	out, code := run(t, nil, "revoke", "e2e", "-config", writeConfig(t, cfg))
	if code != 0 || !strings.Contains(out, "the running proxy revoked the tokens of e2e") {
		t.Fatalf("oauthproxy revoke: exit %d\n%s", code, out)
	}
	if introspect(t, iss, basic, second) {
		t.Error("oauthproxy revoke left the access token active")
	}
	if rv := send(t, "POST", p.admin+"/oauth2/e2e/revoke", nil); rv.status != 409 || !strings.Contains(rv.body, "nothing_to_revoke") {
		t.Errorf("revoking with no token held: %d %s", rv.status, rv.body)
	}
}

// TestStoreBadInput starts the proxy, and runs login and revoke, on store
// files it must refuse: each exits 1 naming the file, and leaves it as it
// was, byte for byte.
func TestStoreBadInput(t *testing.T) {
	iss := needOIDC(t)
	c := authCodeClient(t, iss)
	keyA := newStoreKey()
	tests := []struct {
		name   string
		key    string // the key the proxy is given
		damage func([]byte) []byte
		want   string
	}{
		{"wrong store_key", newStoreKey(), nil, "the store_key does not decrypt"},
		{"truncated", keyA, func(b []byte) []byte { return b[:len(b)/2] }, "truncated"},
		{"newer format", keyA, func(b []byte) []byte { return []byte(strings.Replace(string(b), `"v":1`, `"v":2`, 1)) }, "is in format 2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := filepath.Join(t.TempDir(), "tokens.db")
			writeRecord(t, store, keyA)
			if tc.damage != nil {
				b, _ := os.ReadFile(store)
				os.WriteFile(store, tc.damage(b), 0o600)
			}
			before, _ := os.ReadFile(store)
			path := writeConfig(t, signinConfig(freeAddr(t), "http://127.0.0.1:9", authCodeEntry(iss, c, store, tc.key)))
			for _, args := range [][]string{{"run", "-config", path}, {"login", "e2e", "-config", path}, {"revoke", "e2e", "-config", path}} {
				out, code := run(t, nil, args...)
				if code != 1 || !strings.Contains(out, store) || !strings.Contains(out, tc.want) {
					t.Errorf("oauthproxy %s: exit %d, want 1 naming %s and %q:\n%s", args[0], code, store, tc.want, out)
				}
				if after, _ := os.ReadFile(store); string(after) != string(before) {
					t.Errorf("oauthproxy %s changed the store file", args[0])
				}
			}
		})
	}
}

// writeRecord writes a store holding a refresh token for e2e, as a sign-in
// would have.
func writeRecord(t *testing.T, path, key string) {
	t.Helper()
	k, _ := filestore.ParseKey(key)
	st, err := filestore.Open(path, k)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rt := randomString("stored-refresh-token-")
	addCanary(rt)
	if _, err := st.CompareAndSwap(context.Background(), "e2e", 0, tokencache.Record{RefreshToken: tokencache.Secret(rt), Subject: signinUser}); err != nil {
		t.Fatal(err)
	}
}

// TestDeviceCodeExpiresAndDenied lets a device code expire (this client's
// codes live 2 s), starts a new one from the login page, and denies that
// one on oidc-provider's confirmation page.
func TestDeviceCodeExpiresAndDenied(t *testing.T) {
	iss := needOIDC(t)
	meta := map[string]any{
		"application_type":           "native",
		"client_name":                "short-device-code",
		"redirect_uris":              []string{},
		"grant_types":                []string{"urn:ietf:params:oauth:grant-type:device_code", "refresh_token"},
		"response_types":             []string{},
		"token_endpoint_auth_method": "none",
	}
	c := registerClient(t, iss, meta)
	up := newAPI(t, verifyFor(&c))
	admin := freeAddr(t)
	store, key := filepath.Join(t.TempDir(), "tokens.db"), newStoreKey()
	p := startProxy(t, signinConfig(admin, up.URL, deviceEntry(iss, c, store, key)))

	first := p.waitStatus(t, "device_pending", isState("device_pending")).Device.UserCode
	p.waitStatus(t, "login_required after the code expired", isState("login_required"))
	p.waitLog(t, "the device code expired before anyone signed in; a new one follows")
	if r := get(t, p.base+"/api/orders"); r.status != 503 || r.errorCode() != "login_required" {
		t.Errorf("route after expiry: %d %s", r.status, r.body)
	}

	// Sign in on the admin listener: a new code at once, not after the backoff.
	if r := get(t, "http://"+admin+"/oauth2/e2e/login"); r.status != 200 {
		t.Fatalf("login for a device code entry: %d %s", r.status, r.body)
	}
	st := p.waitStatus(t, "a new device code", func(st tokenStatus) bool {
		return st.State == "device_pending" && st.Device.UserCode != first
	})

	// The person says no.
	b := newBrowser(t)
	pg := b.submit(b.get(st.Device.VerificationURI), map[string]string{"user_code": st.Device.UserCode})
	if pg = b.submit(pg, map[string]string{"abort": "yes"}); pg.status != 200 && pg.status != 400 {
		t.Fatalf("aborting: %d %s", pg.status, pg.body)
	}
	st = p.waitStatus(t, "login_required after the denial", isState("login_required"))
	if !strings.Contains(st.LastError, "access_denied") || st.RefreshToken {
		t.Errorf("/tokens after the denial: %+v", st)
	}
	r := get(t, p.base+"/api/orders")
	if r.status != 503 || r.errorCode() != "login_required" || !strings.Contains(r.body, "access_denied") {
		t.Errorf("route after the denial: %d %s", r.status, r.body)
	}
	if n := len(p.logLines("sign-in required: open the verification URL on any device and enter the code")); n != 2 {
		t.Errorf("%d device codes were started, want 2 (none after the denial)", n)
	}
	if n := oidcGranted(c.id, "urn:ietf:params:oauth:grant-type:device_code"); n != 0 {
		t.Errorf("oidc-provider granted %d device codes, want none", n)
	}
}

// TestRevokeRefused revokes an access token oidc-provider will not revoke
// (a JWT: RFC 7009 §2.2.1 unsupported_token_type). The refusal is an error
// with the server's code and the proxy keeps its token; -force drops it.
func TestRevokeRefused(t *testing.T) {
	iss := needOIDC(t)
	up := newAPI(t, func(tok string) error { _, err := verifyJWT(tok, "basic-app"); return err })
	path := writeConfig(t, signinConfig(freeAddr(t), up.URL, fmt.Sprintf(`    token_url: %[1]s/token
    revoke_url: %[1]s/token/revocation
    client_id: basic-app
    client_secret: %[2]s
    resource: %[3]s`, iss, basicSecret, apiResource)))
	p := start(t, nil, "run", "-config", path)
	p.waitServing()
	if r := get(t, p.base+"/api/orders"); r.status != 200 {
		t.Fatalf("GET through the proxy: %d %s", r.status, r.body)
	}
	tok := up.last(t).token

	out, code := run(t, nil, "revoke", "e2e", "-config", path)
	if code != 1 || !strings.Contains(out, "answered 400 unsupported_token_type") {
		t.Errorf("oauthproxy revoke of a JWT: exit %d, want 1 naming unsupported_token_type:\n%s", code, out)
	}
	if r := get(t, p.base+"/api/orders"); r.status != 200 || up.last(t).token != tok {
		t.Errorf("after a refused revocation the proxy does not keep its token: %d %s", r.status, r.body)
	}
	out, code = run(t, nil, "revoke", "e2e", "-config", path, "-force")
	if code != 0 || !strings.Contains(out, "access token: true") {
		t.Errorf("oauthproxy revoke -force: exit %d:\n%s", code, out)
	}
	if r := get(t, p.base+"/api/orders"); r.status != 200 || up.last(t).token == tok {
		t.Errorf("after revoke -force the proxy still sends the old token: %d %s", r.status, r.body)
	}
}
