// Handlers of the containerJobs functions; containerJobs.ts registers them. Same semantics as
// LocalContainerOps (src/services/store/local_containers.py): the contract suite runs one set
// of tests against both.
import { ConvexError } from "convex/values";
import type { Doc } from "../_generated/dataModel";
import type { MutationCtx, QueryCtx } from "../_generated/server";
import { DEFAULT_MAX_ATTEMPTS, DIED, gaveUp, takeTurns } from "./attempts";
import { fail } from "./jobs";
import { type ContainerQuota, countOwners, takeContainerQuota } from "./quotas";
import { emit } from "./webhooks";
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
  checkIsolation,
  countHosts,
  hostDoc,
  isolationRefusal,
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

export async function createBatch(
  ctx: MutationCtx,
  { jobs, quota }: { jobs: NewJob[]; quota?: ContainerQuota },
) {
  checkBatch(jobs.length);
  if (quota !== undefined) {
    for (const [owner, count] of countOwners(jobs.map((job) => job.createdBy))) {
      await takeContainerQuota(ctx, owner, count, quota);
    }
  }
  // One mutation: a duplicate anywhere throws and nothing of the batch is written. The
  // by_jobId lookup sees this transaction's own inserts, so duplicates inside the batch
  // are caught too. A non-admin's job is never written to a host that does not isolate it.
  const checked = new Set<string>();
  for (const job of jobs) {
    if (job.untrusted && job.hostId !== undefined && !checked.has(job.hostId)) {
      await checkIsolation(ctx, job.hostId, true);
      checked.add(job.hostId);
    }
    if (await jobDoc(ctx, job.jobId)) fail("CONFLICT", `container job ${job.jobId} exists`);
    await ctx.db.insert("containerJobs", { ...job, negPriority: -job.priority });
  }
  return null;
}

// Copies of one job under each id: one document sent, one transaction, all or nothing.
export async function createCopies(
  ctx: MutationCtx,
  { job, jobIds, quota }: { job: NewJob; jobIds: string[]; quota?: ContainerQuota },
) {
  return createBatch(ctx, { jobs: jobIds.map((jobId) => ({ ...job, jobId })), quota });
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

type ClaimArgs = {
  owner: string;
  leaseMs: number;
  limit: number;
  bulkJobId?: string;
  maxAttempts?: number;
};

export async function claim(ctx: MutationCtx, args: ClaimArgs): Promise<JobView[]> {
  const now = Date.now();
  const limit = clamp(args.limit, MAX_CLAIM);
  const maxAttempts = args.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
  let chosen = await expired(ctx, args, now, limit, maxAttempts);
  if (chosen.length < limit) {
    chosen = chosen.concat(await fairPending(ctx, args, now, limit - chosen.length));
  }
  const claimed: JobView[] = [];
  for (const job of chosen) {
    const patch = {
      leaseOwner: args.owner,
      leaseExpiresAt: now + args.leaseMs,
      attempts: (job.attempts ?? 0) + 1,
    };
    await ctx.db.patch(job._id, patch);
    claimed.push(toJobView({ ...job, ...patch }));
  }
  return claimed;
}

const forBulkJob = (job: Doc<"containerJobs">, args: ClaimArgs) =>
  args.bulkJobId === undefined || job.bulkJobId === args.bulkJobId;

const isWaiting = (job: Doc<"containerJobs">, now: number) =>
  job.status === "pending" && (job.leaseExpiresAt === undefined || job.leaseExpiresAt < now);

// Unfinished jobs whose processor stopped heartbeating (0 = handed back), to be picked up where
// they are; a job whose processor died holding it maxAttempts times is failed instead. Unset
// expiries sort first and are excluded by the lower bound.
async function expired(
  ctx: MutationCtx,
  args: ClaimArgs,
  now: number,
  limit: number,
  maxAttempts: number,
): Promise<Doc<"containerJobs">[]> {
  const docs = await ctx.db
    .query("containerJobs")
    .withIndex("by_leaseExpiresAt", (q) => q.gte("leaseExpiresAt", 0).lt("leaseExpiresAt", now))
    .take(CLAIM_SCAN);
  const picked: Doc<"containerJobs">[] = [];
  for (const job of docs) {
    if (isTerminal(job.status) || !forBulkJob(job, args)) continue;
    const attempts = job.attempts ?? 0;
    if (job.leaseOwner !== undefined && attempts >= maxAttempts) {
      await giveUp(ctx, job, gaveUp(attempts, job.lastError ?? DIED));
    } else if (job.status !== "pending" && picked.length < limit) {
      picked.push(job);
    }
  }
  return picked;
}

// Fail a job whose attempts are used up (its host slot, if it held one, is freed).
async function giveUp(ctx: MutationCtx, job: Doc<"containerJobs">, message: string) {
  return applyTransition(ctx, job, "failed", {
    fields: { statusMessage: message, lastError: message },
  });
}

// Claimed and not yet launching or running: such a job takes a slot on its host soon.
const CLAIMED: readonly ContainerStatus[] = ["pending", "queued", "retrying"];
const USER_SCAN = 100;
const RUNNING_SCAN = 1000;

// Free slots by host, less the jobs claimed for it and not yet launched. A full host is left
// out, so its backlog is not even read.
async function openHosts(ctx: QueryCtx, now: number): Promise<Map<string, number>> {
  const leased = await ctx.db
    .query("containerJobs")
    .withIndex("by_leaseExpiresAt", (q) => q.gte("leaseExpiresAt", now))
    .take(RUNNING_SCAN);
  const claimed = new Map<string, number>();
  for (const job of leased) {
    if (job.leaseOwner === undefined || !CLAIMED.includes(job.status) || !job.hostId) continue;
    claimed.set(job.hostId, (claimed.get(job.hostId) ?? 0) + 1);
  }
  const free = new Map<string, number>();
  for (const host of await ctx.db.query("executorHosts").take(MAX_LIST)) {
    const slots = host.maxConcurrentJobs - host.currentJobCount - (claimed.get(host.hostId) ?? 0);
    if (slots > 0) free.set(host.hostId, slots);
  }
  return free;
}

// Pending jobs on hosts with a free slot, users taking turns: one job per waiting user per
// round, users with fewer jobs held by processors first (then by their best waiting job).
async function fairPending(
  ctx: MutationCtx,
  args: ClaimArgs,
  now: number,
  limit: number,
): Promise<Doc<"containerJobs">[]> {
  const free = await openHosts(ctx, now);
  if (free.size === 0) return [];
  const queues =
    args.bulkJobId === undefined
      ? await queuesByUser(ctx, [...free.keys()], now, limit)
      : [await bulkJobQueue(ctx, args.bulkJobId, free, now, limit)];
  const picked: Doc<"containerJobs">[] = [];
  for (const job of takeTurns(queues, Number.MAX_SAFE_INTEGER)) {
    const slots = free.get(job.hostId ?? "") ?? 0;
    if (picked.length >= limit) break;
    if (slots <= 0) continue;
    free.set(job.hostId!, slots - 1);
    picked.push(job);
  }
  return picked;
}

// The waiting jobs of one bulk job, best first.
async function bulkJobQueue(
  ctx: QueryCtx,
  bulkJobId: string,
  free: Map<string, number>,
  now: number,
  limit: number,
): Promise<Doc<"containerJobs">[]> {
  const docs = await ctx.db
    .query("containerJobs")
    .withIndex("by_bulkJobId_and_createdAt", (q) => q.eq("bulkJobId", bulkJobId))
    .take(CLAIM_SCAN);
  return docs
    .filter((job) => isWaiting(job, now) && free.has(job.hostId ?? ""))
    .sort((a, b) => a.negPriority - b.negPriority || a.createdAt - b.createdAt)
    .slice(0, limit);
}

// One queue per waiting user (at most USER_SCAN users per host), in turn order.
async function queuesByUser(
  ctx: QueryCtx,
  hostIds: string[],
  now: number,
  limit: number,
): Promise<Doc<"containerJobs">[][]> {
  const byUser = new Map<string, Doc<"containerJobs">[]>();
  for (const hostId of hostIds) {
    for (const head of await waitingUsers(ctx, hostId)) {
      const queue = await userQueue(ctx, hostId, head.createdBy, now, limit);
      const key = head.createdBy ?? "";
      byUser.set(key, (byUser.get(key) ?? []).concat(queue));
    }
  }
  const inHand = await inHandByUser(ctx, now);
  const best = (jobs: Doc<"containerJobs">[]) =>
    jobs.sort((a, b) => a.negPriority - b.negPriority || a.createdAt - b.createdAt);
  const queues = [...byUser.entries()]
    .map(([user, jobs]) => ({ user, jobs: best(jobs).slice(0, limit) }))
    .filter((entry) => entry.jobs.length > 0);
  queues.sort(
    (a, b) =>
      (inHand.get(a.user) ?? 0) - (inHand.get(b.user) ?? 0) ||
      a.jobs[0].negPriority - b.jobs[0].negPriority ||
      a.jobs[0].createdAt - b.jobs[0].createdAt,
  );
  return queues.slice(0, limit).map((entry) => entry.jobs);
}

// The best pending job of each user with pending jobs on the host: one index read per user,
// hopping from one user to the next (jobs without an owner sort first).
async function waitingUsers(ctx: QueryCtx, hostId: string): Promise<Doc<"containerJobs">[]> {
  const heads: Doc<"containerJobs">[] = [];
  while (heads.length < USER_SCAN) {
    const last = heads.length ? heads[heads.length - 1] : null;
    const head = await ctx.db
      .query("containerJobs")
      .withIndex("by_status_and_hostId_and_createdBy_and_negPriority_and_createdAt", (q) => {
        const range = q.eq("status", "pending").eq("hostId", hostId);
        return last === null ? range : range.gt("createdBy", last.createdBy);
      })
      .first();
    if (!head) break;
    heads.push(head);
  }
  return heads;
}

async function userQueue(
  ctx: QueryCtx,
  hostId: string,
  createdBy: string | undefined,
  now: number,
  limit: number,
): Promise<Doc<"containerJobs">[]> {
  const queue: Doc<"containerJobs">[] = [];
  const pending = ctx.db
    .query("containerJobs")
    .withIndex("by_status_and_hostId_and_createdBy_and_negPriority_and_createdAt", (q) =>
      q.eq("status", "pending").eq("hostId", hostId).eq("createdBy", createdBy),
    );
  let scanned = 0;
  for await (const job of pending) {
    if (queue.length >= limit || ++scanned > CLAIM_SCAN) break;
    if (isWaiting(job, now)) queue.push(job);
  }
  return queue;
}

// Unfinished jobs a processor holds now, by user.
async function inHandByUser(ctx: QueryCtx, now: number): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  const held = await ctx.db
    .query("containerJobs")
    .withIndex("by_leaseExpiresAt", (q) => q.gte("leaseExpiresAt", now))
    .take(RUNNING_SCAN);
  for (const job of held) {
    if (job.leaseOwner === undefined || isTerminal(job.status)) continue;
    const user = job.createdBy ?? "";
    counts.set(user, (counts.get(user) ?? 0) + 1);
  }
  return counts;
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

export async function release(
  ctx: MutationCtx,
  args: { jobId: string; owner: string; error?: string; retryInMs?: number; maxAttempts?: number },
): Promise<ContainerStatus> {
  const job = await mustGet(ctx, args.jobId);
  if (job.leaseOwner !== args.owner) return job.status;
  const attempts = job.attempts ?? 0;
  if (isTerminal(job.status)) {
    await ctx.db.patch(job._id, { leaseOwner: undefined, leaseExpiresAt: undefined });
  } else if (args.error === undefined) {
    // A hand-back: claimable again at once (an expiry in the past), and not an attempt.
    await ctx.db.patch(job._id, {
      leaseOwner: undefined,
      leaseExpiresAt: 0,
      attempts: Math.max(0, attempts - 1),
    });
  } else if (attempts >= (args.maxAttempts ?? DEFAULT_MAX_ATTEMPTS)) {
    return (await giveUp(ctx, job, gaveUp(attempts, args.error))).status;
  } else {
    await ctx.db.patch(job._id, {
      leaseOwner: undefined,
      leaseExpiresAt: Date.now() + Math.max(0, args.retryInMs ?? 0),
      lastError: args.error,
    });
  }
  return job.status;
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
  if (after.hostId !== job.hostId) await checkIsolation(ctx, after.hostId, after.untrusted);
  await countHosts(ctx, job, after);
  await ctx.db.patch(job._id, changes);
  if (status !== job.status) await emitContainerEnd(ctx, after);
  return toJobView((await ctx.db.get(job._id))!);
}

// Container job statuses that send a webhook event (a timeout is a failure to the receiver).
const CONTAINER_END_EVENTS: Partial<Record<ContainerStatus, string>> = {
  completed: "container_job.completed",
  failed: "container_job.failed",
  timeout: "container_job.failed",
};

async function emitContainerEnd(ctx: MutationCtx, job: Doc<"containerJobs">) {
  const event = CONTAINER_END_EVENTS[job.status];
  if (event === undefined) return;
  await emit(ctx, event, job.createdBy, {
    container_job_id: job.jobId,
    bulk_job_id: job.bulkJobId ?? null,
    user_id: job.createdBy ?? null,
    status: job.status,
    exit_code: job.exitCode ?? null,
    status_message: job.statusMessage,
  });
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
  const host =
    (await hostDoc(ctx, args.hostId)) ??
    fail("NOT_FOUND", `executor host ${args.hostId} not found`);
  const moved: string[] = [];
  const errors: Failure[] = [];
  for (const jobId of unique(args.jobIds)) {
    const job = await jobDoc(ctx, jobId);
    const refusal = job ? isolationRefusal(host, job.untrusted) : null;
    if (!job) {
      errors.push({ jobId, error: "not found" });
    } else if (!MOVABLE.includes(job.status)) {
      errors.push({ jobId, error: `cannot move a ${job.status} job: it has started` });
    } else if (refusal !== null) {
      errors.push({ jobId, error: refusal });
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
