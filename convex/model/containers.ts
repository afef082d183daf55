// Validators, the status table and shared helpers of the container modules (containerJobs,
// executorHosts, envTemplates). They mirror src/services/domain/containers.py; change both
// together. Timestamps are epoch milliseconds, as in the bulk job tables.
import { Infer, v } from "convex/values";
import { Doc } from "../_generated/dataModel";
import { MutationCtx, QueryCtx } from "../_generated/server";
import { fail } from "./jobs";

export const containerStatus = v.union(
  v.literal("pending"),
  v.literal("queued"),
  v.literal("launching"),
  v.literal("running"),
  v.literal("completed"),
  v.literal("failed"),
  v.literal("timeout"),
  v.literal("cancelled"),
  v.literal("retrying"),
);
export type ContainerStatus = Infer<typeof containerStatus>;

export const executorType = v.union(
  v.literal("local"),
  v.literal("docker"),
  v.literal("cloudrun"),
  v.literal("fargate"),
  v.literal("scaleway"),
  v.literal("mock"),
);

export const STATUSES: readonly ContainerStatus[] = [
  "pending",
  "queued",
  "launching",
  "running",
  "completed",
  "failed",
  "timeout",
  "cancelled",
  "retrying",
];
export const TERMINAL: readonly ContainerStatus[] = ["completed", "failed", "timeout", "cancelled"];
// A job holds a slot on its host while launching or running.
export const ACTIVE: readonly ContainerStatus[] = ["launching", "running"];
// Statuses a job can still be moved to another host from: it has not started.
export const MOVABLE: readonly ContainerStatus[] = ["pending", "queued", "retrying"];

// Mirrors TRANSITIONS in src/services/domain/containers.py.
export const TRANSITIONS: Record<ContainerStatus, readonly ContainerStatus[]> = {
  pending: ["queued", "launching", "running", "cancelled", "failed"],
  queued: ["launching", "cancelled", "failed", "pending"],
  launching: ["running", "failed", "retrying", "cancelled", "timeout", "completed"],
  // -> retrying: an exit its exit retry policy runs again.
  running: ["completed", "failed", "timeout", "cancelled", "retrying"],
  retrying: ["queued", "failed", "cancelled"],
  completed: [],
  failed: [],
  timeout: [],
  cancelled: [],
};

export const isTerminal = (status: ContainerStatus) => TERMINAL.includes(status);
export const isActive = (status: ContainerStatus) => ACTIVE.includes(status);

// Upper bound of the batches and lists of the container functions. A batch of 500 full job
// documents stays well inside a mutation's write limits (16,000 documents, 16 MiB).
export const MAX_BATCH = 500;
export const MAX_LIST = 1000;

const opt = v.optional;
const nullable = <T extends Parameters<typeof v.union>[0]>(validator: T) =>
  v.union(validator, v.null());

// ExitRetryPolicy and ExitAttempt in domain/containers.py. Nested values keep the service's
// snake_case names, as every nested value of a job does; their times are ISO 8601 text.
export const exitRetry = v.object({
  retry_on_exit_codes: v.array(v.number()),
  max_retries: v.number(),
  backoff_s: v.number(),
});
export const exitAttempt = v.object({
  attempt: v.number(),
  status: containerStatus,
  exit_code: nullable(v.number()),
  error: v.string(),
  started_at: nullable(v.string()),
  finished_at: v.string(),
  retry_in_s: nullable(v.number()),
});

// The fields of a container job that callers may set (everything but id, status, and the
// derived claim key). ContainerJob in models.py, camelCased.
export const jobFields = {
  hostId: opt(v.string()),
  name: v.string(),
  description: v.string(),
  dockerImage: v.string(),
  command: v.string(),
  workingDirectory: v.string(),
  memoryLimit: opt(v.number()),
  cpuLimit: opt(v.number()),
  timeoutSeconds: v.number(),
  environmentTemplateId: opt(v.string()),
  overrideEnvironment: v.string(),
  networkConfiguration: v.array(v.any()),
  executionId: v.string(),
  exitCode: opt(v.number()),
  startedAt: opt(v.number()),
  completedAt: opt(v.number()),
  maxMemoryUsage: opt(v.number()),
  cpuUsagePercent: opt(v.number()),
  stdoutLog: v.string(),
  stderrLog: v.string(),
  dockerLog: v.string(),
  createdBy: opt(v.string()),
  createdAt: v.number(),
  updatedAt: v.number(),
  executorType: executorType,
  externalExecutionId: v.string(),
  executorMetadata: v.any(),
  preferredExecutor: opt(executorType),
  routingReason: v.string(),
  estimatedCost: opt(v.number()),
  actualCost: opt(v.number()),
  priority: v.number(),
  maxRetries: v.number(),
  retryCount: v.number(),
  statusMessage: v.string(),
  bulkJobId: opt(v.string()),
  itemKey: opt(v.string()),
  leaseOwner: opt(v.string()),
  // Unset: never leased; 0: released, claimable at once.
  leaseExpiresAt: opt(v.number()),
  // Claims by processors; a hand-back does not count (absent on jobs stored before).
  attempts: opt(v.number()),
  lastError: opt(v.string()),
  // A non-admin's job: it runs only on hosts that isolate it (isolationRefusal). Absent on
  // jobs stored before, which count as admins'.
  untrusted: opt(v.boolean()),
  // The caller chose the host: failover never moves the job elsewhere.
  hostPinned: opt(v.boolean()),
  // Runs the job again after some non-zero exits; each run so far (at most 11) is kept.
  exitRetry: opt(exitRetry),
  exitAttempts: opt(v.array(exitAttempt)),
};
export const newJob = v.object({ jobId: v.string(), status: containerStatus, ...jobFields });
export type NewJob = Infer<typeof newJob>;
export const jobView = newJob;
export type JobView = Infer<typeof newJob>;

// A partial update: every field optional. `unset` names fields to clear (Convex arguments
// cannot be null).
export const jobPatch = v.object(partial(jobFields));
export const unsetFields = v.optional(v.array(v.string()));

export const hostFields = {
  name: v.string(),
  hostType: v.union(v.literal("unix"), v.literal("tcp")),
  connectionString: v.string(),
  tlsEnabled: v.boolean(),
  tlsVerify: v.boolean(),
  isActive: v.boolean(),
  autoPullImages: v.boolean(),
  executorType: executorType,
  executorConfig: v.any(),
  maxConcurrentJobs: v.number(),
  weight: v.number(),
  currentJobCount: v.number(),
  costPerHour: opt(v.number()),
  costPerJob: opt(v.number()),
  averageStartupTime: opt(v.number()),
  // When the host was last probed (or checked by hand), whatever the result.
  lastHealthCheck: opt(v.number()),
  // Consecutive failed probes and launches that failed for the host's sake.
  healthCheckFailures: v.number(),
  // False once healthCheckFailures reached the caller's threshold, until a probe succeeds
  // (absent on hosts stored before: healthy).
  healthy: opt(v.boolean()),
  lastHealthError: opt(v.string()),
  // When the next periodic probe is due (claimProbes moves it one interval on).
  nextProbeAt: opt(v.number()),
  createdAt: v.number(),
  updatedAt: v.number(),
};
export const hostView = v.object({ hostId: v.string(), ...hostFields });
export type HostView = Infer<typeof hostView>;
export const hostPatch = v.object(partial(hostFields));

export const templateFields = {
  name: v.string(),
  description: v.string(),
  environmentVariablesText: v.string(),
  supportedExecutors: v.array(executorType),
  createdBy: opt(v.string()),
  createdAt: v.number(),
  updatedAt: v.number(),
};
export const templateView = v.object({ templateId: v.string(), ...templateFields });
export type TemplateView = Infer<typeof templateView>;
export const templatePatch = v.object(partial(templateFields));

// `{a: v.string()}` -> `{a: v.optional(v.string())}`; already optional fields stay so.
function partial<F extends Record<string, any>>(fields: F) {
  const out: Record<string, any> = {};
  for (const [key, validator] of Object.entries(fields)) {
    out[key] = validator.isOptional === "optional" ? validator : v.optional(validator);
  }
  return out as { [K in keyof F]: ReturnType<typeof v.optional<F[K]>> };
}

// A patch with `unset` fields set to undefined, which ctx.db.patch removes. Only names of
// optional fields may be cleared; a required one stays.
export function withUnset(
  patch: Record<string, unknown>,
  unset: string[] | undefined,
  fields: Record<string, { isOptional: string }>,
): Record<string, unknown> {
  const cleared: Record<string, unknown> = { ...patch };
  for (const key of unset ?? []) {
    if (fields[key]?.isOptional === "optional") cleared[key] = undefined;
  }
  return cleared;
}

// -- documents -----------------------------------------------------------------------------

export async function jobDoc(ctx: QueryCtx, jobId: string): Promise<Doc<"containerJobs"> | null> {
  return ctx.db
    .query("containerJobs")
    .withIndex("by_jobId", (q) => q.eq("jobId", jobId))
    .unique();
}

export async function hostDoc(ctx: QueryCtx, hostId: string): Promise<Doc<"executorHosts"> | null> {
  return ctx.db
    .query("executorHosts")
    .withIndex("by_hostId", (q) => q.eq("hostId", hostId))
    .unique();
}

export function toJobView(doc: Doc<"containerJobs">): JobView {
  const { _id, _creationTime, negPriority, ...fields } = doc;
  return fields;
}

export function toHostView(doc: Doc<"executorHosts">): HostView {
  const { _id, _creationTime, ...fields } = doc;
  return fields;
}

export function toTemplateView(doc: Doc<"envTemplates">): TemplateView {
  const { _id, _creationTime, ...fields } = doc;
  return fields;
}

// Moves a host's job count; a host that was deleted has nothing to count. Taking a slot on
// a full host fails with HOST_FULL: max_concurrent_jobs is a limit, not a hint.
export async function moveHostCount(ctx: MutationCtx, hostId: string | undefined, delta: number) {
  if (hostId === undefined) return;
  const host = await hostDoc(ctx, hostId);
  if (!host) return;
  if (delta > 0 && host.currentJobCount >= host.maxConcurrentJobs) {
    fail("HOST_FULL", `executor host ${host.name} is full (${host.maxConcurrentJobs} jobs)`);
  }
  await ctx.db.patch(host._id, { currentJobCount: Math.max(0, host.currentJobCount + delta) });
}

// Mirrors _count_hosts in local_containers.py.
export async function countHosts(
  ctx: MutationCtx,
  before: { status: ContainerStatus; hostId?: string },
  after: { status: ContainerStatus; hostId?: string },
) {
  const was = isActive(before.status);
  const now = isActive(after.status);
  const moved = before.hostId !== after.hostId;
  // Take the new slot first: if the host is full, nothing has changed yet.
  if (now && (!was || moved)) await moveHostCount(ctx, after.hostId, +1);
  if (was && (!now || moved)) await moveHostCount(ctx, before.hostId, -1);
}

// Mirrors runs_untrusted / isolation_refusal in src/services/domain/containers.py (same
// words): the local executor isolates nothing, so a non-admin's job runs there only when the
// host's config says allow_untrusted_jobs.
export function isolationRefusal(
  host: { name: string; executorType: string; executorConfig?: unknown },
  untrusted: boolean | undefined,
): string | null {
  const config = (host.executorConfig ?? {}) as Record<string, unknown>;
  if (!untrusted || host.executorType !== "local" || Boolean(config.allow_untrusted_jobs)) {
    return null;
  }
  return (
    `host ${host.name} runs commands without isolation (local executor) and this is a` +
    " non-admin's job; only admins' jobs may run there, unless the host's executor_config" +
    " sets allow_untrusted_jobs"
  );
}

// CONFLICT when the host may not run a job of this kind (a host that is gone runs nothing).
export async function checkIsolation(
  ctx: QueryCtx,
  hostId: string | undefined,
  untrusted: boolean | undefined,
) {
  if (hostId === undefined || !untrusted) return;
  const host = await hostDoc(ctx, hostId);
  const refusal = host ? isolationRefusal(host, untrusted) : null;
  if (refusal !== null) fail("CONFLICT", refusal);
}

export async function checkNameFree(
  ctx: QueryCtx,
  table: "executorHosts" | "envTemplates",
  name: string,
  selfId?: string,
) {
  const found = await ctx.db
    .query(table)
    .withIndex("by_name", (q) => q.eq("name", name))
    .first();
  if (found && found._id !== selfId) fail("CONFLICT", `'${name}' already exists`);
}
