// Resolving shortened ids: the ids of bulk jobs and container jobs that start with a prefix,
// as listings and the dashboard show ids shortened. Handlers of bulkJobs:getJobIdsByPrefix
// and containerJobs:getIdsByPrefix.
import type { QueryCtx } from "../_generated/server";
import { MAX_PAGE } from "../validators";

type PrefixArgs = { prefix: string; limit: number };

const bound = (limit: number) => Math.max(1, Math.min(limit, MAX_PAGE));

// An index range from the prefix on holds every id that starts with it first (ids sort
// lexicographically), so the scan stops at the first id that does not.
async function collect(
  range: AsyncIterable<{ jobId: string }>,
  prefix: string,
  limit: number,
): Promise<string[]> {
  const found: string[] = [];
  for await (const doc of range) {
    if (found.length >= limit || !doc.jobId.startsWith(prefix)) break;
    found.push(doc.jobId);
  }
  return found;
}

export async function jobIdsByPrefix(
  ctx: QueryCtx,
  { prefix, userId, limit }: PrefixArgs & { userId?: string },
): Promise<string[]> {
  const jobs = ctx.db.query("bulkJobs");
  const range =
    userId === undefined
      ? jobs.withIndex("by_jobId", (q) => q.gte("jobId", prefix))
      : jobs.withIndex("by_userId_and_jobId", (q) => q.eq("userId", userId).gte("jobId", prefix));
  return collect(range, prefix, bound(limit));
}

export async function containerIdsByPrefix(
  ctx: QueryCtx,
  { prefix, createdBy, limit }: PrefixArgs & { createdBy?: string },
): Promise<string[]> {
  const jobs = ctx.db.query("containerJobs");
  const range =
    createdBy === undefined
      ? jobs.withIndex("by_jobId", (q) => q.gte("jobId", prefix))
      : jobs.withIndex("by_createdBy_and_jobId", (q) =>
          q.eq("createdBy", createdBy).gte("jobId", prefix),
        );
  return collect(range, prefix, bound(limit));
}
