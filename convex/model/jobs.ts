// Handlers of the bulkJobs functions; bulkJobs.ts registers them. Same semantics as the
// Python LocalStore: the contract suite runs one set of tests against both.
import { ConvexError, Infer, v } from "convex/values";
import { Doc } from "../_generated/dataModel";
import { MutationCtx, QueryCtx } from "../_generated/server";
import {
  ACTIVE,
  ExportView,
  JOB_TRANSITIONS,
  JobStatus,
  JobView,
  MAX_PAGE,
  PRIORITY_RANK,
  Priority,
  STAGE_TRANSITIONS,
  StageStatus,
  TERMINAL,
  jobStatus,
  priority,
  stageStatus,
} from "../validators";

// Bounds on documents a claim looks at, to stay inside a transaction's read limits.
const CLAIM_SCAN = 500;
// Bound on documents a stats query reads; beyond it the figures cover the newest ones.
export const STATS_SCAN = 8000;

export function fail(code: string, message: string, extra: Record<string, number> = {}): never {
  throw new ConvexError({ code, message, ...extra });
}

export const isTerminal = (status: JobStatus) => TERMINAL.includes(status);
const isActive = (status: JobStatus) => ACTIVE.includes(status);

function newId(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function jobDoc(ctx: QueryCtx, jobId: string): Promise<Doc<"bulkJobs">> {
  const job = await ctx.db
    .query("bulkJobs")
    .withIndex("by_jobId", (q) => q.eq("jobId", jobId))
    .unique();
  return job ?? fail("NOT_FOUND", `job ${jobId} not found`);
}

async function stageDoc(
  ctx: QueryCtx,
  jobId: string,
  name: string,
): Promise<[Doc<"bulkJobs">, Doc<"bulkJobStages">]> {
  const job = await jobDoc(ctx, jobId);
  const stage = await ctx.db
    .query("bulkJobStages")
    .withIndex("by_jobId_and_name", (q) => q.eq("jobId", jobId).eq("name", name))
    .unique();
  return [job, stage ?? fail("NOT_FOUND", `job ${jobId} has no stage '${name}'`)];
}

function checkStageMove(job: Doc<"bulkJobs">, stage: Doc<"bulkJobStages">, target: StageStatus) {
  if (isTerminal(job.status)) fail("CONFLICT", `job ${job.jobId} is ${job.status}`);
  if (!STAGE_TRANSITIONS[stage.status].includes(target)) {
    fail("CONFLICT", `stage ${stage.name} cannot go from ${stage.status} to ${target}`);
  }
}

const clamp = (value: number) => (Number.isNaN(value) ? 0 : Math.min(1, Math.max(0, value)));
const merged = (old: unknown, extra: unknown) => ({ ...(old as object), ...(extra as object) });

// -- views ---------------------------------------------------------------------------------

function exportView(doc: Doc<"bulkJobExports">): ExportView {
  const { _id, _creationTime, ...fields } = doc;
  return fields;
}

export async function jobView(ctx: QueryCtx, job: Doc<"bulkJobs">): Promise<JobView> {
  const stages = await ctx.db
    .query("bulkJobStages")
    .withIndex("by_jobId_and_index", (q) => q.eq("jobId", job.jobId))
    .take(50);
  const exports = await ctx.db
    .query("bulkJobExports")
    .withIndex("by_jobId_and_createdAt", (q) => q.eq("jobId", job.jobId))
    .take(MAX_PAGE);
  const { _id, _creationTime, priorityRank, ...fields } = job;
  return {
    ...fields,
    stages: stages.map(({ _id, _creationTime, jobId, ...stage }) => stage),
    exports: exports.map(exportView),
  };
}

// -- browser views -------------------------------------------------------------------------
// What a signed-in browser sees of its own jobs (public bulkJobs:getJob, bulkJobs:getUserJobs):
// the progress view of src/services/reports.py without job data and results (large, and not
// needed to watch progress), lease fields and file paths. Figures that depend on the clock
// (ETA, export expiry) are left to the browser, so that a cached query result stays valid.

// Each job in a list reads its stages and exports too; 50 keeps a list well inside a query's
// read limits.
export const MAX_BROWSER_PAGE = 50;
export const DEFAULT_BROWSER_PAGE = 20;

const nullable = <T extends Parameters<typeof v.union>[0]>(validator: T) =>
  v.union(validator, v.null());

export const stageProgress = v.object({
  name: v.string(),
  status: stageStatus,
  progress: v.number(),
  itemsTotal: nullable(v.number()),
  itemsCompleted: v.number(),
  itemsFailed: v.number(),
  startedAt: nullable(v.number()),
  completedAt: nullable(v.number()),
  errorMessage: nullable(v.string()),
  metadata: v.any(),
});

export const exportInfo = v.object({
  exportId: v.string(),
  format: v.string(),
  filename: v.string(),
  contentType: v.string(),
  sizeBytes: v.number(),
  sha256: v.string(),
  createdAt: v.number(),
  expiresAt: v.number(),
});

export const jobProgress = v.object({
  jobId: v.string(),
  jobType: v.string(),
  status: jobStatus,
  priority: priority,
  // Mean of the stages' progress, completed and skipped stages counting as 1.
  progress: v.number(),
  // First stage not yet finished; null once the job is.
  currentStage: nullable(v.string()),
  itemsTotal: nullable(v.number()),
  itemsCompleted: v.number(),
  itemsFailed: v.number(),
  errorMessage: nullable(v.string()),
  estimatedDurationMinutes: nullable(v.number()),
  createdAt: v.number(),
  updatedAt: v.number(),
  startedAt: nullable(v.number()),
  completedAt: nullable(v.number()),
  stages: v.array(stageProgress),
  exports: v.array(exportInfo),
});
export type JobProgress = Infer<typeof jobProgress>;

const STAGE_DONE: readonly StageStatus[] = ["completed", "failed", "skipped"];
const sum = (values: number[]) => values.reduce((total, value) => total + value, 0);

function overallProgress(job: JobView): number {
  if (job.stages.length === 0) return job.status === "completed" ? 1 : 0;
  const each = job.stages.map((s) =>
    s.status === "completed" || s.status === "skipped" ? 1 : s.progress,
  );
  return Math.round((sum(each) / each.length) * 1e6) / 1e6;
}

function stageProgressView(stage: JobView["stages"][number]): Infer<typeof stageProgress> {
  return {
    name: stage.name,
    status: stage.status,
    progress: stage.progress,
    itemsTotal: stage.itemsTotal ?? null,
    itemsCompleted: stage.itemsCompleted,
    itemsFailed: stage.itemsFailed,
    startedAt: stage.startedAt ?? null,
    completedAt: stage.completedAt ?? null,
    errorMessage: stage.errorMessage ?? null,
    metadata: stage.metadata,
  };
}

// Built field by field, so that a field added to the job document is never shown by accident.
export function progressView(job: JobView): JobProgress {
  const totals = job.stages.flatMap((s) => (s.itemsTotal === undefined ? [] : [s.itemsTotal]));
  const current = job.stages.find((s) => !STAGE_DONE.includes(s.status));
  return {
    jobId: job.jobId,
    jobType: job.jobType,
    status: job.status,
    priority: job.priority,
    progress: overallProgress(job),
    currentStage: isTerminal(job.status) || !current ? null : current.name,
    itemsTotal: totals.length ? sum(totals) : null,
    itemsCompleted: sum(job.stages.map((s) => s.itemsCompleted)),
    itemsFailed: sum(job.stages.map((s) => s.itemsFailed)),
    errorMessage: job.errorMessage ?? null,
    estimatedDurationMinutes: job.estimatedDurationMinutes ?? null,
    createdAt: job.createdAt,
    updatedAt: job.updatedAt,
    startedAt: job.startedAt ?? null,
    completedAt: job.completedAt ?? null,
    stages: job.stages.map(stageProgressView),
    exports: job.exports.map((e) => ({
      exportId: e.exportId,
      format: e.format,
      filename: e.filename,
      contentType: e.contentType,
      sizeBytes: e.sizeBytes,
      sha256: e.sha256,
      createdAt: e.createdAt,
      expiresAt: e.expiresAt,
    })),
  };
}

// The service's user id of the signed-in caller: the identity's subject (the `sub` claim of
// the provider's JWT). Null when the request carries no valid token.
async function callerUserId(ctx: QueryCtx): Promise<string | null> {
  const identity = await ctx.auth.getUserIdentity();
  return identity?.subject || null;
}

export async function myJob(ctx: QueryCtx, args: { jobId: string }): Promise<JobProgress | null> {
  const userId = await callerUserId(ctx);
  if (userId === null) return null;
  const job = await ctx.db
    .query("bulkJobs")
    .withIndex("by_jobId", (q) => q.eq("jobId", args.jobId))
    .unique();
  // Someone else's job reads as missing, so that job ids cannot be probed.
  if (!job || job.userId !== userId) return null;
  return progressView(await jobView(ctx, job));
}

export async function myJobs(ctx: QueryCtx, args: { limit?: number }): Promise<JobProgress[]> {
  const userId = await callerUserId(ctx);
  if (userId === null) return [];
  const wanted = Number.isFinite(args.limit) ? Math.floor(args.limit!) : DEFAULT_BROWSER_PAGE;
  const newest = await ctx.db
    .query("bulkJobs")
    .withIndex("by_userId_and_createdAt", (q) => q.eq("userId", userId))
    .order("desc")
    .take(Math.max(1, Math.min(wanted, MAX_BROWSER_PAGE)));
  return Promise.all(newest.map(async (job) => progressView(await jobView(ctx, job))));
}

// -- jobs ----------------------------------------------------------------------------------

export async function create(
  ctx: MutationCtx,
  args: {
    jobType: string;
    userId: string;
    jobData: unknown;
    stages: string[];
    priority: Priority;
    estimatedDurationMinutes?: number;
    jobId?: string;
    maxJobs: number;
    windowMs: number;
  },
): Promise<string> {
  const now = Date.now();
  await checkRateLimit(ctx, args.userId, args.maxJobs, args.windowMs, now);
  const jobId = args.jobId ?? newId();
  const existing = await ctx.db
    .query("bulkJobs")
    .withIndex("by_jobId", (q) => q.eq("jobId", jobId))
    .unique();
  if (existing) fail("CONFLICT", `job ${jobId} already exists`);
  await ctx.db.insert("bulkJobs", {
    jobId,
    jobType: args.jobType,
    userId: args.userId,
    status: "pending",
    priority: args.priority,
    priorityRank: PRIORITY_RANK[args.priority],
    jobData: args.jobData,
    results: {},
    estimatedDurationMinutes: args.estimatedDurationMinutes,
    createdAt: now,
    updatedAt: now,
    attempts: 0,
  });
  for (const [index, name] of args.stages.entries()) {
    await ctx.db.insert("bulkJobStages", {
      jobId,
      name,
      index,
      status: "pending",
      progress: 0,
      itemsCompleted: 0,
      itemsFailed: 0,
      metadata: {},
    });
  }
  return jobId;
}

async function checkRateLimit(
  ctx: MutationCtx,
  userId: string,
  maxJobs: number,
  windowMs: number,
  now: number,
) {
  // Reading at most maxJobs documents is enough to decide, and it bounds the transaction.
  const recent = await ctx.db
    .query("bulkJobs")
    .withIndex("by_userId_and_createdAt", (q) =>
      q.eq("userId", userId).gt("createdAt", now - windowMs),
    )
    .take(maxJobs);
  if (recent.length >= maxJobs) {
    const retryAfterS = Math.max(1, Math.ceil((recent[0].createdAt + windowMs - now) / 1000));
    fail("RATE_LIMITED", `rate limit reached; retry after ${retryAfterS} s`, { retryAfterS });
  }
}

export async function updateStatus(
  ctx: MutationCtx,
  args: { jobId: string; status: JobStatus; updates?: unknown; errorMessage?: string },
) {
  const job = await jobDoc(ctx, args.jobId);
  if (!JOB_TRANSITIONS[job.status].includes(args.status)) {
    fail("CONFLICT", `job ${args.jobId} cannot go from ${job.status} to ${args.status}`);
  }
  const now = Date.now();
  const terminal = isTerminal(args.status);
  await ctx.db.patch(job._id, {
    status: args.status,
    results: merged(job.results, args.updates ?? {}),
    errorMessage: args.errorMessage ?? job.errorMessage,
    updatedAt: now,
    startedAt: job.startedAt ?? (isActive(args.status) ? now : undefined),
    completedAt: terminal ? now : undefined,
    ...(terminal ? { leaseOwner: undefined, leaseExpiresAt: undefined } : {}),
  });
}

// -- stages --------------------------------------------------------------------------------

export async function startStage(
  ctx: MutationCtx,
  args: { jobId: string; stage: string; itemsTotal?: number },
) {
  const [job, stage] = await stageDoc(ctx, args.jobId, args.stage);
  checkStageMove(job, stage, "processing");
  const now = Date.now();
  const restart = stage.status === "processing";
  await ctx.db.patch(stage._id, {
    status: "processing",
    itemsTotal: args.itemsTotal ?? stage.itemsTotal,
    startedAt: stage.startedAt ?? now,
    progress: restart ? stage.progress : 0,
  });
  await ctx.db.patch(job._id, { updatedAt: now });
}

export async function updateStageProgress(
  ctx: MutationCtx,
  args: {
    jobId: string;
    stage: string;
    progress: number;
    itemsCompleted?: number;
    itemsFailed?: number;
    metadata?: unknown;
  },
): Promise<JobStatus> {
  const [job, stage] = await stageDoc(ctx, args.jobId, args.stage);
  if (isTerminal(job.status)) return job.status;
  if (stage.status !== "processing") {
    fail("CONFLICT", `stage ${args.stage} is ${stage.status}, not processing`);
  }
  await ctx.db.patch(stage._id, {
    progress: clamp(args.progress),
    itemsCompleted: Math.max(stage.itemsCompleted, args.itemsCompleted ?? 0),
    itemsFailed: Math.max(stage.itemsFailed, args.itemsFailed ?? 0),
    metadata: merged(stage.metadata, args.metadata ?? {}),
  });
  return job.status;
}

export async function finishStage(
  ctx: MutationCtx,
  args: {
    jobId: string;
    stage: string;
    target: "completed" | "failed";
    itemsCompleted?: number;
    itemsFailed?: number;
    metadata?: unknown;
    errorMessage?: string;
  },
) {
  const [job, stage] = await stageDoc(ctx, args.jobId, args.stage);
  checkStageMove(job, stage, args.target);
  const now = Date.now();
  await ctx.db.patch(stage._id, {
    status: args.target,
    progress: args.target === "completed" ? 1 : stage.progress,
    completedAt: now,
    itemsCompleted: args.itemsCompleted ?? stage.itemsCompleted,
    itemsFailed: args.itemsFailed ?? stage.itemsFailed,
    metadata: merged(stage.metadata, args.metadata ?? {}),
    errorMessage: args.errorMessage ?? stage.errorMessage,
  });
  await ctx.db.patch(job._id, { updatedAt: now });
}

// -- leases --------------------------------------------------------------------------------

export async function claim(
  ctx: MutationCtx,
  args: { owner: string; leaseMs: number; jobTypes: string[]; limit: number; jobId?: string },
): Promise<JobView[]> {
  if (args.jobTypes.length === 0 || args.limit < 1) return [];
  const now = Date.now();
  const limit = Math.min(args.limit, MAX_PAGE);
  const candidates = args.jobId
    ? await claimableById(ctx, args.jobId, args.jobTypes, now)
    : await claimable(ctx, args.jobTypes, now, limit);
  const chosen = candidates
    .sort((a, b) => a.priorityRank - b.priorityRank || a.createdAt - b.createdAt)
    .slice(0, limit);
  const claimed: JobView[] = [];
  for (const job of chosen) {
    const patch = {
      leaseOwner: args.owner,
      leaseExpiresAt: now + args.leaseMs,
      attempts: job.attempts + 1,
      updatedAt: now,
    };
    await ctx.db.patch(job._id, patch);
    claimed.push(await jobView(ctx, { ...job, ...patch }));
  }
  return claimed;
}

function isClaimable(job: Doc<"bulkJobs">, jobTypes: string[], now: number): boolean {
  if (!jobTypes.includes(job.jobType)) return false;
  if (job.status === "pending") return job.leaseExpiresAt === undefined || job.leaseExpiresAt < now;
  return isActive(job.status) && job.leaseExpiresAt !== undefined && job.leaseExpiresAt < now;
}

async function claimableById(ctx: QueryCtx, jobId: string, jobTypes: string[], now: number) {
  const job = await ctx.db
    .query("bulkJobs")
    .withIndex("by_jobId", (q) => q.eq("jobId", jobId))
    .unique();
  return job && isClaimable(job, jobTypes, now) ? [job] : [];
}

async function claimable(ctx: QueryCtx, jobTypes: string[], now: number, limit: number) {
  const found: Doc<"bulkJobs">[] = [];
  // Pending jobs in claim order; each scan is bounded so a claim stays a small transaction.
  const pending = ctx.db
    .query("bulkJobs")
    .withIndex("by_status_and_priorityRank_and_createdAt", (q) => q.eq("status", "pending"));
  let scanned = 0;
  for await (const job of pending) {
    if (++scanned > CLAIM_SCAN || found.length >= limit) break;
    if (isClaimable(job, jobTypes, now)) found.push(job);
  }
  // Jobs whose runner stopped heartbeating (0 = released). Unset expiries sort first and
  // are excluded by the lower bound.
  const expired = await ctx.db
    .query("bulkJobs")
    .withIndex("by_leaseExpiresAt", (q) => q.gte("leaseExpiresAt", 0).lt("leaseExpiresAt", now))
    .take(CLAIM_SCAN);
  return found.concat(expired.filter((job) => job.status !== "pending" && isClaimable(job, jobTypes, now)));
}

export async function heartbeat(
  ctx: MutationCtx,
  args: { jobId: string; owner: string; leaseMs: number },
): Promise<JobStatus> {
  const job = await jobDoc(ctx, args.jobId);
  if (isTerminal(job.status)) return job.status;
  if (job.leaseOwner !== args.owner) {
    fail("CONFLICT", `lease on job ${args.jobId} was lost to '${job.leaseOwner ?? "nobody"}'`);
  }
  await ctx.db.patch(job._id, { leaseExpiresAt: Date.now() + args.leaseMs });
  return job.status;
}

export async function release(ctx: MutationCtx, args: { jobId: string; owner: string }) {
  const job = await ctx.db
    .query("bulkJobs")
    .withIndex("by_jobId", (q) => q.eq("jobId", args.jobId))
    .unique();
  if (!job || job.leaseOwner !== args.owner) return;
  // An expiry in the past (not unset) keeps an unfinished job claimable at once.
  await ctx.db.patch(job._id, {
    leaseOwner: undefined,
    leaseExpiresAt: job.completedAt === undefined ? 0 : undefined,
  });
}
