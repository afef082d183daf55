// Validators, types and state machines shared by every bulk job module. They mirror
// src/services/domain.py on the Python side; change both together.
import { Infer, v } from "convex/values";

export const jobStatus = v.union(
  v.literal("pending"),
  v.literal("initializing"),
  v.literal("processing"),
  v.literal("exporting"),
  v.literal("completed"),
  v.literal("failed"),
  v.literal("cancelled"),
);
export type JobStatus = Infer<typeof jobStatus>;

export const stageStatus = v.union(
  v.literal("pending"),
  v.literal("processing"),
  v.literal("completed"),
  v.literal("failed"),
  v.literal("skipped"),
);
export type StageStatus = Infer<typeof stageStatus>;

export const priority = v.union(v.literal("low"), v.literal("normal"), v.literal("high"));
export type Priority = Infer<typeof priority>;
export const PRIORITY_RANK: Record<Priority, number> = { high: 0, normal: 1, low: 2 };

export const exportFormat = v.union(v.literal("json"), v.literal("csv"), v.literal("zip"));

export const ACTIVE: readonly JobStatus[] = ["initializing", "processing", "exporting"];
export const TERMINAL: readonly JobStatus[] = ["completed", "failed", "cancelled"];

export const JOB_TRANSITIONS: Record<JobStatus, readonly JobStatus[]> = {
  pending: [...ACTIVE, ...TERMINAL],
  initializing: [...ACTIVE, ...TERMINAL],
  processing: [...ACTIVE, ...TERMINAL],
  exporting: [...ACTIVE, ...TERMINAL],
  completed: [],
  failed: [],
  cancelled: [],
};

const EXPORT_STAGES: readonly string[] = ["export_preparation", "export_generation"];
// Stages that set up, export or clean up around a job's items: their counts are not the
// job's items (BOOKKEEPING_STAGES in src/services/domain.py says the same).
export const BOOKKEEPING_STAGES: readonly string[] = [...EXPORT_STAGES, "initialization", "cleanup"];

// The status a job takes when it starts this stage.
export function statusForStage(stage: string): JobStatus {
  if (stage === "initialization") return "initializing";
  return EXPORT_STAGES.includes(stage) ? "exporting" : "processing";
}

// processing -> processing restarts a stage when a job is resumed.
export const STAGE_TRANSITIONS: Record<StageStatus, readonly StageStatus[]> = {
  pending: ["processing", "skipped"],
  processing: ["processing", "completed", "failed", "skipped"],
  completed: [],
  failed: [],
  skipped: [],
};

// Upper bound of any list returned in one call.
export const MAX_PAGE = 200;

export const stageView = v.object({
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
});

export const exportFields = {
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
};
export const exportView = v.object(exportFields);
export type ExportView = Infer<typeof exportView>;

export const jobView = v.object({
  jobId: v.string(),
  jobType: v.string(),
  userId: v.string(),
  status: jobStatus,
  priority: priority,
  jobData: v.any(),
  results: v.any(),
  estimatedDurationMinutes: v.optional(v.number()),
  errorMessage: v.optional(v.string()),
  createdAt: v.number(),
  updatedAt: v.number(),
  startedAt: v.optional(v.number()),
  completedAt: v.optional(v.number()),
  leaseOwner: v.optional(v.string()),
  leaseExpiresAt: v.optional(v.number()),
  attempts: v.number(),
  currentStage: v.optional(v.string()),
  lastError: v.optional(v.string()),
  retryOf: v.optional(v.string()),
  stages: v.array(stageView),
  exports: v.array(exportView),
});
export type JobView = Infer<typeof jobView>;

export const newJob = {
  jobType: v.string(),
  userId: v.string(),
  jobData: v.any(),
  stages: v.array(v.string()),
  priority: priority,
  estimatedDurationMinutes: v.optional(v.number()),
  jobId: v.optional(v.string()),
  // The job whose failed items this one retries.
  retryOf: v.optional(v.string()),
  // Both absent: the job is not rate limited (an admin's).
  maxJobs: v.optional(v.number()),
  windowMs: v.optional(v.number()),
};
