package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// chromium returns the path of Debian's chromium. Without it the browser
// tests skip, unless OAUTHPROXY_REQUIRE_SERVERS is set (CI installs it).
func chromium(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if _, serr := os.Stat("/usr/bin/chromium"); serr == nil {
			return "/usr/bin/chromium"
		}
		if os.Getenv("OAUTHPROXY_REQUIRE_SERVERS") != "" {
			t.Fatalf("chromium is not installed and OAUTHPROXY_REQUIRE_SERVERS is set: %v", err)
		}
		t.Skip("chromium is not installed (apt-get install chromium); skipping the admin page's browser test")
	}
	return path
}

// chromeTab is a headless Chromium tab with everything it saw recorded.
type chromeTab struct {
	ctx      context.Context
	mu       sync.Mutex
	console  []chromedp.ConsoleMessage
	requests []string
	dialogs  []string
}

func newChromeTab(t *testing.T) *chromeTab {
	t.Helper()
	exe := chromium(t)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	b := &chromeTab{ctx: ctx}
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting chromium: %v", err)
	}
	// Subscribe before the first navigation, so that nothing is missed.
	console := chromedp.Console(ctx)
	requests := chromedp.Events(ctx, network.RequestWillBeSent)
	dialogs := chromedp.Events(ctx, cdppage.JavascriptDialogOpening)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.console = append(b.console, m)
			b.mu.Unlock()
		}
	}()
	go func() {
		for ev, err := range requests {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.requests = append(b.requests, ev.Request.URL)
			b.mu.Unlock()
		}
	}()
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.dialogs = append(b.dialogs, string(ev.Type)+": "+ev.Message)
			b.mu.Unlock()
			// Accept, as a person confirming Revoke would.
			chromedp.Call(ctx, cdppage.HandleJavaScriptDialog, cdppage.HandleJavaScriptDialogParams{Accept: true})
		}
	}()
	// Record CSP violations the page itself sees (the console reports
	// them too; this does not depend on how).
	_, err := chromedp.Call(ctx, cdppage.AddScriptToEvaluateOnNewDocument, cdppage.AddScriptToEvaluateOnNewDocumentParams{
		Source: `window.__csp = []; document.addEventListener("securitypolicyviolation", e => window.__csp.push(e.violatedDirective + " " + e.blockedURI));`,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (b *chromeTab) do(t *testing.T, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	for i, step := range steps {
		if err := chromedp.Do(ctx, step); err != nil {
			t.Fatalf("%s, step %d: %v\nat %s:\n%s", what, i+1, err, b.eval(t, `location.href`), b.eval(t, `document.body.innerText`))
		}
	}
}

func (b *chromeTab) eval(t *testing.T, js string) string {
	t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](js))
	if err != nil {
		t.Fatalf("evaluating %s: %v", js, err)
	}
	return s
}

// waitFor polls a JavaScript predicate in the page until it holds.
func (b *chromeTab) waitFor(t *testing.T, what, js string) {
	t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("waiting until %s: %v\npage text:\n%s", what, err, b.eval(t, `document.body.innerText`))
	}
}

// TestAdminPageInBrowser drives the admin page of the built binary in
// headless Chromium: it loads with no console error and no CSP violation,
// shows the entry valid, Get token makes exactly one token request and
// changes the shown expiry, config-derived markup stays text, Revoke asks
// first and reaches the revocation endpoint, and the page talks to no
// other origin.
func TestAdminPageInBrowser(t *testing.T) {
	b := newChromeTab(t)
	const markup = `<img src=x onerror=alert(1)>`
	idp := newTokenServer(t, nil)
	idp.reply = func(n int64, req tokenRequest) (int, map[string]string, string) {
		ttl := 3600
		if n > 1 {
			ttl = 7200 // Get token's token: a different expiry to see
		}
		return 200, nil, idp.okBody(idp.issue(), ttl, fmt.Sprintf(`,"scope":%q`, "orders.read "+markup))
	}
	var revocations atomic.Int64
	revoker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { revocations.Add(1) }))
	t.Cleanup(revoker.Close)
	up := newAPI(t, idp.verify)
	secret := randomString("admin-page-cs-")
	addCanary(secret)
	p := startProxy(t, config(up.URL, fmt.Sprintf(`    token_url: %s/token
    revoke_url: %s/revoke
    client_id: page-app
    client_secret: %s`, idp.URL, revoker.URL, secret)))
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(get(t, p.admin+"/tokens").body, `"state": "valid"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the entry did not turn valid: %s", get(t, p.admin+"/tokens").body)
		}
		time.Sleep(20 * time.Millisecond)
	}

	b.do(t, "loading the page", chromedp.Navigate(p.admin+"/"))
	b.waitFor(t, "the entry shows valid", `document.querySelector("article.entry .state")?.textContent === "valid"`)
	if got := b.eval(t, `document.querySelector("article.entry h3").textContent`); got != "e2e" {
		t.Errorf("entry name = %q, want e2e", got)
	}
	if got := b.eval(t, `document.querySelector("#routes tbody td").textContent`); got != "/api/" {
		t.Errorf("first route = %q, want /api/", got)
	}
	// A client_credentials entry has no sign-in: its Sign in controls are hidden.
	if got := b.eval(t, `[...document.querySelectorAll("[data-action=login], [data-action=device-login]")].map(e => getComputedStyle(e).display).join()`); got != "none,none" {
		t.Errorf("Sign in controls of a client_credentials entry display as %q, want none,none", got)
	}
	expiry := b.eval(t, `document.querySelector("article.entry dd time").getAttribute("datetime")`)

	// Config- and server-derived text with markup renders as text.
	if got := b.eval(t, `String(document.querySelectorAll("img").length)`); got != "0" {
		t.Errorf("the page has %s img elements: markup from the token response became HTML", got)
	}
	if got := b.eval(t, `document.body.textContent`); !strings.Contains(got, markup) {
		t.Errorf("the scope %q is not shown as text", markup)
	}

	before := idp.hits.Load()
	b.do(t, "clicking Get token", chromedp.Click(chromedp.CSS(`button[data-action="renew"]`)))
	b.waitFor(t, "Get token shows its outcome", `document.querySelector("article.entry .outcome")?.textContent.includes("New token")`)
	b.waitFor(t, "the shown expiry changes", fmt.Sprintf(`document.querySelector("article.entry dd time")?.getAttribute("datetime") !== %q`, expiry))
	if n := idp.hits.Load() - before; n != 1 {
		t.Errorf("Get token made %d token requests, want 1", n)
	}
	if got := b.eval(t, `document.querySelector("article.entry .outcome").textContent`); !strings.Contains(got, "The token itself is never shown") {
		t.Errorf("Get token outcome = %q", got)
	}

	if shot := os.Getenv("OAUTHPROXY_ADMIN_SCREENSHOT"); shot != "" { // for docs/admin.md
		png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
		if err == nil {
			err = os.WriteFile(shot, png, 0o644)
		}
		if err != nil {
			t.Errorf("screenshot: %v", err)
		}
	}

	b.do(t, "clicking Revoke", chromedp.Click(chromedp.CSS(`button[data-action="revoke"]`)))
	b.waitFor(t, "Revoke shows its outcome", `document.querySelector("article.entry .outcome")?.textContent.startsWith("Revoked")`)
	if n := revocations.Load(); n != 1 {
		t.Errorf("revocation requests = %d, want 1", n)
	}

	html := b.eval(t, `document.documentElement.outerHTML`)
	noLeak(t, "the admin page's DOM", html)
	if v := b.eval(t, `JSON.stringify(window.__csp)`); v != "[]" {
		t.Errorf("CSP violations: %s", v)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.console {
		if m.Type == chromedp.ConsoleError || m.IsException() || m.Source == "security" {
			t.Errorf("console: %s", m)
		}
	}
	if len(b.dialogs) != 1 || !strings.HasPrefix(b.dialogs[0], "confirm: Revoke the tokens of oauth2 entry \"e2e\"") {
		t.Errorf("dialogs = %q, want the one confirmation of Revoke", b.dialogs)
	}
	if len(b.requests) == 0 {
		t.Error("no request was recorded")
	}
	for _, u := range b.requests {
		if !strings.HasPrefix(u, p.admin+"/") {
			t.Errorf("the page requested %s, outside the admin origin %s", u, p.admin)
		}
	}
}

// TestAdminBeyondLoopback runs the binary with admin_listen on every
// interface: the probes and /metrics answer anyone, the page and /tokens
// need admin_auth (403 without it configured, 401 without credentials),
// and the start warns.
func TestAdminBeyondLoopback(t *testing.T) {
	idp := newTokenServer(t, nil)
	up := newAPI(t, idp.verify)
	password := randomString("admin-password-")
	addCanary(password)
	entry := fmt.Sprintf("    token_url: %s/token\n    client_id: app\n    client_secret: s3cret-value", idp.URL)
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("ops:"+password))
	tests := []struct {
		name, top string
		hdr       []string
		want      int
		warns     bool
	}{
		{"without admin_auth", "", nil, 403, true},
		{"with admin_auth, no credentials", "admin_auth: {username: ops, password: \"${ADMIN_PASSWORD}\"}", nil, 401, false},
		{"with admin_auth and its credentials", "admin_auth: {username: ops, password: \"${ADMIN_PASSWORD}\"}", []string{"Authorization", basic}, 200, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := strings.Replace(config(up.URL, entry), "admin_listen: 127.0.0.1:0", "admin_listen: 0.0.0.0:0\n"+tc.top, 1)
			p := startProxy(t, cfg, "ADMIN_PASSWORD="+password)
			// The log names [::] or 0.0.0.0; ask over loopback so that the
			// Host check passes and admin_auth is what decides.
			admin := "http://127.0.0.1:" + p.admin[strings.LastIndex(p.admin, ":")+1:]
			for _, path := range []string{"/healthz", "/metrics"} {
				if r := get(t, admin+path); r.status != 200 {
					t.Errorf("GET %s = %d, want 200", path, r.status)
				}
			}
			for _, path := range []string{"/", "/tokens", "/routes"} {
				r := get(t, admin+path, tc.hdr...)
				if r.status != tc.want {
					t.Errorf("GET %s = %d %s, want %d", path, r.status, r.body, tc.want)
				}
				if tc.want == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic ") {
					t.Errorf("GET %s: 401 without a Basic challenge", path)
				}
			}
			r := send(t, "POST", admin+"/oauth2/e2e/renew", nil, tc.hdr...)
			if r.status != tc.want {
				t.Errorf("POST renew = %d, want %d", r.status, tc.want)
			}
			warned := strings.Contains(p.out.String(), "admin_listen: \\\"0.0.0.0:0\\\" is reachable beyond this machine")
			if warned != tc.warns {
				t.Errorf("start-up warning about admin_auth: %v, want %v\n%s", warned, tc.warns, p.out)
			}
		})
	}
}

// TestAdminPageDeviceSignIn: the device code panel shows the code
// oidc-provider issued, with a link to where to enter it; Sign in on the
// page restarts it; once a person approves the code on another device,
// the entry turns valid with their name, without a reload.
func TestAdminPageDeviceSignIn(t *testing.T) {
	iss := needOIDC(t)
	b := newChromeTab(t)
	c := deviceClient(t, iss)
	up := newAPI(t, verifyFor(&c))
	store, key := filepath.Join(t.TempDir(), "tokens.db"), newStoreKey()
	p := startProxy(t, signinConfig(freeAddr(t), up.URL, deviceEntry(iss, c, store, key)))
	p.waitStatus(t, "device_pending", isState("device_pending"))

	b.do(t, "loading the page", chromedp.Navigate(p.admin+"/"))
	b.waitFor(t, "the entry shows device pending", `document.querySelector("article.entry .state")?.textContent === "device pending"`)
	b.do(t, "clicking Sign in", chromedp.Click(chromedp.CSS(`button[data-action="device-login"]`)))
	b.waitFor(t, "Sign in shows its outcome", `document.querySelector("article.entry .outcome")?.textContent.includes("device code")`)
	st := p.waitStatus(t, "device_pending", isState("device_pending"))
	b.waitFor(t, "the panel shows the provider's code", fmt.Sprintf(`document.querySelector(".device .code")?.textContent === %q`, st.Device.UserCode))
	if got := b.eval(t, `document.querySelector(".device a").href`); got != st.Device.VerificationURI {
		t.Errorf("the panel links to %q, want the provider's %q", got, st.Device.VerificationURI)
	}
	if got := b.eval(t, `document.querySelector(".device").textContent`); !strings.Contains(got, "expires in") {
		t.Errorf("the panel has no countdown: %q", got)
	}

	newBrowser(t).approveDevice(st.Device.VerificationURI, st.Device.UserCode)
	b.waitFor(t, "the entry turns valid", `document.querySelector("article.entry .state")?.textContent === "valid"`)
	b.waitFor(t, "it names who signed in", fmt.Sprintf(`document.querySelector("article.entry").textContent.includes(%q)`, signinUser))
	noLeak(t, "the admin page's DOM", b.eval(t, `document.documentElement.outerHTML`))
}

// TestAdminPageSignIn: Sign in on the page leads through oidc-provider's
// real login and consent pages, in the same browser, back to the proxy,
// and the page then shows the entry valid.
func TestAdminPageSignIn(t *testing.T) {
	iss := needOIDC(t)
	b := newChromeTab(t)
	c := authCodeClient(t, iss)
	up := newAPI(t, verifyFor(&c))
	store, key := filepath.Join(t.TempDir(), "tokens.db"), newStoreKey()
	p := startProxy(t, signinConfig(freeAddr(t), up.URL, authCodeEntry(iss, c, store, key)))

	b.do(t, "loading the page", chromedp.Navigate(p.admin+"/"))
	b.waitFor(t, "the entry shows login required", `document.querySelector("article.entry .state")?.textContent === "login required"`)
	b.do(t, "signing in at the provider",
		chromedp.Click(chromedp.CSS(`a[data-action="login"]`)),
		chromedp.WaitVisible(chromedp.CSS(`input[name="login"]`)),
		chromedp.SendKeys(chromedp.CSS(`input[name="login"]`), signinUser),
		chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), "any"),
		chromedp.Click(chromedp.CSS(`button[type="submit"]`)),
		chromedp.WaitReady(chromedp.CSS(`input[value="consent"]`)),
		chromedp.Click(chromedp.CSS(`form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`body.note`)),
	)
	if got := b.eval(t, `document.body.textContent`); !strings.Contains(got, "Signed in as "+signinUser) {
		t.Fatalf("the callback page says: %s", got)
	}
	b.do(t, "going back to the admin page", chromedp.Click(chromedp.CSS(`a[href="/"]`)), chromedp.WaitVisible(chromedp.CSS(`#entries`)))
	b.waitFor(t, "the entry turns valid", `document.querySelector("article.entry .state")?.textContent === "valid"`)
	if st := p.status(t); st.State != "valid" || st.Subject != signinUser {
		t.Errorf("/tokens after the sign-in: %+v", st)
	}
	noLeak(t, "the admin page's DOM", b.eval(t, `document.documentElement.outerHTML`))
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.console {
		if strings.HasPrefix(m.URL, p.admin) && (m.Type == chromedp.ConsoleError || m.IsException()) {
			t.Errorf("console on the admin origin: %s", m)
		}
	}
}
