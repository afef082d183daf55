// The browser-facing queries bulkJobs:getJob and bulkJobs:getUserJobs: who may see what, and
// what the progress view contains.
import { convexTest } from "convex-test";
import { describe, expect, test, vi } from "vitest";
import { api, internal } from "./_generated/api";
import * as bulkJobs from "./bulkJobs";
import schema from "./schema";
import { modules } from "./test.setup";

const LIMIT = { maxJobs: 1000, windowMs: 3_600_000 };

function setup() {
  return convexTest({ schema, modules, transactionLimits: true });
}
type T = ReturnType<typeof setup>;

async function create(
  t: T,
  userId: string,
  stages = ["content_fetch", "export_generation"],
  jobData: Record<string, unknown> = {},
) {
  return t.mutation(internal.bulkJobs.create, {
    jobType: "demo",
    userId,
    jobData: { secret: "not for browsers", ...jobData },
    stages,
    priority: "normal",
    ...LIMIT,
  });
}

// A job half way through: first stage done, second processing, claimed by a runner, one export.
async function busyJob(t: T, userId: string) {
  const jobId = await create(t, userId);
  await t.mutation(internal.bulkJobs.claim, { owner: "runner-7", leaseMs: 60_000, jobTypes: ["demo"], limit: 1, jobId });
  await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "processing", updates: { internal: 1 } });
  await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "content_fetch", itemsTotal: 10 });
  await t.mutation(internal.bulkJobs.completeStage, { jobId, stage: "content_fetch", itemsCompleted: 9, itemsFailed: 1 });
  await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "export_generation", itemsTotal: 4 });
  await t.mutation(internal.bulkJobs.updateStageProgress, { jobId, stage: "export_generation", progress: 0.5, itemsCompleted: 2 });
  await t.mutation(internal.bulkJobs.addExport, {
    exportId: "exp1", jobId, userId, format: "csv", filename: "out.csv", relativePath: `${jobId}/out.csv`,
    contentType: "text/csv", sizeBytes: 42, sha256: "ab".repeat(32), createdAt: 1000, expiresAt: 2000,
  });
  return jobId;
}

const JOB_FIELDS = [
  "jobId", "jobType", "status", "priority", "progress", "currentStage", "failedStage", "itemsTotal", "itemsCompleted",
  "itemsFailed", "errorMessage", "estimatedDurationMinutes", "createdAt", "updatedAt", "startedAt",
  "completedAt", "stages", "exports",
].sort();
const STAGE_FIELDS = [
  "name", "status", "progress", "itemsTotal", "itemsCompleted", "itemsFailed", "startedAt", "completedAt",
  "errorMessage", "metadata",
].sort();
const EXPORT_FIELDS = [
  "exportId", "format", "filename", "contentType", "sizeBytes", "sha256", "createdAt", "expiresAt",
].sort();

describe("getJob", () => {
  test("the owner sees the progress view of their job", async () => {
    const t = setup();
    const jobId = await busyJob(t, "alice");
    const job = await t.withIdentity({ subject: "alice" }).query(api.bulkJobs.getJob, { jobId });
    // The job's numbers are its items (those of content_fetch); writing the export is
    // bookkeeping, shown on its stage only.
    expect(job).toMatchObject({
      jobId, jobType: "demo", status: "exporting", priority: "normal", progress: 0.75,
      currentStage: "export_generation", failedStage: null, itemsTotal: 10, itemsCompleted: 9,
      itemsFailed: 1, errorMessage: null, completedAt: null,
    });
    expect(job!.stages).toMatchObject([
      { name: "content_fetch", status: "completed", progress: 1, itemsTotal: 10, itemsCompleted: 9, itemsFailed: 1 },
      { name: "export_generation", status: "processing", progress: 0.5, itemsTotal: 4, itemsCompleted: 2, completedAt: null },
    ]);
    expect(job!.exports).toEqual([
      { exportId: "exp1", format: "csv", filename: "out.csv", contentType: "text/csv", sizeBytes: 42,
        sha256: "ab".repeat(32), createdAt: 1000, expiresAt: 2000 },
    ]);
  });

  test("exactly the progress fields, nothing internal", async () => {
    const t = setup();
    const jobId = await busyJob(t, "alice");
    const job = (await t.withIdentity({ subject: "alice" }).query(api.bulkJobs.getJob, { jobId }))!;
    expect(Object.keys(job).sort()).toEqual(JOB_FIELDS);
    for (const stage of job.stages) expect(Object.keys(stage).sort()).toEqual(STAGE_FIELDS);
    expect(Object.keys(job.exports[0]).sort()).toEqual(EXPORT_FIELDS);
    const text = JSON.stringify(job);
    for (const leaked of ["runner-7", "leaseOwner", "leaseExpiresAt", "attempts", "priorityRank",
      "relativePath", "userId", "not for browsers", "jobData", "results", "_id", "_creationTime"]) {
      expect(text).not.toContain(leaked);
    }
  });

  test("another user's job and a missing job both read as null", async () => {
    const t = setup();
    const jobId = await busyJob(t, "alice");
    const bob = t.withIdentity({ subject: "bob" });
    expect(await bob.query(api.bulkJobs.getJob, { jobId })).toBeNull();
    expect(await bob.query(api.bulkJobs.getJob, { jobId: "nope" })).toBeNull();
  });

  test("the subject decides, not the name or email of the identity", async () => {
    const t = setup();
    const jobId = await create(t, "alice");
    const impostor = t.withIdentity({ subject: "mallory", name: "alice", email: "alice" });
    expect(await impostor.query(api.bulkJobs.getJob, { jobId })).toBeNull();
  });

  test("without a signed-in identity: null", async () => {
    const t = setup();
    const jobId = await create(t, "alice");
    expect(await t.query(api.bulkJobs.getJob, { jobId })).toBeNull();
  });

  test("a finished job has no current stage and counts skipped stages as done", async () => {
    const t = setup();
    const jobId = await create(t, "alice");
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "processing" });
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "content_fetch" });
    await t.mutation(internal.bulkJobs.completeStage, { jobId, stage: "content_fetch" });
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "failed", errorMessage: "boom" });
    const job = (await t.withIdentity({ subject: "alice" }).query(api.bulkJobs.getJob, { jobId }))!;
    expect(job).toMatchObject({
      status: "failed", currentStage: null, failedStage: null, progress: 0.5, itemsTotal: null, errorMessage: "boom",
    });
    expect(job.completedAt).toEqual(expect.any(Number));
  });

  test("a job failed by its stage names the stage and carries its error", async () => {
    const t = setup();
    const jobId = await create(t, "alice");
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "content_fetch", itemsTotal: 5 });
    await t.mutation(internal.bulkJobs.failStage, { jobId, stage: "content_fetch", errorMessage: "network down" });
    const job = (await t.withIdentity({ subject: "alice" }).query(api.bulkJobs.getJob, { jobId }))!;
    expect(job).toMatchObject({
      status: "failed", currentStage: null, failedStage: "content_fetch", errorMessage: "network down",
    });
  });

  test("the job's numbers are its items: stages over the same items are not added up", async () => {
    const t = setup();
    const stages = ["initialization", "content_fetch", "content_processing", "export_generation"];
    const jobId = await create(t, "alice", stages);
    const alice = t.withIdentity({ subject: "alice" });
    const read = async () => (await alice.query(api.bulkJobs.getJob, { jobId }))!;
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "initialization", itemsTotal: 1 });
    await t.mutation(internal.bulkJobs.completeStage, { jobId, stage: "initialization", itemsCompleted: 1 });
    // Initialization is bookkeeping: no items yet.
    expect(await read()).toMatchObject({ itemsTotal: null, itemsCompleted: 0, currentStage: "content_fetch" });
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "content_fetch", itemsTotal: 40 });
    await t.mutation(internal.bulkJobs.updateStageProgress, { jobId, stage: "content_fetch", progress: 0.5, itemsCompleted: 18, itemsFailed: 2 });
    expect(await read()).toMatchObject({ itemsTotal: 40, itemsCompleted: 18, itemsFailed: 2, currentStage: "content_fetch" });
    await t.mutation(internal.bulkJobs.completeStage, { jobId, stage: "content_fetch", itemsCompleted: 38, itemsFailed: 2 });
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "content_processing", itemsTotal: 40 });
    expect(await read()).toMatchObject({ itemsTotal: 40, itemsCompleted: 0, itemsFailed: 0 });
    await t.mutation(internal.bulkJobs.completeStage, { jobId, stage: "content_processing", itemsCompleted: 37, itemsFailed: 3 });
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "export_generation", itemsTotal: 1 });
    await t.mutation(internal.bulkJobs.completeStage, { jobId, stage: "export_generation", itemsCompleted: 1 });
    expect(await read()).toMatchObject({ status: "completed", itemsTotal: 40, itemsCompleted: 37, itemsFailed: 3 });
  });

  test("job data's total_items is the job's total", async () => {
    const t = setup();
    const jobId = await create(t, "alice", ["content_fetch"], { total_items: 50 });
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "content_fetch", itemsTotal: 20 });
    const job = (await t.withIdentity({ subject: "alice" }).query(api.bulkJobs.getJob, { jobId }))!;
    expect(job).toMatchObject({ itemsTotal: 50, itemsCompleted: 0 });
  });
});

describe("getUserJobs", () => {
  test("only the caller's jobs, newest first", async () => {
    vi.useFakeTimers();
    const t = setup();
    const mine = [];
    for (let i = 0; i < 3; i++) {
      mine.push(await create(t, "alice"));
      await create(t, "bob");
      vi.advanceTimersByTime(10);
    }
    vi.useRealTimers();
    const jobs = await t.withIdentity({ subject: "alice" }).query(api.bulkJobs.getUserJobs, {});
    expect(jobs.map((j) => j.jobId)).toEqual([...mine].reverse());
    expect(jobs.every((j) => Object.keys(j).sort().join() === JOB_FIELDS.join())).toBe(true);
  });

  test("bounded: the limit, a default of 20 and a cap of 50", async () => {
    const t = setup();
    for (let i = 0; i < 55; i++) await create(t, "alice", ["only"]);
    const alice = t.withIdentity({ subject: "alice" });
    expect(await alice.query(api.bulkJobs.getUserJobs, { limit: 3 })).toHaveLength(3);
    expect(await alice.query(api.bulkJobs.getUserJobs, {})).toHaveLength(20);
    expect(await alice.query(api.bulkJobs.getUserJobs, { limit: 1000 })).toHaveLength(50);
    expect(await alice.query(api.bulkJobs.getUserJobs, { limit: 0 })).toHaveLength(1);
    expect(await alice.query(api.bulkJobs.getUserJobs, { limit: Number.NaN })).toHaveLength(20);
  });

  test("without a signed-in identity: an empty list", async () => {
    const t = setup();
    await create(t, "alice");
    expect(await t.query(api.bulkJobs.getUserJobs, { limit: 10 })).toEqual([]);
  });
});

test("getJob and getUserJobs are the only public bulkJobs functions", () => {
  const isPublic = (fn: unknown) => (fn as { isPublic?: boolean }).isPublic === true;
  const publicNames = Object.entries(bulkJobs).filter(([, fn]) => isPublic(fn)).map(([name]) => name);
  expect(publicNames.sort()).toEqual(["getJob", "getUserJobs"]);
});
