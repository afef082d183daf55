// workItems: the functions behind the WorkStore protocol (src/services/store/base.py,
// `workItems:claim` <-> `work_claim`). All internal: workers call them with a deploy key.
import { v } from "convex/values";
import { internalMutation, internalQuery } from "./_generated/server";
import * as work from "./model/workItems";
import { claimedView, itemView, newItem, reportAck, workReport } from "./model/workItems";

// One transaction: all of the batch (at most MAX_WORK_BATCH = 200 items) or nothing.
export const enqueueBatch = internalMutation({
  args: { items: v.array(newItem) },
  returns: v.array(v.string()),
  handler: work.enqueueBatch,
});

// Pending items of `operations` (any when absent), then expired leases, oldest first; each
// with its document id (`ref`), which its report may send back to skip an index lookup.
export const claim = internalMutation({
  args: {
    owner: v.string(),
    operations: v.optional(v.array(v.string())),
    limit: v.number(),
    leaseMs: v.number(),
  },
  returns: v.array(claimedView),
  handler: work.claim,
});

// Renews the leases `owner` holds; returns the ids it no longer holds.
export const heartbeat = internalMutation({
  args: { owner: v.string(), itemIds: v.array(v.string()), leaseMs: v.number() },
  returns: v.array(v.string()),
  handler: work.heartbeat,
});

// Each report applied once (by key); one ack per report, in order.
export const report = internalMutation({
  args: { reports: v.array(workReport) },
  returns: v.array(reportAck),
  handler: work.report,
});

export const release = internalMutation({
  args: { owner: v.string(), itemIds: v.array(v.string()) },
  returns: v.null(),
  handler: work.release,
});

export const get = internalQuery({
  args: { itemId: v.string() },
  returns: v.union(itemView, v.null()),
  handler: work.get,
});

export const countByStatus = internalQuery({
  args: {},
  returns: v.record(v.string(), v.number()),
  handler: work.countByStatus,
});

export const listLeases = internalQuery({
  args: { ownerPrefix: v.string(), limit: v.number() },
  returns: v.array(itemView),
  handler: work.listLeases,
});
