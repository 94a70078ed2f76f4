package tokencache

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"time"
)

// Signed client credentials: JWT assertions (RFC 7523) as the client's
// credential at the token endpoint (private_key_jwt, client_secret_jwt),
// as a grant (jwt_bearer), and the TLS client certificate as the
// credential (tls_client_auth, RFC 8705). JWS is done with crypto/* only:
// RS256, PS256, ES256 and HS256 are all this needs.

// Assertion constants of RFC 7523.
const (
	// ClientAssertionType is client_assertion_type for a JWT (§2.2).
	ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// JWTBearerGrantType is the grant_type of the JWT bearer grant (§2.1).
	JWTBearerGrantType = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	// GrantJWTBearer is the grant's name in the config.
	GrantJWTBearer = "jwt_bearer"
	// DefaultAssertionLifetime is how long an assertion is valid: long
	// enough for a slow token endpoint, short enough that a captured one
	// is soon worthless (each is used once).
	DefaultAssertionLifetime = 60 * time.Second
)

// Signing algorithms (RFC 7518 §3.1).
const (
	AlgRS256 = "RS256"
	AlgPS256 = "PS256"
	AlgES256 = "ES256"
	AlgHS256 = "HS256"
)

// Signer signs JWTs (JWS compact serialization, RFC 7515) with the private
// key of a KeyPair, read again when its file changes. Its header carries
// KeyID as kid or, with no KeyID and a certificate, the certificate's
// thumbprint as x5t#S256 (what Microsoft Entra ID matches certificate
// credentials by). Safe for concurrent use; fields are read-only.
type Signer struct {
	Keys *KeyPair
	// Alg is RS256, PS256 or ES256; "" follows the key: RS256 for RSA,
	// ES256 for EC P-256.
	Alg   string
	KeyID string
}

// NewSigner checks that alg suits the key in keys and returns a Signer.
func NewSigner(keys *KeyPair, alg, keyID string) (*Signer, error) {
	s := &Signer{Keys: keys, Alg: alg, KeyID: keyID}
	if _, err := s.alg(keys.Current().Key); err != nil {
		return nil, err
	}
	return s, nil
}

// SigningAlg returns the JWS algorithm key signs with under alg ("" for
// the key's default), or an error naming file that says why it cannot.
func SigningAlg(file string, key crypto.Signer, alg string) (string, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if alg == "" {
			alg = AlgRS256
		}
		if alg != AlgRS256 && alg != AlgPS256 {
			return "", fmt.Errorf("%s holds an RSA key: signing_alg %s needs an EC P-256 key (RS256 or PS256 use RSA)", file, alg)
		}
		// RFC 7518 §3.3: 2048 bits or more.
		if n := k.N.BitLen(); n < 2048 {
			return "", fmt.Errorf("%s holds a %d-bit RSA key: %s needs at least 2048 bits", file, n, alg)
		}
		return alg, nil
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return "", fmt.Errorf("%s: unsupported key type: an EC key on %s (ES256 needs P-256)", file, k.Curve.Params().Name)
		}
		if alg == "" {
			alg = AlgES256
		}
		if alg != AlgES256 {
			return "", fmt.Errorf("%s holds an EC P-256 key: signing_alg %s needs an RSA key (EC P-256 signs ES256)", file, alg)
		}
		return alg, nil
	}
	return "", fmt.Errorf("%s: unsupported key type %T for signing assertions (want RSA or EC P-256)", file, key)
}

func (s *Signer) alg(key crypto.Signer) (string, error) {
	return SigningAlg(s.Keys.KeyFile(), key, s.Alg)
}

// Sign returns claims as a signed JWT.
func (s *Signer) Sign(claims map[string]any) (string, error) {
	if s == nil || s.Keys == nil {
		return "", errors.New("no signing key loaded")
	}
	c := s.Keys.Current()
	alg, err := s.alg(c.Key)
	if err != nil {
		return "", err
	}
	hdr := map[string]string{"alg": alg, "typ": "JWT"}
	switch {
	case s.KeyID != "":
		hdr["kid"] = s.KeyID
	case len(c.Certs) > 0:
		hdr["x5t#S256"] = c.Thumbprint()
	}
	input, err := signingInput(hdr, claims)
	if err != nil {
		return "", err
	}
	digest := sha256.Sum256([]byte(input))
	var sig []byte
	switch alg {
	case AlgRS256:
		sig, err = rsa.SignPKCS1v15(rand.Reader, c.Key.(*rsa.PrivateKey), crypto.SHA256, digest[:])
	case AlgPS256:
		// RFC 7518 §3.5: the salt is as long as the hash.
		sig, err = rsa.SignPSS(rand.Reader, c.Key.(*rsa.PrivateKey), crypto.SHA256, digest[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	case AlgES256:
		sig, err = es256(c.Key.(*ecdsa.PrivateKey), digest[:])
	}
	if err != nil {
		return "", fmt.Errorf("signing with %s: %w", s.Keys.KeyFile(), err)
	}
	return input + "." + b64(sig), nil
}

// es256 is an ECDSA P-256 signature as JWS wants it: R and S as 32
// big-endian bytes each (RFC 7518 §3.4), not ASN.1.
func es256(key *ecdsa.PrivateKey, digest []byte) ([]byte, error) {
	r, s, err := ecdsa.Sign(rand.Reader, key, digest)
	if err != nil {
		return nil, err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return sig, nil
}

// signHS256 returns claims as a JWT signed with HMAC SHA-256 under secret.
func signHS256(secret Secret, claims map[string]any) (string, error) {
	input, err := signingInput(map[string]string{"alg": AlgHS256, "typ": "JWT"}, claims)
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, []byte(secret.Reveal()))
	m.Write([]byte(input))
	return input + "." + b64(m.Sum(nil)), nil
}

func signingInput(hdr map[string]string, claims map[string]any) (string, error) {
	h, err := json.Marshal(hdr)
	if err != nil {
		return "", err
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", errors.New("the assertion's claims do not encode as JSON")
	}
	return b64(h) + "." + b64(c), nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// Assertion is what a JWT assertion says (RFC 7523 §3): who issued it,
// about whom, for which server, and for how long. Every one made gets a
// fresh jti and its own iat, nbf and exp: none is ever reused.
type Assertion struct {
	Issuer   string
	Subject  string
	Audience string
	// Claims are further claims (a scope, for providers that want it in
	// the assertion). They never replace the ones above.
	Claims map[string]string
	// Lifetime is exp - iat (default DefaultAssertionLifetime).
	Lifetime time.Duration
	Now      func() time.Time // nil: time.Now
}

// claims returns a new claim set with a fresh jti.
func (a *Assertion) claims() map[string]any {
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	life := a.Lifetime
	if life <= 0 {
		life = DefaultAssertionLifetime
	}
	t := now().Unix()
	c := make(map[string]any, len(a.Claims)+7)
	for k, v := range maps.All(a.Claims) {
		c[k] = v
	}
	c["iss"], c["sub"], c["aud"] = a.Issuer, a.Subject, a.Audience
	// 128 random bits: the server refuses a jti it has seen (RFC 7523 §3 item 7).
	c["jti"] = rand.Text()
	c["iat"], c["nbf"], c["exp"] = t, t, t+int64(life/time.Second)
	return c
}

// PrivateKeyJWT authenticates the client with an assertion signed by its
// private key (RFC 7523 §2.2, OpenID Connect Core §9 private_key_jwt):
// iss and sub are the client_id, aud the token endpoint (or what
// assertion_audience says). client_id goes in the body too, as most
// servers want it. Safe for concurrent use.
type PrivateKeyJWT struct {
	ClientID string
	Audience string
	Signer   *Signer
	Lifetime time.Duration    // default DefaultAssertionLifetime
	Now      func() time.Time // nil: time.Now
}

func (PrivateKeyJWT) Method() string { return "private_key_jwt" }

func (a PrivateKeyJWT) Authenticate(f *Form, _ http.Header) error {
	as := Assertion{Issuer: a.ClientID, Subject: a.ClientID, Audience: a.Audience, Lifetime: a.Lifetime, Now: a.Now}
	jwt, err := a.Signer.Sign(as.claims())
	if err != nil {
		return err
	}
	addClientAssertion(f, a.ClientID, Secret(jwt))
	return nil
}

// Rotate reads the key (and certificate) files again.
func (a PrivateKeyJWT) Rotate() (bool, error) { return a.Signer.Keys.Reload() }

// ClientSecretJWT authenticates the client with an assertion signed with
// HMAC SHA-256 under its client secret (RFC 7523 §2.2, OpenID Connect
// Core §9 client_secret_jwt): the secret never travels. Safe for
// concurrent use.
type ClientSecretJWT struct {
	ClientID string
	Audience string
	Secret   *ClientSecret
	Lifetime time.Duration    // default DefaultAssertionLifetime
	Now      func() time.Time // nil: time.Now
}

func (ClientSecretJWT) Method() string { return "client_secret_jwt" }

func (a ClientSecretJWT) Authenticate(f *Form, _ http.Header) error {
	as := Assertion{Issuer: a.ClientID, Subject: a.ClientID, Audience: a.Audience, Lifetime: a.Lifetime, Now: a.Now}
	jwt, err := signHS256(a.Secret.Get(), as.claims())
	if err != nil {
		return err
	}
	addClientAssertion(f, a.ClientID, Secret(jwt))
	return nil
}

func (a ClientSecretJWT) Rotate() (bool, error) { return a.Secret.Reread() }

func addClientAssertion(f *Form, clientID string, jwt Secret) {
	f.Add("client_id", Secret(clientID))
	f.Add("client_assertion_type", ClientAssertionType)
	f.Add("client_assertion", jwt)
}

// TLSClientAuth is mutual TLS client authentication (RFC 8705 §2.1,
// tls_client_auth): the TLS client certificate of the connection is the
// credential, the body carries client_id. The transport presents the
// certificate; this only names the client. Safe for concurrent use.
type TLSClientAuth struct {
	ClientID string
	// Reload reads the client certificate again and makes the next request
	// use a new connection if it changed; nil: nothing to reload.
	Reload func() (bool, error)
}

func (TLSClientAuth) Method() string { return "tls_client_auth" }

func (a TLSClientAuth) Authenticate(f *Form, _ http.Header) error {
	f.Add("client_id", Secret(a.ClientID))
	return nil
}

func (a TLSClientAuth) Rotate() (bool, error) {
	if a.Reload == nil {
		return false, nil
	}
	return a.Reload()
}

// JWTBearer is the JWT bearer grant (RFC 7523 §2.1): the proxy signs an
// assertion about Subject and exchanges it for an access token. A fresh
// assertion goes with every request; like client credentials, it can
// always get a new token, so a refresh token in the answer is not kept.
type JWTBearer struct {
	Assertion Assertion
	Signer    *Signer
}

func (JWTBearer) Type() string { return GrantJWTBearer }

func (g JWTBearer) Params(context.Context) (Form, error) {
	jwt, err := g.Signer.Sign(g.Assertion.claims())
	if err != nil {
		return nil, fmt.Errorf("signing the jwt_bearer assertion: %w", err)
	}
	return Form{{"grant_type", JWTBearerGrantType}, {"assertion", Secret(jwt)}}, nil
}

func (JWTBearer) KeepsRefreshToken() bool { return false }
