// apiTokens: hashed API tokens. Internal: only the service looks tokens up. A token's id is
// the first TOKEN_ID_CHARS characters of its hash: lists and revocations name a token by
// it, so neither ever returns the hash.
import { v } from "convex/values";
import { Doc } from "./_generated/dataModel";
import { QueryCtx, internalMutation, internalQuery } from "./_generated/server";
import { fail } from "./model/jobs";
import { MAX_PAGE } from "./validators";

export const TOKEN_ID_CHARS = 12;

const tokenView = v.object({
  tokenId: v.string(),
  userId: v.string(),
  isAdmin: v.boolean(),
  name: v.string(),
  createdAt: v.number(),
  expiresAt: v.optional(v.number()),
  revokedAt: v.optional(v.number()),
});

function view(token: Doc<"apiTokens">) {
  const { _id, _creationTime, tokenHash, ...fields } = token;
  return { tokenId: tokenHash.slice(0, TOKEN_ID_CHARS), ...fields };
}

async function byHash(ctx: QueryCtx, tokenHash: string) {
  return await ctx.db
    .query("apiTokens")
    .withIndex("by_tokenHash", (q) => q.eq("tokenHash", tokenHash))
    .unique();
}

export const create = internalMutation({
  args: {
    tokenHash: v.string(),
    userId: v.string(),
    isAdmin: v.boolean(),
    name: v.string(),
    expiresAt: v.optional(v.number()),
  },
  returns: v.null(),
  handler: async (ctx, args) => {
    if (await byHash(ctx, args.tokenHash)) fail("CONFLICT", "a token with this hash already exists");
    await ctx.db.insert("apiTokens", { ...args, createdAt: Date.now() });
    return null;
  },
});

// Revoked and expired tokens too: the service says why it refuses one.
export const getByHash = internalQuery({
  args: { tokenHash: v.string() },
  returns: v.union(tokenView, v.null()),
  handler: async (ctx, { tokenHash }) => {
    const token = await byHash(ctx, tokenHash);
    return token ? view(token) : null;
  },
});

// Newest first, only `userId`'s when given, at most `limit` (<= MAX_PAGE).
export const list = internalQuery({
  args: { userId: v.optional(v.string()), limit: v.number() },
  returns: v.array(tokenView),
  handler: async (ctx, { userId, limit }) => {
    const count = Math.max(1, Math.min(limit, MAX_PAGE));
    const tokens =
      userId === undefined
        ? await ctx.db.query("apiTokens").order("desc").take(count)
        : await ctx.db
            .query("apiTokens")
            .withIndex("by_userId_and_createdAt", (q) => q.eq("userId", userId))
            .order("desc")
            .take(count);
    return tokens.map(view);
  },
});

// The token as revoked; a second revocation keeps the first time.
export const revoke = internalMutation({
  args: { tokenId: v.string() },
  returns: tokenView,
  handler: async (ctx, { tokenId }) => {
    const found =
      tokenId.length === TOKEN_ID_CHARS
        ? await ctx.db
            .query("apiTokens")
            .withIndex("by_tokenHash", (q) => q.gte("tokenHash", tokenId))
            .take(2)
        : [];
    const matches = found.filter((token) => token.tokenHash.startsWith(tokenId));
    if (matches.length === 0) fail("NOT_FOUND", `token ${tokenId} not found`);
    if (matches.length > 1) fail("CONFLICT", `token id ${tokenId} names more than one token`);
    const token = matches[0];
    const revokedAt = token.revokedAt ?? Date.now();
    await ctx.db.patch(token._id, { revokedAt });
    return view({ ...token, revokedAt });
  },
});

export const count = internalQuery({
  args: {},
  returns: v.number(),
  handler: async (ctx) => (await ctx.db.query("apiTokens").take(10_001)).length,
});
