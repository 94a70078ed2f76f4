// A real authorization server for the end-to-end tests: oidc-provider (a
// certified OpenID Provider) with the client credentials, authorization
// code (PKCE) and device code (RFC 8628) grants, refresh-token rotation,
// revocation (RFC 7009) and introspection (RFC 7662), issuing RS256 JWT
// access tokens for the resource the client asks for (RFC 8707).
//
//   node idp/oidc.mjs            reads OIDC_CLIENTS (JSON list of clients),
//                                OIDC_TOKEN_TTL (seconds) from the environment
//
// Clients come from OIDC_CLIENTS, and tests may register more at /reg
// (RFC 7591, open: loopback only), so that each sign-in test has a client,
// a grant and refresh tokens of its own.
//
// People sign in through devInteractions: plain HTML forms (any login,
// any password, then a consent form) that an HTTP client with a cookie jar
// can fill without a browser.
//
// It listens on a free loopback port and prints `listening <issuer>`, then
// `issued <client_id>` for every token it grants, `granted <client_id>
// <grant_type>` for the same with the grant's type, and `grant.error
// <error> <client_id> <detail>` for every token request it refuses.
import http from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.env.OIDC_CLIENTS || '[]');
const ttl = Number(process.env.OIDC_TOKEN_TTL || 300);

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'e2e-rs256', alg: 'RS256', use: 'sig' };

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [jwk] },
    // Every refresh spends the refresh token and issues a new one: what
    // the proxy must persist before it uses the new access token.
    rotateRefreshToken: true,
    // A client registered with client_name "short-device-code" gets device
    // codes that expire in 2 s: the expiry path without a 10-minute wait.
    ttl: {
      DeviceCode: (ctx, code, client) => (client?.clientName === 'short-device-code' ? 2 : 600),
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      registration: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (ctx, resource) => ({
          scope: 'orders.read orders.write',
          audience: resource,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  provider.on('grant.success', (ctx) => {
    const id = ctx.oidc.client.clientId;
    process.stdout.write(`issued ${id}\n`);
    process.stdout.write(`granted ${id} ${ctx.oidc.params.grant_type}\n`);
  });
  provider.on('grant.error', (ctx, err) => {
    const id = ctx.oidc.client?.clientId || '-';
    process.stdout.write(`grant.error ${err.error || err.message} ${id} ${err.error_detail || ''}\n`);
  });
  // oidc-provider names no polling interval, so RFC 8628 §3.2's default of
  // 5 s would apply; 1 s keeps the device tests short.
  provider.on('device_authorization.success', (ctx, body) => {
    body.interval = 1;
  });
  server.on('request', provider.callback());
  process.stdout.write(`listening ${issuer}\n`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
