package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
	"github.com/oauthproxy/oauthproxy/upstreams"
)

// entryCommand loads the config of a command that takes one oauth2 entry
// name and builds its token source.
func entryCommand(cmd, extra string, args []string, stderr io.Writer, more func(*flags)) (*upstreams.Config, string, *flags, int) {
	f := newFlags(cmd, "NAME -config FILE"+extra, stderr, true)
	if more != nil {
		more(f)
	}
	pos, code := f.parse(args)
	if code >= 0 {
		return nil, "", nil, code
	}
	if len(pos) != 1 {
		f.Usage()
		return nil, "", nil, 2
	}
	name := pos[0]
	cfg, ok := loadConfig(*f.config, stderr)
	if !ok {
		return nil, "", nil, 1
	}
	if _, ok := cfg.OAuth2[name]; !ok {
		names := slices.Sorted(maps.Keys(cfg.OAuth2))
		fmt.Fprintf(stderr, "oauthproxy %s: no oauth2 entry %q in %s (defined: %s)\n", cmd, name, cfg.File, strings.Join(names, ", "))
		return nil, "", nil, 1
	}
	return cfg, name, f, -1
}

// cmdLogin signs a person in for an authorization_code or device_code
// entry from a terminal and stores the refresh token in the entry's store,
// where the running proxy finds it.
func cmdLogin(args []string, stdout, stderr io.Writer) int {
	var timeout *time.Duration
	cfg, name, _, code := entryCommand("login", " [-timeout 10m]", args, stderr, func(f *flags) {
		timeout = f.Duration("timeout", 10*time.Minute, "how long to wait for the sign-in")
	})
	if code >= 0 {
		return code
	}
	o := cfg.OAuth2[name]
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "oauthproxy login %s: %s\n", name, fmt.Sprintf(format, a...))
		return 1
	}
	if o.GrantType != tokencache.GrantAuthorizationCode && o.GrantType != tokencache.GrantDeviceCode {
		return fail("grant_type %s needs no sign-in", o.GrantType)
	}
	if o.Store == "" {
		return fail("the entry has no store, so a sign-in here would end with this command; sign in on the running proxy at %s, or set store and store_key", cfg.LoginURL(name))
	}
	scrub := tokencache.NewScrubber()
	log := newLogger(stderr, upstreams.Log{Level: "warn", Format: "text"}, scrub)
	src, err := upstreams.NewSource(cfg, name, upstreams.Options{Logger: log, Scrub: scrub})
	if err != nil {
		return fail("%s", scrub.Scrub(err.Error()))
	}
	defer src.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var in tokencache.SignedIn
	switch g := src.Grant().(type) {
	case tokencache.AuthorizationCode:
		in, err = loginAuthCode(ctx, g, src, cfg.LoginURL(name), o.AuthMethod == "POST", stdout)
	case *tokencache.DeviceCode:
		in, err = loginDevice(ctx, src, stdout)
	}
	if err != nil {
		return fail("%s", scrub.Scrub(err.Error()))
	}
	who := in.Subject
	if who == "" {
		who = "(the server named nobody)"
	}
	fmt.Fprintf(stdout, "signed in as %s; token valid until %s\n", who, in.Expiry.UTC().Format(time.RFC3339))
	if !in.RefreshToken {
		fmt.Fprintln(stdout, "warning: no refresh token came back (ask for offline_access): the proxy will need a new sign-in when the token expires")
		return 1
	}
	fmt.Fprintf(stdout, "refresh token stored in %s\n", o.Store)
	return 0
}

// loginAuthCode serves a one-shot callback on the loopback redirect_url
// and waits for the browser to come back to it.
func loginAuthCode(ctx context.Context, g tokencache.AuthorizationCode, src *tokencache.Source, proxyLogin string, post bool, stdout io.Writer) (tokencache.SignedIn, error) {
	cb, err := url.Parse(g.RedirectURL)
	if err != nil || cb.Scheme != "http" || !upstreams.IsLoopbackListen(cb.Host) {
		return tokencache.SignedIn{}, fmt.Errorf("redirect_url %s is not a loopback http URL this command can serve: sign in on the running proxy at %s", tokencache.SafeURL(g.RedirectURL), proxyLogin)
	}
	ln, err := net.Listen("tcp", cb.Host)
	if errors.Is(err, syscall.EADDRINUSE) {
		return tokencache.SignedIn{}, fmt.Errorf("%s is in use, likely by the running proxy's admin listener: sign in there at %s", cb.Host, proxyLogin)
	}
	if err != nil {
		return tokencache.SignedIn{}, fmt.Errorf("serving the callback: %w", err)
	}
	defer ln.Close()
	a, err := g.Begin()
	if err != nil {
		return tokencache.SignedIn{}, err
	}
	start := "http://" + cb.Host + "/start"
	type result struct {
		in  tokencache.SignedIn
		err error
	}
	done := make(chan result, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /start", func(w http.ResponseWriter, r *http.Request) {
		if !post {
			http.Redirect(w, r, a.URL, http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><form method="post" action="%s">`, htmlEscape(g.AuthURL))
		for k, vs := range a.Query {
			for _, v := range vs {
				fmt.Fprintf(w, `<input type="hidden" name="%s" value="%s">`, htmlEscape(k), htmlEscape(v))
			}
		}
		fmt.Fprint(w, `<button type="submit">Continue to sign in</button></form>`)
	})
	mux.HandleFunc("GET "+cb.EscapedPath(), func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch {
		case q.Get("error") != "":
			http.Error(w, "sign-in refused: "+sanitizeLine(q.Get("error")), http.StatusBadRequest)
			done <- result{err: fmt.Errorf("the authorization server answered %s", sanitizeLine(q.Get("error")))}
			return
		case subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(a.State)) != 1:
			http.Error(w, "wrong state: this callback is not from this sign-in", http.StatusBadRequest)
			return
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		in, err := src.SignIn(sctx, g.CodeParams(q.Get("code"), a.Verifier))
		if err != nil {
			http.Error(w, "sign-in failed; see the terminal", http.StatusBadGateway)
		} else {
			fmt.Fprintln(w, "Signed in. You may close this window.")
		}
		select {
		case done <- result{in, err}:
		default:
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	fmt.Fprintf(stdout, "Open this URL in a browser on this machine and sign in:\n\n  %s\n\n(it forwards to the authorization server; waiting for the callback on %s)\n", start, cb.Host)
	select {
	case r := <-done:
		return r.in, r.err
	case <-ctx.Done():
		return tokencache.SignedIn{}, errors.New("nobody signed in before -timeout")
	}
}

// loginDevice starts a device code and waits until a person approves it.
func loginDevice(ctx context.Context, src *tokencache.Source, stdout io.Writer) (tokencache.SignedIn, error) {
	_, err := src.Fetch(ctx)
	var lr *tokencache.LoginRequiredError
	switch {
	case err == nil:
		st := src.Status()
		return tokencache.SignedIn{Subject: st.Subject, Expiry: deref(st.ExpiresAt), RefreshToken: st.RefreshToken}, nil
	case !errors.As(err, &lr) || lr.Device == nil:
		return tokencache.SignedIn{}, err
	}
	d := lr.Device
	fmt.Fprintf(stdout, "On any device, open\n\n  %s\n\nand enter the code  %s  (valid until %s).\n", d.VerificationURI, d.UserCode, d.ExpiresAt.Local().Format(time.Kitchen))
	if d.VerificationURIComplete != "" {
		fmt.Fprintf(stdout, "Or open %s\n", d.VerificationURIComplete)
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return tokencache.SignedIn{}, errors.New("nobody approved the code before -timeout")
		case <-tick.C:
		}
		st := src.Status()
		switch st.State {
		case tokencache.StateValid:
			return tokencache.SignedIn{Subject: st.Subject, Expiry: deref(st.ExpiresAt), RefreshToken: st.RefreshToken}, nil
		case tokencache.StateDevicePending:
		default:
			if st.LastError != "" && time.Now().After(d.ExpiresAt) || strings.Contains(st.LastError, "access_denied") {
				return tokencache.SignedIn{}, errors.New(st.LastError)
			}
		}
	}
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// cmdRevoke revokes an entry's tokens: from its store when it has one,
// else through the running proxy's admin listener.
func cmdRevoke(args []string, stdout, stderr io.Writer) int {
	var force *bool
	cfg, name, _, code := entryCommand("revoke", " [-force]", args, stderr, func(f *flags) {
		force = f.Bool("force", false, "delete the stored tokens even if the server refuses the revocation")
	})
	if code >= 0 {
		return code
	}
	o := cfg.OAuth2[name]
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "oauthproxy revoke %s: %s\n", name, fmt.Sprintf(format, a...))
		return 1
	}
	if o.RevokeURL.IsZero() {
		return fail("the entry has no revoke_url")
	}
	scrub := tokencache.NewScrubber()
	ctx, cancel := context.WithTimeout(context.Background(), o.Timeout+10*time.Second)
	defer cancel()
	if o.Store == "" {
		return revokeViaAdmin(ctx, cfg, name, *force, stdout, stderr)
	}
	src, err := upstreams.NewSource(cfg, name, upstreams.Options{Logger: slog.New(slog.DiscardHandler), Scrub: scrub})
	if err != nil {
		return fail("%s", scrub.Scrub(err.Error()))
	}
	defer src.Close()
	done, err := src.Revoke(ctx, *force)
	if err != nil {
		return fail("%s", scrub.Scrub(err.Error()))
	}
	fmt.Fprintf(stdout, "revoked the stored refresh token of %s and deleted it from %s\n", name, o.Store)
	_ = done
	return 0
}

// revokeViaAdmin asks the running proxy to revoke the tokens it holds.
func revokeViaAdmin(ctx context.Context, cfg *upstreams.Config, name string, force bool, stdout, stderr io.Writer) int {
	client, base := adminClient(cfg.AdminListen)
	u := base + "/oauth2/" + url.PathEscape(name) + "/revoke"
	if force {
		u += "?force=true"
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if a := cfg.AdminAuth; a != nil {
		req.SetBasicAuth(a.Username, a.Password.Reveal())
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "oauthproxy revoke %s: the entry has no store, and the running proxy did not answer on %s: nothing to revoke\n", name, cfg.AdminListen)
		return 1
	}
	defer resp.Body.Close()
	var body struct {
		Error   string `json:"error"`
		Message string `json:"message"`
		Refresh bool   `json:"revoked_refresh_token"`
		Access  bool   `json:"revoked_access_token"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		msg := body.Message
		if msg == "" {
			msg = resp.Status
		}
		fmt.Fprintf(stderr, "oauthproxy revoke %s: the running proxy answered: %s\n", name, sanitizeLine(msg))
		return 1
	}
	fmt.Fprintf(stdout, "the running proxy revoked the tokens of %s (refresh token: %v, access token: %v)\n", name, body.Refresh, body.Access)
	return 0
}

// adminClient reaches the admin listener at addr (host:port or unix:/path).
func adminClient(addr string) (*http.Client, string) {
	tr := &http.Transport{}
	base := "http://" + addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
		base = "http://admin"
	} else if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			base = "http://" + net.JoinHostPort("127.0.0.1", port)
		}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, base
}

func sanitizeLine(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 200; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		}
	}
	return b.String()
}

var htmlEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;")

func htmlEscape(s string) string { return htmlEscaper.Replace(s) }
