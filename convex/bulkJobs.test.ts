import { convexTest } from "convex-test";
import { afterEach, beforeEach, describe, expect, test, vi } from "vitest";
import { internal } from "./_generated/api";
import schema from "./schema";
import { modules } from "./test.setup";

const STAGES = ["initialization", "content_fetch"];
const LIMIT = { maxJobs: 1000, windowMs: 3_600_000 };

function setup() {
  return convexTest({ schema, modules, transactionLimits: true });
}
type T = ReturnType<typeof setup>;

async function create(t: T, extra: Record<string, unknown> = {}) {
  return t.mutation(internal.bulkJobs.create, {
    jobType: "demo",
    userId: "u1",
    jobData: { n: 1 },
    stages: STAGES,
    priority: "normal",
    ...LIMIT,
    ...extra,
  } as never);
}

async function started(t: T) {
  const jobId = await create(t);
  await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "processing" });
  await t.mutation(internal.bulkJobs.startStage, { jobId, stage: STAGES[0], itemsTotal: 10 });
  return jobId;
}

async function expectCode(promise: Promise<unknown>, code: string) {
  await expect(promise).rejects.toMatchObject({ data: expect.objectContaining({ code }) });
}

describe("create and read", () => {
  test("creates a pending job with one document per stage", async () => {
    const t = setup();
    const jobId = await create(t, { priority: "high", estimatedDurationMinutes: 3 });
    const job = await t.query(internal.bulkJobs.getJobInternal, { jobId });
    expect(job).toMatchObject({ status: "pending", priority: "high", jobData: { n: 1 } });
    expect(job!.stages.map((s) => [s.name, s.status, s.index])).toEqual([
      ["initialization", "pending", 0],
      ["content_fetch", "pending", 1],
    ]);
    const stageDocs = await t.run((ctx) => ctx.db.query("bulkJobStages").collect());
    expect(stageDocs).toHaveLength(2);
  });

  test("a given id is kept and a duplicate is a conflict", async () => {
    const t = setup();
    expect(await create(t, { jobId: "fixed" })).toBe("fixed");
    await expectCode(create(t, { jobId: "fixed" }), "CONFLICT");
  });

  test("missing job reads as null", async () => {
    const t = setup();
    expect(await t.query(internal.bulkJobs.getJobInternal, { jobId: "nope" })).toBeNull();
  });

  test("validators reject bad arguments", async () => {
    const t = setup();
    await expect(create(t, { priority: "urgent" })).rejects.toThrow(/Validator|priority/);
    await expect(create(t, { stages: "one" })).rejects.toThrow();
    await expect(
      t.mutation(internal.bulkJobs.updateStatus, { jobId: "x", status: "done" } as never),
    ).rejects.toThrow();
  });
});

describe("rate limit", () => {
  test("admits exactly max jobs under 20 concurrent creates", async () => {
    const t = setup();
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, () => create(t, { userId: "busy", maxJobs: 5 })),
    );
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(5);
    const refused = results.filter((r) => r.status === "rejected") as PromiseRejectedResult[];
    expect(refused).toHaveLength(15);
    for (const r of refused) {
      expect(r.reason.data.code).toBe("RATE_LIMITED");
      expect(r.reason.data.retryAfterS).toBeGreaterThanOrEqual(3599);
    }
  });

  test("other users are not limited", async () => {
    const t = setup();
    await create(t, { maxJobs: 1 });
    await expectCode(create(t, { maxJobs: 1 }), "RATE_LIMITED");
    await create(t, { maxJobs: 1, userId: "u2" });
  });
});

describe("status and stages", () => {
  test("status transitions merge updates and set timestamps", async () => {
    const t = setup();
    const jobId = await create(t);
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "processing", updates: { a: 1 } });
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "completed", updates: { b: 2 } });
    const job = await t.query(internal.bulkJobs.getJobInternal, { jobId });
    expect(job!.results).toEqual({ a: 1, b: 2 });
    expect(job!.startedAt).toBeDefined();
    expect(job!.completedAt).toBeDefined();
    await expectCode(
      t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "processing" }),
      "CONFLICT",
    );
    await expectCode(
      t.mutation(internal.bulkJobs.updateStatus, { jobId: "nope", status: "processing" }),
      "NOT_FOUND",
    );
  });

  test("progress is clamped, counts monotonic, completion final", async () => {
    const t = setup();
    const jobId = await started(t);
    const args = { jobId, stage: STAGES[0] };
    expect(
      await t.mutation(internal.bulkJobs.updateStageProgress, {
        ...args, progress: 7, itemsCompleted: 8, itemsFailed: 2, metadata: { k: "v" },
      }),
    ).toBe("initializing");
    await t.mutation(internal.bulkJobs.updateStageProgress, {
      ...args, progress: -1, itemsCompleted: 3, itemsFailed: 1,
    });
    let stage = (await t.query(internal.bulkJobs.getJobInternal, { jobId }))!.stages[0];
    expect([stage.progress, stage.itemsCompleted, stage.itemsFailed]).toEqual([0, 8, 2]);
    await t.mutation(internal.bulkJobs.completeStage, { ...args, itemsCompleted: 10 });
    stage = (await t.query(internal.bulkJobs.getJobInternal, { jobId }))!.stages[0];
    expect(stage).toMatchObject({ status: "completed", progress: 1, itemsCompleted: 10, metadata: { k: "v" } });
    await expectCode(t.mutation(internal.bulkJobs.startStage, args), "CONFLICT");
  });

  test("illegal stage transitions and unknown stages", async () => {
    const t = setup();
    const jobId = await create(t);
    const args = { jobId, stage: STAGES[0] };
    await expectCode(t.mutation(internal.bulkJobs.completeStage, args), "CONFLICT");
    await expectCode(t.mutation(internal.bulkJobs.updateStageProgress, { ...args, progress: 0.1 }), "CONFLICT");
    await expectCode(t.mutation(internal.bulkJobs.startStage, { jobId, stage: "nope" }), "NOT_FOUND");
    await t.mutation(internal.bulkJobs.startStage, args);
    await t.mutation(internal.bulkJobs.failStage, { ...args, errorMessage: "boom", metadata: { e: 1 } });
    const stage = (await t.query(internal.bulkJobs.getJobInternal, { jobId }))!.stages[0];
    expect(stage).toMatchObject({ status: "failed", errorMessage: "boom", metadata: { e: 1 } });
  });

  test("restart keeps counts; a cancelled job takes no progress", async () => {
    const t = setup();
    const jobId = await started(t);
    const args = { jobId, stage: STAGES[0] };
    await t.mutation(internal.bulkJobs.updateStageProgress, { ...args, progress: 0.4, itemsCompleted: 4 });
    await t.mutation(internal.bulkJobs.startStage, { ...args, itemsTotal: 12 });
    let stage = (await t.query(internal.bulkJobs.getJobInternal, { jobId }))!.stages[0];
    expect([stage.itemsCompleted, stage.itemsTotal, stage.progress]).toEqual([4, 12, 0.4]);
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "cancelled", errorMessage: "stop" });
    expect(
      await t.mutation(internal.bulkJobs.updateStageProgress, { ...args, progress: 0.9, itemsCompleted: 9 }),
    ).toBe("cancelled");
    stage = (await t.query(internal.bulkJobs.getJobInternal, { jobId }))!.stages[0];
    expect(stage.itemsCompleted).toBe(4);
    await expectCode(t.mutation(internal.bulkJobs.completeStage, args), "CONFLICT");
  });
});

describe("the job follows its stages", () => {
  const FIVE = ["initialization", "content_fetch", "content_processing", "export_preparation", "export_generation"];
  const job = async (t: T, jobId: string) => (await t.query(internal.bulkJobs.getJobInternal, { jobId }))!;

  test("driven by hand through every stage: initializing, processing, exporting, completed", async () => {
    const t = setup();
    const jobId = await create(t, { stages: FIVE });
    const seen = [];
    for (const stage of FIVE) {
      await t.mutation(internal.bulkJobs.startStage, { jobId, stage, itemsTotal: 3 });
      const running = await job(t, jobId);
      seen.push(running.status);
      expect(running.currentStage).toBe(stage);
      expect(running.startedAt).toBeDefined();
      await t.mutation(internal.bulkJobs.completeStage, { jobId, stage, itemsCompleted: 3 });
    }
    expect(seen).toEqual(["initializing", "processing", "processing", "exporting", "exporting"]);
    const done = await job(t, jobId);
    expect(done).toMatchObject({ status: "completed", currentStage: "export_generation" });
    expect(done.completedAt).toBeDefined();
  });

  test("a stage failure fails the job with its error and stage; a late call is a conflict", async () => {
    const t = setup();
    const jobId = await create(t, { stages: FIVE });
    await t.mutation(internal.bulkJobs.claim, { owner: "w1", leaseMs: 30_000, jobTypes: ["demo"], limit: 1 });
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "content_fetch" });
    await t.mutation(internal.bulkJobs.failStage, { jobId, stage: "content_fetch", errorMessage: "network down" });
    const failed = await job(t, jobId);
    expect(failed).toMatchObject({ status: "failed", errorMessage: "network down", currentStage: "content_fetch" });
    expect(failed.completedAt).toBeDefined();
    expect(failed.leaseOwner).toBeUndefined();
    for (const late of [
      t.mutation(internal.bulkJobs.startStage, { jobId, stage: "content_processing" }),
      t.mutation(internal.bulkJobs.completeStage, { jobId, stage: "content_fetch" }),
      t.mutation(internal.bulkJobs.failStage, { jobId, stage: "initialization", errorMessage: "x" }),
    ]) {
      await expectCode(late, "CONFLICT");
    }
    expect((await job(t, jobId)).status).toBe("failed");
  });

  test("fatal: false fails the stage only; the job completes when nothing is left to run", async () => {
    const t = setup();
    const jobId = await create(t);
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: STAGES[0] });
    await t.mutation(internal.bulkJobs.failStage, { jobId, stage: STAGES[0], errorMessage: "soft", fatal: false });
    expect(await job(t, jobId)).toMatchObject({ status: "initializing" });
    expect((await job(t, jobId)).errorMessage).toBeUndefined();
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: STAGES[1] });
    expect((await job(t, jobId)).status).toBe("processing");
    await t.mutation(internal.bulkJobs.completeStage, { jobId, stage: STAGES[1] });
    expect((await job(t, jobId)).status).toBe("completed");
  });

  test("a cancelled job is never revived by a stage call", async () => {
    const t = setup();
    const jobId = await create(t);
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: STAGES[0] });
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "cancelled" });
    await expectCode(t.mutation(internal.bulkJobs.startStage, { jobId, stage: STAGES[1] }), "CONFLICT");
    await expectCode(t.mutation(internal.bulkJobs.completeStage, { jobId, stage: STAGES[0] }), "CONFLICT");
    expect((await job(t, jobId)).status).toBe("cancelled");
  });
});

describe("leases", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  test("claims by priority then age, never twice", async () => {
    const t = setup();
    const low = await create(t, { priority: "low" });
    vi.advanceTimersByTime(1);
    const normal = await create(t);
    vi.advanceTimersByTime(1);
    const high = await create(t, { priority: "high" });
    const claimed = await t.mutation(internal.bulkJobs.claim, {
      owner: "w1", leaseMs: 30_000, jobTypes: ["demo"], limit: 3,
    });
    expect(claimed.map((j) => j.jobId)).toEqual([high, normal, low]);
    expect(claimed.every((j) => j.leaseOwner === "w1" && j.attempts === 1)).toBe(true);
    expect(
      await t.mutation(internal.bulkJobs.claim, { owner: "w2", leaseMs: 30_000, jobTypes: ["demo"], limit: 3 }),
    ).toEqual([]);
  });

  test("unregistered types and hand-driven jobs are never claimed", async () => {
    const t = setup();
    await create(t, { jobType: "other" });
    const manual = await create(t);
    await t.mutation(internal.bulkJobs.updateStatus, { jobId: manual, status: "processing" });
    expect(
      await t.mutation(internal.bulkJobs.claim, { owner: "w", leaseMs: 1000, jobTypes: ["demo"], limit: 5 }),
    ).toEqual([]);
  });

  test("an expired lease is reclaimed; the old owner's heartbeat conflicts", async () => {
    const t = setup();
    const jobId = await create(t);
    await t.mutation(internal.bulkJobs.claim, { owner: "dead", leaseMs: 300, jobTypes: ["demo"], limit: 1 });
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "processing" });
    const claimArgs = { owner: "alive", leaseMs: 30_000, jobTypes: ["demo"], limit: 1 };
    expect(await t.mutation(internal.bulkJobs.claim, claimArgs)).toEqual([]);
    vi.advanceTimersByTime(500);
    const [again] = await t.mutation(internal.bulkJobs.claim, claimArgs);
    expect(again).toMatchObject({ jobId, leaseOwner: "alive", attempts: 2 });
    await expectCode(
      t.mutation(internal.bulkJobs.heartbeat, { jobId, owner: "dead", leaseMs: 1000 }),
      "CONFLICT",
    );
    expect(await t.mutation(internal.bulkJobs.heartbeat, { jobId, owner: "alive", leaseMs: 1000 })).toBe(
      "processing",
    );
  });

  test("release hands an unfinished job back at once", async () => {
    const t = setup();
    const jobId = await create(t);
    await t.mutation(internal.bulkJobs.claim, { owner: "w1", leaseMs: 30_000, jobTypes: ["demo"], limit: 1 });
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "processing" });
    await t.mutation(internal.bulkJobs.release, { jobId, owner: "other" });
    expect((await t.query(internal.bulkJobs.getJobInternal, { jobId }))!.leaseOwner).toBe("w1");
    await t.mutation(internal.bulkJobs.release, { jobId, owner: "w1" });
    vi.advanceTimersByTime(1);
    const [again] = await t.mutation(internal.bulkJobs.claim, {
      owner: "w2", leaseMs: 30_000, jobTypes: ["demo"], limit: 1, jobId,
    });
    expect(again.leaseOwner).toBe("w2");
  });

  test("a finished job keeps no lease and reports its status to heartbeats", async () => {
    const t = setup();
    const jobId = await create(t);
    await t.mutation(internal.bulkJobs.claim, { owner: "w1", leaseMs: 30_000, jobTypes: ["demo"], limit: 1 });
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "cancelled" });
    expect(await t.mutation(internal.bulkJobs.heartbeat, { jobId, owner: "w1", leaseMs: 1 })).toBe("cancelled");
    const job = await t.query(internal.bulkJobs.getJobInternal, { jobId });
    expect(job!.leaseOwner).toBeUndefined();
  });
});

describe("lists and exports", () => {
  test("user jobs are newest first, filtered and bounded", async () => {
    vi.useFakeTimers();
    const t = setup();
    const ids = [];
    for (let i = 0; i < 4; i++) {
      ids.push(await create(t));
      vi.advanceTimersByTime(10);
    }
    await create(t, { userId: "u2" });
    await t.mutation(internal.bulkJobs.updateStatus, { jobId: ids[0], status: "cancelled" });
    const all = await t.query(internal.bulkJobs.getUserJobsInternal, { userId: "u1", limit: 500 });
    expect(all.map((j) => j.jobId)).toEqual([...ids].reverse());
    const two = await t.query(internal.bulkJobs.getUserJobsInternal, { userId: "u1", limit: 2 });
    expect(two).toHaveLength(2);
    const cancelled = await t.query(internal.bulkJobs.getUserJobsInternal, { userId: "u1", status: "cancelled", limit: 10 });
    expect(cancelled.map((j) => j.jobId)).toEqual([ids[0]]);
    const recent = await t.query(internal.bulkJobs.getUserRecentJobs, { userId: "u1", windowMs: 25 });
    expect(recent.map((j) => j.jobId)).toEqual([ids[3], ids[2]]);
    vi.useRealTimers();
  });

  // 205 creates one after another: seconds on a busy machine (vitest.config.ts gives 30 s).
  test("more than a page of jobs is cut to the page size", async () => {
    const t = setup();
    for (let i = 0; i < 205; i++) await create(t, { userId: "many" });
    const page = await t.query(internal.bulkJobs.getUserJobsInternal, { userId: "many", limit: 1000 });
    expect(page).toHaveLength(200);
  });

  test("addExport again under the same id replaces the export", async () => {
    const t = setup();
    const jobId = await create(t);
    const other = await create(t);
    const base = {
      jobId, userId: "u1", format: "json" as const, filename: "e.json", relativePath: `${jobId}/e.json`,
      contentType: "application/json", sizeBytes: 12, sha256: "ab".repeat(32), createdAt: Date.now(),
      exportId: "fixed", expiresAt: Date.now() + 60_000,
    };
    await t.mutation(internal.bulkJobs.addExport, base);
    await t.mutation(internal.bulkJobs.addExport, { ...base, sizeBytes: 99 });
    const job = await t.query(internal.bulkJobs.getJobInternal, { jobId });
    expect(job?.exports.map((e) => [e.exportId, e.sizeBytes])).toEqual([["fixed", 99]]);
    await expectCode(t.mutation(internal.bulkJobs.addExport, { ...base, jobId: other }), "CONFLICT");
  });

  test("addExport with maxUserBytes counts the user's unexpired exports", async () => {
    const t = setup();
    const jobId = await create(t);
    const base = {
      jobId, userId: "u1", format: "json" as const, filename: "e.json", relativePath: `${jobId}/e.json`,
      contentType: "application/json", sizeBytes: 12, sha256: "ab".repeat(32), createdAt: Date.now(),
      exportId: "a", expiresAt: Date.now() + 60_000,
    };
    await t.mutation(internal.bulkJobs.addExport, { ...base, exportId: "old", expiresAt: Date.now() - 1 });
    await t.mutation(internal.bulkJobs.addExport, { ...base, maxUserBytes: 24 });
    await t.mutation(internal.bulkJobs.addExport, { ...base, sizeBytes: 24, maxUserBytes: 24 });
    await expect(
      t.mutation(internal.bulkJobs.addExport, { ...base, exportId: "b", maxUserBytes: 24 }),
    ).rejects.toMatchObject({
      data: expect.objectContaining({ code: "EXPORT_QUOTA", maximum: 24, usage: 24, requested: 12 }),
    });
    expect(await t.query(internal.bulkJobs.getUserExportBytes, { userId: "u1" })).toBe(24);
  });

  test("exports: add, read, expire, remove; stats", async () => {
    const t = setup();
    const jobId = await create(t);
    const base = {
      jobId, userId: "u1", format: "json" as const, filename: "e.json", relativePath: `${jobId}/e.json`,
      contentType: "application/json", sizeBytes: 12, sha256: "ab".repeat(32), createdAt: Date.now(),
    };
    await t.mutation(internal.bulkJobs.addExport, { ...base, exportId: "keep", expiresAt: Date.now() + 60_000 });
    await t.mutation(internal.bulkJobs.addExport, { ...base, exportId: "old", expiresAt: Date.now() - 5 });
    await expectCode(
      t.mutation(internal.bulkJobs.addExport, { ...base, jobId: "nope", exportId: "x", expiresAt: 0 }),
      "NOT_FOUND",
    );
    expect(await t.query(internal.bulkJobs.getExport, { exportId: "keep" })).toMatchObject({ sizeBytes: 12 });
    const expired = await t.query(internal.bulkJobs.getExpiredExports, { limit: 10 });
    expect(expired.map((e) => e.exportId)).toEqual(["old"]);
    expect(await t.mutation(internal.bulkJobs.removeExport, { exportId: "old" })).toBe(true);
    expect(await t.mutation(internal.bulkJobs.removeExport, { exportId: "old" })).toBe(false);
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "completed" });
    await create(t, { jobType: "t2" });
    const stats = await t.query(internal.bulkJobs.getJobStats, {});
    expect(stats).toEqual({
      totalJobs: 2, byStatus: { completed: 1, pending: 1 }, byType: { demo: 1, t2: 1 },
      exports: 1, exportBytes: 12, truncated: false,
    });
  });
});

describe("apiTokens", () => {
  test("create, look up by hash, count, refuse duplicates", async () => {
    const t = setup();
    expect(await t.query(internal.apiTokens.count, {})).toBe(0);
    await t.mutation(internal.apiTokens.create, { tokenHash: "h1", userId: "alice", isAdmin: true, name: "n" });
    await expectCode(
      t.mutation(internal.apiTokens.create, { tokenHash: "h1", userId: "bob", isAdmin: false, name: "d" }),
      "CONFLICT",
    );
    expect(await t.query(internal.apiTokens.getByHash, { tokenHash: "h1" })).toMatchObject({
      userId: "alice", isAdmin: true,
    });
    expect(await t.query(internal.apiTokens.getByHash, { tokenHash: "h2" })).toBeNull();
    expect(await t.query(internal.apiTokens.count, {})).toBe(1);
  });
});
