// A real OpenID provider for the portal's tests: panva/oidc-provider with a login form of its own (the people of
// ACCOUNTS_FILE and their passwords), the `groups` claim, PKCE, refresh tokens and open client registration.
//
//   PORT=9000 ACCOUNTS_FILE=accounts.json node server.js
//
// ACCOUNTS_FILE maps a username to {sub, password, email, name, groups}; it is read again at every login, token
// and userinfo request, so a test changes someone's groups (or removes them) by rewriting it.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import { exportJWK, generateKeyPair } from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const accountsFile = process.env.ACCOUNTS_FILE;

const accounts = () => JSON.parse(readFileSync(accountsFile, 'utf8'));
const bySub = (sub) => Object.entries(accounts()).find(([, account]) => account.sub === sub);

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signingKey = { ...(await exportJWK(privateKey)), kid: 'portal-test-rs256', alg: 'RS256', use: 'sig' };

const provider = new Provider(issuer, {
  jwks: { keys: [signingKey] },
  cookies: { keys: ['portal-test-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true },
    revocation: { enabled: true },
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  // the scopes' claims in the id_token too (as Entra ID and Keycloak put them), not only at userinfo
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  // a refresh token for every client allowed the grant, with or without offline_access (as Keycloak does),
  // rotated at each use (as Okta and Authentik can)
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  async findAccount(_ctx, sub) {
    const found = bySub(sub);
    if (!found) return undefined;
    const [username, account] = found;
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          preferred_username: username,
          email: account.email,
          email_verified: true,
          name: account.name,
          given_name: account.given_name,
          family_name: account.family_name,
          groups: account.groups ?? [],
        };
      },
    };
  },
  // first-party clients: the scopes asked for are granted without a consent page
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const grant = await ctx.oidc.provider.Grant.find(grantId);
      if (grant) {
        grant.addOIDCScope(ctx.oidc.params.scope);
        await grant.save();
        return grant;
      }
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
});

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, error = '', username = '') {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test Identity Provider · Sign in</title></head>
<body>
  <h1>Test Identity Provider</h1>
  ${error ? `<p class="error" role="alert">${escape(error)}</p>` : ''}
  <form method="post" action="/interaction/${escape(uid)}/login">
    <label for="username">Username</label> <input id="username" name="username" value="${escape(username)}" required>
    <label for="password">Password</label> <input id="password" name="password" type="password" required>
    <button type="submit" id="submit">Sign in</button>
  </form>
  <form method="post" action="/interaction/${escape(uid)}/abort">
    <button type="submit" id="cancel">Cancel</button>
  </form>
</body></html>`;
}

async function formBody(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'unknown interaction');
  if (action === '' && req.method === 'GET') {
    if (details.prompt.name !== 'login') {
      // consent is granted by loadExistingGrant: nothing to ask
      return provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
    }
    return send(res, 200, loginPage(uid));
  }
  if (action === 'login' && req.method === 'POST') {
    const { username = '', password = '' } = await formBody(req);
    const account = accounts()[username];
    if (!account || account.password !== password) {
      return send(res, 200, loginPage(uid, 'Wrong username or password.', username));
    }
    return provider.interactionFinished(req, res, { login: { accountId: account.sub } }, { mergeWithLastSubmission: false });
  }
  if (action === 'abort' && req.method === 'POST') {
    return provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'End-User aborted interaction' },
      { mergeWithLastSubmission: false },
    );
  }
  return send(res, 404, 'not found');
}

const handle = provider.callback();
createServer(async (req, res) => {
  const match = /^\/interaction\/([^/?]+)(?:\/(login|abort))?\/?(?:\?.*)?$/.exec(req.url);
  if (!match) return handle(req, res);
  try {
    await interaction(req, res, match[1], match[2] ?? '');
  } catch (err) {
    send(res, 400, `interaction failed: ${escape(err.message)}`);
  }
}).listen(port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
