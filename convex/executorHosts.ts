// executorHosts: the hosts container jobs run on, their capacity counters and health. All
// internal: only the service reads and writes them.
import { v } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import { internalMutation, internalQuery, MutationCtx, QueryCtx } from "./_generated/server";
import { fail } from "./model/jobs";
import {
  HostView,
  MAX_LIST,
  checkNameFree,
  hostDoc,
  hostFields,
  hostPatch,
  hostView,
  toHostView,
  unsetFields,
  withUnset,
} from "./model/containers";

// The service's default failure threshold (MAX_HEALTH_FAILURES in domain/containers.py).
const MAX_HEALTH_FAILURES = 3;
const newHost = v.object({ hostId: v.string(), ...hostFields });

async function mustGet(ctx: QueryCtx, hostId: string): Promise<Doc<"executorHosts">> {
  return (await hostDoc(ctx, hostId)) ?? fail("NOT_FOUND", `executor host ${hostId} not found`);
}

async function insertHost(ctx: MutationCtx, host: HostView) {
  if (await hostDoc(ctx, host.hostId)) fail("CONFLICT", `executor host ${host.hostId} exists`);
  await checkNameFree(ctx, "executorHosts", host.name);
  await ctx.db.insert("executorHosts", host);
}

async function patchHost(ctx: MutationCtx, host: Doc<"executorHosts">, changes: object) {
  await ctx.db.patch(host._id, changes);
  return toHostView((await ctx.db.get(host._id))!);
}

export const create = internalMutation({
  args: { host: newHost },
  returns: v.null(),
  handler: async (ctx, { host }) => {
    await insertHost(ctx, host);
    return null;
  },
});

export const update = internalMutation({
  args: { hostId: v.string(), fields: hostPatch, unset: unsetFields },
  returns: hostView,
  handler: async (ctx, { hostId, fields, unset }) => {
    const host = await mustGet(ctx, hostId);
    if (fields.name !== undefined) await checkNameFree(ctx, "executorHosts", fields.name, host._id);
    const changes = { ...withUnset(fields, unset, hostFields), updatedAt: Date.now() };
    return patchHost(ctx, host, changes);
  },
});

export const get = internalQuery({
  args: { hostId: v.string() },
  returns: v.union(hostView, v.null()),
  handler: async (ctx, { hostId }) => {
    const host = await hostDoc(ctx, hostId);
    return host ? toHostView(host) : null;
  },
});

export const getByName = internalQuery({
  args: { name: v.string() },
  returns: v.union(hostView, v.null()),
  handler: async (ctx, { name }) => {
    const host = await ctx.db
      .query("executorHosts")
      .withIndex("by_name", (q) => q.eq("name", name))
      .first();
    return host ? toHostView(host) : null;
  },
});

// By name, at most MAX_LIST hosts.
export const list = internalQuery({
  args: { activeOnly: v.boolean() },
  returns: v.array(hostView),
  handler: async (ctx, { activeOnly }) => {
    const hosts = await ctx.db.query("executorHosts").withIndex("by_name").take(MAX_LIST);
    return hosts.filter((host) => host.isActive || !activeOnly).map(toHostView);
  },
});

// One probe's result (probe: false -- one launch that failed for the host's sake). A passed
// probe resets the failure count and marks the host healthy; a failure adds one and keeps
// its error, and the host is unhealthy once the count reaches `threshold` (routing skips it
// until a probe passes). Only probes move lastHealthCheck. Mirrors _record_health in
// local_containers.py.
export const recordHealth = internalMutation({
  args: {
    hostId: v.string(),
    healthy: v.boolean(),
    error: v.optional(v.string()),
    threshold: v.optional(v.number()),
    probe: v.optional(v.boolean()),
  },
  returns: hostView,
  handler: async (ctx, args) => {
    const host = await mustGet(ctx, args.hostId);
    const failures = args.healthy ? 0 : host.healthCheckFailures + 1;
    const changes: Partial<Doc<"executorHosts">> = {
      healthCheckFailures: failures,
      healthy: failures < Math.max(1, args.threshold ?? MAX_HEALTH_FAILURES),
      lastHealthError: args.healthy ? undefined : (args.error ?? "unhealthy"),
    };
    if (args.probe ?? true) changes.lastHealthCheck = Date.now();
    return patchHost(ctx, host, changes);
  },
});

// Up to `limit` active hosts whose next probe is due (never probed first, then the longest
// due), each moved intervalMs on in this transaction: workers probe each host once per
// interval between them.
export const claimProbes = internalMutation({
  args: { intervalMs: v.number(), limit: v.number() },
  returns: v.array(hostView),
  handler: async (ctx, { intervalMs, limit }) => {
    const now = Date.now();
    const hosts = await ctx.db.query("executorHosts").withIndex("by_name").take(MAX_LIST);
    const due = hosts
      .filter((host) => host.isActive && (host.nextProbeAt ?? 0) <= now)
      .sort((a, b) => (a.nextProbeAt ?? 0) - (b.nextProbeAt ?? 0))
      .slice(0, Math.max(1, Math.min(Math.floor(limit), MAX_LIST)));
    const claimed: HostView[] = [];
    for (const host of due) {
      claimed.push(await patchHost(ctx, host, { nextProbeAt: now + intervalMs }));
    }
    return claimed;
  },
});

// Moves currentJobCount by +1 or -1 in one transaction (ExecutorHost.increment_job_count /
// decrement_job_count): an increment stops at maxConcurrentJobs, a decrement at 0.
export const adjustCount = internalMutation({
  args: { hostId: v.string(), delta: v.union(v.literal(1), v.literal(-1)) },
  returns: hostView,
  handler: async (ctx, { hostId, delta }) => {
    const host = await mustGet(ctx, hostId);
    const count = host.currentJobCount + delta;
    if (count < 0 || count > host.maxConcurrentJobs) return toHostView(host);
    return patchHost(ctx, host, { currentJobCount: count, updatedAt: Date.now() });
  },
});

// Inserts `host` (the service's default `local` host) when no host exists yet, so that local
// container jobs need no set-up. The service passes the document so its defaults live in
// one place (models.py). Returns whether it was inserted.
export const ensureDefault = internalMutation({
  args: { host: newHost },
  returns: v.boolean(),
  handler: async (ctx, { host }) => {
    if (await ctx.db.query("executorHosts").first()) return false;
    await ctx.db.insert("executorHosts", host);
    return true;
  },
});
