// bulkJobs: the functions behind the Python Store protocol (src/services/store/base.py), all
// internal (the service calls them with a deploy key), and two public queries, getJob and
// getUserJobs, through which a signed-in browser watches its own jobs.
import { v } from "convex/values";
import { internalMutation, internalQuery, query } from "./_generated/server";
import { jobIdsByPrefix } from "./model/idPrefixes";
import { claimRules, releaseFailure } from "./model/attempts";
import * as jobs from "./model/jobs";
import { checkExportBytes, exportBytes } from "./model/quotas";
import { deleteJob as deleteJobHandler, getFinishedBefore as finishedBefore, jobDeletion } from "./model/retention";
import { emit } from "./model/webhooks";
import {
  MAX_PAGE,
  exportView,
  exportFields,
  jobStatus,
  jobView,
  newJob,
} from "./validators";

const stageArgs = { jobId: v.string(), stage: v.string() };
const counts = {
  itemsCompleted: v.optional(v.number()),
  itemsFailed: v.optional(v.number()),
  metadata: v.optional(v.any()),
};

export const create = internalMutation({
  args: newJob,
  returns: v.string(),
  handler: jobs.create,
});

export const updateStatus = internalMutation({
  args: {
    jobId: v.string(),
    status: jobStatus,
    updates: v.optional(v.any()),
    errorMessage: v.optional(v.string()),
  },
  returns: v.null(),
  handler: async (ctx, args) => {
    await jobs.updateStatus(ctx, args);
    return null;
  },
});

export const startStage = internalMutation({
  args: { ...stageArgs, itemsTotal: v.optional(v.number()) },
  returns: v.null(),
  handler: async (ctx, args) => {
    await jobs.startStage(ctx, args);
    return null;
  },
});


export const updateStageProgress = internalMutation({
  args: { ...stageArgs, progress: v.number(), ...counts },
  returns: jobStatus,
  handler: jobs.updateStageProgress,
});

export const completeStage = internalMutation({
  args: { ...stageArgs, ...counts },
  returns: v.null(),
  handler: async (ctx, args) => {
    await jobs.finishStage(ctx, { ...args, target: "completed" });
    return null;
  },
});

export const failStage = internalMutation({
  args: {
    ...stageArgs,
    errorMessage: v.string(),
    metadata: v.optional(v.any()),
    // false: the stage fails, the job keeps running (default true: the job fails too).
    fatal: v.optional(v.boolean()),
  },
  returns: v.null(),
  handler: async (ctx, args) => {
    await jobs.finishStage(ctx, { ...args, target: "failed" });
    return null;
  },
});

// Idempotent by exportId: a stage resumed after a crash registers its export again under
// the same id, replacing the record instead of adding a second one.
// With maxUserBytes: refused (EXPORT_QUOTA, nothing written) when the owner's unexpired
// exports, this one included, would pass it.
export const addExport = internalMutation({
  args: { ...exportFields, maxUserBytes: v.optional(v.number()) },
  returns: v.null(),
  handler: async (ctx, { maxUserBytes, ...args }) => {
    await jobs.jobDoc(ctx, args.jobId);
    if (maxUserBytes !== undefined) await checkExportBytes(ctx, args, maxUserBytes);
    const existing = await ctx.db
      .query("bulkJobExports")
      .withIndex("by_exportId", (q) => q.eq("exportId", args.exportId))
      .unique();
    if (existing === null) {
      await ctx.db.insert("bulkJobExports", args);
      await emit(ctx, "export.ready", args.userId, {
        export_id: args.exportId,
        job_id: args.jobId,
        user_id: args.userId,
        format: args.format,
        filename: args.filename,
        size_bytes: args.sizeBytes,
        sha256: args.sha256,
        expires_at: new Date(args.expiresAt).toISOString(),
      });
    } else if (existing.jobId !== args.jobId) {
      jobs.fail("CONFLICT", `export ${args.exportId} belongs to another job`);
    } else {
      await ctx.db.replace(existing._id, args);
    }
    return null;
  },
});

// Bytes of the user's unexpired exports (a floor past EXPORT_SCAN of them).
export const getUserExportBytes = internalQuery({
  args: { userId: v.string() },
  returns: v.number(),
  handler: async (ctx, { userId }) => (await exportBytes(ctx, userId)).bytes,
});

export const removeExport = internalMutation({
  args: { exportId: v.string() },
  returns: v.boolean(),
  handler: async (ctx, { exportId }) => {
    const doc = await ctx.db
      .query("bulkJobExports")
      .withIndex("by_exportId", (q) => q.eq("exportId", exportId))
      .unique();
    if (!doc) return false;
    await ctx.db.delete(doc._id);
    return true;
  },
});

// Users take turns; a user at maxRunningPerUser running jobs waits; a job whose runner died
// holding it maxAttempts times is failed with its last error instead of claimed.
export const claim = internalMutation({
  args: {
    owner: v.string(),
    leaseMs: v.number(),
    jobTypes: v.array(v.string()),
    limit: v.number(),
    jobId: v.optional(v.string()),
    ...claimRules,
  },
  returns: v.array(jobView),
  handler: jobs.claim,
});

export const heartbeat = internalMutation({
  args: { jobId: v.string(), owner: v.string(), leaseMs: v.number() },
  returns: jobStatus,
  handler: jobs.heartbeat,
});

// Without `error`: a hand-back (claimable at once, no attempt used). With it: a failed
// attempt, claimable again after retryInMs, or failed once maxAttempts are used.
export const release = internalMutation({
  args: { jobId: v.string(), owner: v.string(), ...releaseFailure },
  returns: v.null(),
  handler: async (ctx, args) => {
    await jobs.release(ctx, args);
    return null;
  },
});

export const getJob = query({
  args: { jobId: v.string() },
  returns: v.union(jobs.jobProgress, v.null()),
  handler: jobs.myJob,
});

export const getUserJobs = query({
  args: { limit: v.optional(v.number()) },
  returns: v.array(jobs.jobProgress),
  handler: jobs.myJobs,
});

export const getJobInternal = internalQuery({
  args: { jobId: v.string() },
  returns: v.union(jobView, v.null()),
  handler: async (ctx, { jobId }) => {
    const job = await ctx.db
      .query("bulkJobs")
      .withIndex("by_jobId", (q) => q.eq("jobId", jobId))
      .unique();
    return job ? await jobs.jobView(ctx, job) : null;
  },
});

export const getUserJobsInternal = internalQuery({
  args: {
    userId: v.string(),
    status: v.optional(jobStatus),
    jobType: v.optional(v.string()),
    limit: v.number(),
  },
  returns: v.array(jobView),
  handler: async (ctx, args) => {
    const limit = Math.max(1, Math.min(args.limit, MAX_PAGE));
    const found = [];
    const newest = ctx.db
      .query("bulkJobs")
      .withIndex("by_userId_and_createdAt", (q) => q.eq("userId", args.userId))
      .order("desc");
    let scanned = 0;
    for await (const job of newest) {
      // Filters are applied to a bounded scan so that the query stays small.
      if (found.length >= limit || ++scanned > 4000) break;
      if (args.status && job.status !== args.status) continue;
      if (args.jobType && job.jobType !== args.jobType) continue;
      found.push(await jobs.jobView(ctx, job));
    }
    return found;
  },
});

// Ids starting with `prefix` (only `userId`'s when given), in id order, at most `limit`
// (<= MAX_PAGE): how a shortened id from a listing is resolved.
export const getJobIdsByPrefix = internalQuery({
  args: { prefix: v.string(), userId: v.optional(v.string()), limit: v.number() },
  returns: v.array(v.string()),
  handler: jobIdsByPrefix,
});

export const getUserRecentJobs = internalQuery({
  args: { userId: v.string(), windowMs: v.number() },
  returns: v.array(jobView),
  handler: async (ctx, { userId, windowMs }) => {
    const recent = await ctx.db
      .query("bulkJobs")
      .withIndex("by_userId_and_createdAt", (q) =>
        q.eq("userId", userId).gt("createdAt", Date.now() - windowMs),
      )
      .order("desc")
      .take(MAX_PAGE);
    return Promise.all(recent.map((job) => jobs.jobView(ctx, job)));
  },
});

export const getExport = internalQuery({
  args: { exportId: v.string() },
  returns: v.union(exportView, v.null()),
  handler: async (ctx, { exportId }) => {
    const doc = await ctx.db
      .query("bulkJobExports")
      .withIndex("by_exportId", (q) => q.eq("exportId", exportId))
      .unique();
    if (!doc) return null;
    const { _id, _creationTime, ...fields } = doc;
    return fields;
  },
});

export const getExpiredExports = internalQuery({
  args: { limit: v.number() },
  returns: v.array(exportView),
  handler: async (ctx, { limit }) => {
    const expired = await ctx.db
      .query("bulkJobExports")
      .withIndex("by_expiresAt", (q) => q.lte("expiresAt", Date.now()))
      .take(Math.max(1, Math.min(limit, MAX_PAGE)));
    return expired.map(({ _id, _creationTime, ...fields }) => fields);
  },
});

export const getJobStats = internalQuery({
  args: {},
  returns: v.object({
    totalJobs: v.number(),
    byStatus: v.record(v.string(), v.number()),
    byType: v.record(v.string(), v.number()),
    exports: v.number(),
    exportBytes: v.number(),
    // True when more than STATS_SCAN documents exist and only the newest were counted.
    truncated: v.boolean(),
  }),
  handler: async (ctx) => {
    const all = await ctx.db.query("bulkJobs").order("desc").take(jobs.STATS_SCAN + 1);
    const counted = all.slice(0, jobs.STATS_SCAN);
    const byStatus: Record<string, number> = {};
    const byType: Record<string, number> = {};
    for (const job of counted) {
      byStatus[job.status] = (byStatus[job.status] ?? 0) + 1;
      byType[job.jobType] = (byType[job.jobType] ?? 0) + 1;
    }
    const exportDocs = await ctx.db.query("bulkJobExports").take(jobs.STATS_SCAN);
    return {
      totalJobs: counted.length,
      byStatus,
      byType,
      exports: exportDocs.length,
      exportBytes: exportDocs.reduce((sum, doc) => sum + doc.sizeBytes, 0),
      truncated: all.length > jobs.STATS_SCAN || exportDocs.length === jobs.STATS_SCAN,
    };
  },
});

// A finished job that no runner holds, in steps: up to `limit` (<= 500) of its container
// jobs per call, then its stages, exports and the job itself (`done`). Callers repeat until
// done; CONFLICT names why a job cannot go yet.
export const deleteJob = internalMutation({
  args: { jobId: v.string(), limit: v.number() },
  returns: jobDeletion,
  handler: deleteJobHandler,
});

// Ids of jobs that finished before `before` (epoch ms), oldest first, at most `limit`.
export const getFinishedBefore = internalQuery({
  args: { before: v.number(), limit: v.number() },
  returns: v.array(v.string()),
  handler: finishedBefore,
});
