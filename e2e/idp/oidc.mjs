// A real authorization server for the end-to-end tests: oidc-provider (a
// certified OpenID Provider) with the client credentials grant, issuing
// RS256 JWT access tokens for the resource the client asks for (RFC 8707).
//
//   node idp/oidc.mjs            reads OIDC_CLIENTS (JSON list of clients),
//                                OIDC_TOKEN_TTL (seconds) from the environment
//
// It listens on a free loopback port and prints `listening <issuer>`, then
// `issued <client_id>` for every token it grants.
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
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
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
    process.stdout.write(`issued ${ctx.oidc.client.clientId}\n`);
  });
  provider.on('grant.error', (ctx, err) => {
    process.stdout.write(`grant.error ${err.error || err.message}\n`);
  });
  server.on('request', provider.callback());
  process.stdout.write(`listening ${issuer}\n`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
