// Package upstreams is oauthproxy's route table: the YAML config, loaded
// strictly with file:line:col on every problem, ${...} references resolved,
// validated in one pass that reports every problem, and built into the
// proxy's routes and the token sources they use.
//
// Only this package knows YAML. What it builds (proxy.Handler,
// tokencache.Source) never parses config on the request path.
package upstreams

import (
	"net"
	"slices"
	"strings"
	"time"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// Config is a whole config file. Load fills it, applies defaults and
// validates it; a Config that Load returned without error is ready to Build.
type Config struct {
	// Listen is where proxied requests arrive: host:port, or unix:/path.
	Listen string `yaml:"listen"`
	// SocketMode is the file mode of a unix socket, in octal (default 0660).
	SocketMode FileMode `yaml:"socket_mode"`
	// AdminListen serves /healthz, /readyz, /metrics and /tokens.
	AdminListen string             `yaml:"admin_listen"`
	Log         Log                `yaml:"log"`
	Inbound     Inbound            `yaml:"inbound"`
	Server      Server             `yaml:"server"`
	OAuth2      map[string]*OAuth2 `yaml:"oauth2"`
	// TLS, when set, serves listen over HTTPS (HTTP/2 offered), with
	// inbound mTLS when it requires client certificates.
	TLS *ListenTLS `yaml:"tls"`
	// AdminTLS serves admin_listen over HTTPS; with required client
	// certificates it admits the page and actions beyond loopback, as
	// admin_auth does.
	AdminTLS *ListenTLS `yaml:"admin_tls"`
	// Cache, when set, shares tokens between replicas through Redis.
	Cache *Cache `yaml:"cache"`
	// Mail holds the IMAP, POP3 and SMTP listeners.
	Mail     *Mail     `yaml:"mail"`
	Routes   []*Route  `yaml:"routes"`
	File     string    `yaml:"-"` // the file it was loaded from
	Warnings []Problem `yaml:"-"` // what is allowed but worth saying at every start
	Pos      Positions `yaml:"-"`
	// Files is every file the config was read from: the file itself and
	// those ${file:...} references named. A change to one is a change to
	// the config.
	Files []string  `yaml:"-"`
	res   *resolver // to read ${file:...} secrets again

	// AdminAuth, when set, is the HTTP Basic login that the admin page,
	// its JSON, sign-in and the actions need (the probes and /metrics
	// never do). Beyond loopback they need it, or answer 403.
	AdminAuth *AdminAuth `yaml:"admin_auth"`
	// AdminHosts are Host names the admin listener accepts besides
	// localhost and loopback addresses (DNS rebinding defence).
	AdminHosts []string `yaml:"admin_hosts"`
}

// AdminAuth is the admin listener's HTTP Basic login (RFC 7617).
type AdminAuth struct {
	Username string    `yaml:"username"`
	Password Secret    `yaml:"password"`
	Pos      Positions `yaml:"-"`
}

// Log configures logging.
type Log struct {
	Level  LogLevel  `yaml:"level"`  // debug | info | warn | error (default info)
	Format LogFormat `yaml:"format"` // json | text (default json)
	// Access logs one line per request (route, method, path, status,
	// bytes, duration_ms, upstream, retried, token_wait_ms, trace_id)
	// through a buffer flushed every second; AccessQuery adds the query.
	Access      bool      `yaml:"access"`
	AccessQuery bool      `yaml:"access_query"`
	Pos         Positions `yaml:"-"`
}

// Inbound says who may use the proxy port. On loopback none of it is
// required; listening elsewhere needs RequireHeader or AllowCIDRs.
type Inbound struct {
	RequireHeader *RequireHeader `yaml:"require_header"`
	// AllowCIDRs lists the client networks (or single addresses) allowed.
	AllowCIDRs []string `yaml:"allow_cidrs"`
	// AllowedHosts are Host header names accepted besides localhost and
	// loopback addresses (DNS rebinding defence).
	AllowedHosts []string `yaml:"allowed_hosts"`
	// AllowedOrigins are browser origins (scheme://host[:port]) allowed to
	// send requests; every other Origin is refused.
	AllowedOrigins []string  `yaml:"allowed_origins"`
	Pos            Positions `yaml:"-"`
}

// RequireHeader is a shared secret every request must carry.
type RequireHeader struct {
	Name  string    `yaml:"name"`
	Value Secret    `yaml:"value"`
	Pos   Positions `yaml:"-"`
}

// Server holds the listener's limits.
type Server struct {
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"` // default 10s
	IdleTimeout       time.Duration `yaml:"idle_timeout"`        // default 120s
	MaxHeaderBytes    Size          `yaml:"max_header_bytes"`    // default 64KiB
	MaxConnections    int           `yaml:"max_connections"`     // default 1024
	// ShutdownDelay is how long the proxy keeps accepting after SIGTERM
	// with /readyz already 503, so that a load balancer (a Kubernetes
	// endpoint) stops sending first (default 0).
	ShutdownDelay time.Duration `yaml:"shutdown_delay"`
	// ShutdownTimeout is how long in-flight requests get to finish once
	// the listener stops accepting (default 30s); streams and WebSockets
	// still open then are closed. ShutdownGrace is its older name.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	ShutdownGrace   time.Duration `yaml:"shutdown_grace"`
	// BodyIdleTimeout cuts a request whose body stops arriving for this
	// long (default 60s); a slow body that keeps moving is never cut.
	BodyIdleTimeout time.Duration `yaml:"body_idle_timeout"`
	// BodyBufferDir holds the part past 64 KiB of request bodies kept for
	// a retry (up to retry_body_limit), in files unlinked at once; "" is
	// the system's temporary directory ($TMPDIR, /tmp).
	BodyBufferDir string    `yaml:"body_buffer_dir"`
	Pos           Positions `yaml:"-"`
}

// OAuth2 is one named OAuth2 configuration: how to get tokens and how to
// present them.
type OAuth2 struct {
	// IonAPIFile is an Infor .ionapi credentials file: it fills token_url,
	// auth_url, revoke_url, client_id, client_secret, and for a service
	// account username and password (and grant_type password).
	IonAPIFile   string           `yaml:"ionapi_file"`
	GrantType    GrantType        `yaml:"grant_type"` // default client_credentials
	TokenURL     URL              `yaml:"token_url"`
	ClientID     string           `yaml:"client_id"`
	ClientSecret Secret           `yaml:"client_secret"`
	ClientAuth   ClientAuthMethod `yaml:"client_auth"` // default client_secret_basic
	Username     string           `yaml:"username"`
	Password     Secret           `yaml:"password"`
	RefreshToken Secret           `yaml:"refresh_token"`

	Scopes        []string          `yaml:"scopes"`
	Audience      string            `yaml:"audience"`
	Resource      string            `yaml:"resource"`
	Params        map[string]Secret `yaml:"params"`
	Headers       map[string]Secret `yaml:"headers"`
	RequestFormat RequestFormat     `yaml:"request_format"` // default form
	Response      ResponseFields    `yaml:"response"`
	DefaultTTL    time.Duration     `yaml:"default_ttl"`    // default 5m
	RefreshBefore time.Duration     `yaml:"refresh_before"` // default 60s
	Timeout       time.Duration     `yaml:"timeout"`        // default 10s
	Inject        Inject            `yaml:"inject"`
	InsecureHTTP  bool              `yaml:"insecure_http"`
	// ProxyURL sends token requests through an HTTP(S) or SOCKS5 proxy.
	// HTTP_PROXY is never used.
	ProxyURL ProxyURL `yaml:"proxy_url"`
	// TokenMethod is POST (default) or GET: a GET sends the token
	// request's parameters in the query, the client's credentials in the
	// Authorization header.
	TokenMethod HTTPMethod `yaml:"token_method"`

	// Sign-in: the authorization code and device code grants.
	AuthURL URL `yaml:"auth_url"`
	// RedirectURL defaults to the admin listener's callback,
	// http://ADMIN_LISTEN/oauth2/NAME/callback.
	RedirectURL URL    `yaml:"redirect_url"`
	Prompt      string `yaml:"prompt"` // consent | login | select_account | none
	// RequestRefreshToken adds offline_access to the scopes.
	RequestRefreshToken bool       `yaml:"request_refresh_token"`
	AuthMethod          HTTPMethod `yaml:"auth_method"` // GET (a redirect, default) | POST (a form)
	DeviceAuthURL       URL        `yaml:"device_auth_url"`

	// Revocation (RFC 7009).
	RevokeURL    URL        `yaml:"revoke_url"`
	RevokeMethod HTTPMethod `yaml:"revoke_method"` // POST (default) | GET
	// RevokeOnShutdown revokes the access token of a client_credentials or
	// password entry when the proxy stops.
	RevokeOnShutdown bool `yaml:"revoke_on_shutdown"`

	// Store keeps refresh tokens across restarts in one file for all
	// entries, encrypted with StoreKey (32 bytes, base64).
	Store    string `yaml:"store"`
	StoreKey Secret `yaml:"store_key"`
	// RefreshTokenRotation false says the server keeps a refresh token
	// valid when it issues a new one, so that replicas cut off from the
	// cache may keep renewing with it (default true: assume rotation).
	RefreshTokenRotation *bool `yaml:"refresh_token_rotation"`

	// TLS is how the entry's token, device and revocation endpoints are
	// reached: CAs, a client certificate (mTLS, tls_client_auth).
	TLS *TLS `yaml:"tls"`
	// Signed assertions (RFC 7523): client_auth private_key_jwt and the
	// jwt_bearer grant sign with PrivateKeyFile (PEM, RSA or EC P-256).
	PrivateKeyFile string `yaml:"private_key_file"`
	// PrivateKeyID is the kid of every assertion; without it, and with
	// CertificateFile, the header carries x5t#S256 (Microsoft Entra ID).
	PrivateKeyID    string     `yaml:"private_key_id"`
	CertificateFile string     `yaml:"certificate_file"`
	SigningAlg      SigningAlg `yaml:"signing_alg"` // RS256 | PS256 | ES256; default from the key
	// AssertionAudience is the aud of assertions (default token_url).
	AssertionAudience string `yaml:"assertion_audience"`
	// The jwt_bearer grant's assertion: sub, iss (default client_id) and
	// further claims.
	AssertionSubject string            `yaml:"assertion_subject"`
	AssertionIssuer  string            `yaml:"assertion_issuer"`
	AssertionClaims  map[string]string `yaml:"assertion_claims"`

	Name string    `yaml:"-"`
	Pos  Positions `yaml:"-"`

	signer *tokencache.Signer // loaded by validation, when the entry signs
}

// ResponseFields are the token response's field names (dotted paths).
type ResponseFields struct {
	AccessToken  string    `yaml:"access_token"`
	ExpiresIn    string    `yaml:"expires_in"`
	RefreshToken string    `yaml:"refresh_token"`
	TokenType    string    `yaml:"token_type"`
	Scope        string    `yaml:"scope"`
	Pos          Positions `yaml:"-"`
}

// Inject is how a token reaches the upstream.
type Inject struct {
	Header string    `yaml:"header"` // default Authorization
	Format string    `yaml:"format"` // default "Bearer {token}"
	Pos    Positions `yaml:"-"`
}

// Route maps a path prefix to an upstream and an oauth2 entry.
type Route struct {
	Prefix   string `yaml:"prefix"`
	Upstream URL    `yaml:"upstream"`
	OAuth2   string `yaml:"oauth2"`
	// StripPrefix drops the prefix before joining the path onto the
	// upstream's (default true).
	StripPrefix      *bool             `yaml:"strip_prefix"`
	RetryOn          []int             `yaml:"retry_on"`         // default [401]; [] disables
	RetryBodyLimit   *Size             `yaml:"retry_body_limit"` // default 1MiB
	Timeout          time.Duration     `yaml:"timeout"`          // default 60s, until response headers
	SetHeaders       map[string]string `yaml:"set_headers"`
	RemoveHeaders    []string          `yaml:"remove_headers"`
	ForwardedHeaders bool              `yaml:"forwarded_headers"`
	MaxBody          *Size             `yaml:"max_body"` // default 10MiB; 0 is unlimited
	RewriteLocation  bool              `yaml:"rewrite_location"`
	InsecureHTTP     bool              `yaml:"insecure_http"`
	ProxyURL         ProxyURL          `yaml:"proxy_url"` // reach the upstream through a proxy
	TLS              *TLS              `yaml:"tls"`       // CAs and client certificate towards the upstream
	Pos              Positions         `yaml:"-"`
}

// Size is a number of bytes; YAML takes 512, 64KiB, 1MiB or 1GiB.
type Size int64

// Positions maps a key of a YAML mapping to where its value stands; the
// empty key is the mapping itself.
type Positions map[string]Pos

// Pos is a place in a config file.
type Pos struct {
	Line, Col int
	raw       string // the scalar as written, before ${...} references
}

// Defaults.
const (
	DefaultListen            = "127.0.0.1:8080"
	DefaultAdminListen       = "127.0.0.1:9090"
	DefaultSocketMode        = FileMode(0o660)
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultMaxConnections    = 1024
	DefaultShutdownTimeout   = 30 * time.Second
	DefaultBodyIdleTimeout   = 60 * time.Second
	DefaultRetryBodyLimit    = 1 << 20
	DefaultMaxBody           = 10 << 20
	DefaultRouteTimeout      = 60 * time.Second
	DefaultInjectHeader      = "Authorization"
	DefaultInjectFormat      = "Bearer {token}"
)

// applyDefaults fills what the file left out. It runs before validation so
// that validation sees the values that will be used.
func (c *Config) applyDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	defDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Listen, DefaultListen)
	def(&c.AdminListen, DefaultAdminListen)
	if c.SocketMode == 0 {
		c.SocketMode = DefaultSocketMode
	}
	defEnum(&c.Log.Level, "info", c.Log.Pos, "level")
	defEnum(&c.Log.Format, "json", c.Log.Pos, "format")
	defDur(&c.Server.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	defDur(&c.Server.IdleTimeout, DefaultIdleTimeout)
	defDur(&c.Server.ShutdownTimeout, c.Server.ShutdownGrace) // the old name
	defDur(&c.Server.ShutdownTimeout, DefaultShutdownTimeout)
	defDur(&c.Server.BodyIdleTimeout, DefaultBodyIdleTimeout)
	if c.Server.MaxHeaderBytes == 0 {
		c.Server.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.Server.MaxConnections == 0 {
		c.Server.MaxConnections = DefaultMaxConnections
	}
	for name, o := range c.OAuth2 {
		if o == nil {
			continue
		}
		o.Name = name
		defEnum(&o.GrantType, tokencache.GrantClientCredentials, o.Pos, "grant_type")
		auth := ClientAuthMethod("client_secret_basic")
		if o.GrantType == tokencache.GrantJWTBearer {
			auth = "none" // RFC 7523 §2.1: the assertion is the credential
		}
		defEnum(&o.ClientAuth, auth, o.Pos, "client_auth")
		defEnum(&o.RequestFormat, "form", o.Pos, "request_format")
		defEnum(&o.TokenMethod, "POST", o.Pos, "token_method")
		defEnum(&o.RevokeMethod, "POST", o.Pos, "revoke_method")
		defEnum(&o.AuthMethod, "GET", o.Pos, "auth_method")
		if o.RedirectURL.IsZero() && o.GrantType == tokencache.GrantAuthorizationCode && fixedPort(c.AdminListen) {
			o.RedirectURL.UnmarshalText([]byte(adminURL(c.AdminListen) + "/oauth2/" + name + "/callback"))
		}
		if o.RequestRefreshToken && !slices.Contains(o.Scopes, "offline_access") {
			o.Scopes = append(o.Scopes, "offline_access")
		}
		def(&o.Inject.Header, DefaultInjectHeader)
		def(&o.Inject.Format, DefaultInjectFormat)
		defDur(&o.DefaultTTL, tokencache.DefaultTokenTTL)
		defDur(&o.RefreshBefore, tokencache.DefaultRefreshBefore)
		defDur(&o.Timeout, tokencache.DefaultTimeout)
	}
	for _, r := range c.Routes {
		if r == nil {
			continue
		}
		if r.StripPrefix == nil {
			t := true
			r.StripPrefix = &t
		}
		if r.RetryOn == nil {
			r.RetryOn = []int{401}
		}
		if r.RetryBodyLimit == nil {
			s := Size(DefaultRetryBodyLimit)
			r.RetryBodyLimit = &s
		}
		if r.MaxBody == nil {
			s := Size(DefaultMaxBody)
			r.MaxBody = &s
		}
		defDur(&r.Timeout, DefaultRouteTimeout)
	}
}

// defEnum sets an unset enum to its default, unless the file wrote one that
// did not decode: that is reported, and checks that depend on the value
// are skipped rather than run against a value nobody wrote.
func defEnum[T ~string](v *T, def T, ps Positions, key string) {
	if _, written := ps[key]; *v == "" && !written {
		*v = def
	}
}

// fixedPort reports whether a listen address has a port known before it
// listens (not a unix socket, not port 0): only then is the admin
// listener's callback a redirect_url to register.
func fixedPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port != "" && port != "0"
}

// adminURL is the base URL of the admin listener as a browser on this
// machine reaches it: a wildcard host becomes 127.0.0.1.
func adminURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "http://" + listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// LoginURL is where a person signs in for the entry name: the admin
// listener's login page.
func (c *Config) LoginURL(name string) string {
	if strings.HasPrefix(c.AdminListen, "unix:") {
		return "/oauth2/" + name + "/login on the admin socket"
	}
	return adminURL(c.AdminListen) + "/oauth2/" + name + "/login"
}
