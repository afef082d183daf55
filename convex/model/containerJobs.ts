// Handlers of the containerJobs functions; containerJobs.ts registers them. Same semantics as
// LocalContainerOps (src/services/store/local_containers.py): the contract suite runs one set
// of tests against both.
import { ConvexError } from "convex/values";
import type { Doc } from "../_generated/dataModel";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import { fail } from "./jobs";
import {
  ContainerStatus,
  JobView,
  MAX_BATCH,
  MAX_LIST,
  MOVABLE,
  NewJob,
  STATUSES,
  TERMINAL,
  TRANSITIONS,
  countHosts,
  hostDoc,
  isTerminal,
  jobDoc,
  jobFields,
  toJobView,
  withUnset,
} from "./containers";

// Bound on documents a claim looks at, to stay inside a transaction's read limits.
const CLAIM_SCAN = 500;
// Bound on documents a filtered list scans.
const LIST_SCAN = 4000;
// countByStatus reads at most this many documents per status; beyond it a count is a floor
// and `truncated` is set. Nine statuses x 1000 keeps the query inside the read limits for
// jobs with small logs.
export const COUNT_CAP = 1000;
const MAX_CLAIM = 200;

export type Failure = { jobId: string; error: string };
type Patch = { fields?: Record<string, unknown>; unset?: string[] };

const clamp = (value: number, high: number) => Math.max(1, Math.min(Math.floor(value), high));
const unique = (ids: string[]) => [...new Set(ids)];

function checkBatch(size: number) {
  if (size > MAX_BATCH) fail("TOO_LARGE", `at most ${MAX_BATCH} container jobs per call`);
}

async function mustGet(ctx: QueryCtx, jobId: string): Promise<Doc<"containerJobs">> {
  return (await jobDoc(ctx, jobId)) ?? fail("NOT_FOUND", `container job ${jobId} not found`);
}

// -- create and read -----------------------------------------------------------------------

export async function createBatch(ctx: MutationCtx, { jobs }: { jobs: NewJob[] }) {
  checkBatch(jobs.length);
  // One mutation: a duplicate anywhere throws and nothing of the batch is written. The
  // by_jobId lookup sees this transaction's own inserts, so duplicates inside the batch
  // are caught too.
  for (const job of jobs) {
    if (await jobDoc(ctx, job.jobId)) fail("CONFLICT", `container job ${job.jobId} exists`);
    await ctx.db.insert("containerJobs", { ...job, negPriority: -job.priority });
  }
  return null;
}

export async function getMany(ctx: QueryCtx, { jobIds }: { jobIds: string[] }) {
  if (jobIds.length > MAX_LIST) fail("TOO_LARGE", `at most ${MAX_LIST} ids per call`);
  const found: JobView[] = [];
  for (const jobId of jobIds) {
    const doc = await jobDoc(ctx, jobId);
    if (doc) found.push(toJobView(doc));
  }
  return found;
}

type ListArgs = {
  status?: ContainerStatus;
  hostId?: string;
  createdBy?: string;
  bulkJobId?: string;
  limit: number;
};

// Newest first, through the most selective index; other filters apply to a bounded scan.
function newest(ctx: QueryCtx, args: ListArgs) {
  const jobs = ctx.db.query("containerJobs");
  const { bulkJobId, hostId, createdBy, status } = args;
  if (bulkJobId !== undefined) {
    return jobs.withIndex("by_bulkJobId_and_createdAt", (q) => q.eq("bulkJobId", bulkJobId));
  }
  if (hostId !== undefined) {
    return jobs.withIndex("by_hostId_and_createdAt", (q) => q.eq("hostId", hostId));
  }
  if (createdBy !== undefined) {
    return jobs.withIndex("by_createdBy_and_createdAt", (q) => q.eq("createdBy", createdBy));
  }
  if (status !== undefined) {
    return jobs.withIndex("by_status_and_createdAt", (q) => q.eq("status", status));
  }
  return jobs.withIndex("by_createdAt");
}

function matches(job: Doc<"containerJobs">, args: ListArgs): boolean {
  return (
    (args.status === undefined || job.status === args.status) &&
    (args.hostId === undefined || job.hostId === args.hostId) &&
    (args.createdBy === undefined || job.createdBy === args.createdBy) &&
    (args.bulkJobId === undefined || job.bulkJobId === args.bulkJobId)
  );
}

export async function list(ctx: QueryCtx, args: ListArgs): Promise<JobView[]> {
  const limit = clamp(args.limit, MAX_LIST);
  const found: JobView[] = [];
  let scanned = 0;
  for await (const job of newest(ctx, args).order("desc")) {
    if (found.length >= limit || ++scanned > LIST_SCAN) break;
    if (matches(job, args)) found.push(toJobView(job));
  }
  return found;
}

// -- claim and leases ----------------------------------------------------------------------

function isClaimable(job: Doc<"containerJobs">, now: number): boolean {
  const expired = job.leaseExpiresAt !== undefined && job.leaseExpiresAt < now;
  if (job.status === "pending") return job.leaseExpiresAt === undefined || expired;
  return !isTerminal(job.status) && expired;
}

async function claimable(ctx: QueryCtx, now: number, limit: number) {
  const found: Doc<"containerJobs">[] = [];
  const pending = ctx.db
    .query("containerJobs")
    .withIndex("by_status_and_negPriority_and_createdAt", (q) => q.eq("status", "pending"));
  let scanned = 0;
  for await (const job of pending) {
    if (++scanned > CLAIM_SCAN || found.length >= limit) break;
    if (isClaimable(job, now)) found.push(job);
  }
  // Unfinished jobs whose processor stopped heartbeating (0 = released). Unset expiries sort
  // first and are excluded by the lower bound.
  const expired = await ctx.db
    .query("containerJobs")
    .withIndex("by_leaseExpiresAt", (q) => q.gte("leaseExpiresAt", 0).lt("leaseExpiresAt", now))
    .take(CLAIM_SCAN);
  return found.concat(expired.filter((job) => job.status !== "pending" && isClaimable(job, now)));
}

export async function claim(
  ctx: MutationCtx,
  args: { owner: string; leaseMs: number; limit: number },
): Promise<JobView[]> {
  const now = Date.now();
  const limit = clamp(args.limit, MAX_CLAIM);
  const chosen = (await claimable(ctx, now, limit))
    .sort((a, b) => a.negPriority - b.negPriority || a.createdAt - b.createdAt)
    .slice(0, limit);
  const lease = { leaseOwner: args.owner, leaseExpiresAt: now + args.leaseMs };
  for (const job of chosen) await ctx.db.patch(job._id, lease);
  return chosen.map((job) => toJobView({ ...job, ...lease }));
}

export async function heartbeat(
  ctx: MutationCtx,
  args: { jobId: string; owner: string; leaseMs: number },
): Promise<ContainerStatus> {
  const job = await mustGet(ctx, args.jobId);
  if (isTerminal(job.status)) return job.status;
  if (job.leaseOwner !== args.owner) {
    fail(
      "CONFLICT",
      `lease on container job ${args.jobId} was lost to '${job.leaseOwner ?? "nobody"}'`,
    );
  }
  await ctx.db.patch(job._id, { leaseExpiresAt: Date.now() + args.leaseMs });
  return job.status;
}

export async function release(ctx: MutationCtx, args: { jobId: string; owner: string }) {
  const job = await mustGet(ctx, args.jobId);
  if (job.leaseOwner !== args.owner) return null;
  // Unfinished: claimable again at once (an expiry in the past); finished: no lease.
  await ctx.db.patch(job._id, {
    leaseOwner: undefined,
    leaseExpiresAt: isTerminal(job.status) ? undefined : 0,
  });
  return null;
}

// -- transitions ---------------------------------------------------------------------------

// The status change and field updates of one job; throws CONFLICT before writing anything
// when the status table forbids the move.
async function applyTransition(
  ctx: MutationCtx,
  job: Doc<"containerJobs">,
  status: ContainerStatus,
  patch: Patch,
): Promise<JobView> {
  if (status !== job.status && !TRANSITIONS[job.status].includes(status)) {
    fail("CONFLICT", `a container job cannot go from ${job.status} to ${status}`);
  }
  const now = Date.now();
  const changes: Record<string, unknown> = {
    ...withUnset(patch.fields ?? {}, patch.unset, jobFields),
    status,
    updatedAt: now,
  };
  if (typeof changes.priority === "number") changes.negPriority = -changes.priority;
  if (isTerminal(status)) {
    changes.leaseOwner = undefined;
    changes.leaseExpiresAt = undefined;
    changes.completedAt = changes.completedAt ?? job.completedAt ?? now;
  }
  const after = { ...job, ...changes } as Doc<"containerJobs">;
  await countHosts(ctx, job, after);
  await ctx.db.patch(job._id, changes);
  return toJobView((await ctx.db.get(job._id))!);
}

// A report id seen before means this report was applied: a retry changes nothing.
async function firstReport(ctx: MutationCtx, reportId: string | undefined): Promise<boolean> {
  if (reportId === undefined) return true;
  const seen = await ctx.db
    .query("containerReports")
    .withIndex("by_reportId", (q) => q.eq("reportId", reportId))
    .unique();
  if (seen) return false;
  await ctx.db.insert("containerReports", { reportId, appliedAt: Date.now() });
  return true;
}

export async function transition(
  ctx: MutationCtx,
  args: { jobId: string; status: ContainerStatus; reportId?: string } & Patch,
): Promise<JobView> {
  const first = await firstReport(ctx, args.reportId);
  const job = await mustGet(ctx, args.jobId);
  if (!first) return toJobView(job);
  return applyTransition(ctx, job, args.status, args);
}

function conflictMessage(error: unknown): string {
  const data =
    error instanceof ConvexError ? (error.data as { code?: string; message?: string }) : null;
  if (data?.code !== "CONFLICT") throw error;
  return data.message ?? "conflict";
}

export async function transitionMany(
  ctx: MutationCtx,
  args: { jobIds: string[]; status: ContainerStatus } & Patch,
): Promise<{ updated: JobView[]; errors: Failure[] }> {
  checkBatch(args.jobIds.length);
  const updated: JobView[] = [];
  const errors: Failure[] = [];
  for (const jobId of unique(args.jobIds)) {
    const job = await jobDoc(ctx, jobId);
    if (!job) {
      errors.push({ jobId, error: "not found" });
      continue;
    }
    try {
      // applyTransition checks before it writes, so a skipped job leaves nothing behind.
      updated.push(await applyTransition(ctx, job, args.status, args));
    } catch (error) {
      errors.push({ jobId, error: conflictMessage(error) });
    }
  }
  return { updated, errors };
}

export async function migrate(
  ctx: MutationCtx,
  args: { jobIds: string[]; hostId: string; executorType: Doc<"containerJobs">["executorType"] },
): Promise<{ moved: string[]; errors: Failure[] }> {
  checkBatch(args.jobIds.length);
  if (!(await hostDoc(ctx, args.hostId)))
    fail("NOT_FOUND", `executor host ${args.hostId} not found`);
  const moved: string[] = [];
  const errors: Failure[] = [];
  for (const jobId of unique(args.jobIds)) {
    const job = await jobDoc(ctx, jobId);
    if (!job) {
      errors.push({ jobId, error: "not found" });
    } else if (!MOVABLE.includes(job.status)) {
      errors.push({ jobId, error: `cannot move a ${job.status} job: it has started` });
    } else {
      const { hostId, executorType } = args;
      await ctx.db.patch(job._id, { hostId, executorType, updatedAt: Date.now() });
      moved.push(jobId);
    }
  }
  return { moved, errors };
}

// -- removal and counts --------------------------------------------------------------------

export async function removeFinishedBefore(
  ctx: MutationCtx,
  args: { before: number; limit: number },
): Promise<number> {
  let left = clamp(args.limit, MAX_BATCH);
  let removed = 0;
  for (const status of TERMINAL) {
    const old = await ctx.db
      .query("containerJobs")
      .withIndex("by_status_and_createdAt", (q) =>
        q.eq("status", status).lt("createdAt", args.before),
      )
      .take(left);
    for (const job of old) await ctx.db.delete(job._id);
    removed += old.length;
    left -= old.length;
    if (left <= 0) break;
  }
  return removed;
}

export async function remove(
  ctx: MutationCtx,
  args: { jobIds: string[]; force: boolean },
): Promise<string[]> {
  checkBatch(args.jobIds.length);
  const removed: string[] = [];
  for (const jobId of unique(args.jobIds)) {
    const job = await jobDoc(ctx, jobId);
    if (!job || (!args.force && !isTerminal(job.status))) continue;
    // A forced removal of a launching or running job frees its host slot.
    await countHosts(ctx, job, { status: "cancelled", hostId: job.hostId });
    await ctx.db.delete(job._id);
    removed.push(jobId);
  }
  return removed;
}

export async function countByStatus(ctx: QueryCtx) {
  const counts: Record<string, number> = {};
  let truncated = false;
  for (const status of STATUSES) {
    const docs = await ctx.db
      .query("containerJobs")
      .withIndex("by_status_and_createdAt", (q) => q.eq("status", status))
      .take(COUNT_CAP + 1);
    if (docs.length > COUNT_CAP) truncated = true;
    if (docs.length > 0) counts[status] = Math.min(docs.length, COUNT_CAP);
  }
  return { counts, truncated };
}
