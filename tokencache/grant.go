package tokencache

import (
	"context"
	"errors"
)

// Grant is how a Source obtains a token when it holds no usable refresh
// token (RFC 6749 §4). Renewal with a refresh token (§6) is the Source's
// own business and the same for every grant that keeps one.
//
// What a refusal of the stored refresh token means is what Params answers
// next: the password grant signs in again, a refresh_token grant has
// nothing left (ErrNoRefreshToken), a grant that needs a person answers
// *LoginRequiredError.
//
// Adding a grant: a type here, and a line in the grant table of the config
// (upstreams). Implementations are safe for concurrent use.
type Grant interface {
	// Type is the grant_type as configured: client_credentials, password...
	Type() string
	// Params returns the grant's own parameters of a token request that
	// needs no refresh token.
	Params(ctx context.Context) (Form, error)
	// KeepsRefreshToken says whether a refresh token in an answer is
	// stored and used for renewals.
	KeepsRefreshToken() bool
}

// Seeder is a Grant that starts from a refresh token it was given: the
// Source stores it when its store holds none.
type Seeder interface {
	Seed() Secret
}

// ErrNoRefreshToken: a refresh_token grant whose refresh token the server
// refused has nothing left to try until it is configured anew.
var ErrNoRefreshToken = errors.New("no refresh token: the server refused the last one; configure a new refresh_token")

// Grant type names, as the config spells them.
const (
	GrantClientCredentials = "client_credentials"
	GrantPassword          = "password"
	GrantRefreshToken      = "refresh_token"
)

// ClientCredentials is the client credentials grant (RFC 6749 §4.4). A
// refresh token in its answer is ignored (§4.4.3 says none should come).
type ClientCredentials struct{}

func (ClientCredentials) Type() string { return GrantClientCredentials }
func (ClientCredentials) Params(context.Context) (Form, error) {
	return Form{{"grant_type", GrantClientCredentials}}, nil
}
func (ClientCredentials) KeepsRefreshToken() bool { return false }

// Password is the resource owner password credentials grant (RFC 6749
// §4.3): service accounts, as the Infor ION API Gateway requires. An issued
// refresh token is used; when the server refuses it, the grant signs in
// with the password again.
type Password struct {
	Username string
	Password Secret
}

func (Password) Type() string { return GrantPassword }
func (g Password) Params(context.Context) (Form, error) {
	return Form{{"grant_type", GrantPassword}, {"username", Secret(g.Username)}, {"password", g.Password}}, nil
}
func (Password) KeepsRefreshToken() bool { return true }

// RefreshToken is a grant that starts from a refresh token obtained
// elsewhere (RFC 6749 §6). Rotated refresh tokens replace it.
type RefreshToken struct {
	Token Secret
}

func (RefreshToken) Type() string { return GrantRefreshToken }
func (RefreshToken) Params(context.Context) (Form, error) {
	return nil, ErrNoRefreshToken
}
func (RefreshToken) KeepsRefreshToken() bool { return true }
func (g RefreshToken) Seed() Secret          { return g.Token }

// refreshParams is the refresh request of RFC 6749 §6.
func refreshParams(rt Secret) Form {
	return Form{{"grant_type", GrantRefreshToken}, {"refresh_token", rt}}
}
