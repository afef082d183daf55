// Handlers of the workItems functions; workItems.ts registers them. Same semantics as
// LocalWorkOps (src/services/store/local_work.py): the contract suite runs one set of tests
// against both. Times are epoch milliseconds.
import { Infer, v } from "convex/values";
import type { Doc } from "../_generated/dataModel";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import { fail } from "./jobs";

// Mirrors src/services/domain/work.py MAX_WORK_BATCH.
export const MAX_WORK_BATCH = 200;
// Documents a claim looks at past the ones it takes, to skip other workers' operations.
const CLAIM_SCAN = 1000;

export const workStatus = v.union(
  v.literal("pending"),
  v.literal("running"),
  v.literal("completed"),
  v.literal("failed"),
);
export type WorkStatus = Infer<typeof workStatus>;
export const outcome = v.union(v.literal("completed"), v.literal("failed"));
export const ackState = v.union(
  v.literal("applied"),
  v.literal("duplicate"),
  v.literal("stale"),
  v.literal("missing"),
);
type AckState = Infer<typeof ackState>;

export const workFields = {
  itemId: v.string(),
  operation: v.string(),
  payload: v.optional(v.any()),
  status: workStatus,
  attempts: v.number(),
  maxAttempts: v.number(),
  leaseOwner: v.optional(v.string()),
  leaseExpiresAt: v.optional(v.number()),
  result: v.optional(v.any()),
  error: v.optional(v.string()),
  // The key of the report that finished the item: the same report again is a duplicate.
  reportKey: v.optional(v.string()),
  createdAt: v.number(),
  updatedAt: v.number(),
  completedAt: v.optional(v.number()),
};

export const newItem = v.object({
  itemId: v.string(),
  operation: v.string(),
  payload: v.optional(v.any()),
  maxAttempts: v.number(),
});
export const workReport = v.object({
  itemId: v.string(),
  owner: v.string(),
  outcome,
  key: v.string(),
  result: v.optional(v.any()),
  error: v.optional(v.string()),
  // The item's document id, as its claim answered it: read with db.get instead of an index
  // lookup. Checked against itemId; a stale or foreign ref falls back to the index.
  ref: v.optional(v.string()),
});
export const reportAck = v.object({ key: v.string(), state: ackState });
const { reportKey: _reportKey, updatedAt: _updatedAt, ...viewFields } = workFields;
export const itemView = v.object(viewFields);
export const claimedView = v.object({ ...viewFields, ref: v.id("workItems") });

type NewItem = Infer<typeof newItem>;
type WorkReport = Infer<typeof workReport>;
type ItemView = Infer<typeof itemView>;
type ClaimedView = Infer<typeof claimedView>;
type Item = Doc<"workItems">;

const FINISHED: readonly WorkStatus[] = ["completed", "failed"];

function checkBatch(size: number) {
  if (size > MAX_WORK_BATCH) fail("TOO_LARGE", `at most ${MAX_WORK_BATCH} work items per call`);
}

function toView(item: Item): ItemView {
  const { _id, _creationTime, reportKey, updatedAt, ...view } = item;
  return view;
}

function itemDoc(ctx: QueryCtx, itemId: string) {
  return ctx.db
    .query("workItems")
    .withIndex("by_itemId", (q) => q.eq("itemId", itemId))
    .unique();
}

// An id already holding the same operation and payload is this batch sent again (a retry
// after a lost reply): nothing to do. The same id with other content is a CONFLICT.
function sameItem(existing: Doc<"workItems">, item: NewItem): boolean {
  return (
    existing.operation === item.operation &&
    JSON.stringify(existing.payload ?? null) === JSON.stringify(item.payload ?? null)
  );
}

export async function enqueueBatch(ctx: MutationCtx, { items }: { items: NewItem[] }) {
  checkBatch(items.length);
  const now = Date.now();
  for (const item of items) {
    const existing = await itemDoc(ctx, item.itemId);
    if (existing && sameItem(existing, item)) continue;
    if (existing) fail("CONFLICT", `work item ${item.itemId} exists with other content`);
    await ctx.db.insert("workItems", {
      ...item,
      maxAttempts: Math.max(1, item.maxAttempts),
      status: "pending",
      attempts: 0,
      createdAt: now,
      updatedAt: now,
    });
  }
  return items.map((item) => item.itemId);
}

// The oldest pending items of the wanted operations, read through the operation index so a
// backlog of other operations never hides them (each operation read separately, merged by age).
async function pendingOf(ctx: QueryCtx, wanted: Set<string> | null, limit: number) {
  if (wanted === null) {
    return await ctx.db
      .query("workItems")
      .withIndex("by_status_and_leaseExpiresAt", (q) => q.eq("status", "pending"))
      .take(limit);
  }
  const perOperation = await Promise.all(
    [...wanted].map((operation) =>
      ctx.db
        .query("workItems")
        .withIndex("by_status_and_operation", (q) =>
          q.eq("status", "pending").eq("operation", operation),
        )
        .take(limit),
    ),
  );
  return perOperation
    .flat()
    .sort((a, b) => a._creationTime - b._creationTime)
    .slice(0, limit);
}

async function claimable(ctx: QueryCtx, wanted: Set<string> | null, limit: number, now: number) {
  const fits = (item: Item) => wanted === null || wanted.has(item.operation);
  const scan = wanted === null ? limit : limit + CLAIM_SCAN;
  const found = await pendingOf(ctx, wanted, limit);
  if (found.length >= limit) return found;
  const expired = await ctx.db
    .query("workItems")
    .withIndex("by_status_and_leaseExpiresAt", (q) =>
      q.eq("status", "running").lt("leaseExpiresAt", now),
    )
    .take(scan);
  return found.concat(expired.filter(fits));
}

export async function claim(
  ctx: MutationCtx,
  args: { owner: string; operations?: string[]; limit: number; leaseMs: number },
): Promise<ClaimedView[]> {
  const limit = Math.max(0, Math.min(Math.floor(args.limit), MAX_WORK_BATCH));
  if (limit === 0 || args.operations?.length === 0) return [];
  const now = Date.now();
  const wanted = args.operations === undefined ? null : new Set(args.operations);
  const claimed: ClaimedView[] = [];
  for (const item of await claimable(ctx, wanted, limit, now)) {
    if (item.attempts >= item.maxAttempts) {
      await ctx.db.patch(item._id, {
        status: "failed",
        leaseOwner: undefined,
        leaseExpiresAt: undefined,
        error: `given up after ${item.attempts} attempts: its workers stopped before reporting`,
        completedAt: now,
        updatedAt: now,
      });
    } else if (claimed.length < limit) {
      const lease = {
        status: "running" as const,
        leaseOwner: args.owner,
        leaseExpiresAt: now + args.leaseMs,
        attempts: item.attempts + 1,
        updatedAt: now,
      };
      await ctx.db.patch(item._id, lease);
      claimed.push({ ...toView({ ...item, ...lease }), ref: item._id });
    }
  }
  return claimed;
}

export async function heartbeat(
  ctx: MutationCtx,
  args: { owner: string; itemIds: string[]; leaseMs: number },
): Promise<string[]> {
  checkBatch(args.itemIds.length);
  const now = Date.now();
  const lost: string[] = [];
  for (const itemId of args.itemIds) {
    const item = await itemDoc(ctx, itemId);
    if (!item || item.status !== "running" || item.leaseOwner !== args.owner) {
      lost.push(itemId);
    } else {
      await ctx.db.patch(item._id, { leaseExpiresAt: now + args.leaseMs, updatedAt: now });
    }
  }
  return lost;
}

async function reportedDoc(ctx: MutationCtx, report: WorkReport) {
  const id = report.ref === undefined ? null : ctx.db.normalizeId("workItems", report.ref);
  const byRef = id === null ? null : await ctx.db.get(id);
  return byRef?.itemId === report.itemId ? byRef : await itemDoc(ctx, report.itemId);
}

async function applyReport(ctx: MutationCtx, report: WorkReport, now: number) {
  const item = await reportedDoc(ctx, report);
  const ack = (state: AckState) => ({ key: report.key, state });
  if (!item) return ack("missing");
  if (item.reportKey === report.key) return ack("duplicate");
  if (FINISHED.includes(item.status)) return ack("stale");
  await ctx.db.patch(item._id, {
    status: report.outcome,
    result: report.result,
    error: report.error,
    reportKey: report.key,
    leaseOwner: undefined,
    leaseExpiresAt: undefined,
    completedAt: now,
    updatedAt: now,
  });
  return ack("applied");
}

export async function report(ctx: MutationCtx, { reports }: { reports: WorkReport[] }) {
  checkBatch(reports.length);
  const now = Date.now();
  const acks = [];
  for (const one of reports) acks.push(await applyReport(ctx, one, now));
  return acks;
}

export async function release(ctx: MutationCtx, args: { owner: string; itemIds: string[] }) {
  checkBatch(args.itemIds.length);
  const now = Date.now();
  for (const itemId of args.itemIds) {
    const item = await itemDoc(ctx, itemId);
    if (!item || item.status !== "running" || item.leaseOwner !== args.owner) continue;
    // A release is not a failed attempt: the worker stopped on purpose.
    await ctx.db.patch(item._id, {
      status: "pending",
      leaseOwner: undefined,
      leaseExpiresAt: undefined,
      attempts: Math.max(0, item.attempts - 1),
      updatedAt: now,
    });
  }
  return null;
}

export async function get(ctx: QueryCtx, { itemId }: { itemId: string }) {
  const item = await itemDoc(ctx, itemId);
  return item ? toView(item) : null;
}

// Counts at most COUNT_CAP items per status; beyond it a count is a floor.
const COUNT_CAP = 4000;

export async function countByStatus(ctx: QueryCtx) {
  const counts: Record<string, number> = {};
  for (const status of ["pending", "running", "completed", "failed"] as const) {
    const docs = await ctx.db
      .query("workItems")
      .withIndex("by_status_and_leaseExpiresAt", (q) => q.eq("status", status))
      .take(COUNT_CAP);
    if (docs.length > 0) counts[status] = docs.length;
  }
  return counts;
}

export async function listLeases(ctx: QueryCtx, args: { ownerPrefix: string; limit: number }) {
  const limit = Math.max(1, Math.min(Math.floor(args.limit), MAX_WORK_BATCH));
  // Owners sharing the prefix sort together: [prefix, prefix + U+FFFF).
  const held = await ctx.db
    .query("workItems")
    .withIndex("by_leaseOwner", (q) =>
      q.gte("leaseOwner", args.ownerPrefix).lt("leaseOwner", `${args.ownerPrefix}\uffff`),
    )
    .take(limit);
  return held.filter((item) => item.status === "running").map(toView);
}
