// Tables of the bulk job store. The Python service (ConvexStore, with a deploy key) is the
// only writer; it and, later, browsers subscribed to a job read them.
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";
import { jobStatus, priority, stageStatus, exportFormat } from "./validators";
import { containerStatus, hostFields, jobFields, templateFields } from "./model/containers";
import { workFields } from "./model/workItems";

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
  })
    .index("by_jobId", ["jobId"])
    .index("by_userId_and_createdAt", ["userId", "createdAt"])
    .index("by_status_and_priorityRank_and_createdAt", ["status", "priorityRank", "createdAt"])
    .index("by_leaseExpiresAt", ["leaseExpiresAt"]),

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
    .index("by_expiresAt", ["expiresAt"]),

  // Writes: apiTokens.create. Reads: apiTokens.getByHash on every authenticated request.
  apiTokens: defineTable({
    tokenHash: v.string(),
    userId: v.string(),
    isAdmin: v.boolean(),
    name: v.string(),
    createdAt: v.number(),
  }).index("by_tokenHash", ["tokenHash"]),

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
    .index("by_status_and_createdAt", ["status", "createdAt"])
    .index("by_createdAt", ["createdAt"])
    .index("by_bulkJobId_and_createdAt", ["bulkJobId", "createdAt"])
    .index("by_hostId_and_createdAt", ["hostId", "createdAt"])
    .index("by_createdBy_and_createdAt", ["createdBy", "createdAt"])
    .index("by_leaseExpiresAt", ["leaseExpiresAt"]),

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
});
