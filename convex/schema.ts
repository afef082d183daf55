// Tables of the bulk job store. The Python service (ConvexStore, with a deploy key) is the
// only writer; it and, later, browsers subscribed to a job read them.
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";
import { jobStatus, priority, stageStatus, exportFormat } from "./validators";
import { containerStatus, hostFields, jobFields, templateFields } from "./model/containers";
import { workFields } from "./model/workItems";
import { deliveryFields, endpointFields } from "./model/webhooks";

export default defineSchema({
  // Writes: bulkJobs mutations. Reads: bulkJobs queries (service), live job views.
  // One document per job; per-stage progress lives in bulkJobStages so that progress
  // writes never conflict with status writes.
  bulkJobs: defineTable({
    jobId: v.string(),
    jobType: v.string(),
    userId: v.string(),
    status: jobStatus,
    priority: priority,
    // 0 high, 1 normal, 2 low: claim order.
    priorityRank: v.number(),
    jobData: v.any(),
    results: v.any(),
    estimatedDurationMinutes: v.optional(v.number()),
    errorMessage: v.optional(v.string()),
    createdAt: v.number(),
    updatedAt: v.number(),
    startedAt: v.optional(v.number()),
    completedAt: v.optional(v.number()),
    leaseOwner: v.optional(v.string()),
    // Unset: never leased (pending) or driven by hand; 0: released, claimable at once.
    leaseExpiresAt: v.optional(v.number()),
    attempts: v.number(),
    // The stage started last or, once a stage failed the job, that stage.
    currentStage: v.optional(v.string()),
    // Why the last attempt failed (the job is claimed again after a back-off).
    lastError: v.optional(v.string()),
    // The job whose failed items this job retries (POST /bulk-jobs/{id}/retry).
    retryOf: v.optional(v.string()),
  })
    .index("by_jobId", ["jobId"])
    .index("by_userId_and_createdAt", ["userId", "createdAt"])
    // getJobIdsByPrefix: a user's ids that start with a shortened id.
    .index("by_userId_and_jobId", ["userId", "jobId"])
    .index("by_status_and_priorityRank_and_createdAt", ["status", "priorityRank", "createdAt"])
    // Fair claims: hop from one user with pending jobs to the next, best job first.
    .index("by_status_and_userId_and_priorityRank_and_createdAt", [
      "status",
      "userId",
      "priorityRank",
      "createdAt",
    ])
    .index("by_leaseExpiresAt", ["leaseExpiresAt"])
    // Retention: jobs that finished before a cutoff, oldest first.
    .index("by_completedAt", ["completedAt"]),

  // Writes: bulkJobs stage mutations. Reads: getJob and every job view.
  bulkJobStages: defineTable({
    jobId: v.string(),
    name: v.string(),
    index: v.number(),
    status: stageStatus,
    progress: v.number(),
    itemsTotal: v.optional(v.number()),
    itemsCompleted: v.number(),
    itemsFailed: v.number(),
    startedAt: v.optional(v.number()),
    completedAt: v.optional(v.number()),
    errorMessage: v.optional(v.string()),
    metadata: v.any(),
  })
    .index("by_jobId_and_index", ["jobId", "index"])
    .index("by_jobId_and_name", ["jobId", "name"]),

  // Writes: addExport, removeExport. Reads: getJob, getExport, getExpiredExports (cleanup).
  bulkJobExports: defineTable({
    exportId: v.string(),
    jobId: v.string(),
    userId: v.string(),
    format: exportFormat,
    filename: v.string(),
    relativePath: v.string(),
    contentType: v.string(),
    sizeBytes: v.number(),
    sha256: v.string(),
    createdAt: v.number(),
    expiresAt: v.number(),
  })
    .index("by_exportId", ["exportId"])
    .index("by_jobId_and_createdAt", ["jobId", "createdAt"])
    .index("by_expiresAt", ["expiresAt"])
    // addExport's quota check: a user's unexpired exports.
    .index("by_userId_and_expiresAt", ["userId", "expiresAt"]),

  // Writes: apiTokens.create, apiTokens.revoke. Reads: apiTokens.getByHash on every
  // authenticated request, apiTokens.list (admins). A token's id is the start of its hash.
  apiTokens: defineTable({
    tokenHash: v.string(),
    userId: v.string(),
    isAdmin: v.boolean(),
    name: v.string(),
    createdAt: v.number(),
    // Unset: never expires.
    expiresAt: v.optional(v.number()),
    // Unset: not revoked.
    revokedAt: v.optional(v.number()),
  })
    .index("by_tokenHash", ["tokenHash"])
    .index("by_userId_and_createdAt", ["userId", "createdAt"]),

  // Writes: containerJobs mutations (the service's container manager and workers). Reads:
  // containerJobs queries. Logs live in the document, so each stays under 1 MiB only while
  // the service truncates them.
  containerJobs: defineTable({
    jobId: v.string(),
    status: containerStatus,
    // -priority, so that an ascending index scan claims the highest priority first.
    negPriority: v.number(),
    ...jobFields,
  })
    .index("by_jobId", ["jobId"])
    .index("by_status_and_negPriority_and_createdAt", ["status", "negPriority", "createdAt"])
    // Fair claims: per host, hop from one user with pending jobs to the next, best job first.
    .index("by_status_and_hostId_and_createdBy_and_negPriority_and_createdAt", [
      "status",
      "hostId",
      "createdBy",
      "negPriority",
      "createdAt",
    ])
    .index("by_status_and_createdAt", ["status", "createdAt"])
    .index("by_createdAt", ["createdAt"])
    .index("by_bulkJobId_and_createdAt", ["bulkJobId", "createdAt"])
    .index("by_hostId_and_createdAt", ["hostId", "createdAt"])
    .index("by_createdBy_and_createdAt", ["createdBy", "createdAt"])
    // getIdsByPrefix: an owner's ids that start with a shortened id.
    .index("by_createdBy_and_jobId", ["createdBy", "jobId"])
    // create*'s quota check: a user's unfinished jobs, one status at a time.
    .index("by_createdBy_and_status", ["createdBy", "status"])
    .index("by_leaseExpiresAt", ["leaseExpiresAt"]),

  // Writes and reads: containerJobs create* (with a quota). Jobs a bulk creation reserves for
  // the transactions that follow its first; they count as unfinished until written or expired.
  containerHolds: defineTable({
    holdId: v.string(),
    userId: v.string(),
    remaining: v.number(),
    expiresAt: v.number(),
  })
    .index("by_holdId", ["holdId"])
    .index("by_userId_and_expiresAt", ["userId", "expiresAt"]),

  // Writes: executorHosts mutations, and containerJobs transitions (currentJobCount).
  // Reads: executorHosts queries (routing, admin views).
  executorHosts: defineTable({ hostId: v.string(), ...hostFields })
    .index("by_hostId", ["hostId"])
    .index("by_name", ["name"]),

  // Writes: envTemplates mutations. Reads: envTemplates queries (job launch, admin views).
  envTemplates: defineTable({ templateId: v.string(), ...templateFields })
    .index("by_templateId", ["templateId"])
    .index("by_name", ["name"]),

  // Writes and reads: containerJobs.transition, so that a retried report applies once.
  containerReports: defineTable({ reportId: v.string(), appliedAt: v.number() }).index(
    "by_reportId",
    ["reportId"],
  ),

  // Writes: workItems mutations (enqueuers, and workers claiming, renewing and reporting).
  // Reads: workItems queries (workers, `bulkjobs worker status`). Pending items have no
  // lease expiry, so by_status_and_leaseExpiresAt also orders them by insertion.
  workItems: defineTable(workFields)
    .index("by_itemId", ["itemId"])
    .index("by_status_and_leaseExpiresAt", ["status", "leaseExpiresAt"])
    .index("by_status_and_operation", ["status", "operation"])
    .index("by_leaseOwner", ["leaseOwner"]),

  // Writes: webhooks.create/remove/enable (the service's routes and CLI), webhooks.report
  // (failingSince, and disabling an endpoint that failed too long). Reads: every bulkJobs and
  // containerJobs mutation that emits an event, webhooks queries. Holds the signing secret:
  // internal functions only.
  webhookEndpoints: defineTable(endpointFields)
    .index("by_endpointId", ["endpointId"])
    .index("by_userId_and_status", ["userId", "status"])
    .index("by_userId_and_createdAt", ["userId", "createdAt"])
    .index("by_allUsers_and_status", ["allUsers", "status"])
    .index("by_createdAt", ["createdAt"]),

  // The webhook outbox. Writes: the bulkJobs and containerJobs mutations whose change an
  // event reports (in the same transaction), workers claiming, renewing and reporting
  // deliveries. Reads: webhooks.claim (by status and dueAt: the next attempt of a pending
  // delivery, the lease expiry of a delivering one), webhooks.listDeliveries.
  webhookDeliveries: defineTable(deliveryFields)
    .index("by_deliveryId", ["deliveryId"])
    .index("by_status_and_dueAt", ["status", "dueAt"])
    .index("by_endpointId", ["endpointId"])
    .index("by_endpointId_and_status", ["endpointId", "status"]),
});
