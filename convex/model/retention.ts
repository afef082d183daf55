// Deleting finished bulk jobs, by hand (DELETE /bulk-jobs/{id}) or by retention. A job may
// own thousands of container jobs, more than one mutation may write, so deleteJob goes in
// steps: each call deletes up to `limit` container jobs (fewer when their logs are large),
// then up to `limit` exports, and the call that finds no more of either also deletes the
// stages and the job. Same semantics as
// LocalStore.delete_job.
import { v } from "convex/values";
import { Doc, Id } from "../_generated/dataModel";
import { MutationCtx, QueryCtx } from "../_generated/server";
import { MAX_PAGE, TERMINAL } from "../validators";
import { countHosts } from "./containers";
import { fail, isTerminal, jobDoc } from "./jobs";

// Container job documents carry up to three logs of 256 KiB each: a step stops reading them
// at READ_BUDGET bytes (or MAX_DELETE_BATCH documents), well inside a mutation's read limit.
const MAX_DELETE_BATCH = 500;
const READ_BUDGET = 4 * 1024 * 1024;

export const jobDeletion = v.object({
  done: v.boolean(),
  containerJobs: v.number(),
  stages: v.number(),
  exports: v.number(),
});

function checkDeletable(job: Doc<"bulkJobs">) {
  if (!isTerminal(job.status)) {
    fail("CONFLICT", `job ${job.jobId} is ${job.status}: cancel it first, then delete it`);
  }
  if (job.leaseOwner !== undefined && (job.leaseExpiresAt ?? 0) > Date.now()) {
    fail("CONFLICT", `job ${job.jobId} is still stopping (its runner holds it); try again soon`);
  }
}

// Up to `limit` of the job's container jobs, fewer once READ_BUDGET bytes were read; `more`
// when it stopped before the last one.
async function readContainerJobs(ctx: QueryCtx, jobId: string, limit: number) {
  const found: Doc<"containerJobs">[] = [];
  let bytes = 0;
  const children = ctx.db
    .query("containerJobs")
    .withIndex("by_bulkJobId_and_createdAt", (q) => q.eq("bulkJobId", jobId));
  for await (const child of children) {
    if (found.length >= limit || bytes >= READ_BUDGET) return { found, more: true };
    bytes += JSON.stringify(child).length;
    found.push(child);
  }
  return { found, more: false };
}

async function deleteContainerJobs(ctx: MutationCtx, jobId: string, limit: number) {
  const { found, more } = await readContainerJobs(ctx, jobId, limit);
  for (const child of found) {
    // An unfinished one (a cancel still under way) gives its host slot back.
    await countHosts(ctx, child, { status: "cancelled", hostId: child.hostId });
    await ctx.db.delete(child._id);
  }
  return { deleted: found.length, more };
}

async function deleteAll(
  ctx: MutationCtx,
  docs: { _id: Id<"bulkJobStages"> | Id<"bulkJobExports"> }[],
) {
  for (const doc of docs) await ctx.db.delete(doc._id);
  return docs.length;
}

export async function deleteJob(
  ctx: MutationCtx,
  args: { jobId: string; limit: number },
): Promise<{ done: boolean; containerJobs: number; stages: number; exports: number }> {
  const job = await jobDoc(ctx, args.jobId);
  checkDeletable(job);
  const limit = Math.max(1, Math.min(args.limit, MAX_DELETE_BATCH));
  const { deleted: containerJobs, more } = await deleteContainerJobs(ctx, args.jobId, limit);
  if (more) return { done: false, containerJobs, stages: 0, exports: 0 };
  // A job may have been given any number of exports by hand: they go in steps too.
  const exportDocs = await ctx.db
    .query("bulkJobExports")
    .withIndex("by_jobId_and_createdAt", (q) => q.eq("jobId", args.jobId))
    .take(limit);
  const exports = await deleteAll(ctx, exportDocs);
  if (exports === limit) return { done: false, containerJobs, stages: 0, exports };
  const stageDocs = await ctx.db
    .query("bulkJobStages")
    .withIndex("by_jobId_and_index", (q) => q.eq("jobId", args.jobId))
    .collect(); // at most one per stage name: a handful
  const stages = await deleteAll(ctx, stageDocs);
  await ctx.db.delete(job._id);
  return { done: true, containerJobs, stages, exports };
}

// Ids of jobs that finished before `before`, oldest first.
export async function getFinishedBefore(
  ctx: QueryCtx,
  args: { before: number; limit: number },
): Promise<string[]> {
  const limit = Math.max(1, Math.min(args.limit, MAX_PAGE));
  // A job that has not finished has no completedAt, which an index orders first: >= 0.
  const old = await ctx.db
    .query("bulkJobs")
    .withIndex("by_completedAt", (q) => q.gte("completedAt", 0).lt("completedAt", args.before))
    .take(limit);
  return old.filter((job) => TERMINAL.includes(job.status)).map((job) => job.jobId);
}
