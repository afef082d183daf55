// Where the page gets the token it hands to Convex: a JWT from the app's identity provider,
// whose `sub` claim is the user's id in the bulkjobs service (see README, "Convex").
// ConvexClient calls the fetcher when it connects and again before the token expires, with
// forceRefreshToken set when Convex rejected the last one.
export type FetchToken = (args: { forceRefreshToken: boolean }) => Promise<string | null>;

type ClerkGlobal = {
  session?: { getToken(options: { template: string; skipCache: boolean }): Promise<string | null> };
};

// Clerk, loaded by its script tag (window.Clerk): the JWT template named "convex".
export function clerkToken(clerk: ClerkGlobal): FetchToken {
  return async ({ forceRefreshToken }) =>
    (await clerk.session?.getToken({ template: "convex", skipCache: forceRefreshToken })) ?? null;
}

// Any other provider, e.g. your own backend signing RS256 JWTs for a customJwt provider: an
// endpoint on the app's origin that answers the signed-in user with {"token": "..."}.
// (Auth0 with auth0-spa-js: `(await auth0.getTokenSilently({ detailedResponse: true })).id_token`.)
export function endpointToken(url: string): FetchToken {
  return async ({ forceRefreshToken }) => {
    const response = await fetch(url, {
      credentials: "include",
      cache: forceRefreshToken ? "no-store" : "default",
    });
    if (!response.ok) return null;
    const body = (await response.json()) as { token?: unknown };
    return typeof body.token === "string" ? body.token : null;
  };
}

// Clerk when its script is on the page, the token endpoint otherwise.
export function pickFetchToken(tokenUrl: string): FetchToken {
  const clerk = (globalThis as { Clerk?: ClerkGlobal }).Clerk;
  return clerk ? clerkToken(clerk) : endpointToken(tokenUrl);
}
