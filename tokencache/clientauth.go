package tokencache

import (
	"net/http"
	"net/url"
	"sync/atomic"
)

// ClientAuth is how the client authenticates itself at its authorization
// server's endpoints (RFC 6749 §2.3): the token endpoint, and the device
// authorization and revocation endpoints, which authenticate the same way.
// There is no auto-detection: trying one method and then another sends the
// secret twice, to a server that already refused it once.
//
// Implementations are safe for concurrent use.
type ClientAuth interface {
	// Method is the config name: client_secret_basic, client_secret_post, none...
	Method() string
	// Authenticate adds the client's credentials to a request: body
	// parameters to form, headers to h.
	Authenticate(form *Form, h http.Header) error
	// Rotate reads the credential again from where it came from (a
	// rotated secret file), reporting whether it changed. The server
	// answered invalid_client; a changed credential is worth one try.
	Rotate() (changed bool, err error)
}

// ClientSecret is a client's secret that can be read again from where it
// came from: a Kubernetes secret mounted as a file is replaced in place
// when it is rotated. Safe for concurrent use.
type ClientSecret struct {
	cur    atomic.Pointer[Secret]
	reread func() (Secret, error)
}

// NewClientSecret returns s, read again by reread (nil: never).
func NewClientSecret(s Secret, reread func() (Secret, error)) *ClientSecret {
	c := &ClientSecret{reread: reread}
	c.cur.Store(&s)
	return c
}

// Get returns the current secret.
func (c *ClientSecret) Get() Secret {
	if c == nil {
		return ""
	}
	return *c.cur.Load()
}

// Reread reads the secret again and reports whether it changed.
func (c *ClientSecret) Reread() (bool, error) {
	if c == nil || c.reread == nil {
		return false, nil
	}
	s, err := c.reread()
	if err != nil {
		return false, err
	}
	if s == c.Get() {
		return false, nil
	}
	c.cur.Store(&s)
	return true, nil
}

// ClientSecretBasic sends client_id and client_secret as HTTP Basic
// credentials, each form-urlencoded first (RFC 6749 §2.3.1).
type ClientSecretBasic struct {
	ClientID string
	Secret   *ClientSecret
}

func (ClientSecretBasic) Method() string { return "client_secret_basic" }

func (a ClientSecretBasic) Authenticate(_ *Form, h http.Header) error {
	r := http.Request{Header: h}
	r.SetBasicAuth(url.QueryEscape(a.ClientID), url.QueryEscape(a.Secret.Get().Reveal()))
	return nil
}

func (a ClientSecretBasic) Rotate() (bool, error) { return a.Secret.Reread() }

// ClientSecretPost sends client_id and client_secret in the request body
// (RFC 6749 §2.3.1).
type ClientSecretPost struct {
	ClientID string
	Secret   *ClientSecret
}

func (ClientSecretPost) Method() string { return "client_secret_post" }

func (a ClientSecretPost) Authenticate(f *Form, _ http.Header) error {
	f.Add("client_id", Secret(a.ClientID))
	f.Add("client_secret", a.Secret.Get())
	return nil
}

func (a ClientSecretPost) Rotate() (bool, error) { return a.Secret.Reread() }

// PublicClient is a client without credentials: client_id in the body
// (RFC 6749 §2.1, `client_auth: none`).
type PublicClient struct{ ClientID string }

func (PublicClient) Method() string { return "none" }

func (a PublicClient) Authenticate(f *Form, _ http.Header) error {
	f.Add("client_id", Secret(a.ClientID))
	return nil
}

func (PublicClient) Rotate() (bool, error) { return false, nil }
