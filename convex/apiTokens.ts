// apiTokens: hashed API tokens. Internal: only the service looks tokens up.
import { v } from "convex/values";
import { internalMutation, internalQuery } from "./_generated/server";
import { fail } from "./model/jobs";

export const create = internalMutation({
  args: { tokenHash: v.string(), userId: v.string(), isAdmin: v.boolean(), name: v.string() },
  returns: v.null(),
  handler: async (ctx, args) => {
    const existing = await ctx.db
      .query("apiTokens")
      .withIndex("by_tokenHash", (q) => q.eq("tokenHash", args.tokenHash))
      .unique();
    if (existing) fail("CONFLICT", "a token with this hash already exists");
    await ctx.db.insert("apiTokens", { ...args, createdAt: Date.now() });
    return null;
  },
});

export const getByHash = internalQuery({
  args: { tokenHash: v.string() },
  returns: v.union(
    v.object({ userId: v.string(), isAdmin: v.boolean(), name: v.string(), createdAt: v.number() }),
    v.null(),
  ),
  handler: async (ctx, { tokenHash }) => {
    const token = await ctx.db
      .query("apiTokens")
      .withIndex("by_tokenHash", (q) => q.eq("tokenHash", tokenHash))
      .unique();
    return token
      ? { userId: token.userId, isAdmin: token.isAdmin, name: token.name, createdAt: token.createdAt }
      : null;
  },
});

export const count = internalQuery({
  args: {},
  returns: v.number(),
  handler: async (ctx) => (await ctx.db.query("apiTokens").take(10_001)).length,
});
