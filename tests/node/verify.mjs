// Verify issuer access tokens the way a Node.js resource server does: jose's remote JWKS,
// pinned to typ at+jwt (RFC 9068), the issuer and the audience.
//
//   node verify.mjs TOKEN JWKS_URL ISSUER AUDIENCE
//   echo '{"tokens": [...], "jwks_url": ..., "issuer": ..., "audience": ...}' | node verify.mjs
//
// Prints one JSON object: {"results": [{"ok": true, "alg", "kid", "payload"} or
// {"ok": false, "code", "message"}, ...]}, one result per token, in order, all checked
// against one remote JWKS (fetched once and cached, as a server would). Exit status 0 when
// every token verified, 1 when any was refused, 2 on bad input. Tokens are never printed.
import { createRemoteJWKSet, jwtVerify } from 'jose';

async function readInput() {
  const args = process.argv.slice(2);
  if (args.length > 0) {
    if (args.length !== 4) throw new Error('usage: verify.mjs TOKEN JWKS_URL ISSUER AUDIENCE');
    const [token, jwksUrl, issuer, audience] = args;
    return { tokens: [token], jwksUrl, issuer, audience };
  }
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  const input = JSON.parse(text);
  const tokens = input.tokens ?? [input.token];
  if (!Array.isArray(tokens) || !tokens.every((t) => typeof t === 'string')) {
    throw new Error('tokens must be a list of strings');
  }
  return { tokens, jwksUrl: input.jwks_url, issuer: input.issuer, audience: input.audience };
}

async function verify(token, jwks, issuer, audience) {
  try {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      typ: 'at+jwt',
      issuer,
      audience,
    });
    return { ok: true, alg: protectedHeader.alg, kid: protectedHeader.kid, payload };
  } catch (err) {
    return { ok: false, code: err.code ?? err.name, message: err.message };
  }
}

let input;
try {
  input = await readInput();
  for (const name of ['jwksUrl', 'issuer', 'audience']) {
    if (typeof input[name] !== 'string' || !input[name]) throw new Error(`${name} is required`);
  }
} catch (err) {
  process.stdout.write(JSON.stringify({ error: err.message }) + '\n');
  process.exit(2);
}

const jwks = createRemoteJWKSet(new URL(input.jwksUrl));
const results = [];
for (const token of input.tokens) {
  results.push(await verify(token, jwks, input.issuer, input.audience));
}
process.stdout.write(JSON.stringify({ results }) + '\n');
process.exit(results.every((r) => r.ok) ? 0 : 1);
