// webhooks: the functions behind the WebhookStore protocol (src/services/store/base.py,
// `webhooks:claim` <-> `webhook_claim`). All internal: endpoints hold signing secrets, and
// the service and its workers call these with a deploy key. Events themselves are written by
// the bulkJobs and containerJobs mutations (model/webhooks.ts `emit`).
import { v } from "convex/values";
import { internalMutation, internalQuery } from "./_generated/server";
import * as hooks from "./model/webhooks";
import {
  attemptResult,
  claimedView,
  deliveryStatus,
  deliveryView,
  endpointFields,
  endpointView,
  rules,
} from "./model/webhooks";

// CONFLICT past MAX_ENDPOINTS_PER_USER endpoints of one user, or for an id in use.
export const create = internalMutation({
  args: endpointFields,
  returns: v.null(),
  handler: hooks.create,
});

export const get = internalQuery({
  args: { endpointId: v.string() },
  returns: v.union(endpointView, v.null()),
  handler: hooks.get,
});

// One user's endpoints (everyone's without userId), oldest first, bounded.
export const list = internalQuery({
  args: { userId: v.optional(v.string()) },
  returns: v.array(endpointView),
  handler: hooks.list,
});

// The endpoint and its deliveries; false when it did not exist.
export const remove = internalMutation({
  args: { endpointId: v.string() },
  returns: v.boolean(),
  handler: hooks.remove,
});

export const enable = internalMutation({
  args: { endpointId: v.string() },
  returns: endpointView,
  handler: hooks.enable,
});

// Due deliveries under a lease, oldest due first; those of a disabled endpoint or past the
// retry window are failed instead, those of a removed endpoint dropped.
export const claim = internalMutation({
  args: { owner: v.string(), leaseMs: v.number(), limit: v.number(), ...rules },
  returns: v.array(claimedView),
  handler: hooks.claim,
});

// Renews the lease; the status when finished meanwhile; CONFLICT when the lease was lost.
export const heartbeat = internalMutation({
  args: { deliveryId: v.string(), owner: v.string(), leaseMs: v.number() },
  returns: deliveryStatus,
  handler: hooks.heartbeat,
});

// One attempt's outcome: delivered, retried after retryInMs, or failed (and the endpoint
// disabled when it has failed for disableAfterMs, or answered 410).
export const report = internalMutation({
  args: { deliveryId: v.string(), owner: v.string(), ...attemptResult, ...rules },
  returns: deliveryStatus,
  handler: hooks.report,
});

export const release = internalMutation({
  args: { deliveryId: v.string(), owner: v.string() },
  returns: v.null(),
  handler: hooks.release,
});

// An endpoint's deliveries, newest first, at most `limit` (<= MAX_DELIVERY_PAGE).
export const listDeliveries = internalQuery({
  args: { endpointId: v.string(), status: v.optional(deliveryStatus), limit: v.number() },
  returns: v.array(deliveryView),
  handler: hooks.listDeliveries,
});
