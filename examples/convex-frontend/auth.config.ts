// A template for convex/auth.config.ts: copy it there, keep the provider you use in
// `providers`, set its variables on the deployment (`npx convex env set NAME value`) and
// deploy. Convex then accepts that provider's JWTs from browsers, and in the public bulkJobs
// queries ctx.auth.getUserIdentity().subject (the token's `sub`) must equal the user_id the
// service recorded for the job. It is not in convex/ by default because a deployment without
// browser users should not need these variables; without it, no request has an identity and
// the public queries return null and [].
import type { AuthConfig, AuthProvider } from "convex/server";

// Convex evaluates this file with the deployment's environment variables.
declare const process: { env: Record<string, string | undefined> };

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`auth.config.ts: set ${name} with \`npx convex env set ${name} ...\``);
  return value;
}

// Clerk: create a JWT template named "convex" in the Clerk dashboard; its issuer is the
// domain (https://<your-app>.clerk.accounts.dev). The `sub` is Clerk's user id (user_...).
const clerk = (): AuthProvider => ({
  domain: required("CLERK_JWT_ISSUER_DOMAIN"),
  applicationID: "convex",
});

// Auth0: the tenant domain (https://<tenant>.auth0.com/) and the application's client id, which
// Convex checks as the ID token's audience. The `sub` looks like auth0|<id>.
const auth0 = (): AuthProvider => ({
  domain: required("AUTH0_DOMAIN"),
  applicationID: required("AUTH0_CLIENT_ID"),
});

// Any issuer of RS256/ES256 JWTs, e.g. your own backend: its issuer (`iss`), the URL of its
// public keys, and the audience (`aud`) its tokens carry for this app.
const customJwt = (): AuthProvider => ({
  type: "customJwt",
  issuer: required("JWT_ISSUER"),
  jwks: required("JWT_JWKS_URL"),
  algorithm: "RS256",
  applicationID: "bulkjobs",
});

export default { providers: [clerk()] } satisfies AuthConfig;
