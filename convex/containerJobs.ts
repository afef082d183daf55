// containerJobs: the functions behind the ContainerStore protocol (src/services/store/base.py,
// `containerJobs:create` <-> `container_create`). All internal: the service calls them with a
// deploy key; browsers cannot.
import { v } from "convex/values";
import { internalMutation, internalQuery } from "./_generated/server";
import { releaseFailure } from "./model/attempts";
import * as jobs from "./model/containerJobs";
import { containerIdsByPrefix } from "./model/idPrefixes";
import { containerQuota } from "./model/quotas";
import {
  containerStatus,
  executorType,
  jobPatch,
  jobView,
  newJob,
  unsetFields,
} from "./model/containers";

const failures = v.array(v.object({ jobId: v.string(), error: v.string() }));

// With a quota, each owner's unfinished jobs are counted in the same transaction (see
// ContainerQuota in src/services/domain/containers.py): over it, CONTAINER_QUOTA and nothing
// is written.
export const create = internalMutation({
  args: { job: newJob, quota: v.optional(containerQuota) },
  returns: v.null(),
  handler: (ctx, { job, quota }) => jobs.createBatch(ctx, { jobs: [job], quota }),
});

// One transaction: all of the batch (at most MAX_BATCH = 500 jobs) or nothing.
export const createBatch = internalMutation({
  args: { jobs: v.array(newJob), quota: v.optional(containerQuota) },
  returns: v.null(),
  handler: jobs.createBatch,
});

// Copies of `job` under each of `jobIds` (at most MAX_BATCH): bulk creation sends the
// document once.
export const createCopies = internalMutation({
  args: { job: newJob, jobIds: v.array(v.string()), quota: v.optional(containerQuota) },
  returns: v.null(),
  handler: jobs.createCopies,
});

export const get = internalQuery({
  args: { jobId: v.string() },
  returns: v.union(jobView, v.null()),
  handler: async (ctx, { jobId }) => {
    const [found] = await jobs.getMany(ctx, { jobIds: [jobId] });
    return found ?? null;
  },
});

// The jobs found, in the order asked (at most MAX_LIST = 1000 ids).
export const getMany = internalQuery({
  args: { jobIds: v.array(v.string()) },
  returns: v.array(jobView),
  handler: jobs.getMany,
});

// Newest first, at most `limit` (<= 1000).
export const list = internalQuery({
  args: {
    status: v.optional(containerStatus),
    hostId: v.optional(v.string()),
    createdBy: v.optional(v.string()),
    bulkJobId: v.optional(v.string()),
    limit: v.number(),
  },
  returns: v.array(jobView),
  handler: jobs.list,
});

// Ids starting with `prefix` (only `createdBy`'s when given), in id order, at most `limit`
// (<= 200): how a shortened id from a listing is resolved.
export const getIdsByPrefix = internalQuery({
  args: { prefix: v.string(), createdBy: v.optional(v.string()), limit: v.number() },
  returns: v.array(v.string()),
  handler: containerIdsByPrefix,
});

// Expired leases first, then pending jobs on hosts with a free slot, users taking turns;
// `bulkJobId` claims only that bulk job's jobs.
export const claim = internalMutation({
  args: {
    owner: v.string(),
    leaseMs: v.number(),
    limit: v.number(),
    bulkJobId: v.optional(v.string()),
    maxAttempts: v.optional(v.number()),
  },
  returns: v.array(jobView),
  handler: jobs.claim,
});

export const transition = internalMutation({
  args: {
    jobId: v.string(),
    status: containerStatus,
    fields: v.optional(jobPatch),
    unset: unsetFields,
    reportId: v.optional(v.string()),
  },
  returns: jobView,
  handler: jobs.transition,
});

export const transitionMany = internalMutation({
  args: {
    jobIds: v.array(v.string()),
    status: containerStatus,
    fields: v.optional(jobPatch),
    unset: unsetFields,
  },
  returns: v.object({ updated: v.array(jobView), errors: failures }),
  handler: jobs.transitionMany,
});

export const migrate = internalMutation({
  args: { jobIds: v.array(v.string()), hostId: v.string(), executorType },
  returns: v.object({ moved: v.array(v.string()), errors: failures }),
  handler: jobs.migrate,
});

// Deletes up to `limit` (<= 500) finished jobs created before `before`; callers loop until 0.
export const removeFinishedBefore = internalMutation({
  args: { before: v.number(), limit: v.number() },
  returns: v.number(),
  handler: jobs.removeFinishedBefore,
});

export const countByStatus = internalQuery({
  args: {},
  returns: v.object({ counts: v.record(v.string(), v.number()), truncated: v.boolean() }),
  handler: jobs.countByStatus,
});

export const heartbeat = internalMutation({
  args: { jobId: v.string(), owner: v.string(), leaseMs: v.number() },
  returns: containerStatus,
  handler: jobs.heartbeat,
});

// Without `error`: a hand-back (claimable at once, no attempt used). With it: a failed
// attempt, claimable again after retryInMs, or failed once maxAttempts are used.
export const release = internalMutation({
  args: { jobId: v.string(), owner: v.string(), ...releaseFailure },
  returns: containerStatus,
  handler: jobs.release,
});

// Finished jobs only unless forced; returns the ids removed.
export const remove = internalMutation({
  args: { jobIds: v.array(v.string()), force: v.boolean() },
  returns: v.array(v.string()),
  handler: jobs.remove,
});
