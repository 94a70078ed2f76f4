package upstreams

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// The config's typed values. Each is decoded once, from the scalar as
// written (${...} references resolved), through encoding.TextUnmarshaler;
// a value that does not decode is a problem at its line. Nothing parses
// them again.

// URL is a URL of the config, parsed once. The zero value is unset.
type URL struct {
	*url.URL
	raw string
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (u *URL) UnmarshalText(b []byte) error {
	p, err := url.Parse(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a URL", b)
	}
	u.URL, u.raw = p, string(b)
	return nil
}

// String is the URL as written.
func (u URL) String() string { return u.raw }

// IsZero reports whether the URL is unset.
func (u URL) IsZero() bool { return u.URL == nil }

// Secret is a secret value of the config (it prints as [redacted]) and the
// text it was resolved from, so that a value taken from a file can be read
// again when the file is rotated. The zero value is unset.
type Secret struct {
	tokencache.Secret
	ref string // as written, ${...} and all
}

// IsSet reports whether the value is not empty.
func (s Secret) IsSet() bool { return s.Secret != "" }

// FromFile reports whether the value comes from a ${file:...} reference.
func (s Secret) FromFile() bool { return strings.Contains(s.ref, "${file:") }

// FileMode is a file mode written in octal (0660).
type FileMode uint32

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *FileMode) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 8, 32)
	if err != nil || v > 0o777 {
		return fmt.Errorf("%q is not an octal file mode like 0660", b)
	}
	*m = FileMode(v)
	return nil
}

// enum decodes a value that must be one of a fixed list.
func enum[T ~string](dst *T, b []byte, allowed ...T) error {
	v := T(b)
	if slices.Contains(allowed, v) {
		*dst = v
		return nil
	}
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = string(a)
	}
	return fmt.Errorf("%q is not one of %s", b, strings.Join(names, ", "))
}

// GrantType is an oauth2 entry's grant_type; the grants table says what
// each one needs and builds.
type GrantType string

// UnmarshalText implements encoding.TextUnmarshaler.
func (g *GrantType) UnmarshalText(b []byte) error {
	if _, ok := grants[GrantType(b)]; ok {
		*g = GrantType(b)
		return nil
	}
	if slices.Contains(unsupportedGrants, string(b)) {
		return fmt.Errorf("%q is not supported by this version (supported: %s)", b, strings.Join(grantNames(), ", "))
	}
	return enum(g, b, slices.Sorted(func(yield func(GrantType) bool) {
		for _, n := range grantNames() {
			if !yield(GrantType(n)) {
				return
			}
		}
	})...)
}

// ClientAuthMethod is an oauth2 entry's client_auth; the clientAuths table
// builds each one.
type ClientAuthMethod string

// UnmarshalText implements encoding.TextUnmarshaler.
func (a *ClientAuthMethod) UnmarshalText(b []byte) error {
	if _, ok := clientAuths[ClientAuthMethod(b)]; ok {
		*a = ClientAuthMethod(b)
		return nil
	}
	if slices.Contains(unsupportedClientAuths, string(b)) {
		return fmt.Errorf("%q is not supported by this version (supported: %s)", b, strings.Join(clientAuthNames(), ", "))
	}
	return fmt.Errorf("%q is not one of %s", b, strings.Join(clientAuthNames(), ", "))
}

// HTTPMethod is GET or POST, for token_method, revoke_method, auth_method.
type HTTPMethod string

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *HTTPMethod) UnmarshalText(b []byte) error { return enum(m, b, "GET", "POST") }

// RequestFormat is the body of token requests: form or json.
type RequestFormat string

// UnmarshalText implements encoding.TextUnmarshaler.
func (f *RequestFormat) UnmarshalText(b []byte) error { return enum(f, b, "form", "json") }

// LogLevel is log.level.
type LogLevel string

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *LogLevel) UnmarshalText(b []byte) error { return enum(l, b, "debug", "info", "warn", "error") }

// LogFormat is log.format.
type LogFormat string

// UnmarshalText implements encoding.TextUnmarshaler.
func (f *LogFormat) UnmarshalText(b []byte) error { return enum(f, b, "json", "text") }

// ProxyURL is an outbound HTTP(S) or SOCKS5 proxy. It may hold credentials,
// so it never prints itself, and problems with it never repeat it.
type ProxyURL struct {
	u *url.URL
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *ProxyURL) UnmarshalText(b []byte) error {
	u, err := url.Parse(string(b))
	if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return fmt.Errorf("not a proxy URL like http://proxy.internal:3128")
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
		p.u = u
		return nil
	}
	return fmt.Errorf("scheme %q: want http, https, socks5 or socks5h", u.Scheme)
}

// URL returns the proxy's URL, credentials and all; nil when unset.
func (p ProxyURL) URL() *url.URL { return p.u }

// IsSet reports whether a proxy is configured.
func (p ProxyURL) IsSet() bool { return p.u != nil }

// password returns the proxy's password, a secret to scrub.
func (p ProxyURL) password() tokencache.Secret {
	if p.u == nil || p.u.User == nil {
		return ""
	}
	pw, _ := p.u.User.Password()
	return tokencache.Secret(pw)
}

// addSecrets teaches sc the proxy's password, and the Basic credentials
// sent in Proxy-Authorization.
func (p ProxyURL) addSecrets(sc *tokencache.Scrubber) {
	if pw := p.password(); pw != "" {
		sc.AddClient(p.u.User.Username(), pw)
	}
}

// String implements fmt.Stringer without the credentials.
func (p ProxyURL) String() string {
	if p.u == nil {
		return ""
	}
	return tokencache.SafeURL(p.u.String())
}

// Format implements fmt.Formatter, so that no verb prints the credentials.
func (p ProxyURL) Format(f fmt.State, _ rune) { fmt.Fprint(f, p.String()) }

// ParseStoreKey reads a store_key: the standard or URL-safe base64 of
// exactly 32 bytes, padded or not. Its errors never show the value.
func ParseStoreKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			if len(b) != 32 {
				return nil, fmt.Errorf("decodes to %d bytes; want 32 (make one with: head -c 32 /dev/urandom | base64)", len(b))
			}
			return b, nil
		}
	}
	return nil, errors.New("is not base64 (make one with: head -c 32 /dev/urandom | base64)")
}
