package upstreams

import (
	"slices"
	"strings"

	"github.com/oauthproxy/oauthproxy/tokencache"
)

// grantSpec is what the config knows of a grant: the keys it needs, the
// grant-specific keys it takes, and how to build it. A new grant is a type
// in tokencache and a line in this table.
type grantSpec struct {
	needs []string // keys that must be set: a problem names each missing one
	takes []string // further grant-specific keys it uses
	build func(o *OAuth2) tokencache.Grant
}

// grantKeys are the keys that belong to some grants only: set on an entry
// whose grant does not take them, they are a problem.
var grantKeys = []string{"username", "password", "refresh_token", "auth_url", "redirect_url", "prompt",
	"request_refresh_token", "auth_method", "device_auth_url", "store", "store_key",
	"assertion_subject", "assertion_issuer", "assertion_claims"}

// grantValue is the value of a grant-specific key as text, for "missing".
func (o *OAuth2) grantValue(key string) string {
	switch key {
	case "username":
		return o.Username
	case "password":
		return o.Password.Reveal()
	case "refresh_token":
		return o.RefreshToken.Reveal()
	case "auth_url":
		return o.AuthURL.String()
	case "redirect_url":
		return o.RedirectURL.String()
	case "device_auth_url":
		return o.DeviceAuthURL.String()
	case "store":
		return o.Store
	case "assertion_subject":
		return o.AssertionSubject
	}
	return ""
}

var grants = map[GrantType]grantSpec{
	tokencache.GrantClientCredentials: {
		build: func(*OAuth2) tokencache.Grant { return tokencache.ClientCredentials{} },
	},
	tokencache.GrantPassword: {
		needs: []string{"username", "password"},
		takes: []string{"refresh_token", "store", "store_key"},
		build: func(o *OAuth2) tokencache.Grant {
			return tokencache.Password{Username: o.Username, Password: o.Password.Secret}
		},
	},
	tokencache.GrantRefreshToken: {
		needs: []string{"refresh_token"},
		takes: []string{"store", "store_key"},
		build: func(o *OAuth2) tokencache.Grant { return tokencache.RefreshToken{Token: o.RefreshToken.Secret} },
	},
	tokencache.GrantAuthorizationCode: {
		needs: []string{"auth_url"},
		takes: []string{"redirect_url", "prompt", "request_refresh_token", "auth_method", "store", "store_key"},
		build: func(o *OAuth2) tokencache.Grant {
			return tokencache.AuthorizationCode{AuthURL: o.AuthURL.String(), RedirectURL: o.RedirectURL.String(),
				ClientID: o.ClientID, Scope: strings.Join(o.Scopes, " "), Prompt: o.Prompt, Extra: o.tokenParams().Without("scope")}
		},
	},
	tokencache.GrantDeviceCode: {
		needs: []string{"device_auth_url"},
		takes: []string{"request_refresh_token", "store", "store_key"},
		build: func(o *OAuth2) tokencache.Grant {
			return &tokencache.DeviceCode{DeviceAuthURL: o.DeviceAuthURL.String(), Request: o.tokenParams()}
		},
	},
	tokencache.GrantJWTBearer: {
		needs: []string{"assertion_subject"},
		takes: []string{"assertion_issuer", "assertion_claims"},
		build: func(o *OAuth2) tokencache.Grant {
			return tokencache.JWTBearer{Signer: o.signer, Assertion: tokencache.Assertion{
				Issuer: o.assertionIssuer(), Subject: o.AssertionSubject, Audience: o.assertionAudience(), Claims: o.AssertionClaims}}
		},
	},
}

// unsupportedGrants are grant types the contract names that this version
// does not build yet: check says so rather than "not one of".
var unsupportedGrants []string

func grantNames() []string {
	var out []string
	for g := range grants {
		out = append(out, string(g))
	}
	slices.Sort(out)
	return out
}

// grantsTaking lists the grants that take key, for "only applies to".
func grantsTaking(key string) []string {
	var out []string
	for name, g := range grants {
		if slices.Contains(g.needs, key) || slices.Contains(g.takes, key) {
			out = append(out, string(name))
		}
	}
	slices.Sort(out)
	return out
}

// clientAuthSpec is what the config knows of a client authentication
// method: whether it sends the client secret, and how to build it.
type clientAuthSpec struct {
	secret bool // sends client_secret: it is required
	build  func(o *OAuth2, secret *tokencache.ClientSecret) tokencache.ClientAuth
}

var clientAuths = map[ClientAuthMethod]clientAuthSpec{
	"client_secret_basic": {secret: true, build: func(o *OAuth2, s *tokencache.ClientSecret) tokencache.ClientAuth {
		return tokencache.ClientSecretBasic{ClientID: o.ClientID, Secret: s}
	}},
	"client_secret_post": {secret: true, build: func(o *OAuth2, s *tokencache.ClientSecret) tokencache.ClientAuth {
		return tokencache.ClientSecretPost{ClientID: o.ClientID, Secret: s}
	}},
	"none": {build: func(o *OAuth2, _ *tokencache.ClientSecret) tokencache.ClientAuth {
		return tokencache.PublicClient{ClientID: o.ClientID}
	}},
	"client_secret_jwt": {secret: true, build: func(o *OAuth2, s *tokencache.ClientSecret) tokencache.ClientAuth {
		return tokencache.ClientSecretJWT{ClientID: o.ClientID, Audience: o.assertionAudience(), Secret: s}
	}},
	"private_key_jwt": {build: func(o *OAuth2, _ *tokencache.ClientSecret) tokencache.ClientAuth {
		return tokencache.PrivateKeyJWT{ClientID: o.ClientID, Audience: o.assertionAudience(), Signer: o.signer}
	}},
	"tls_client_auth": {build: func(o *OAuth2, _ *tokencache.ClientSecret) tokencache.ClientAuth {
		return tokencache.TLSClientAuth{ClientID: o.ClientID, Reload: o.TLS.reloadClientCert}
	}},
}

var unsupportedClientAuths []string

func clientAuthNames() []string {
	var out []string
	for a := range clientAuths {
		out = append(out, string(a))
	}
	slices.Sort(out)
	return out
}
