package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// A sign-in waits at most this long between the login redirect and the
// callback, and at most this many wait at once (a flood of logins cannot
// grow memory).
const (
	loginTTL     = 10 * time.Minute
	maxPending   = 64
	signInTimout = 30 * time.Second
)

// pendingLogin is one sign-in between its redirect and its callback.
type pendingLogin struct {
	name     string
	verifier tokencache.Secret
	cookie   [32]byte // SHA-256 of the cookie value the browser holds
	expires  time.Time
}

// logins holds the sign-ins under way, by state. A state is used once.
type logins struct {
	mu sync.Mutex
	m  map[string]pendingLogin
}

func (l *logins) add(state string, p pendingLogin) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	for s, p := range l.m {
		if now.After(p.expires) {
			delete(l.m, s)
		}
	}
	if len(l.m) >= maxPending {
		return false
	}
	if l.m == nil {
		l.m = map[string]pendingLogin{}
	}
	l.m[state] = p
	return true
}

// take removes and returns the sign-in of state, if it is still valid.
func (l *logins) take(state string) (pendingLogin, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p, ok := l.m[state]
	delete(l.m, state)
	if !ok || time.Now().After(p.expires) {
		return pendingLogin{}, false
	}
	return p, true
}

func cookieName(name string) string { return "oauthproxy_login_" + name }

// login starts an authorization code sign-in: a redirect (or a form, with
// auth_method POST) to the authorization server, with a single-use state
// bound to a cookie of this browser. A device code entry starts a new
// code instead and shows it.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	src, name, ok := h.source(w, r)
	if !ok {
		return
	}
	switch g := src.Grant().(type) {
	case tokencache.AuthorizationCode:
		// The cookie must come back to the host the callback is on.
		if cb, err := url.Parse(g.RedirectURL); err == nil && cb.Host != r.Host && h.isAdminHost(cb.Host) {
			http.Redirect(w, r, (&url.URL{Scheme: cb.Scheme, Host: cb.Host, Path: r.URL.Path}).String(), http.StatusFound)
			return
		}
		a, err := g.Begin()
		if err != nil {
			page(w, http.StatusInternalServerError, "Sign-in failed", "oauth2 "+name+": "+err.Error())
			return
		}
		cookie, err := randomToken()
		if err != nil {
			page(w, http.StatusInternalServerError, "Sign-in failed", err.Error())
			return
		}
		if !h.logins.add(a.State, pendingLogin{name: name, verifier: a.Verifier, cookie: sha256.Sum256([]byte(cookie)), expires: time.Now().Add(loginTTL)}) {
			page(w, http.StatusTooManyRequests, "Too many sign-ins", "Too many sign-ins are waiting for their callback; try again in a few minutes.")
			return
		}
		http.SetCookie(w, &http.Cookie{Name: cookieName(name), Value: cookie, Path: "/oauth2/" + name + "/",
			MaxAge: int(loginTTL / time.Second), HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil})
		w.Header().Set("Cache-Control", "no-store")
		if o := h.opts.Runtime().Config.OAuth2[name]; o != nil && o.AuthMethod == "POST" {
			postForm(w, g.AuthURL, a.Query)
			return
		}
		http.Redirect(w, r, a.URL, http.StatusFound)
	case *tokencache.DeviceCode:
		// A new code is a change: from a GET only on a person's own
		// navigation (a typed URL, a link of this origin), never on
		// another site's link or image.
		if s := r.Header.Get("Sec-Fetch-Site"); r.Method == http.MethodGet && s != "" && s != "same-origin" && s != "none" {
			page(w, http.StatusForbidden, "Not started", "A device sign-in starts from the admin page, a typed URL or oauthproxy login, not from another site.")
			return
		}
		g.Restart()
		if wantsJSON(r) { // the admin page's Sign in
			writeJSON(w, http.StatusAccepted, map[string]any{"oauth2": name, "device_code": "started"})
			return
		}
		page(w, http.StatusOK, "Device sign-in started", "A new device code is on its way: /tokens shows its user code and where to enter it, and so does the log.")
	default:
		page(w, http.StatusBadRequest, "No sign-in", "oauth2 "+name+" uses grant_type "+src.Grant().Type()+": nobody signs in.")
	}
}

// callback finishes an authorization code sign-in.
func (h *Handler) callback(w http.ResponseWriter, r *http.Request) {
	src, name, ok := h.source(w, r)
	if !ok {
		return
	}
	g, ok := src.Grant().(tokencache.AuthorizationCode)
	if !ok {
		page(w, http.StatusBadRequest, "No sign-in", "oauth2 "+name+" is not an authorization_code entry.")
		return
	}
	q := r.URL.Query()
	state := q.Get("state")
	var p pendingLogin
	found := false
	if state != "" {
		p, found = h.logins.take(state) // single use, whatever follows
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName(name), Path: "/oauth2/" + name + "/", MaxAge: -1, HttpOnly: true})
	if e := q.Get("error"); e != "" {
		msg := "The authorization server answered " + clean(e)
		if d := q.Get("error_description"); d != "" {
			msg += ": " + clean(d)
		}
		page(w, http.StatusBadRequest, "Sign-in refused", msg+". oauth2 "+name+" still needs a sign-in.")
		return
	}
	c, err := r.Cookie(cookieName(name))
	switch {
	case state == "" || !found || p.name != name:
		page(w, http.StatusBadRequest, "Sign-in failed", "The state of this callback is missing, unknown, used already or expired: start again at /oauth2/"+name+"/login.")
		return
	case err != nil || subtle.ConstantTimeCompare(hash(c.Value), p.cookie[:]) != 1:
		page(w, http.StatusBadRequest, "Sign-in failed", "This callback does not belong to a sign-in started in this browser: start again at /oauth2/"+name+"/login.")
		return
	case q.Get("code") == "":
		page(w, http.StatusBadRequest, "Sign-in failed", "The callback carries no code.")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), signInTimout)
	defer cancel()
	in, err := src.SignIn(ctx, g.CodeParams(q.Get("code"), p.verifier))
	if err != nil {
		page(w, http.StatusBadGateway, "Sign-in failed", "Exchanging the code failed: "+h.scrub(err.Error()))
		return
	}
	who := in.Subject
	if who == "" {
		who = "someone (the server named nobody)"
	}
	msg := "Signed in as " + who + ". The token is valid until " + in.Expiry.UTC().Format(time.RFC1123) + "."
	if in.RefreshToken {
		msg += " The refresh token is stored: the proxy renews the token from now on."
	} else {
		msg += " No refresh token came back: sign in again when it expires (ask for offline_access)."
	}
	page(w, http.StatusOK, "Signed in: oauth2 "+name, msg)
}

// revoke revokes the tokens an entry holds (POST /oauth2/NAME/revoke).
func (h *Handler) revoke(w http.ResponseWriter, r *http.Request) {
	src, name, ok := h.source(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), signInTimout)
	defer cancel()
	done, err := src.Revoke(ctx, r.URL.Query().Get("force") == "true")
	switch {
	case errors.Is(err, tokencache.ErrNothingToRevoke):
		writeJSON(w, http.StatusConflict, map[string]any{"oauth2": name, "error": "nothing_to_revoke", "message": err.Error()})
	case err != nil:
		writeJSON(w, http.StatusBadGateway, map[string]any{"oauth2": name, "error": "revoke_failed", "message": h.scrub(err.Error()),
			"revoked_refresh_token": done.RefreshToken, "revoked_access_token": done.AccessToken})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"oauth2": name, "revoked_refresh_token": done.RefreshToken, "revoked_access_token": done.AccessToken})
	}
}

// renew asks for a new token now (POST /oauth2/NAME/renew): the page's
// Get token. It answers what is known of the token, never the token.
func (h *Handler) renew(w http.ResponseWriter, r *http.Request) {
	src, name, ok := h.source(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), signInTimout)
	defer cancel()
	tok, err := src.Fetch(ctx)
	if err != nil {
		status, code := http.StatusBadGateway, "token_unavailable"
		var lr *tokencache.LoginRequiredError
		if errors.As(err, &lr) {
			status, code = http.StatusServiceUnavailable, "login_required"
		}
		writeJSON(w, status, map[string]any{"oauth2": name, "error": code, "message": h.scrub(err.Error())})
		return
	}
	out := map[string]any{"oauth2": name, "token_type": tok.Type, "expires_at": tok.Expiry.UTC(), "expiry_from": tok.ExpirySource, "scopes": tok.Scopes}
	if claims, ok := tokencache.JWTClaims(tok.AccessToken.Reveal()); ok {
		out["claims_unverified"] = claims
	}
	writeJSON(w, http.StatusOK, out)
}

// source finds the entry of the request's {name} in the runtime in service.
func (h *Handler) source(w http.ResponseWriter, r *http.Request) (*tokencache.Source, string, bool) {
	name := r.PathValue("name")
	src, ok := h.opts.Runtime().Sources[name]
	if !ok {
		http.Error(w, "no oauth2 entry of that name is in use", http.StatusNotFound)
		return nil, name, false
	}
	return src, name, true
}

func (h *Handler) scrub(s string) string {
	if h.opts.Scrub == nil {
		return s
	}
	return h.opts.Scrub.Scrub(s)
}

func hash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func randomToken() (string, error) {
	a, err := (tokencache.AuthorizationCode{}).Begin() // its state is 32 random bytes
	return a.State, err
}

// clean keeps what a page may repeat of a server's words: printable ASCII,
// at most 200 bytes (html/template escapes the rest).
func clean(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 200; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b.WriteByte(c)
		}
	}
	return b.String()
}

var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/assets/app.css"><link rel="icon" href="/assets/icon.svg" type="image/svg+xml"></head>
<body class="note"><h1>{{.Title}}</h1><p>{{.Message}}</p><p><a href="/">Back to the admin page</a></p></body></html>
`))

// page answers a small HTML page.
func page(w http.ResponseWriter, status int, title, msg string) {
	secureHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	pageTmpl.Execute(w, struct{ Title, Message string }{title, msg})
}

var formTmpl = template.Must(template.New("form").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signing in</title>
<script src="/oauth2/autosubmit.js"></script></head>
<body><form method="post" action="{{.Action}}">
{{range $k, $vs := .Fields}}{{range $vs}}<input type="hidden" name="{{$k}}" value="{{.}}">
{{end}}{{end}}<button type="submit">Continue to sign in</button></form></body></html>
`))

// postForm answers the authorization request as a form that a script from
// this origin submits (auth_method POST), with a button for browsers
// without scripts.
func postForm(w http.ResponseWriter, action string, fields url.Values) {
	secureHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	formTmpl.Execute(w, struct {
		Action string
		Fields url.Values
	}{action, fields})
}

const autosubmit = `document.addEventListener("DOMContentLoaded",function(){var f=document.forms[0];if(f)f.submit();});`

// secureHeaders are the headers of every HTML answer. The form of
// auth_method POST goes to the authorization server, so form-action
// allows it; the admin page itself allows less (pageCSP).
func secureHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action *; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
}
