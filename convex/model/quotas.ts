// Per-user quotas, checked in the transaction that adds what they count: bytes of unexpired
// exports (bulkJobs.addExport) and unfinished container jobs (containerJobs.create*). Same
// semantics as the Python LocalStore (src/services/store/local.py, local_containers.py).
import { v, type Infer } from "convex/values";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import { fail } from "./jobs";
import { STATUSES, TERMINAL } from "./containers";

// Mirrors HOLD_TTL_S in src/services/domain/containers.py: a creator that died midway holds
// its owner's quota no longer than this.
export const HOLD_TTL_MS = 600_000;
// Bound on the export records one quota check reads. A user holding more unexpired exports
// than this is refused further ones (their sum cannot be told within the read limits).
export const EXPORT_SCAN = 4000;

const UNFINISHED = STATUSES.filter((status) => !TERMINAL.includes(status));

// ContainerQuota in src/services/domain/containers.py.
export const containerQuota = v.object({
  maxUnfinished: v.number(),
  holdId: v.optional(v.string()),
  hold: v.number(),
});
export type ContainerQuota = Infer<typeof containerQuota>;

// -- exports -------------------------------------------------------------------------------

// Bytes of the user's unexpired exports but `exceptId` (a record being replaced); `complete`
// is false when there were more than EXPORT_SCAN of them.
export async function exportBytes(
  ctx: QueryCtx,
  userId: string,
  exceptId?: string,
): Promise<{ bytes: number; complete: boolean }> {
  const held = await ctx.db
    .query("bulkJobExports")
    .withIndex("by_userId_and_expiresAt", (q) => q.eq("userId", userId).gt("expiresAt", Date.now()))
    .take(EXPORT_SCAN + 1);
  const counted = held.slice(0, EXPORT_SCAN).filter((doc) => doc.exportId !== exceptId);
  const bytes = counted.reduce((sum, doc) => sum + doc.sizeBytes, 0);
  return { bytes, complete: held.length <= EXPORT_SCAN };
}

export async function checkExportBytes(
  ctx: QueryCtx,
  args: { userId: string; exportId: string; sizeBytes: number },
  maxUserBytes: number,
) {
  const { bytes, complete } = await exportBytes(ctx, args.userId, args.exportId);
  if (!complete || bytes + args.sizeBytes > maxUserBytes) {
    fail("EXPORT_QUOTA", `export quota of ${args.userId} reached`, {
      userId: args.userId,
      maximum: maxUserBytes,
      usage: bytes,
      requested: args.sizeBytes,
    });
  }
}

// -- container jobs ------------------------------------------------------------------------

// Room for `count` new jobs of `owner` (and `quota.hold` more, reserved), or a
// CONTAINER_QUOTA error; the jobs draw on the reservation `quota.holdId` first.
export async function takeContainerQuota(
  ctx: MutationCtx,
  owner: string,
  count: number,
  quota: ContainerQuota,
) {
  const now = Date.now();
  const hold = quota.holdId === undefined ? null : await holdDoc(ctx, quota.holdId);
  const reserved = hold && hold.userId === owner && hold.expiresAt > now ? hold.remaining : 0;
  const covered = Math.min(count, reserved);
  const extra = count - covered + quota.hold;
  if (extra > 0) {
    const usage = await unfinished(ctx, owner, now, quota.maxUnfinished + 1);
    if (usage + extra > quota.maxUnfinished) {
      fail("CONTAINER_QUOTA", `container job quota of ${owner} reached`, {
        userId: owner,
        maximum: quota.maxUnfinished,
        usage,
        requested: count + quota.hold,
      });
    }
  }
  const remaining = reserved - covered + quota.hold;
  if (hold) await ctx.db.delete(hold._id);
  await dropExpiredHolds(ctx, owner, now);
  if (quota.holdId !== undefined && remaining > 0) {
    await ctx.db.insert("containerHolds", {
      holdId: quota.holdId,
      userId: owner,
      remaining,
      expiresAt: now + HOLD_TTL_MS,
    });
  }
}

// Reservations of creators that died midway; they count for nothing, so a few per call go.
async function dropExpiredHolds(ctx: MutationCtx, owner: string, now: number) {
  const expired = await ctx.db
    .query("containerHolds")
    .withIndex("by_userId_and_expiresAt", (q) => q.eq("userId", owner).lte("expiresAt", now))
    .take(10);
  for (const hold of expired) await ctx.db.delete(hold._id);
}

function holdDoc(ctx: QueryCtx, holdId: string) {
  return ctx.db
    .query("containerHolds")
    .withIndex("by_holdId", (q) => q.eq("holdId", holdId))
    .unique();
}

// The owner's unfinished jobs plus the jobs their creations under way reserve, counted up to
// `cap` (enough to decide; it bounds the reads).
async function unfinished(ctx: QueryCtx, owner: string, now: number, cap: number) {
  let count = 0;
  for (const status of UNFINISHED) {
    const jobs = await ctx.db
      .query("containerJobs")
      .withIndex("by_createdBy_and_status", (q) => q.eq("createdBy", owner).eq("status", status))
      .take(cap - count);
    count += jobs.length;
    if (count >= cap) return count;
  }
  const holds = await ctx.db
    .query("containerHolds")
    .withIndex("by_userId_and_expiresAt", (q) => q.eq("userId", owner).gt("expiresAt", now))
    .take(100);
  return count + holds.reduce((sum, hold) => sum + hold.remaining, 0);
}

// New jobs per owner (jobs without one count against no quota).
export function countOwners(owners: (string | undefined)[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const owner of owners) {
    if (owner !== undefined) counts.set(owner, (counts.get(owner) ?? 0) + 1);
  }
  return counts;
}
