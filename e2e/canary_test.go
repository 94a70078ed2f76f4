package e2e

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestCanarySecrets (issue 6, item 1) gives every kind of secret the proxy
// holds a canary of its own, and lets a token endpoint echo each one back in
// every spelling it received it in (plain, form-, query- and path-encoded,
// JSON-escaped, base64 in both alphabets padded and raw, base64 of id:secret
// raw and form-escaped, the whole Authorization header) into
// error_description, into the error code, into response headers, into a
// token_type, a Content-Type and a scope. No canary, in any spelling, may
// reach the proxy's logs (JSON and text), a client's error body or headers,
// `oauthproxy token` output (with -show, only the access token may), /tokens,
// /readyz, /metrics, or check. Leaks found and not fixed yet are knownLeaks.
func TestCanarySecrets(t *testing.T) {
	t.Parallel()
	c := newCanarySet()
	idp := newEchoIdP(t, c)
	up := newAPI(t, func(string) error { return nil })
	var mu sync.Mutex
	var recs []canaryRecord
	collect := func(r []canaryRecord) {
		mu.Lock()
		recs = append(recs, r...)
		mu.Unlock()
	}
	t.Run("drive", func(t *testing.T) {
		for _, format := range []string{"json", "text"} {
			t.Run("run "+format, func(t *testing.T) {
				t.Parallel()
				collect(driveCanaryProxy(t, c, idp, up, format))
			})
		}
		t.Run("token command", func(t *testing.T) {
			t.Parallel()
			collect(driveCanaryTokenCommand(t, idp))
		})
	})
	if idp.wrongs() != "" {
		t.Errorf("secrets did not reach the token endpoint as configured: %s", idp.wrongs())
	}
	c.scan(t, recs, !t.Failed())
}

// canaryRecord is one piece of output: entry names the oauth2 entry it
// belongs to, where it is known.
type canaryRecord struct{ where, entry, text string }

// canarySet holds the canaries of one test: a distinct one per secret
// kind, and one per entry for what the token endpoint rotates or issues
// (so that no entry's secret is hidden only because the scrubber learnt it
// from another entry).
type canarySet struct {
	mu    sync.Mutex
	named map[string]string // what it is -> value
}

const (
	canaryClientID  = "app id+1" // "app id+1:" is 9 bytes: base64 of id:secret holds the secret's own, aligned
	canaryProxyUser = "proxy user"
)

func newCanarySet() *canarySet {
	c := &canarySet{named: map[string]string{}}
	for _, name := range []string{
		"client_secret", "password", "params value", "headers value",
		"oauth2 proxy_url password", "route proxy_url password",
		"refresh_token as configured", "refresh_token before rotation", "client_secret file",
		"token_url api_key", "inbound key",
	} {
		c.named[name] = newCanary()
	}
	return c
}

func (c *canarySet) v(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.named[name]
}

// once returns the canary name, made on first use.
func (c *canarySet) once(name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.named[name] == "" {
		c.named[name] = newCanary()
	}
	return c.named[name]
}

// newCanary is a value whose spellings all differ: '+', '/', '=', ' ', '&'
// and '"' each come out differently in a form, a path, JSON and HTML-safe
// JSON. No run of it is long enough (20) for the proxy to mask it as
// opaque: only knowing it hides it. Its first 12 characters (hex) find a
// leak of part of it.
func newCanary() string {
	b := make([]byte, 13)
	rand.Read(b)
	h := hex.EncodeToString(b)
	return h[:12] + "+" + h[12:14] + "&" + h[14:18] + "/" + h[18:20] + " " + h[20:24] + "=" + h[24:] + `"`
}

// issue makes an access token canary.
func (c *canarySet) issue() string {
	return c.once("access token " + newCanary()[:12])
}

// spellings are v as the proxy may send it, or a server echo it.
func spellings(v string) []string {
	var plain strings.Builder
	enc := json.NewEncoder(&plain)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	j := strings.TrimSpace(plain.String())
	html, _ := json.Marshal(v)
	out := []string{v, url.QueryEscape(v), url.PathEscape(v), j[1 : len(j)-1], string(html[1 : len(html)-1])}
	return dedupe(append(out, base64s(v)...))
}

func base64s(v string) []string {
	b := []byte(v)
	return []string{
		base64.StdEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b), base64.RawURLEncoding.EncodeToString(b),
	}
}

// basicSpellings are HTTP Basic credentials of id and secret: base64 of
// id:secret raw and with each part form-escaped first (RFC 6749 §2.3.1),
// and the whole header value the proxy sends.
func basicSpellings(id, secret string, formEscaped bool) []string {
	pairs := []string{id + ":" + secret}
	if formEscaped {
		pairs = append(pairs, url.QueryEscape(id)+":"+url.QueryEscape(secret))
	}
	var out []string
	for _, p := range pairs {
		out = append(out, base64s(p)...)
	}
	out = append(out, "Basic "+base64.StdEncoding.EncodeToString([]byte(pairs[len(pairs)-1])))
	return dedupe(out)
}

func dedupe(vs []string) []string {
	var out []string
	for _, v := range vs {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// needles are what a leak of the named canaries looks like.
func (c *canarySet) needles(withTokens bool) map[string]string {
	out := map[string]string{} // needle -> canary name and spelling
	add := func(name string, vs []string) {
		for i, v := range vs {
			out[v] = fmt.Sprintf("%s (spelling %d)", name, i)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, v := range c.named {
		if strings.HasPrefix(name, "access token") && !withTokens {
			continue
		}
		add(name, spellings(v))
		mark := v[:12]
		add(name+", its first 12 characters", append([]string{mark}, base64s(mark)[:3]...))
		switch {
		case strings.HasPrefix(name, "client_secret"):
			add(name+" as Basic credentials", basicSpellings(canaryClientID, v, true))
		case strings.HasSuffix(name, "proxy_url password"):
			add(name+" as Basic credentials", basicSpellings(canaryProxyUser, v, false))
		}
	}
	return out
}

// knownLeaks are leaks this test found that are reported but not fixed yet
// (issue 6): entries (as "kind-mode", a regexp) by where they leak (a
// regexp on canaryRecord.where). They are logged rather than failed so that
// the test keeps guarding everything else, and fail once no longer seen:
// remove an entry with the fix that closes it.
var knownLeaks = []struct{ entries, where, why string }{
	{`-type$`, `^(client|/tokens|/readyz)`,
		"a token_type is repeated verbatim in `token_type %q is not Bearer` (tokencache/token.go lifetime.newToken)"},
	{`-ctype$`, `^(client|/tokens|/readyz|log)`,
		"a Content-Type is repeated in `the body is not a JSON token response (%s)` (tokencache/response.go describeBadBody), lowercased by mime.ParseMediaType so that even the spellings the scrubber knows (%2B) get past it"},
	{`-scope$`, `^(/tokens|oauthproxy token)`,
		"scopes from the token response are shown unscrubbed by /tokens (tokencache/status.go Status) and `oauthproxy token` (cmd/oauthproxy/token.go describeToken)"},
	{`^(apikey|file)-(echo|all|type|scope)$`, `^(log|oauthproxy token)`,
		"the scrubber never learns a client secret re-read from ${file:} after invalid_client (tokencache/clientauth.go ClientSecret.Reread), nor the values of a token_url query (upstreams/build.go Config.AddSecrets)"},
	{`^proxy-(type|scope)$`, `^log`,
		"the scrubber knows a proxy_url password, not the base64 of user:password sent in Proxy-Authorization (upstreams/build.go Config.AddSecrets)"},
	{`^rotated-scope$`, `^log`,
		"the scrubber forgets an access token once it is renewed (tokencache/source.go Scrub.Set): an echo of the previous one gets past it"},
}

// scan fails for every canary spelling found in recs, but known leaks; with
// ratchet, also for a known leak no longer seen.
func (c *canarySet) scan(t *testing.T, recs []canaryRecord, ratchet bool) {
	all, noTokens := c.needles(true), c.needles(false)
	type matcher struct{ entries, where *regexp.Regexp }
	var ms []matcher
	for _, k := range knownLeaks {
		ms = append(ms, matcher{regexp.MustCompile(k.entries), regexp.MustCompile(k.where)})
	}
	seen := map[string]bool{}
	known := make([]int, len(knownLeaks))
	for _, r := range recs {
		needles := all
		if strings.HasSuffix(r.where, "-show") { // the one output meant to hold a token
			needles = noTokens
		}
		for n, what := range needles {
			i := strings.Index(r.text, n)
			if i < 0 {
				continue
			}
			key := what + "|" + r.where + "|" + entryKind(r.entry)
			if seen[key] {
				continue
			}
			seen[key] = true
			lo, hi := max(0, i-80), min(len(r.text), i+len(n)+40)
			msg := fmt.Sprintf("%s: the %s leaked (oauth2 %q): ...%s...", r.where, what, r.entry, r.text[lo:hi])
			k := slices.IndexFunc(ms, func(m matcher) bool {
				return m.entries.MatchString(entryKind(r.entry)) && m.where.MatchString(r.where)
			})
			if k < 0 {
				t.Error(msg)
				continue
			}
			if known[k]++; known[k] == 1 {
				t.Logf("KNOWN LEAK, reported (%s), e.g. %s", knownLeaks[k].why, msg)
			}
		}
	}
	for i, k := range knownLeaks {
		if ratchet && known[i] == 0 {
			t.Errorf("the known leak of %s in %s is no longer seen: remove it from knownLeaks (%s)", k.entries, k.where, k.why)
		}
	}
}

// entryKind is "kind-mode" of an entry "kind-mode-i".
func entryKind(entry string) string {
	if i := strings.LastIndexByte(entry, '-'); i > 0 {
		return entry[:i]
	}
	return entry
}

// canaryKind is one kind of secret: how an oauth2 entry holds it, where
// the token endpoint finds it in the request, and what it echoes.
type canaryKind struct {
	name   string
	secret string // as the token endpoint must receive it
	entry  string // the entry's keys but token_url, indented by 4
	query  string // appended to token_url
	got    func(r *http.Request, params map[string]string) string
	echoes func(v string) []string
}

// echoIdP is the worst token endpoint: it echoes what it received. Its
// token_url paths are /t/TAG/KIND/MODE/I: the I-th echo of KIND's secret
// goes, by MODE, into
//
//	echo   the error code and error_description of a 400
//	all    one error_description (every echo at once)
//	type   the token_type of a 200
//	ctype  the Content-Type of a 200 that is no JSON
//	scope  the scope of a good token response (every echo at once)
//
// and every echo into response headers. A kind whose secret rotates
// (refresh_token as rotated, client_secret file) first answers so as to
// rotate it, then echoes the new one.
type echoIdP struct {
	*httptest.Server
	c     *canarySet
	dir   string
	kinds map[string]*canaryKind
	order []string
	mu    sync.Mutex
	final map[string]bool // paths answered in their mode
	wrong map[string]bool
	// access holds the access token issued with each rotated refresh token.
	access map[string]string
}

func (e *echoIdP) accessFor(rt string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if at := e.access[rt]; at != "" {
		return at
	}
	return newCanary() // a stand-in, while counting spellings
}

func newEchoIdP(t *testing.T, c *canarySet) *echoIdP {
	e := &echoIdP{c: c, dir: t.TempDir(), kinds: map[string]*canaryKind{}, final: map[string]bool{}, wrong: map[string]bool{}, access: map[string]string{}}
	e.Server = httptest.NewUnstartedServer(e)
	t.Cleanup(e.Close)
	proxyURL := (&url.URL{Scheme: "http", User: url.UserPassword(canaryProxyUser, c.v("oauth2 proxy_url password")), Host: e.Listener.Addr().String()}).String()
	cs := "    client_id: " + strconv.Quote(canaryClientID) + "\n    client_secret: " + strconv.Quote(c.v("client_secret")) + "\n"
	param := func(name string) func(*http.Request, map[string]string) string {
		return func(_ *http.Request, p map[string]string) string { return p[name] }
	}
	basicPass := func(r *http.Request, _ map[string]string) string {
		_, pass, _ := r.BasicAuth()
		pass, _ = url.QueryUnescape(pass)
		return pass
	}
	withBasic := func(v string) []string { return append(spellings(v), basicSpellings(canaryClientID, v, true)...) }
	for _, k := range []*canaryKind{
		{name: "basic", secret: c.v("client_secret"), entry: cs, got: basicPass, echoes: withBasic},
		{name: "post", secret: c.v("client_secret"), entry: cs + "    client_auth: client_secret_post\n", got: param("client_secret")},
		{name: "json", secret: c.v("client_secret"), entry: cs + "    client_auth: client_secret_post\n    request_format: json\n", got: param("client_secret")},
		{name: "password", secret: c.v("password"), entry: cs + "    grant_type: password\n    username: svc\n    password: " + strconv.Quote(c.v("password")) + "\n", got: param("password")},
		{name: "param", secret: c.v("params value"), entry: cs + "    params: {pin: " + strconv.Quote(c.v("params value")) + "}\n", got: param("pin")},
		{name: "header", secret: c.v("headers value"), entry: cs + "    headers: {X-Api-Key: " + strconv.Quote(c.v("headers value")) + "}\n",
			got: func(r *http.Request, _ map[string]string) string { return r.Header.Get("X-Api-Key") }},
		{name: "proxy", secret: c.v("oauth2 proxy_url password"), entry: cs + "    proxy_url: " + strconv.Quote(proxyURL) + "\n",
			got: func(r *http.Request, _ map[string]string) string {
				b, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(r.Header.Get("Proxy-Authorization"), "Basic "))
				_, pass, _ := strings.Cut(string(b), ":")
				return pass
			},
			echoes: func(v string) []string { return append(spellings(v), basicSpellings(canaryProxyUser, v, false)...) }},
		{name: "rt", secret: c.v("refresh_token as configured"), entry: cs + "    grant_type: refresh_token\n    refresh_token: " + strconv.Quote(c.v("refresh_token as configured")) + "\n", got: param("refresh_token")},
		// The secrets of these two are what the endpoint rotates them to, per entry.
		{name: "rotated", entry: cs + "    grant_type: refresh_token\n    refresh_token: " + strconv.Quote(c.v("refresh_token before rotation")) + "\n", got: param("refresh_token"),
			echoes: func(v string) []string { return append(spellings(v), spellings(e.accessFor(v))...) }},
		{name: "file", got: basicPass, echoes: withBasic},
		{name: "apikey", secret: c.v("token_url api_key"), entry: cs, query: "?api_key=" + url.QueryEscape(c.v("token_url api_key")),
			got: func(r *http.Request, _ map[string]string) string { return r.URL.Query().Get("api_key") }},
	} {
		if k.echoes == nil {
			k.echoes = spellings
		}
		e.kinds[k.name] = k
		e.order = append(e.order, k.name)
	}
	e.Start()
	return e
}

func (e *echoIdP) file(tag, mode string, i int) string {
	return filepath.Join(e.dir, fmt.Sprintf("%s-%s-%d", tag, mode, i))
}

func (e *echoIdP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/t/"), "/")
	if len(parts) != 4 || e.kinds[parts[1]] == nil {
		http.NotFound(w, r)
		return
	}
	tag, k, mode := parts[0], e.kinds[parts[1]], parts[2]
	i, _ := strconv.Atoi(parts[3])
	params := map[string]string{}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		json.NewDecoder(r.Body).Decode(&params)
	} else {
		r.ParseForm()
		for key := range r.PostForm {
			params[key] = r.PostForm.Get(key)
		}
	}
	answer := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(v)
	}
	got, want := k.got(r, params), k.secret
	switch k.name {
	case "rotated":
		want = e.c.once("refresh_token as rotated for " + r.URL.Path)
		if got == e.c.v("refresh_token before rotation") {
			at := e.c.once("access token for " + r.URL.Path)
			e.mu.Lock()
			e.access[want] = at
			e.mu.Unlock()
			answer(200, map[string]any{"access_token": at, "token_type": "Bearer", "expires_in": 1, "refresh_token": want})
			return
		}
	case "file":
		want = e.c.once("client_secret file as rotated for " + r.URL.Path)
		if got == e.c.v("client_secret file") {
			os.WriteFile(e.file(tag, mode, i), []byte(want+"\n"), 0o600)
			answer(401, map[string]any{"error": "invalid_client", "error_description": "unknown secret " + got})
			return
		}
	}
	if got != want {
		e.mu.Lock()
		e.wrong[k.name] = true
		e.mu.Unlock()
		answer(400, map[string]any{"error": "invalid_request"})
		return
	}
	echoes := k.echoes(got)
	for j, x := range echoes {
		w.Header().Set(fmt.Sprintf("X-Echo-%d", j), x)
	}
	w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="`+echoes[0]+`"`)
	w.Header().Set("Retry-After", echoes[0])
	x := echoes[min(i, len(echoes)-1)]
	e.mu.Lock()
	e.final[r.URL.Path] = true
	e.mu.Unlock()
	switch mode {
	case "echo":
		answer(400, map[string]any{"error": x, "error_description": "received " + x})
	case "all":
		answer(400, map[string]any{"error": "invalid_request", "error_description": "received " + strings.Join(echoes, " ")})
	case "type":
		answer(200, map[string]any{"access_token": e.c.issue(), "token_type": x, "expires_in": 3600})
	case "ctype":
		w.Header().Set("Content-Type", "text/"+x)
		w.WriteHeader(200)
		fmt.Fprintf(w, "<html>%s</html>", x)
	case "scope":
		answer(200, map[string]any{"access_token": e.c.issue(), "token_type": "Bearer", "expires_in": 3600, "scope": strings.Join(echoes, " ")})
	}
}

func (e *echoIdP) wrongs() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(slices.Sorted(maps.Keys(e.wrong)), ", ")
}

// answered reports whether every path got its answer in its mode.
func (e *echoIdP) answered(paths []string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range paths {
		if !e.final[p] {
			return false
		}
	}
	return true
}

// typeName is RFC 6749 A.13's grammar, which a token_type must pass before
// any message names it: only those echoes are worth an entry.
var typeName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// mediaToken is what mime.ParseMediaType takes as a subtype.
var mediaToken = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")

// canaryEntry is one oauth2 entry of an echoIdP config.
type canaryEntry struct{ name, route, path string }

// config is a proxy config with one oauth2 entry and route per kind and
// mode the modes function lists ("echo/3").
func (e *echoIdP) config(tag, format string, up *api, modes func(k *canaryKind, echoes []string) []string) (string, []canaryEntry) {
	var oauth2, routes strings.Builder
	var entries []canaryEntry
	for _, name := range e.order {
		k := e.kinds[name]
		secret := k.secret
		if secret == "" { // rotated per entry: any canary has as many spellings
			secret = newCanary()
		}
		for _, m := range modes(k, k.echoes(secret)) {
			mode, is, _ := strings.Cut(m, "/")
			i, _ := strconv.Atoi(is)
			ce := canaryEntry{name: fmt.Sprintf("%s-%s-%d", name, mode, i), route: fmt.Sprintf("/%s/%s/%d/", name, mode, i),
				path: fmt.Sprintf("/t/%s/%s/%s/%d", tag, name, mode, i)}
			entries = append(entries, ce)
			entry := k.entry
			if name == "file" {
				f := e.file(tag, mode, i)
				os.WriteFile(f, []byte(e.c.v("client_secret file")+"\n"), 0o600)
				entry = "    client_id: " + strconv.Quote(canaryClientID) + "\n    client_secret: \"${file:" + f + "}\"\n"
			}
			fmt.Fprintf(&oauth2, "  %s:\n    token_url: %q\n%s", ce.name, e.URL+ce.path+k.query, entry)
			fmt.Fprintf(&routes, "  - {prefix: %s, upstream: %q, oauth2: %s}\n", ce.route, up.URL+"/", ce.name)
		}
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	routeProxy := (&url.URL{Scheme: "http", User: url.UserPassword(canaryProxyUser, e.c.v("route proxy_url password")), Host: closed}).String()
	fmt.Fprintf(&routes, "  - {prefix: /routeproxy/, upstream: %q, oauth2: %s, proxy_url: %q}\n", up.URL+"/", entries[len(entries)-1].name, routeProxy)
	fmt.Fprintf(&routes, "  - {prefix: /small/, upstream: %q, oauth2: %s, max_body: 16}\n", up.URL+"/", entries[0].name)
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
log: {level: debug, format: %s}
inbound:
  require_header: {name: X-Proxy-Key, value: %q}
oauth2:
%sroutes:
%s`, format, e.c.v("inbound key"), oauth2.String(), routes.String()), entries
}

// driveCanaryProxy runs the proxy with an entry for every echo of every
// kind, waits until each has had its echo, drives every route and the
// admin endpoints, and returns all it saw.
func driveCanaryProxy(t *testing.T, c *canarySet, idp *echoIdP, up *api, format string) []canaryRecord {
	cfg, entries := idp.config(format, format, up, func(k *canaryKind, echoes []string) []string {
		var m []string
		for i, x := range echoes {
			m = append(m, fmt.Sprintf("echo/%d", i))
			if typeName.MatchString(x) {
				m = append(m, fmt.Sprintf("type/%d", i))
			}
			if mediaToken.MatchString(x) {
				m = append(m, fmt.Sprintf("ctype/%d", i))
			}
		}
		return append(m, "scope/0")
	})
	var recs []canaryRecord
	if format == "json" { // check reads the same config; once is enough
		path := writeConfig(t, cfg)
		out, code := run(t, quickExit(), "check", "-config", path)
		if code != 0 {
			t.Errorf("check: exit %d:\n%.3000s", code, out)
		}
		recs = append(recs, canaryRecord{"check", "", out})
		// Problems next to secrets: check names them, never shows them.
		broken := strings.Replace(cfg, "    client_secret: \"", "    client_secrte: \"", 1)
		broken = strings.Replace(broken, "proxy_url: \"http://", "proxy_url: \"ftp://", 2)
		broken = strings.Replace(broken, "    password: \"", "    passwrod: \"", 1)
		out, code = run(t, quickExit(), "check", "-config", writeConfig(t, broken))
		if code != 1 || strings.Count(out, "\n") < 4 {
			t.Errorf("check of a broken config: exit %d:\n%.3000s", code, out)
		}
		recs = append(recs, canaryRecord{"check (broken)", "", out})
	}

	var p *proc
	if format == "json" {
		p = startProxy(t, cfg, quickExit()...)
	} else {
		p = startTextProxy(t, cfg)
	}
	var paths []string
	for _, e := range entries {
		paths = append(paths, e.path)
	}
	for deadline := time.Now().Add(30 * time.Second); !idp.answered(paths); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the token endpoint did not see every entry")
		}
	}
	key := []string{"X-Proxy-Key", c.v("inbound key")}
	where := "client (" + format + " run)"
	dump := func(r response) string {
		var b strings.Builder
		fmt.Fprintf(&b, "%d\n", r.status)
		r.header.Write(&b)
		b.WriteString(r.body)
		return b.String()
	}
	codes := map[string]int{}
	for _, e := range entries {
		r := get(t, p.base+e.route+"x", key...)
		codes[r.errorCode()]++
		if strings.Contains(e.name, "-scope-") && r.status != http.StatusOK {
			t.Errorf("%s: %d %s, want the upstream's 200", e.name, r.status, r.body)
		}
		recs = append(recs, canaryRecord{where, e.name, dump(r)})
	}
	if codes["token_unavailable"] < len(entries)/2 {
		t.Errorf("error codes %v: the token endpoint's failures were not driven", codes)
	}
	for _, req := range []struct {
		method, path string
		hdr          []string
		status       int
	}{
		{"GET", "/routeproxy/x", key, http.StatusBadGateway},
		{"POST", "/small/x", key, http.StatusRequestEntityTooLarge},
		{"GET", "/basic/echo/0/x", nil, http.StatusForbidden},
		{"GET", "/basic/echo/0/x", []string{"X-Proxy-Key", c.v("inbound key") + "x"}, http.StatusForbidden},
		{"GET", "/nowhere", key, http.StatusNotFound},
	} {
		r := send(t, req.method, p.base+req.path, strings.NewReader(strings.Repeat("z", 64)), req.hdr...)
		if r.status != req.status {
			t.Errorf("%s %s: %d %s, want %d", req.method, req.path, r.status, r.body, req.status)
		}
		recs = append(recs, canaryRecord{where, "", dump(r)})
	}

	tokens := get(t, p.admin+"/tokens").body
	for _, chunk := range strings.Split(tokens, "\n  {") {
		recs = append(recs, canaryRecord{"/tokens (" + format + " run)", submatch(`"oauth2": "([^"]+)"`, chunk), chunk})
	}
	for _, line := range strings.Split(get(t, p.admin+"/readyz").body, "\n") {
		recs = append(recs, canaryRecord{"/readyz (" + format + " run)", submatch(`oauth2 ([A-Za-z0-9_.-]+):`, line), line})
	}
	recs = append(recs, canaryRecord{"/metrics (" + format + " run)", "", get(t, p.admin+"/metrics").body})
	if n := strings.Count(tokens, `"oauth2":`); n != len(entries) {
		t.Errorf("/tokens lists %d entries, want %d", n, len(entries))
	}

	p.stop()
	out := p.out.String()
	if os.Getenv("CANARY_DUMP") != "" {
		t.Log(out)
	}
	if !strings.Contains(out, "unrecognized_error") || !strings.Contains(out, "idp_description") {
		t.Errorf("the log shows no echoed failures:\n%.3000s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		recs = append(recs, canaryRecord{"log (" + format + ")", submatch(`oauth2"?[=:]"?([A-Za-z0-9_.-]+)`, line), line})
	}
	return recs
}

// startTextProxy is startProxy for log.format text.
func startTextProxy(t *testing.T, cfg string) *proc {
	t.Helper()
	p := start(t, quickExit(), "run", "-config", writeConfig(t, cfg))
	serving := regexp.MustCompile(`msg="oauthproxy serving" .*listen=(\S+) admin=(\S+)`)
	for deadline := time.Now().Add(30 * time.Second); p.base == ""; time.Sleep(20 * time.Millisecond) {
		select {
		case <-p.done:
			t.Fatalf("oauthproxy exited: %v\n%s", p.err, p.out)
		default:
		}
		if m := serving.FindStringSubmatch(p.out.String()); m != nil {
			p.base, p.admin = "http://"+m[1], "http://"+m[2]
		} else if time.Now().After(deadline) {
			t.Fatalf("oauthproxy did not start serving:\n%s", p.out)
		}
	}
	return p
}

func submatch(re, s string) string {
	if m := regexp.MustCompile(re).FindStringSubmatch(s); m != nil {
		return m[1]
	}
	return ""
}

// driveCanaryTokenCommand runs `oauthproxy token` on entries whose token
// endpoint echoes every spelling at once into its error_description, and
// on entries that get a good token whose scope echoes them, with and
// without -show.
func driveCanaryTokenCommand(t *testing.T, idp *echoIdP) []canaryRecord {
	cfg, entries := idp.config("cmd", "json", newAPI(t, nil), func(k *canaryKind, _ []string) []string {
		if k.name == "rotated" { // one fetch only rotates: nothing to echo yet
			return nil
		}
		return []string{"all/0", "scope/0"}
	})
	path := writeConfig(t, cfg)
	var mu sync.Mutex
	var recs []canaryRecord
	t.Run("runs", func(t *testing.T) {
		for _, e := range entries {
			for _, show := range []bool{false, true} {
				if show && !strings.Contains(e.name, "-scope-") {
					continue
				}
				args := []string{"token", e.name, "-config", path}
				where := "oauthproxy token"
				if show {
					args = append(args, "-show")
					where += " -show"
				}
				t.Run(strings.Join(args[:2], " ")+map[bool]string{true: " -show"}[show], func(t *testing.T) {
					t.Parallel()
					out, code := run(t, quickExit(), args...)
					if os.Getenv("CANARY_DUMP") != "" {
						t.Log(out)
					}
					success := strings.Contains(e.name, "-scope-")
					switch {
					case success != (code == 0):
						t.Errorf("exit %d:\n%s", code, out)
					case success && strings.Contains(out, "-show prints it") == show:
						t.Errorf("-show %v printed:\n%s", show, out)
					case !success && !strings.Contains(out, "(received "):
						t.Errorf("the endpoint's description is not shown:\n%s", out)
					}
					mu.Lock()
					recs = append(recs, canaryRecord{where, e.name, out})
					mu.Unlock()
				})
			}
		}
	})
	return recs
}
