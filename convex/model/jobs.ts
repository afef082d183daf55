// Handlers of the bulkJobs functions; bulkJobs.ts registers them. Same semantics as the
// Python LocalStore: the contract suite runs one set of tests against both.
import { ConvexError, Infer, v } from "convex/values";
import { Doc } from "../_generated/dataModel";
import { MutationCtx, QueryCtx } from "../_generated/server";
import {
  ACTIVE,
  BOOKKEEPING_STAGES,
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
  statusForStage,
} from "../validators";
import { DEFAULT_MAX_ATTEMPTS, DIED, gaveUp, takeTurns } from "./attempts";
import { emit } from "./webhooks";

// Bounds on documents a claim looks at, to stay inside a transaction's read limits.
const CLAIM_SCAN = 500;
// Bound on documents a stats query reads; beyond it the figures cover the newest ones.
export const STATS_SCAN = 8000;

export function fail(
  code: string,
  message: string,
  extra: Record<string, number | string> = {},
): never {
  throw new ConvexError({ code, message, ...extra });
}

export const isTerminal = (status: JobStatus) => TERMINAL.includes(status);
const isActive = (status: JobStatus) => ACTIVE.includes(status);

export function newId(): string {
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
  // The stage running now (else the next to run); null once the job has ended.
  currentStage: nullable(v.string()),
  // The stage whose failure failed the job, when that is how it ended.
  failedStage: nullable(v.string()),
  // The job's items (itemCounts); each stage keeps its own counts.
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
type StageView = JobView["stages"][number];

const stageNamed = (job: JobView, name: string | undefined) =>
  name === undefined ? undefined : job.stages.find((s) => s.name === name);

// The same rules as Job.running_stage, Job.failed_stage and Job.items_* in
// src/services/domain.py; change both together.
function runningStage(job: JobView): StageView | undefined {
  if (isTerminal(job.status)) return undefined;
  const started = stageNamed(job, job.currentStage);
  if (started?.status === "processing") return started;
  return job.stages.find((s) => !STAGE_DONE.includes(s.status));
}

function failedStage(job: JobView): StageView | undefined {
  const stage = stageNamed(job, job.currentStage);
  return job.status === "failed" && stage?.status === "failed" ? stage : undefined;
}

// The job's numbers are its items, not a sum over stages that may count the same items
// again (or count bookkeeping such as writing the export).
function itemStages(job: JobView): StageView[] {
  const counting = job.stages.filter((s) => !BOOKKEEPING_STAGES.includes(s.name));
  return counting.length ? counting : job.stages;
}

const hasItems = (s: StageView) => s.itemsTotal !== undefined || s.itemsCompleted > 0 || s.itemsFailed > 0;

function givenTotal(jobData: unknown): number | null {
  const given = (jobData as { total_items?: unknown } | null)?.total_items;
  return typeof given === "number" && Number.isSafeInteger(given) && given >= 0 ? given : null;
}

function itemCounts(job: JobView) {
  const stages = itemStages(job);
  const totals = stages.flatMap((s) => (s.itemsTotal === undefined ? [] : [s.itemsTotal]));
  const running = stages.filter((s) => s.status === "processing");
  const counting = (running.length ? running : stages.filter(hasItems)).at(-1);
  return {
    itemsTotal: givenTotal(job.jobData) ?? (totals.length ? Math.max(...totals) : null),
    itemsCompleted: counting?.itemsCompleted ?? 0,
    itemsFailed: counting?.itemsFailed ?? 0,
  };
}

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
  return {
    jobId: job.jobId,
    jobType: job.jobType,
    status: job.status,
    priority: job.priority,
    progress: overallProgress(job),
    currentStage: runningStage(job)?.name ?? null,
    failedStage: failedStage(job)?.name ?? null,
    ...itemCounts(job),
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
    retryOf?: string;
    maxJobs?: number;
    windowMs?: number;
  },
): Promise<string> {
  const now = Date.now();
  if (args.maxJobs !== undefined && args.windowMs !== undefined) {
    await checkRateLimit(ctx, args.userId, args.maxJobs, args.windowMs, now);
  }
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
    retryOf: args.retryOf,
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
  const data = { job_id: jobId, job_type: args.jobType, user_id: args.userId, status: "pending" };
  await emit(ctx, "job.created", args.userId, data);
  return jobId;
}

// -- webhook events (written in the mutation of the change they report) --------------------

const JOB_END_EVENTS: Partial<Record<JobStatus, string>> = {
  completed: "job.completed",
  failed: "job.failed",
  cancelled: "job.cancelled",
};

async function emitJobEnd(
  ctx: MutationCtx,
  job: Doc<"bulkJobs">,
  status: JobStatus,
  errorMessage: string | undefined,
) {
  const event = JOB_END_EVENTS[status];
  if (event === undefined) return;
  const data: Record<string, unknown> = {
    job_id: job.jobId,
    job_type: job.jobType,
    user_id: job.userId,
    status,
  };
  if (status !== "completed" && errorMessage) data.error_message = errorMessage;
  await emit(ctx, event, job.userId, data);
}

async function emitStageEnd(
  ctx: MutationCtx,
  job: Doc<"bulkJobs">,
  stage: Doc<"bulkJobStages">,
  args: { target: "completed" | "failed"; itemsCompleted?: number; itemsFailed?: number; errorMessage?: string },
) {
  const data: Record<string, unknown> = {
    job_id: job.jobId,
    job_type: job.jobType,
    user_id: job.userId,
    stage: stage.name,
    status: args.target,
    items_completed: args.itemsCompleted ?? stage.itemsCompleted,
    items_failed: args.itemsFailed ?? stage.itemsFailed,
  };
  if (args.target === "failed") data.error_message = args.errorMessage ?? stage.errorMessage ?? null;
  const event = args.target === "completed" ? "job.stage_completed" : "job.stage_failed";
  await emit(ctx, event, job.userId, data);
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
  if (args.status !== job.status) {
    await emitJobEnd(ctx, job, args.status, args.errorMessage ?? job.errorMessage);
  }
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
  // The job follows its stage: initializing, processing or exporting, by the stage.
  await ctx.db.patch(job._id, {
    status: statusForStage(args.stage),
    currentStage: args.stage,
    startedAt: job.startedAt ?? now,
    updatedAt: now,
  });
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
    // A failed stage fails the job unless this is false.
    fatal?: boolean;
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
  await emitStageEnd(ctx, job, stage, args);
  const fatal = args.target === "failed" && args.fatal !== false;
  await followStages(ctx, job, args.stage, fatal ? args.errorMessage ?? "failed" : undefined);
}

// The job after a stage ended: failed by a fatal stage failure, completed once no stage is
// left to run, else still running. Reads see this mutation's own writes.
async function followStages(
  ctx: MutationCtx,
  job: Doc<"bulkJobs">,
  stage: string,
  fatalError: string | undefined,
) {
  if (fatalError !== undefined) {
    await ctx.db.patch(job._id, { currentStage: stage });
    await updateStatus(ctx, { jobId: job.jobId, status: "failed", errorMessage: fatalError });
    return;
  }
  const stages = await ctx.db
    .query("bulkJobStages")
    .withIndex("by_jobId_and_index", (q) => q.eq("jobId", job.jobId))
    .take(50);
  if (stages.every((s) => STAGE_DONE.includes(s.status))) {
    await updateStatus(ctx, { jobId: job.jobId, status: "completed" });
  } else {
    await ctx.db.patch(job._id, { updatedAt: Date.now() });
  }
}

// -- leases --------------------------------------------------------------------------------

type ClaimArgs = {
  owner: string;
  leaseMs: number;
  jobTypes: string[];
  limit: number;
  jobId?: string;
  maxAttempts?: number;
  maxRunningPerUser?: number;
};

export async function claim(ctx: MutationCtx, args: ClaimArgs): Promise<JobView[]> {
  if (args.jobTypes.length === 0 || args.limit < 1) return [];
  const now = Date.now();
  const limit = Math.min(args.limit, MAX_PAGE);
  const wanted = (job: Doc<"bulkJobs">) =>
    args.jobTypes.includes(job.jobType) && (args.jobId === undefined || job.jobId === args.jobId);
  const maxAttempts = args.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
  let chosen: Doc<"bulkJobs">[];
  if (args.jobId !== undefined) {
    chosen = await claimableById(ctx, args, now, maxAttempts);
  } else {
    chosen = (await expiredJobs(ctx, wanted, now, maxAttempts)).slice(0, limit);
    if (chosen.length < limit) {
      chosen = chosen.concat(await fairPending(ctx, args, wanted, now, limit - chosen.length));
    }
  }
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

// The one job asked for, if it is claimable (and its user is under the cap).
async function claimableById(
  ctx: MutationCtx,
  args: ClaimArgs,
  now: number,
  maxAttempts: number,
): Promise<Doc<"bulkJobs">[]> {
  const job = await ctx.db
    .query("bulkJobs")
    .withIndex("by_jobId", (q) => q.eq("jobId", args.jobId!))
    .unique();
  if (!job || !args.jobTypes.includes(job.jobType) || isTerminal(job.status)) return [];
  const expired = job.leaseExpiresAt !== undefined && job.leaseExpiresAt < now;
  if (expired && job.leaseOwner !== undefined && job.attempts >= maxAttempts) {
    await failForGood(ctx, job, gaveUp(job.attempts, job.lastError ?? DIED), now);
    return [];
  }
  if (isActive(job.status)) return expired ? [job] : [];
  const cap = args.maxRunningPerUser;
  const full = cap !== undefined && ((await runningByUser(ctx)).get(job.userId) ?? 0) >= cap;
  return isWaiting(job, now) && !full ? [job] : [];
}

const isWaiting = (job: Doc<"bulkJobs">, now: number) =>
  job.status === "pending" && (job.leaseExpiresAt === undefined || job.leaseExpiresAt < now);

// Running jobs whose runner stopped heartbeating (0 = handed back), oldest expiry first.
// Unfinished jobs whose runner died holding them after `maxAttempts` claims are failed
// instead. Unset expiries sort first and are excluded by the lower bound.
async function expiredJobs(
  ctx: MutationCtx,
  wanted: (job: Doc<"bulkJobs">) => boolean,
  now: number,
  maxAttempts: number,
): Promise<Doc<"bulkJobs">[]> {
  const expired = await ctx.db
    .query("bulkJobs")
    .withIndex("by_leaseExpiresAt", (q) => q.gte("leaseExpiresAt", 0).lt("leaseExpiresAt", now))
    .take(CLAIM_SCAN);
  const live: Doc<"bulkJobs">[] = [];
  for (const job of expired.filter(wanted)) {
    if (isTerminal(job.status)) continue;
    if (job.leaseOwner !== undefined && job.attempts >= maxAttempts) {
      await failForGood(ctx, job, gaveUp(job.attempts, job.lastError ?? DIED), now);
    } else if (isActive(job.status)) {
      live.push(job);
    }
  }
  return live;
}

async function failForGood(ctx: MutationCtx, job: Doc<"bulkJobs">, message: string, now: number) {
  await ctx.db.patch(job._id, {
    status: "failed",
    errorMessage: message,
    lastError: message,
    completedAt: now,
    updatedAt: now,
    leaseOwner: undefined,
    leaseExpiresAt: undefined,
  });
  await emitJobEnd(ctx, job, "failed", message);
}

// Bounds of a fair claim: users looked at, and pending jobs read per user.
const USER_SCAN = 100;
const RUNNING_SCAN = 1000;

// Pending jobs, users taking turns: one job per waiting user per round, users with fewer
// running jobs first (then by their best waiting job); users at the cap wait.
async function fairPending(
  ctx: MutationCtx,
  args: ClaimArgs,
  wanted: (job: Doc<"bulkJobs">) => boolean,
  now: number,
  limit: number,
): Promise<Doc<"bulkJobs">[]> {
  const heads = await waitingUsers(ctx);
  if (heads.length === 0) return [];
  const running = await runningByUser(ctx);
  const load = (user: string) => running.get(user) ?? 0;
  heads.sort(
    (a, b) =>
      load(a.userId) - load(b.userId) ||
      a.priorityRank - b.priorityRank ||
      a.createdAt - b.createdAt,
  );
  const queues: Doc<"bulkJobs">[][] = [];
  for (const head of heads) {
    if (queues.length >= limit) break;
    const cap = args.maxRunningPerUser;
    const room = cap === undefined ? limit : Math.min(limit, cap - load(head.userId));
    if (room <= 0) continue;
    const queue: Doc<"bulkJobs">[] = [];
    const pending = ctx.db
      .query("bulkJobs")
      .withIndex("by_status_and_userId_and_priorityRank_and_createdAt", (q) =>
        q.eq("status", "pending").eq("userId", head.userId),
      );
    let scanned = 0;
    for await (const job of pending) {
      if (queue.length >= room || ++scanned > CLAIM_SCAN) break;
      if (wanted(job) && isWaiting(job, now)) queue.push(job);
    }
    if (queue.length) queues.push(queue);
  }
  return takeTurns(queues, limit);
}

// The best pending job of each user with pending jobs (at most USER_SCAN users): one index
// read per user, hopping from one user id to the next.
async function waitingUsers(ctx: QueryCtx): Promise<Doc<"bulkJobs">[]> {
  const heads: Doc<"bulkJobs">[] = [];
  let after: string | undefined;
  while (heads.length < USER_SCAN) {
    const from = after;
    const head = await ctx.db
      .query("bulkJobs")
      .withIndex("by_status_and_userId_and_priorityRank_and_createdAt", (q) =>
        from === undefined ? q.eq("status", "pending") : q.eq("status", "pending").gt("userId", from),
      )
      .first();
    if (!head) break;
    heads.push(head);
    after = head.userId;
  }
  return heads;
}

// Unfinished jobs a runner holds now, by user (jobs driven by hand hold no lease and do not
// count; nor do jobs whose runner died).
async function runningByUser(ctx: QueryCtx): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  const held = await ctx.db
    .query("bulkJobs")
    .withIndex("by_leaseExpiresAt", (q) => q.gte("leaseExpiresAt", Date.now()))
    .take(RUNNING_SCAN);
  for (const job of held) {
    if (job.leaseOwner === undefined || job.completedAt !== undefined) continue;
    counts.set(job.userId, (counts.get(job.userId) ?? 0) + 1);
  }
  return counts;
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

export async function release(
  ctx: MutationCtx,
  args: {
    jobId: string;
    owner: string;
    error?: string;
    retryInMs?: number;
    maxAttempts?: number;
  },
) {
  const job = await ctx.db
    .query("bulkJobs")
    .withIndex("by_jobId", (q) => q.eq("jobId", args.jobId))
    .unique();
  if (!job || job.leaseOwner !== args.owner) return;
  const now = Date.now();
  if (job.completedAt !== undefined) {
    await ctx.db.patch(job._id, { leaseOwner: undefined, leaseExpiresAt: undefined });
  } else if (args.error === undefined) {
    // An expiry in the past (not unset) keeps the job claimable at once; unset would mark it
    // as driven by hand. A hand-back is not an attempt.
    await ctx.db.patch(job._id, {
      leaseOwner: undefined,
      leaseExpiresAt: 0,
      attempts: Math.max(0, job.attempts - 1),
      updatedAt: now,
    });
  } else if (job.attempts >= (args.maxAttempts ?? DEFAULT_MAX_ATTEMPTS)) {
    await failForGood(ctx, job, gaveUp(job.attempts, args.error), now);
  } else {
    await ctx.db.patch(job._id, {
      leaseOwner: undefined,
      leaseExpiresAt: now + Math.max(0, args.retryInMs ?? 0),
      lastError: args.error,
      updatedAt: now,
    });
  }
}
