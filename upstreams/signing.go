package upstreams

import (
	"maps"
	"slices"
	"strings"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// SigningAlg is signing_alg: the JWS algorithm of signed assertions.
type SigningAlg string

// UnmarshalText implements encoding.TextUnmarshaler.
func (a *SigningAlg) UnmarshalText(b []byte) error {
	return enum(a, b, tokencache.AlgRS256, tokencache.AlgPS256, tokencache.AlgES256)
}

// signingKeys are the keys of an entry that signs with a private key.
var signingKeys = []string{"private_key_file", "private_key_id", "certificate_file", "signing_alg"}

// signs reports whether the entry signs assertions with a private key.
func (o *OAuth2) signs() bool {
	return o.ClientAuth == "private_key_jwt" || o.GrantType == tokencache.GrantJWTBearer
}

// usesAssertion reports whether the entry sends assertions at all.
func (o *OAuth2) usesAssertion() bool {
	return o.signs() || o.ClientAuth == "client_secret_jwt"
}

// assertionAudience is the aud of the entry's assertions: the token
// endpoint (RFC 7523 §3, OpenID Connect Core §9), unless overridden (some
// servers want their issuer).
func (o *OAuth2) assertionAudience() string {
	if o.AssertionAudience != "" {
		return o.AssertionAudience
	}
	return o.TokenURL.String()
}

// assertionIssuer is the iss of a jwt_bearer assertion.
func (o *OAuth2) assertionIssuer() string {
	if o.AssertionIssuer != "" {
		return o.AssertionIssuer
	}
	return o.ClientID
}

// reservedClaims are set by the proxy in every assertion.
var reservedClaims = map[string]string{
	"iss": "assertion_issuer", "sub": "assertion_subject", "aud": "assertion_audience",
	"exp": "", "iat": "", "nbf": "", "jti": "",
}

// minHS256Secret is RFC 7518 §3.2: an HS256 key of at least 256 bits.
const minHS256Secret = 32

// signedCredentials checks an entry's TLS and signed-credential keys, and
// loads the files they name (the key, the certificates), so that check
// names a bad file and what is wrong with it.
func (v *validator) signedCredentials(path string, o *OAuth2) {
	p := o.Pos
	v.checkTLS(path, o.TLS)
	if o.TLS != nil && !o.TokenURL.IsZero() && o.TokenURL.Scheme == "http" {
		v.warnAt(at(p, "tls"), path+".tls", "token_url is plain http: tls applies to https endpoints only")
	}
	if o.signs() {
		v.signingKey(path, o)
	} else {
		for _, k := range signingKeys {
			if pos, set := p[k]; set {
				v.addAt(pos, path+"."+k, "only applies to client_auth private_key_jwt and grant_type jwt_bearer")
			}
		}
	}
	if pos, set := p["assertion_audience"]; set && !o.usesAssertion() {
		v.addAt(pos, path+".assertion_audience", "only applies to client_auth private_key_jwt, client_secret_jwt and grant_type jwt_bearer")
	}
	for _, k := range slices.Sorted(maps.Keys(o.AssertionClaims)) {
		if use, ok := reservedClaims[k]; ok {
			msg := "set by the proxy in every assertion"
			if use != "" {
				msg += ": use " + use
			}
			v.addAt(at(p, "assertion_claims"), path+".assertion_claims."+k, "%s", msg)
		}
	}
	switch o.ClientAuth {
	case "tls_client_auth":
		if o.TLS == nil || o.TLS.CertFile == "" {
			v.addAt(at(p, "client_auth"), path+".client_auth",
				"tls_client_auth needs tls.cert_file and tls.key_file: the client certificate is the credential (RFC 8705)")
		}
	case "client_secret_jwt":
		if n := len(o.ClientSecret.Reveal()); n > 0 && n < minHS256Secret {
			v.warnAt(at(p, "client_secret"), path+".client_secret",
				"%d bytes: client_secret_jwt signs HS256, which wants a secret of at least %d bytes (RFC 7518 §3.2); the server may refuse it", n, minHS256Secret)
		}
	}
	// A signed assertion in a URL would sit in access logs, usable until it
	// expires.
	jwtAuth := o.ClientAuth == "private_key_jwt" || o.ClientAuth == "client_secret_jwt"
	if o.TokenMethod == "GET" && o.usesAssertion() {
		v.addAt(at(p, "token_method"), path+".token_method", "GET would put the signed assertion in the URL: use POST")
	}
	if o.RevokeMethod == "GET" && jwtAuth {
		v.addAt(at(p, "revoke_method"), path+".revoke_method", "GET would put the signed assertion in the URL: use POST")
	}
}

// signingKey checks and loads the private key an entry signs with.
func (v *validator) signingKey(path string, o *OAuth2) {
	p := o.Pos
	why := " (client_auth private_key_jwt signs its assertions with it)"
	if o.GrantType == tokencache.GrantJWTBearer {
		why = " (grant_type jwt_bearer signs its assertion with it)"
	}
	v.missing(p, path, "private_key_file", o.PrivateKeyFile, why)
	if o.PrivateKeyFile == "" || v.failedAt(at(p, "private_key_file")) {
		return
	}
	o.PrivateKeyFile = v.res.path(o.PrivateKeyFile)
	if o.CertificateFile != "" {
		o.CertificateFile = v.res.path(o.CertificateFile)
	}
	kp, err := tokencache.LoadKeyPair(o.PrivateKeyFile, o.CertificateFile, tokencache.KeyPairOptions{})
	if err != nil {
		key := "private_key_file"
		if msg := err.Error(); o.CertificateFile != "" && strings.Contains(msg, o.CertificateFile) && !strings.Contains(msg, "does not match") {
			key = "certificate_file"
		}
		v.addAt(at(p, key), path+"."+key, "%v", err)
		return
	}
	if certs := kp.Current().Certs; len(certs) > 0 {
		v.certExpiry(at(p, "certificate_file"), path+".certificate_file", o.CertificateFile, certs[0])
	}
	signer, err := tokencache.NewSigner(kp, string(o.SigningAlg), o.PrivateKeyID)
	if err != nil {
		key := "private_key_file"
		if _, set := p["signing_alg"]; set {
			key = "signing_alg"
		}
		v.addAt(at(p, key), path+"."+key, "%v", err)
		return
	}
	o.signer = signer
}
