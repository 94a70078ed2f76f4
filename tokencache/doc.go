// Package tokencache obtains OAuth2 access tokens and keeps them fresh.
//
// A Source serves one oauth2 entry of the config: it asks the entry's token
// endpoint for a token with the configured grant (client credentials,
// password, refresh token), caches it, renews it in the background before it
// expires, and drops it when an upstream rejects it. However many requests
// wait for a token, one request goes to the token endpoint (single flight).
// Reading a cached token takes no lock.
//
// The package speaks the token endpoint protocol itself rather than through
// golang.org/x/oauth2: see docs/grants.md for why.
package tokencache
