package upstreams

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/metric"

	"github.com/oauthproxy/oauthproxy/proxy"
	"github.com/oauthproxy/oauthproxy/tokencache"
)

// Options are what Build needs besides the config.
type Options struct {
	Logger       *slog.Logger        // nil: slog.Default()
	Meter        metric.Meter        // request metrics; nil: none
	TokenMetrics *tokencache.Metrics // token metrics; nil: none
}

// Runtime is a Config built for serving: the handler and the token source
// of every oauth2 entry that a route uses. Nothing in it reads config again.
type Runtime struct {
	Handler *proxy.Handler
	Sources map[string]*tokencache.Source
}

// Start begins renewing every source's token in the background.
func (rt *Runtime) Start() {
	for _, s := range rt.Sources {
		s.Start()
	}
}

// Close stops the background renewals.
func (rt *Runtime) Close() {
	for _, s := range rt.Sources {
		s.Close()
	}
}

// Build turns a loaded Config into routes, transports and token sources.
func Build(cfg *Config, opts Options) (*Runtime, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	rt := &Runtime{Sources: map[string]*tokencache.Source{}}
	transports := map[string]*http.Transport{}
	routes := make([]proxy.Route, 0, len(cfg.Routes))
	for _, r := range cfg.Routes {
		o := cfg.OAuth2[r.OAuth2]
		src, ok := rt.Sources[r.OAuth2]
		if !ok {
			var err error
			if src, err = NewSource(cfg, r.OAuth2, opts); err != nil {
				return nil, err
			}
			rt.Sources[r.OAuth2] = src
		}
		up, err := url.Parse(r.Upstream)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r.Prefix, err)
		}
		// One pooled transport per upstream origin (and timeout, and proxy).
		key := up.Scheme + "://" + up.Host + " " + r.Timeout.String() + " " + r.ProxyURL.Reveal()
		tr, ok := transports[key]
		if !ok {
			via, err := parseProxyURL(r.ProxyURL)
			if err != nil {
				return nil, fmt.Errorf("route %q: proxy_url: %w", r.Prefix, err)
			}
			tr = proxy.NewTransport(proxy.TransportOptions{ResponseHeaderTimeout: r.Timeout, Proxy: via})
			transports[key] = tr
		}
		routes = append(routes, proxy.Route{
			Prefix:           r.Prefix,
			Upstream:         up,
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
			Transport:        tr,
		})
	}
	in, err := cfg.inbound()
	if err != nil {
		return nil, err
	}
	h, err := proxy.NewHandler(routes, proxy.Options{Logger: log, Meter: opts.Meter, Inbound: in})
	if err != nil {
		return nil, err
	}
	rt.Handler = h
	return rt, nil
}

// NewSource builds the token source of one oauth2 entry.
func NewSource(cfg *Config, name string, opts Options) (*tokencache.Source, error) {
	o, ok := cfg.OAuth2[name]
	if !ok || o == nil {
		return nil, fmt.Errorf("oauth2 %q is not defined in %s", name, cfg.File)
	}
	auth := map[string]tokencache.ClientAuth{
		"client_secret_basic": tokencache.ClientSecretBasic,
		"client_secret_post":  tokencache.ClientSecretPost,
		"none":                tokencache.ClientAuthNone,
	}[o.ClientAuth]
	via, err := parseProxyURL(o.ProxyURL)
	if err != nil {
		return nil, fmt.Errorf("oauth2 %q: proxy_url: %w", name, err)
	}
	format := tokencache.FormRequest
	if o.RequestFormat == "json" {
		format = tokencache.JSONRequest
	}
	c := tokencache.Config{
		Endpoint: tokencache.Endpoint{
			Name:         name,
			TokenURL:     o.TokenURL,
			ClientID:     o.ClientID,
			ClientSecret: o.ClientSecret,
			ClientAuth:   auth,
			Scopes:       o.Scopes,
			Audience:     o.Audience,
			Resource:     o.Resource,
			Params:       o.Params,
			Headers:      o.Headers,
			Format:       format,
			Fields: tokencache.ResponseFields{
				AccessToken:  o.Response.AccessToken,
				ExpiresIn:    o.Response.ExpiresIn,
				RefreshToken: o.Response.RefreshToken,
				TokenType:    o.Response.TokenType,
				Scope:        o.Response.Scope,
			},
			DefaultTTL:   o.DefaultTTL,
			AnyTokenType: !strings.HasPrefix(strings.ToLower(o.Inject.Format), "bearer "),
			Timeout:      o.Timeout,
			Proxy:        via,
		},
		Grant: tokencache.Grant{
			Type:         o.GrantType,
			Username:     o.Username,
			Password:     o.Password,
			RefreshToken: o.RefreshToken,
		},
		RefreshBefore: o.RefreshBefore,
		Logger:        opts.Logger,
		Metrics:       opts.TokenMetrics,
	}
	if raw := o.Pos["client_secret"].raw; strings.Contains(raw, "${file:") {
		res := cfg.resolver
		c.ReloadSecret = func() (tokencache.Secret, error) {
			v, err := res.expand(raw)
			return tokencache.Secret(v), err
		}
	}
	return tokencache.New(c)
}

// inbound converts the inbound section for the proxy. The listen host,
// when it is a name, is an allowed Host.
func (c *Config) inbound() (proxy.Inbound, error) {
	in := proxy.Inbound{AllowedHosts: slices.Clone(c.Inbound.AllowedHosts), AllowedOrigins: c.Inbound.AllowedOrigins}
	if rh := c.Inbound.RequireHeader; rh != nil {
		in.RequireHeader, in.RequireValue = rh.Name, rh.Value.Reveal()
	}
	for _, s := range c.Inbound.AllowCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return in, fmt.Errorf("inbound.allow_cidrs: %q: %w", s, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		in.AllowCIDRs = append(in.AllowCIDRs, p.Masked())
	}
	if host, _, err := net.SplitHostPort(c.Listen); err == nil && host != "" && net.ParseIP(host) == nil {
		in.AllowedHosts = append(in.AllowedHosts, host)
	}
	return in, nil
}

// Secrets returns the credentials the config holds (client secrets,
// passwords, refresh tokens, the inbound shared secret), for scrubbing
// logs. Values shorter than 6 characters are left out: scrubbing them
// would garble every log line.
func (c *Config) Secrets() []tokencache.Secret {
	var out []tokencache.Secret
	add := func(s tokencache.Secret) {
		if len(s) >= 6 && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, o := range c.OAuth2 {
		if o != nil {
			add(o.ClientSecret)
			add(o.Password)
			add(o.RefreshToken)
		}
	}
	if rh := c.Inbound.RequireHeader; rh != nil {
		add(rh.Value)
	}
	return out
}
