package upstreams

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// validator checks a decoded, defaulted Config. It is pure: it reads no
// files and no network, and it reports every problem, not the first.
type validator struct {
	*decoder
	cfg *Config
}

// at is where key's value stands in a mapping, or the mapping itself when
// the key is absent.
func at(ps Positions, key string) Pos {
	if p, ok := ps[key]; ok {
		return p
	}
	return ps[""]
}

func (v *validator) run() {
	c := v.cfg
	v.listen()
	if path, ok := strings.CutPrefix(c.AdminListen, "unix:"); ok {
		if !strings.HasPrefix(path, "/") {
			v.addAt(at(c.Pos, "admin_listen"), "admin_listen", "%q: a unix socket needs an absolute path (unix:/run/oauthproxy/admin.sock)", c.AdminListen)
		} else if c.AdminListen == c.Listen {
			v.addAt(at(c.Pos, "admin_listen"), "admin_listen", "%q is listen's socket too: they must differ", c.AdminListen)
		}
	} else if _, ok := v.hostPort(at(c.Pos, "admin_listen"), "admin_listen", c.AdminListen); ok && sameListener(c.Listen, c.AdminListen) {
		v.addAt(at(c.Pos, "admin_listen"), "admin_listen", "%q takes the same port as listen %q: they must differ", c.AdminListen, c.Listen)
	}
	v.server()
	v.listenTLS()
	v.inbound()
	v.admin()
	v.cache()

	names := slices.Sorted(maps.Keys(c.OAuth2))
	if len(names) == 0 {
		v.addAt(at(c.Pos, "oauth2"), "oauth2", "no entries: define at least one OAuth2 configuration")
	}
	for _, name := range names {
		v.oauth2(name, c.OAuth2[name])
	}

	v.mail()
	if len(c.Routes) == 0 && (c.Mail == nil || len(c.Mail.Listeners) == 0) {
		v.addAt(at(c.Pos, "routes"), "routes", "no routes: define at least one (or mail listeners)")
	}
	used := c.mailUses()
	prefixes := map[string]int{} // normalized prefix -> route index
	for i, r := range c.Routes {
		v.route(i, r, prefixes)
		if r != nil {
			used[r.OAuth2] = true
		}
	}
	for _, name := range names {
		if !used[name] && c.OAuth2[name] != nil {
			v.warnAt(c.OAuth2[name].Pos[""], "oauth2."+name, "not used by any route")
		}
	}
}

// missing reports a required key that is absent. A key that is present
// but did not decode has its own problem already; one present but empty
// (an empty ${VAR}) is called empty.
func (v *validator) missing(ps Positions, path, key, val, why string) {
	if val != "" || v.noMissing[path] {
		return
	}
	if p, ok := ps[key]; ok {
		if p.raw != "" && !strings.Contains(p.raw, "${") {
			return // written, but it did not decode: already reported
		}
		if v.failedAt(p) {
			return
		}
		v.addAt(p, sub(path, key), "is empty%s", why)
		return
	}
	v.addAt(ps[""], path, "missing %s%s", key, why)
}

// failedAt reports whether a problem was already recorded at p.
func (v *validator) failedAt(p Pos) bool { return v.failed[[2]int{p.Line, p.Col}] }

// sub names key under path: oauth2.corp.token_url, or for a route
// `routes[0] (prefix "/a/"): upstream`.
func sub(path, key string) string {
	if strings.HasSuffix(path, ")") {
		return path + ": " + key
	}
	return join(path, key)
}

func (v *validator) oneOf(ps Positions, path, key, val string, allowed ...string) bool {
	if slices.Contains(allowed, val) {
		return true
	}
	v.addAt(at(ps, key), sub(path, key), "%q is not one of %s", val, strings.Join(allowed, ", "))
	return false
}

func (v *validator) listen() {
	c := v.cfg
	p := at(c.Pos, "listen")
	if path, ok := strings.CutPrefix(c.Listen, "unix:"); ok {
		if !strings.HasPrefix(path, "/") {
			v.addAt(p, "listen", "%q: a unix socket needs an absolute path (unix:/run/oauthproxy/proxy.sock)", c.Listen)
		}
		if c.SocketMode&0o007 != 0 {
			v.warnAt(at(c.Pos, "socket_mode"), "socket_mode", "%04o lets every local user call the upstreams", c.SocketMode)
		}
		return
	}
	if _, ok := c.Pos["socket_mode"]; ok {
		v.addAt(at(c.Pos, "socket_mode"), "socket_mode", "only applies to listen: unix:/path")
	}
	host, ok := v.hostPort(p, "listen", c.Listen)
	if !ok {
		return
	}
	if !isLoopbackHost(host) && c.Inbound.RequireHeader == nil && len(c.Inbound.AllowCIDRs) == 0 && !c.TLS.requiresClientCert() {
		v.addAt(p, "listen", "%q is reachable beyond this machine, and whoever reaches the port calls the upstreams with this proxy's tokens: "+
			"set inbound.require_header, inbound.allow_cidrs or tls.require_client_cert, or listen on 127.0.0.1 (see docs/security.md)", c.Listen)
	}
}

func (v *validator) hostPort(p Pos, key, addr string) (string, bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.addAt(p, key, "%q is not host:port (like 127.0.0.1:8080)", addr)
		return "", false
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		v.addAt(p, key, "%q: port %q is not a number from 0 to 65535", addr, port)
		return "", false
	}
	return host, true
}

// isLoopbackHost reports whether a listen host or URL host is loopback:
// localhost or a loopback address. The empty host is every interface.
// IsLoopbackListen reports whether a listen address (host:port or
// unix:/path) is reachable from this machine only.
func IsLoopbackListen(addr string) bool {
	if strings.HasPrefix(addr, "unix:") {
		return true
	}
	host, _, err := net.SplitHostPort(addr)
	return err == nil && host != "" && isLoopbackHost(host)
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && a.IsLoopback()
}

func (v *validator) server() {
	sp := v.cfg.Server.Pos
	if _, old := sp["shutdown_grace"]; old {
		if _, set := sp["shutdown_timeout"]; set {
			v.addAt(sp["shutdown_grace"], "server.shutdown_grace", "is the old name of shutdown_timeout: set one of them")
		}
	}
	s := &v.cfg.Server
	if s.MaxConnections < 0 {
		v.addAt(at(s.Pos, "max_connections"), "server.max_connections", "must not be negative")
	}
	if s.MaxHeaderBytes < 4<<10 || s.MaxHeaderBytes > 1<<20 {
		v.addAt(at(s.Pos, "max_header_bytes"), "server.max_header_bytes", "%d bytes: want between 4KiB and 1MiB", s.MaxHeaderBytes)
	}
	if d := s.BodyBufferDir; d != "" {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			v.addAt(at(s.Pos, "body_buffer_dir"), "server.body_buffer_dir", "%q is not a directory (request bodies kept for a retry go there)", d)
		}
	}
}

func (v *validator) inbound() {
	in := &v.cfg.Inbound
	if rh := in.RequireHeader; rh != nil {
		if !validHeaderName(rh.Name) {
			v.addAt(at(rh.Pos, "name"), "inbound.require_header.name", "%q is not a header name", rh.Name)
		} else if reservedHeader(rh.Name) {
			v.addAt(at(rh.Pos, "name"), "inbound.require_header.name", "%q is a header the proxy manages itself; pick another name", rh.Name)
		}
		switch n := len(rh.Value.Secret); {
		case n == 0:
			v.addAt(at(rh.Pos, "value"), "inbound.require_header.value", "missing: the shared secret clients must send (use ${file:/path})")
		case n < 16:
			v.warnAt(at(rh.Pos, "value"), "inbound.require_header.value", "only %d characters: a shared secret this short can be guessed", n)
		}
		if p, ok := rh.Pos["value"]; ok && !strings.Contains(p.raw, "${") {
			v.warnAt(p, "inbound.require_header.value", "written in the file: prefer ${file:/path} or ${NAME}")
		}
	}
	for i, s := range in.AllowCIDRs {
		if _, err := netip.ParsePrefix(s); err == nil {
			continue
		}
		if _, err := netip.ParseAddr(s); err == nil {
			continue
		}
		v.addAt(at(in.Pos, "allow_cidrs"), fmt.Sprintf("inbound.allow_cidrs[%d]", i), "%q is not a CIDR (10.0.0.0/8) or an address", s)
	}
	for i, h := range in.AllowedHosts {
		if h == "" || strings.ContainsAny(h, ":/ *") {
			v.addAt(at(in.Pos, "allowed_hosts"), fmt.Sprintf("inbound.allowed_hosts[%d]", i), "%q: want a host name without port or scheme", h)
		}
	}
	for i, o := range in.AllowedOrigins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			v.addAt(at(in.Pos, "allowed_origins"), fmt.Sprintf("inbound.allowed_origins[%d]", i), "%q: want an origin like https://app.example.com", o)
		}
	}
}

// admin checks who may use the admin page, /tokens, sign-in and the
// actions: beyond loopback only holders of admin_auth (issue 13).
func (v *validator) admin() {
	c := v.cfg
	if a := c.AdminAuth; a != nil {
		v.missing(a.Pos, "admin_auth", "username", a.Username, "")
		if strings.Contains(a.Username, ":") {
			v.addAt(at(a.Pos, "username"), "admin_auth.username", "%q holds a colon, which HTTP Basic cannot carry in a user name (RFC 7617)", a.Username)
		}
		switch n := len(a.Password.Secret); {
		case n == 0:
			v.missing(a.Pos, "admin_auth", "password", "", " (use ${file:/path})")
		case n < 16:
			v.warnAt(at(a.Pos, "password"), "admin_auth.password", "only %d characters: a password this short can be guessed", n)
		}
		if p, ok := a.Pos["password"]; ok && p.raw != "" && !strings.Contains(p.raw, "${") {
			v.warnAt(p, "admin_auth.password", "written in the file: prefer ${file:/path} or ${NAME}")
		}
	}
	for i, h := range c.AdminHosts {
		if _, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
			continue
		}
		if h == "" || strings.ContainsAny(h, ":/ *@[]") {
			v.addAt(at(c.Pos, "admin_hosts"), fmt.Sprintf("admin_hosts[%d]", i), "%q: want a host name or address without port or scheme", h)
		}
	}
	if c.AdminAuth == nil && !c.AdminClientCerts() && !IsLoopbackListen(c.AdminListen) {
		if _, _, err := net.SplitHostPort(c.AdminListen); err == nil {
			v.warnAt(at(c.Pos, "admin_listen"), "admin_listen", "%q is reachable beyond this machine: the admin page, /tokens, sign-in and the actions answer 403 there until admin_auth or admin_tls with client_ca_file is set (/healthz, /readyz and /metrics stay open)", c.AdminListen)
		}
	}
}

// reservedParams are the token request parameters the proxy sets itself.
var reservedParams = map[string]string{
	"grant_type": "grant_type", "client_id": "client_id", "client_secret": "client_secret",
	"scope": "scopes", "audience": "audience", "resource": "resource",
	"username": "username", "password": "password", "refresh_token": "refresh_token",
}

func (v *validator) oauth2(name string, o *OAuth2) {
	path := "oauth2." + name
	if !validName(name) {
		v.addAt(v.cfg.Pos["oauth2"], path, "the name may hold only letters, digits, '-', '_' and '.'")
	}
	if o == nil {
		return // the decoder reported the empty entry
	}
	p := o.Pos
	v.missing(p, path, "token_url", o.TokenURL.String(), "")
	if !o.TokenURL.IsZero() {
		v.httpURL(p, path, "token_url", o.TokenURL, o.InsecureHTTP)
	}
	v.missing(p, path, "client_id", o.ClientID, "")
	if auth, ok := clientAuths[o.ClientAuth]; ok {
		switch {
		case auth.secret:
			v.missing(p, path, "client_secret", o.ClientSecret.Reveal(), fmt.Sprintf(" (client_auth %s sends one; client_auth: none is a public client)", o.ClientAuth))
		case o.ClientSecret.IsSet():
			v.addAt(at(p, "client_secret"), path+".client_secret", "set, but client_auth is %s: it would never be sent", o.ClientAuth)
		}
	}
	if g, ok := grants[o.GrantType]; ok {
		for _, k := range g.needs {
			v.missing(p, path, k, o.grantValue(k), fmt.Sprintf(" (grant_type %s)", o.GrantType))
		}
		for _, k := range grantKeys {
			if _, set := p[k]; set && !slices.Contains(g.needs, k) && !slices.Contains(g.takes, k) {
				v.addAt(p[k], path+"."+k, "only applies to grant_type %s", strings.Join(grantsTaking(k), ", "))
			}
		}
	}
	v.signIn(path, o)
	v.signedCredentials(path, o)
	for i, s := range o.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\"\\") {
			v.addAt(at(p, "scopes"), fmt.Sprintf("%s.scopes[%d]", path, i), "%q is not one scope: list scopes one by one", s)
		}
	}
	if o.Resource != "" {
		if u, err := url.Parse(o.Resource); err != nil || !u.IsAbs() || u.Fragment != "" {
			v.addAt(at(p, "resource"), path+".resource", "%q: RFC 8707 wants an absolute URI without a fragment", o.Resource)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(o.Params)) {
		if use, ok := reservedParams[k]; ok {
			v.addAt(at(p, "params"), path+".params."+k, "set by the proxy: use the %s key instead", use)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(o.Headers)) {
		val := o.Headers[k]
		switch {
		case !validHeaderName(k):
			v.addAt(at(p, "headers"), path+".headers", "%q is not a header name", k)
		case reservedHeader(k) || strings.EqualFold(k, "Content-Type") || strings.EqualFold(k, "Authorization") && o.ClientAuth == "client_secret_basic":
			v.addAt(at(p, "headers"), path+".headers."+k, "set by the proxy")
		case strings.ContainsAny(val.Reveal(), "\r\n"):
			v.addAt(at(p, "headers"), path+".headers."+k, "the value holds a line break")
		}
	}
	for _, f := range []struct{ key, val string }{
		{"access_token", o.Response.AccessToken}, {"expires_in", o.Response.ExpiresIn},
		{"refresh_token", o.Response.RefreshToken}, {"token_type", o.Response.TokenType}, {"scope", o.Response.Scope},
	} {
		if pos, set := o.Response.Pos[f.key]; set && (f.val == "" || strings.HasPrefix(f.val, ".") || strings.HasSuffix(f.val, ".")) {
			v.addAt(pos, path+".response."+f.key, "%q is not a field path (like access_token or data.token)", f.val)
		}
	}
	if o.DefaultTTL < tokencache.MinDefaultTTL {
		v.addAt(at(p, "default_ttl"), path+".default_ttl", "%s is shorter than %s", o.DefaultTTL, tokencache.MinDefaultTTL)
	}
	if o.Timeout <= 0 {
		v.addAt(at(p, "timeout"), path+".timeout", "must be positive")
	}
	ip := o.Inject.Pos
	if !validHeaderName(o.Inject.Header) {
		v.addAt(at(ip, "header"), path+".inject.header", "%q is not a header name", o.Inject.Header)
	} else if reservedHeader(o.Inject.Header) {
		v.addAt(at(ip, "header"), path+".inject.header", "%q is a header the proxy manages itself", o.Inject.Header)
	}
	if strings.Count(o.Inject.Format, "{token}") != 1 {
		v.addAt(at(ip, "format"), path+".inject.format", "%q must hold {token} once", o.Inject.Format)
	} else if strings.ContainsAny(o.Inject.Format, "\r\n") {
		v.addAt(at(ip, "format"), path+".inject.format", "holds a line break")
	}
}

// signIn checks the keys of sign-in, revocation, the store and the
// request methods.
func (v *validator) signIn(path string, o *OAuth2) {
	p := o.Pos
	for _, u := range []struct {
		key string
		val URL
	}{{"auth_url", o.AuthURL}, {"redirect_url", o.RedirectURL}, {"device_auth_url", o.DeviceAuthURL}, {"revoke_url", o.RevokeURL}} {
		if !u.val.IsZero() {
			v.httpURL(p, path, u.key, u.val, o.InsecureHTTP)
		}
	}
	if o.Prompt != "" {
		v.oneOf(p, path, "prompt", o.Prompt, "consent", "login", "select_account", "none")
	}
	if o.ClientAuth == "client_secret_post" {
		if o.TokenMethod == "GET" {
			v.addAt(at(p, "token_method"), path+".token_method", "GET with client_auth client_secret_post would put the client secret in the URL: use client_secret_basic")
		}
		if o.RevokeMethod == "GET" {
			v.addAt(at(p, "revoke_method"), path+".revoke_method", "GET with client_auth client_secret_post would put the client secret in the URL: use client_secret_basic")
		}
	}
	if o.TokenMethod == "GET" && o.GrantType == tokencache.GrantPassword {
		v.addAt(at(p, "token_method"), path+".token_method", "GET with grant_type password would put the password in the URL: use POST")
	}
	if o.TokenMethod == "GET" && o.RequestFormat == "json" {
		v.addAt(at(p, "token_method"), path+".token_method", "GET sends no body: request_format json cannot apply")
	}
	if _, set := p["revoke_method"]; set && o.RevokeURL.IsZero() {
		v.addAt(p["revoke_method"], path+".revoke_method", "set, but there is no revoke_url")
	}
	if o.RevokeOnShutdown {
		switch {
		case o.RevokeURL.IsZero():
			v.addAt(p["revoke_on_shutdown"], path+".revoke_on_shutdown", "needs revoke_url")
		case o.GrantType != tokencache.GrantClientCredentials && o.GrantType != tokencache.GrantPassword:
			v.addAt(p["revoke_on_shutdown"], path+".revoke_on_shutdown", "only applies to grant_type client_credentials, password (a stored refresh token outlives the process)")
		}
	}
	_, storeSet := p["store"]
	_, keySet := p["store_key"]
	switch {
	case storeSet && !keySet:
		v.addAt(p["store"], path+".store", "needs store_key (32 bytes, base64): the refresh tokens are encrypted at rest")
	case keySet && !storeSet:
		v.addAt(p["store_key"], path+".store_key", "set, but there is no store")
	case keySet && !v.failedAt(p["store_key"]):
		if _, err := ParseStoreKey(o.StoreKey.Reveal()); err != nil {
			v.addAt(p["store_key"], path+".store_key", "%v", err)
		}
	}
	if storeSet && v.cfg.Cache != nil {
		v.warnAt(p["store"], path+".store", "not used: with cache, refresh tokens live in the shared cache")
	}
	if o.GrantType == tokencache.GrantAuthorizationCode || o.GrantType == tokencache.GrantDeviceCode {
		if !storeSet && v.cfg.Cache == nil {
			v.warnAt(p[""], path, "no store: the refresh token lives in memory only, and every restart needs a new sign-in (set store and store_key)")
		}
		if o.GrantType == tokencache.GrantAuthorizationCode && o.RedirectURL.IsZero() {
			v.addAt(p[""], path, "missing redirect_url: admin_listen %q has no fixed port, so there is no default (the authorization server must know the callback in advance)", v.cfg.AdminListen)
		}
	}
}

// httpURL checks an absolute http(s) URL that tokens or secrets travel to.
func (v *validator) httpURL(ps Positions, path, key string, cu URL, insecure bool) *url.URL {
	p, path := at(ps, key), sub(path, key)
	u, raw := cu.URL, shownURL(cu.URL)
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		v.addAt(p, path, "%q: want an absolute https:// URL", raw)
		return nil
	case u.Host == "" || u.Hostname() == "":
		v.addAt(p, path, "%q has no host", raw)
		return nil
	case u.User != nil:
		v.addAt(p, path, "credentials in the URL are not allowed: they would show in logs and errors")
		return nil
	case u.Fragment != "" || strings.Contains(cu.String(), "#"):
		v.addAt(p, path, "%q has a #fragment", raw)
		return nil
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			v.addAt(p, path, "%q: port %q is not a number from 1 to 65535", raw, port)
			return nil
		}
	}
	if u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
		if !insecure {
			v.addAt(p, path, "%q is plain http beyond this machine: tokens and secrets would cross the network in clear; use https, or set insecure_http: true", raw)
			return nil
		}
		v.warnAt(p, path, "%q is plain http (insecure_http: true): tokens and secrets cross the network in clear", raw)
	}
	return u
}

func (v *validator) route(i int, r *Route, prefixes map[string]int) {
	path := fmt.Sprintf("routes[%d]", i)
	if r == nil {
		return // the decoder reported the empty entry
	}
	p := r.Pos
	if r.Prefix != "" {
		path = fmt.Sprintf("routes[%d] (prefix %q)", i, r.Prefix)
	}
	v.missing(p, path, "prefix", r.Prefix, "")
	if r.Prefix == "" {
		// reported by missing
	} else if msg := checkPrefix(r.Prefix); msg != "" {
		v.addAt(at(p, "prefix"), path, "prefix %s", msg)
	} else {
		norm := NormalizePrefix(r.Prefix)
		if j, dup := prefixes[norm]; dup {
			v.addAt(at(p, "prefix"), path, "the same prefix as routes[%d] (line %d)", j, at(v.cfg.Routes[j].Pos, "prefix").Line)
		} else {
			prefixes[norm] = i
		}
	}
	v.missing(p, path, "upstream", r.Upstream.String(), "")
	if !r.Upstream.IsZero() {
		if u := v.httpURL(p, path, "upstream", r.Upstream, r.InsecureHTTP); u != nil && (u.RawQuery != "" || u.ForceQuery) {
			v.addAt(at(p, "upstream"), sub(path, "upstream"), "%q has a query: put the path only", shownURL(u))
		}
	}
	v.routeTLS(path, r)
	var inject string
	switch o, ok := v.cfg.OAuth2[r.OAuth2]; {
	case r.OAuth2 == "":
		v.missing(p, path, "oauth2", "", ": which OAuth2 configuration supplies this route's tokens")
	case !ok:
		names := slices.Sorted(maps.Keys(v.cfg.OAuth2))
		msg := fmt.Sprintf("oauth2 %q is not defined", r.OAuth2)
		if s := suggest(r.OAuth2, names); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		} else if len(names) > 0 {
			msg += " (defined: " + strings.Join(names, ", ") + ")"
		}
		v.addAt(at(p, "oauth2"), path, "%s", msg)
	case o != nil:
		inject = o.Inject.Header
	}
	for _, code := range r.RetryOn {
		switch {
		case code == http.StatusForbidden:
			v.addAt(at(p, "retry_on"), sub(path, "retry_on"), "403 is never retried: the token was valid and lacked permission; a new one will not help")
		case code < 400 || code > 499:
			v.addAt(at(p, "retry_on"), sub(path, "retry_on"), "%d: only 4xx statuses can mean the token was rejected", code)
		}
	}
	if *r.RetryBodyLimit < 0 {
		v.addAt(at(p, "retry_body_limit"), sub(path, "retry_body_limit"), "must not be negative")
	}
	if r.Timeout <= 0 {
		v.addAt(at(p, "timeout"), sub(path, "timeout"), "must be positive")
	}
	for _, k := range slices.Sorted(maps.Keys(r.SetHeaders)) {
		val := r.SetHeaders[k]
		switch {
		case !validHeaderName(k):
			v.addAt(at(p, "set_headers"), sub(path, "set_headers"), "%q is not a header name", k)
		case reservedHeader(k) || strings.EqualFold(k, "Authorization") || strings.EqualFold(k, inject):
			v.addAt(at(p, "set_headers"), sub(path, "set_headers."+k), "set by the proxy")
		case strings.ContainsAny(val, "\r\n\x00"):
			v.addAt(at(p, "set_headers"), sub(path, "set_headers."+k), "the value holds a line break or NUL")
		}
	}
	for j, k := range r.RemoveHeaders {
		if !validHeaderName(k) {
			v.addAt(at(p, "remove_headers"), sub(path, fmt.Sprintf("remove_headers[%d]", j)), "%q is not a header name", k)
		}
	}
}

// shownURL is u as problems and warnings show it: without its query,
// which can hold an API key ("?…" says there was one), and without
// credentials.
func shownURL(u *url.URL) string {
	v := *u
	v.User = nil
	q := v.RawQuery != "" || v.ForceQuery
	v.RawQuery, v.ForceQuery, v.Fragment, v.RawFragment = "", false, "", ""
	if q {
		return v.String() + "?…"
	}
	return v.String()
}

// sameListener reports whether two host:port listen addresses collide:
// the same port on the same host, or on hosts one of which is every
// interface. Port 0 (any free port) never collides.
func sameListener(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	any := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" || h == "[::]" }
	// localhost is 127.0.0.1 and ::1 to the resolver that binds it.
	local := func(h string) bool {
		return strings.EqualFold(h, "localhost") || h == "127.0.0.1" || h == "::1" || h == "[::1]"
	}
	if strings.EqualFold(ha, "localhost") && local(hb) || strings.EqualFold(hb, "localhost") && local(ha) {
		return true
	}
	return strings.EqualFold(ha, hb) || any(ha) || any(hb)
}

// checkPrefix says what is wrong with a route prefix, or "".
func checkPrefix(s string) string {
	if !strings.HasPrefix(s, "/") {
		return fmt.Sprintf("%q must start with /", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c == 0x7f || c == '%' || c == '?' || c == '#' || c == '\\' {
			return fmt.Sprintf("%q holds %q: write the path as plain characters", s, c)
		}
	}
	for _, seg := range strings.Split(strings.Trim(s, "/"), "/") {
		if seg == "." || seg == ".." || (seg == "" && s != "/") {
			return fmt.Sprintf("%q has an empty, . or .. segment", s)
		}
	}
	return ""
}

// NormalizePrefix is a route prefix without its trailing slash ("/" stays
// "/"): "/a" and "/a/" are the same route.
func NormalizePrefix(s string) string {
	if t := strings.TrimRight(s, "/"); t != "" {
		return t
	}
	return "/"
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c == '-' || c == '_' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// validHeaderName reports whether s is an RFC 9110 token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// reservedHeader names headers that framing, hop-by-hop handling or the
// proxy itself own.
func reservedHeader(name string) bool {
	switch http.CanonicalHeaderKey(name) {
	case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Proxy-Connection", "Te", "Trailer", "Upgrade":
		return true
	}
	return false
}
