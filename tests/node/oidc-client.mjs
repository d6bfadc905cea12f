// An OpenID Connect relying party against a live issuer, with openid-client (panva):
// discovery, the password grant, a refresh and UserInfo, each ID token validated by the
// library (iss, aud, azp, exp, iat, auth_time, the alg the discovery document allows) and
// its signature checked against the issuer's jwks_uri (enableNonRepudiationChecks).
//
//   echo '{"issuer": ..., "client_id": ..., "client_secret": ..., "username": ...,
//          "password": ..., "scope": "openid profile", "check_signatures": true}' | node oidc-client.mjs
//
// check_signatures false is for HS256, whose ID tokens are keyed with the client secret:
// openid-client checks signatures only of asymmetric algorithms (the caller verifies).
//
// Prints one JSON object: {"ok": true, "alg", "login": claims, "refresh": claims,
// "userinfo": {...}} or {"ok": false, "code", "message"}. Exit status 0 on success, 1 when
// the library refused something, 2 on bad input. Tokens are never printed.
import * as client from 'openid-client';

function header(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[0], 'base64url').toString('utf8'));
}

let input;
try {
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  input = JSON.parse(text);
  for (const name of ['issuer', 'client_id', 'client_secret', 'username', 'password']) {
    if (typeof input[name] !== 'string' || !input[name]) throw new Error(`${name} is required`);
  }
} catch (err) {
  process.stdout.write(JSON.stringify({ ok: false, code: 'bad_input', message: err.message }) + '\n');
  process.exit(2);
}

try {
  const config = await client.discovery(
    new URL(input.issuer),
    input.client_id,
    undefined,
    client.ClientSecretBasic(input.client_secret),
    // http:// on 127.0.0.1 only (the test server); every ID token signature checked.
    {
      execute:
        input.check_signatures === false
          ? [client.allowInsecureRequests]
          : [client.allowInsecureRequests, client.enableNonRepudiationChecks],
    },
  );
  const login = await client.genericGrantRequest(config, 'password', {
    username: input.username,
    password: input.password,
    scope: input.scope ?? 'openid profile',
  });
  if (!login.id_token) throw new Error('the password grant returned no id_token');
  const loginClaims = login.claims();
  const refreshed = await client.refreshTokenGrant(config, login.refresh_token);
  if (!refreshed.id_token) throw new Error('the refresh returned no id_token');
  const userinfo = await client.fetchUserInfo(config, refreshed.access_token, loginClaims.sub);
  const result = {
    ok: true,
    alg: header(login.id_token).alg,
    refresh_alg: header(refreshed.id_token).alg,
    discovered_issuer: config.serverMetadata().issuer,
    login: loginClaims,
    refresh: refreshed.claims(),
    userinfo,
  };
  process.stdout.write(JSON.stringify(result) + '\n');
} catch (err) {
  const result = { ok: false, code: err.code ?? err.name, message: err.message };
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(1);
}
