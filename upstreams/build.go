package upstreams

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/metric"

	"github.com/oauthproxy/oauthproxy/proxy"
	"github.com/oauthproxy/oauthproxy/proxy/mail"
	"github.com/oauthproxy/oauthproxy/tokencache"
)

// Options are what Build needs besides the config.
type Options struct {
	Logger *slog.Logger // nil: slog.Default()
	// Handler is the long-lived request handler the built table is meant
	// for; nil makes a new one (with Meter).
	Handler      *proxy.Handler
	Meter        metric.Meter        // request metrics of a new Handler; nil: none
	TokenMetrics *tokencache.Metrics // token metrics; nil: none
	// Scrub learns every secret of the config, so that no log line holds
	// one; nil: none.
	Scrub *tokencache.Scrubber
	// CacheObserve counts the shared cache's operations
	// (oauthproxy_cache_operations_total); nil: none.
	CacheObserve func(op, result string)
}

// Runtime is a Config built for serving: the route table and the token
// source of every oauth2 entry that a route uses, and the transports they
// share. Nothing in it reads config again.
type Runtime struct {
	Config  *Config
	Handler *proxy.Handler
	// Table is the route table, to be put in service with Handler.Swap.
	Table *proxy.Table
	// Sources holds the token source of every oauth2 entry a route uses.
	Sources map[string]*tokencache.Source

	fingerprints map[string]string // entry name -> fingerprint of its settings
	transports   *transports
	stores       *stores
	cache        *sharedCache // nil: no cache section
	mail         map[string]*mail.Account
}

// Build turns a loaded Config into a route table, transports and token
// sources. With prev, the runtime it replaces, the token sources of entries
// whose settings did not change (by fingerprint, secret contents included)
// and the transports to unchanged upstreams are taken over, so that a
// reload keeps their tokens and connections; prev.Retire(next) then stops
// what was not. Build starts nothing: Start does.
func Build(cfg *Config, prev *Runtime, opts Options) (*Runtime, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	cfg.AddSecrets(opts.Scrub)
	rt := &Runtime{
		Config:       cfg,
		Handler:      opts.Handler,
		Sources:      map[string]*tokencache.Source{},
		fingerprints: map[string]string{},
	}
	var prevTr *transports
	if prev != nil {
		prevTr = prev.transports
	}
	rt.transports = newTransports(prevTr)
	var prevSt *stores
	if prev != nil {
		prevSt = prev.stores
	}
	rt.stores = newStores(prevSt, log)
	var prevCache *sharedCache
	if prev != nil {
		prevCache = prev.cache
	}
	var err error
	if rt.cache, err = openCache(cfg.Cache, prevCache, log, opts.CacheObserve); err != nil {
		return nil, err
	}
	if rt.Handler == nil {
		h, err := proxy.NewHandler(proxy.Options{Logger: log, Meter: opts.Meter})
		if err != nil {
			return nil, err
		}
		rt.Handler = h
	}
	routes := make([]proxy.Route, 0, len(cfg.Routes))
	for _, r := range cfg.Routes {
		o := cfg.OAuth2[r.OAuth2]
		src, ok := rt.Sources[r.OAuth2]
		if !ok {
			var err error
			if src, err = rt.source(cfg, r.OAuth2, prev, opts); err != nil {
				rt.closeNew(prev)
				return nil, err
			}
			rt.Sources[r.OAuth2] = src
		}
		routes = append(routes, proxy.Route{
			Prefix:           r.Prefix,
			Upstream:         r.Upstream.URL,
			StripPrefix:      *r.StripPrefix,
			OAuth2:           r.OAuth2,
			Tokens:           src,
			InjectHeader:     o.Inject.Header,
			InjectFormat:     o.Inject.Format,
			RetryOn:          slices.Clone(r.RetryOn),
			RetryBodyLimit:   int64(*r.RetryBodyLimit),
			MaxBody:          int64(*r.MaxBody),
			SetHeaders:       r.SetHeaders,
			RemoveHeaders:    r.RemoveHeaders,
			ForwardedHeaders: r.ForwardedHeaders,
			RewriteLocation:  r.RewriteLocation,
			Transport:        rt.transports.upstream(r),
		})
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.mailUses())) {
		if _, ok := rt.Sources[name]; ok {
			continue
		}
		src, err := rt.source(cfg, name, prev, opts)
		if err != nil {
			rt.closeNew(prev)
			return nil, err
		}
		rt.Sources[name] = src
	}
	rt.mail = rt.mailAccounts()
	table, err := rt.Handler.NewTable(routes, cfg.inbound())
	if err != nil {
		rt.closeNew(prev)
		return nil, err
	}
	rt.Table = table
	return rt, nil
}

// source returns the token source of one entry: prev's, when its settings
// are the same, or a new one.
func (rt *Runtime) source(cfg *Config, name string, prev *Runtime, opts Options) (*tokencache.Source, error) {
	o := cfg.OAuth2[name]
	fp := o.fingerprint()
	rt.fingerprints[name] = fp
	if prev != nil && prev.fingerprints[name] == fp {
		if src, ok := prev.Sources[name]; ok {
			return src, nil
		}
	}
	c, err := sourceConfig(cfg, name, rt.transports, rt.stores, opts)
	if err != nil {
		return nil, err
	}
	c.Fingerprint = fp
	if rt.cache != nil {
		o := cfg.OAuth2[name]
		c.Shared, c.Store = rt.cache.store, nil
		c.StoreKey = rt.cache.store.EntryKey([]byte(fp))
		c.NoRefreshTokenRotation = o.RefreshTokenRotation != nil && !*o.RefreshTokenRotation
	}
	return tokencache.New(c)
}

// NewSource builds the token source of one oauth2 entry on its own, for
// commands that need one token (oauthproxy token).
func NewSource(cfg *Config, name string, opts Options) (*tokencache.Source, error) {
	if o, ok := cfg.OAuth2[name]; !ok || o == nil {
		return nil, fmt.Errorf("oauth2 %q is not defined in %s", name, cfg.File)
	}
	cfg.AddSecrets(opts.Scrub)
	c, err := sourceConfig(cfg, name, newTransports(nil), newStores(nil, opts.Logger), opts)
	if err != nil {
		return nil, err
	}
	return tokencache.New(c)
}

// sourceConfig turns an oauth2 entry into a token source's configuration.
func sourceConfig(cfg *Config, name string, trs *transports, sts *stores, opts Options) (tokencache.Config, error) {
	o := cfg.OAuth2[name]
	grant, ok := grants[o.GrantType]
	if !ok {
		return tokencache.Config{}, fmt.Errorf("oauth2 %q: grant_type %q cannot be built", name, o.GrantType)
	}
	auth, ok := clientAuths[o.ClientAuth]
	if !ok {
		return tokencache.Config{}, fmt.Errorf("oauth2 %q: client_auth %q cannot be built", name, o.ClientAuth)
	}
	var reread func() (tokencache.Secret, error)
	if o.ClientSecret.FromFile() {
		secret, res := o.ClientSecret, cfg.res
		id, sc := o.ClientID, opts.Scrub
		reread = func() (tokencache.Secret, error) {
			v, err := res.reread(secret)
			if err == nil && v == "" {
				// Caught between a truncate and a write: keep the old one.
				err = errors.New("the client_secret file is empty")
			}
			if err == nil {
				sc.AddClient(id, tokencache.Secret(v)) // before it is ever sent
			}
			return tokencache.Secret(v), err
		}
	}
	headers := make(map[string]tokencache.Secret, len(o.Headers))
	for k, v := range o.Headers {
		headers[k] = v.Secret
	}
	format := tokencache.FormRequest
	if o.RequestFormat == "json" {
		format = tokencache.JSONRequest
	}
	client := &tokencache.Client{
		Name:    name,
		Auth:    auth.build(o, tokencache.NewClientSecret(o.ClientSecret.Secret, reread)),
		Format:  format,
		Headers: headers,
		Timeout: o.Timeout,
		HTTP:    tokencache.NewHTTPClient(o.Timeout, trs.token(o)),
		Scrub:   opts.Scrub,
	}
	var loginURL string
	if o.GrantType == tokencache.GrantAuthorizationCode || o.GrantType == tokencache.GrantDeviceCode {
		loginURL = cfg.LoginURL(name)
	}
	var store tokencache.Store
	if o.Store != "" {
		st, err := sts.get(cfg, o)
		if err != nil {
			return tokencache.Config{}, err
		}
		store = st
	}
	return tokencache.Config{
		Name:        name,
		Client:      client,
		TokenURL:    o.TokenURL.String(),
		TokenMethod: string(o.TokenMethod),
		LoginURL:    loginURL,
		Warnings:    o.tlsWarnings(),
		Store:       store,
		Revocation:  tokencache.Revocation{URL: o.RevokeURL.String(), Method: string(o.RevokeMethod)},
		Params:      o.tokenParams(),
		Fields: tokencache.ResponseFields{
			AccessToken:  o.Response.AccessToken,
			ExpiresIn:    o.Response.ExpiresIn,
			RefreshToken: o.Response.RefreshToken,
			TokenType:    o.Response.TokenType,
			Scope:        o.Response.Scope,
		},
		Grant:         grant.build(o),
		DefaultTTL:    o.DefaultTTL,
		AnyTokenType:  !strings.HasPrefix(strings.ToLower(o.Inject.Format), "bearer "),
		RefreshBefore: o.RefreshBefore,
		Logger:        opts.Logger,
		Metrics:       opts.TokenMetrics,
		Scrub:         opts.Scrub,
	}, nil
}

// tokenParams are the parameters every token request of o carries.
func (o *OAuth2) tokenParams() tokencache.Form {
	var f tokencache.Form
	if len(o.Scopes) > 0 {
		f.Add("scope", tokencache.Secret(strings.Join(o.Scopes, " ")))
	}
	if o.Audience != "" {
		f.Add("audience", tokencache.Secret(o.Audience))
	}
	if o.Resource != "" {
		f.Add("resource", tokencache.Secret(o.Resource))
	}
	for _, k := range slices.Sorted(maps.Keys(o.Params)) {
		f.Add(k, o.Params[k].Secret)
	}
	return f
}

// Start begins renewing every source's token in the background. Sources
// taken over from a previous runtime are running already.
func (rt *Runtime) Start() {
	for _, s := range rt.Sources {
		s.Start()
	}
}

// Retire stops what rt holds that next did not take over: the background
// renewals of entries next rebuilt or dropped, and the idle connections of
// transports next does not use. Requests still in flight on rt's table
// finish: a retired source still answers Token.
func (rt *Runtime) Retire(next *Runtime) {
	for name, s := range rt.Sources {
		if next == nil || next.Sources[name] != s {
			s.Close()
		}
	}
	var keep *transports
	if next != nil {
		keep = next.transports
	}
	rt.transports.retire(keep)
	var keepSt *stores
	if next != nil {
		keepSt = next.stores
	}
	rt.stores.retire(keepSt)
	if rt.cache != nil && (next == nil || next.cache != rt.cache) {
		rt.cache.store.Close()
	}
}

// Close stops everything: renewals, idle connections.
func (rt *Runtime) Close() { rt.Retire(nil) }

// closeNew undoes a Build that failed: sources it made are closed, those
// taken over from prev are left alone.
func (rt *Runtime) closeNew(prev *Runtime) {
	for name, s := range rt.Sources {
		if prev == nil || prev.Sources[name] != s {
			s.Close()
		}
	}
	var prevSt *stores
	if prev != nil {
		prevSt = prev.stores
	}
	rt.stores.retire(prevSt)
	if rt.cache != nil && (prev == nil || prev.cache != rt.cache) {
		rt.cache.store.Close()
	}
}

// Fingerprint is the identity of an oauth2 entry's effective settings, secret
// contents included as digests: it changes when anything that decides the
// tokens changes, a rotated secret file included.
func (rt *Runtime) Fingerprint(name string) string { return rt.fingerprints[name] }

// inbound converts the inbound section for the proxy. The listen host,
// when it is a name, is an allowed Host.
func (c *Config) inbound() proxy.Inbound {
	in := proxy.Inbound{AllowedHosts: slices.Clone(c.Inbound.AllowedHosts), AllowedOrigins: c.Inbound.AllowedOrigins}
	if rh := c.Inbound.RequireHeader; rh != nil {
		in.RequireHeader, in.RequireValue = rh.Name, rh.Value.Reveal()
	}
	for _, s := range c.Inbound.AllowCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, _ := netip.ParseAddr(s) // validated: a prefix or an address
			p = netip.PrefixFrom(a, a.BitLen())
		}
		in.AllowCIDRs = append(in.AllowCIDRs, p.Masked())
	}
	if host, _, err := net.SplitHostPort(c.Listen); err == nil && host != "" && net.ParseIP(host) == nil {
		in.AllowedHosts = append(in.AllowedHosts, host)
	}
	if a := c.ListenACME(); a != nil { // the names the certificate is for are this proxy's
		in.AllowedHosts = append(in.AllowedHosts, a.Domains...)
	}
	return in
}

// AddSecrets teaches sc every credential the config holds, so that logs
// and messages never show one: client secrets (with the client's Basic
// credentials), passwords, refresh tokens, the values of params and
// headers, proxy passwords and the inbound shared secret. A nil sc is fine.
func (c *Config) AddSecrets(sc *tokencache.Scrubber) {
	if sc == nil {
		return
	}
	for _, o := range c.OAuth2 {
		if o == nil {
			continue
		}
		sc.AddClient(o.ClientID, o.ClientSecret.Secret)
		for _, u := range []URL{o.TokenURL, o.AuthURL, o.DeviceAuthURL, o.RevokeURL} {
			addQuery(sc, u)
		}
		o.ProxyURL.addSecrets(sc)
		if o.IonAPIFile != "" { // every value of an .ionapi file is a secret
			sc.Add(tokencache.Secret(o.ClientID), tokencache.Secret(o.Username))
		}
		sc.Add(o.Password.Secret, o.RefreshToken.Secret)
		for _, v := range o.Params {
			sc.Add(v.Secret)
		}
		for _, v := range o.Headers {
			sc.Add(v.Secret)
		}
	}
	for _, r := range c.Routes {
		if r != nil {
			r.ProxyURL.addSecrets(sc)
			addQuery(sc, r.Upstream)
		}
	}
	if rh := c.Inbound.RequireHeader; rh != nil {
		sc.Add(rh.Value.Secret)
	}
	if a := c.AdminAuth; a != nil {
		sc.Add(a.Password.Secret)
	}
	if c.Mail != nil {
		for _, a := range c.Mail.Accounts {
			if a != nil {
				sc.Add(a.Password.Secret)
			}
		}
	}
	if c.Cache != nil {
		sc.Add(c.Cache.Key.Secret)
		for _, k := range c.Cache.PreviousKeys {
			sc.Add(k.Secret)
		}
		if r := c.Cache.Redis; r != nil {
			sc.Add(r.Password.Secret)
			if u, err := url.Parse(r.URL.Reveal()); err == nil && u.User != nil {
				if pw, ok := u.User.Password(); ok {
					sc.Add(tokencache.Secret(pw))
				}
			}
		}
	}
}

// addQuery teaches sc the values of u's query that could be keys: an API
// key in a token URL is a secret (messages show URLs without their query,
// but a server may echo it). Short values (format=json, tenant=acme) are
// left alone: scrubbing them would garble every log line.
func addQuery(sc *tokencache.Scrubber, u URL) {
	if u.URL == nil {
		return
	}
	for _, vs := range u.Query() {
		for _, v := range vs {
			if len(v) >= minQuerySecret {
				sc.Add(tokencache.Secret(v))
			}
		}
	}
}

// minQuerySecret is the shortest query value taken for a key.
const minQuerySecret = 8
