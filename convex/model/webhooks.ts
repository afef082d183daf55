// Handlers of the webhooks functions; webhooks.ts registers them. Same semantics as
// LocalWebhookOps (src/services/store/local_webhooks.py): the contract suite runs one set of
// tests against both. Times are epoch milliseconds.
//
// `emit` is called by the bulkJobs and containerJobs mutations, so an event is written in the
// same transaction as the change it reports: one webhookDeliveries document per active
// endpoint that wants it. `dueAt` is the next attempt of a pending delivery and the lease
// expiry of a delivering one, so one index finds every delivery that is due.
import { Infer, v } from "convex/values";
import type { Doc } from "../_generated/dataModel";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import { fail, newId } from "./jobs";

// Mirrors src/services/domain/webhooks.py.
export const MAX_ENDPOINTS_PER_USER = 20;
export const MAX_DELIVERY_PAGE = 200;
const MAX_ERROR_CHARS = 1000;
// Due documents a claim looks at past the ones it takes (given up, or of a disabled endpoint).
const CLAIM_SCAN = 200;
// Deliveries a removal deletes with its endpoint; any left are dropped when they come due.
const REMOVE_SCAN = 2000;

export const endpointStatus = v.union(v.literal("active"), v.literal("disabled"));
export const deliveryStatus = v.union(
  v.literal("pending"),
  v.literal("delivering"),
  v.literal("delivered"),
  v.literal("failed"),
);
export type DeliveryStatus = Infer<typeof deliveryStatus>;

export const endpointFields = {
  endpointId: v.string(),
  userId: v.string(),
  allUsers: v.boolean(),
  url: v.string(),
  events: v.array(v.string()),
  description: v.string(),
  secret: v.string(),
  status: endpointStatus,
  disabledReason: v.optional(v.string()),
  failingSince: v.optional(v.number()),
  createdAt: v.number(),
};
export const endpointView = v.object(endpointFields);
type EndpointView = Infer<typeof endpointView>;

export const deliveryFields = {
  deliveryId: v.string(),
  endpointId: v.string(),
  eventType: v.string(),
  body: v.string(),
  status: deliveryStatus,
  attempts: v.number(),
  dueAt: v.optional(v.number()),
  leaseOwner: v.optional(v.string()),
  lastStatusCode: v.optional(v.number()),
  lastError: v.optional(v.string()),
  lastAttemptAt: v.optional(v.number()),
  deliveredAt: v.optional(v.number()),
  createdAt: v.number(),
};
export const deliveryView = v.object(deliveryFields);
type DeliveryView = Infer<typeof deliveryView>;
export const claimedView = v.object({
  delivery: deliveryView,
  url: v.string(),
  secret: v.string(),
});
type ClaimedView = Infer<typeof claimedView>;

export const rules = { retryWindowMs: v.number(), disableAfterMs: v.number() };
type Rules = { retryWindowMs: number; disableAfterMs: number };
export const attemptResult = {
  ok: v.boolean(),
  statusCode: v.optional(v.number()),
  error: v.optional(v.string()),
  retryInMs: v.optional(v.number()),
  gone: v.optional(v.boolean()),
};
type AttemptResult = {
  ok: boolean;
  statusCode?: number;
  error?: string;
  retryInMs?: number;
  gone?: boolean;
};

const cut = (text: string) =>
  text.length <= MAX_ERROR_CHARS ? text : `${text.slice(0, MAX_ERROR_CHARS)}...`;
const hours = (ms: number) => `${Number((ms / 3_600_000).toPrecision(6))} h`;

function endpointOf(doc: Doc<"webhookEndpoints">): EndpointView {
  const { _id, _creationTime, ...fields } = doc;
  return fields;
}

function deliveryOf(doc: Doc<"webhookDeliveries">): DeliveryView {
  const { _id, _creationTime, ...fields } = doc;
  return fields;
}

// -- events --------------------------------------------------------------------------------

async function activeEndpoints(ctx: QueryCtx, userId: string | undefined) {
  const forAll = await ctx.db
    .query("webhookEndpoints")
    .withIndex("by_allUsers_and_status", (q) => q.eq("allUsers", true).eq("status", "active"))
    .take(MAX_DELIVERY_PAGE);
  if (userId === undefined) return forAll;
  const own = await ctx.db
    .query("webhookEndpoints")
    .withIndex("by_userId_and_status", (q) => q.eq("userId", userId).eq("status", "active"))
    .take(MAX_ENDPOINTS_PER_USER);
  const seen = new Set(own.map((endpoint) => endpoint.endpointId));
  return own.concat(forAll.filter((endpoint) => !seen.has(endpoint.endpointId)));
}

// Write `eventType` for every active endpoint of `userId` (and every endpoint for all users)
// that wants it, in the calling mutation; returns how many deliveries.
export async function emit(
  ctx: MutationCtx,
  eventType: string,
  userId: string | undefined,
  data: Record<string, unknown>,
): Promise<number> {
  const targets = (await activeEndpoints(ctx, userId)).filter((e) => e.events.includes(eventType));
  if (targets.length === 0) return 0;
  const now = Date.now();
  const body = JSON.stringify({ type: eventType, timestamp: new Date(now).toISOString(), data });
  for (const target of targets) {
    await ctx.db.insert("webhookDeliveries", {
      deliveryId: `msg_${newId()}`,
      endpointId: target.endpointId,
      eventType,
      body,
      status: "pending",
      attempts: 0,
      dueAt: now,
      createdAt: now,
    });
  }
  return targets.length;
}

// -- endpoints -----------------------------------------------------------------------------

async function endpointDoc(ctx: QueryCtx, endpointId: string) {
  return ctx.db
    .query("webhookEndpoints")
    .withIndex("by_endpointId", (q) => q.eq("endpointId", endpointId))
    .unique();
}

export async function create(ctx: MutationCtx, args: EndpointView): Promise<null> {
  const mine = await ctx.db
    .query("webhookEndpoints")
    .withIndex("by_userId_and_status", (q) => q.eq("userId", args.userId))
    .take(MAX_ENDPOINTS_PER_USER);
  if (mine.length >= MAX_ENDPOINTS_PER_USER) {
    fail("CONFLICT", `at most ${MAX_ENDPOINTS_PER_USER} webhook endpoints per user`);
  }
  if (await endpointDoc(ctx, args.endpointId)) {
    fail("CONFLICT", `webhook endpoint ${args.endpointId} already exists`);
  }
  await ctx.db.insert("webhookEndpoints", args);
  return null;
}

export async function get(
  ctx: QueryCtx,
  args: { endpointId: string },
): Promise<EndpointView | null> {
  const doc = await endpointDoc(ctx, args.endpointId);
  return doc ? endpointOf(doc) : null;
}

export async function list(ctx: QueryCtx, args: { userId?: string }): Promise<EndpointView[]> {
  const userId = args.userId;
  const docs =
    userId === undefined
      ? await ctx.db.query("webhookEndpoints").withIndex("by_createdAt").take(MAX_DELIVERY_PAGE)
      : await ctx.db
          .query("webhookEndpoints")
          .withIndex("by_userId_and_createdAt", (q) => q.eq("userId", userId))
          .take(MAX_DELIVERY_PAGE);
  return docs.map(endpointOf);
}

export async function remove(ctx: MutationCtx, args: { endpointId: string }): Promise<boolean> {
  const doc = await endpointDoc(ctx, args.endpointId);
  if (!doc) return false;
  const deliveries = await ctx.db
    .query("webhookDeliveries")
    .withIndex("by_endpointId", (q) => q.eq("endpointId", args.endpointId))
    .take(REMOVE_SCAN);
  for (const delivery of deliveries) await ctx.db.delete(delivery._id);
  await ctx.db.delete(doc._id);
  return true;
}

export async function enable(
  ctx: MutationCtx,
  args: { endpointId: string },
): Promise<EndpointView> {
  const doc = await endpointDoc(ctx, args.endpointId);
  if (!doc) fail("NOT_FOUND", `webhook endpoint ${args.endpointId} not found`);
  const patch = { status: "active" as const, disabledReason: undefined, failingSince: undefined };
  await ctx.db.patch(doc._id, patch);
  return endpointOf({ ...doc, ...patch });
}

// -- deliveries ----------------------------------------------------------------------------

async function deliveryDoc(ctx: QueryCtx, deliveryId: string) {
  const doc = await ctx.db
    .query("webhookDeliveries")
    .withIndex("by_deliveryId", (q) => q.eq("deliveryId", deliveryId))
    .unique();
  return doc ?? fail("NOT_FOUND", `webhook delivery ${deliveryId} not found`);
}

async function due(ctx: QueryCtx, now: number, take: number) {
  const found: Doc<"webhookDeliveries">[] = [];
  for (const status of ["pending", "delivering"] as const) {
    found.push(
      ...(await ctx.db
        .query("webhookDeliveries")
        .withIndex("by_status_and_dueAt", (q) => q.eq("status", status).lte("dueAt", now))
        .take(take)),
    );
  }
  return found.sort((a, b) => (a.dueAt ?? 0) - (b.dueAt ?? 0));
}

export async function claim(
  ctx: MutationCtx,
  args: { owner: string; leaseMs: number; limit: number } & Rules,
): Promise<ClaimedView[]> {
  const limit = Math.min(args.limit, MAX_DELIVERY_PAGE);
  if (limit < 1) return [];
  const now = Date.now();
  const claimed: ClaimedView[] = [];
  for (const doc of await due(ctx, now, limit + CLAIM_SCAN)) {
    const endpoint = await endpointDoc(ctx, doc.endpointId);
    if ((await settleUnclaimable(ctx, doc, endpoint, now, args)) || claimed.length >= limit) {
      continue;
    }
    const patch = {
      status: "delivering" as const,
      leaseOwner: args.owner,
      dueAt: now + args.leaseMs,
      attempts: doc.attempts + 1,
      lastAttemptAt: now,
    };
    await ctx.db.patch(doc._id, patch);
    claimed.push({
      delivery: deliveryOf({ ...doc, ...patch }),
      url: endpoint!.url,
      secret: endpoint!.secret,
    });
  }
  return claimed;
}

// Finish a due delivery that must not be sent again: its endpoint is gone (the document goes
// too), disabled, or its retry window has passed. True when it was one of those.
async function settleUnclaimable(
  ctx: MutationCtx,
  doc: Doc<"webhookDeliveries">,
  endpoint: Doc<"webhookEndpoints"> | null,
  now: number,
  rules: Rules,
): Promise<boolean> {
  if (!endpoint) {
    await ctx.db.delete(doc._id);
    return true;
  }
  if (endpoint.status === "disabled") {
    await failDelivery(ctx, doc, `endpoint disabled: ${endpoint.disabledReason}`);
    return true;
  }
  if (now >= doc.createdAt + rules.retryWindowMs) {
    await failDelivery(ctx, doc, gaveUp(doc, rules));
    return true;
  }
  return false;
}

function gaveUp(doc: Doc<"webhookDeliveries">, rules: Rules, lastError?: string): string {
  const error = lastError ?? doc.lastError ?? "its worker stopped before reporting";
  return (
    `not delivered within ${hours(rules.retryWindowMs)} of the event` +
    ` (${doc.attempts} attempts); last error: ${error}`
  );
}

async function failDelivery(
  ctx: MutationCtx,
  doc: Doc<"webhookDeliveries">,
  error: string,
  statusCode?: number,
) {
  await ctx.db.patch(doc._id, {
    status: "failed",
    dueAt: undefined,
    leaseOwner: undefined,
    lastError: cut(error),
    lastStatusCode: statusCode ?? doc.lastStatusCode,
  });
}

export async function heartbeat(
  ctx: MutationCtx,
  args: { deliveryId: string; owner: string; leaseMs: number },
): Promise<DeliveryStatus> {
  const doc = await deliveryDoc(ctx, args.deliveryId);
  if (doc.status === "delivered" || doc.status === "failed") return doc.status;
  if (doc.status !== "delivering" || doc.leaseOwner !== args.owner) {
    fail(
      "CONFLICT",
      `lease on delivery ${args.deliveryId} was lost to '${doc.leaseOwner ?? "nobody"}'`,
    );
  }
  await ctx.db.patch(doc._id, { dueAt: Date.now() + args.leaseMs });
  return "delivering";
}

export async function report(
  ctx: MutationCtx,
  args: { deliveryId: string; owner: string } & AttemptResult & Rules,
): Promise<DeliveryStatus> {
  const doc = await deliveryDoc(ctx, args.deliveryId);
  if (doc.status === "delivered" || doc.status === "failed") return doc.status;
  // A success counts whoever sent it; a failure only from the holder of the lease (the
  // delivery is someone else's attempt now).
  if (!args.ok && doc.leaseOwner !== args.owner) return doc.status;
  const now = Date.now();
  const endpoint = await endpointDoc(ctx, doc.endpointId);
  if (args.ok) {
    await ctx.db.patch(doc._id, {
      status: "delivered",
      dueAt: undefined,
      leaseOwner: undefined,
      lastStatusCode: args.statusCode,
      lastError: undefined,
      deliveredAt: now,
    });
    if (endpoint) await ctx.db.patch(endpoint._id, { failingSince: undefined });
    return "delivered";
  }
  return attemptFailed(ctx, doc, endpoint, args, now);
}

// Retry later, or fail for good: the receiver is gone (410), its endpoint has failed for too
// long (then it is disabled), or the next attempt would fall past the retry window.
async function attemptFailed(
  ctx: MutationCtx,
  doc: Doc<"webhookDeliveries">,
  endpoint: Doc<"webhookEndpoints"> | null,
  args: AttemptResult & Rules,
  now: number,
): Promise<DeliveryStatus> {
  const error = cut(args.error ?? `HTTP ${args.statusCode}`);
  const failingSince = endpoint?.failingSince ?? now;
  const reason = disableReason(args, now, failingSince, error);
  if (endpoint) {
    await ctx.db.patch(endpoint._id, {
      failingSince,
      ...(reason === undefined ? {} : { status: "disabled" as const, disabledReason: reason }),
    });
  }
  if (reason !== undefined) {
    await failDelivery(ctx, doc, `endpoint disabled: ${reason}`, args.statusCode);
    return "failed";
  }
  const retryInMs = Math.max(0, args.retryInMs ?? 0);
  if (now + retryInMs >= doc.createdAt + args.retryWindowMs) {
    await failDelivery(ctx, doc, gaveUp(doc, args, error), args.statusCode);
    return "failed";
  }
  await ctx.db.patch(doc._id, {
    status: "pending",
    dueAt: now + retryInMs,
    leaseOwner: undefined,
    lastStatusCode: args.statusCode,
    lastError: error,
  });
  return "pending";
}

function disableReason(
  args: AttemptResult & Rules,
  now: number,
  failingSince: number,
  error: string,
): string | undefined {
  if (args.gone) return "the receiver answered 410 Gone";
  if (now - failingSince >= args.disableAfterMs) {
    return (
      `every delivery failed for ${hours(args.disableAfterMs)}` +
      ` (since ${new Date(failingSince).toISOString()}); last error: ${error}`
    );
  }
  return undefined;
}

// A hand-back (the worker stopped on purpose) is not an attempt.
export async function release(
  ctx: MutationCtx,
  args: { deliveryId: string; owner: string },
): Promise<null> {
  const doc = await ctx.db
    .query("webhookDeliveries")
    .withIndex("by_deliveryId", (q) => q.eq("deliveryId", args.deliveryId))
    .unique();
  if (doc && doc.status === "delivering" && doc.leaseOwner === args.owner) {
    await ctx.db.patch(doc._id, {
      status: "pending",
      dueAt: Date.now(),
      leaseOwner: undefined,
      attempts: Math.max(0, doc.attempts - 1),
    });
  }
  return null;
}

export async function listDeliveries(
  ctx: QueryCtx,
  args: { endpointId: string; status?: DeliveryStatus; limit: number },
): Promise<DeliveryView[]> {
  const limit = Math.max(1, Math.min(args.limit, MAX_DELIVERY_PAGE));
  const status = args.status;
  const docs =
    status === undefined
      ? await ctx.db
          .query("webhookDeliveries")
          .withIndex("by_endpointId", (q) => q.eq("endpointId", args.endpointId))
          .order("desc")
          .take(limit)
      : await ctx.db
          .query("webhookDeliveries")
          .withIndex("by_endpointId_and_status", (q) =>
            q.eq("endpointId", args.endpointId).eq("status", status),
          )
          .order("desc")
          .take(limit);
  return docs.map(deliveryOf);
}
