import { convexTest } from "convex-test";
import { afterEach, beforeEach, describe, expect, test, vi } from "vitest";
import { internal } from "./_generated/api";
import { COUNT_CAP } from "./model/containerJobs";
import { MAX_BATCH, NewJob, TRANSITIONS } from "./model/containers";
import { HOLD_TTL_MS } from "./model/quotas";
import schema from "./schema";
import { modules, newContainerJob } from "./test.setup";

function setup() {
  return convexTest({ schema, modules, transactionLimits: true });
}
type T = ReturnType<typeof setup>;

let counter = 0;

function newJob(extra: Partial<NewJob> = {}): NewJob {
  return newContainerJob(`j${++counter}`, extra);
}

function newHost(hostId = "h1", extra: Record<string, unknown> = {}) {
  return {
    hostId,
    name: `host-${hostId}`,
    hostType: "unix" as const,
    connectionString: "",
    tlsEnabled: false,
    tlsVerify: false,
    isActive: true,
    autoPullImages: true,
    executorType: "mock" as const,
    executorConfig: {},
    maxConcurrentJobs: 10,
    weight: 100,
    currentJobCount: 0,
    healthCheckFailures: 0,
    createdAt: Date.now(),
    updatedAt: Date.now(),
    ...extra,
  };
}

async function create(t: T, ...jobs: NewJob[]) {
  await t.mutation(internal.containerJobs.createBatch, { jobs });
  return jobs.map((job) => job.jobId);
}

async function withHost(t: T, ...jobs: NewJob[]) {
  await t.mutation(internal.executorHosts.create, { host: newHost() });
  return create(t, ...jobs);
}

async function move(t: T, jobId: string, status: string, extra: Record<string, unknown> = {}) {
  return t.mutation(internal.containerJobs.transition, { jobId, status, ...extra } as never);
}

async function hostCount(t: T, hostId = "h1") {
  return (await t.query(internal.executorHosts.get, { hostId }))!.currentJobCount;
}

async function expectCode(promise: Promise<unknown>, code: string) {
  await expect(promise).rejects.toMatchObject({ data: expect.objectContaining({ code }) });
}

describe("create and read", () => {
  test("round-trips a job and rejects duplicate ids", async () => {
    const t = setup();
    const job = newJob({ executorMetadata: { a: [1, { b: 2 }] }, memoryLimit: 64 });
    await t.mutation(internal.containerJobs.create, { job });
    expect(await t.query(internal.containerJobs.get, { jobId: job.jobId })).toEqual(job);
    expect(await t.query(internal.containerJobs.get, { jobId: "nope" })).toBeNull();
    await expectCode(t.mutation(internal.containerJobs.create, { job }), "CONFLICT");
  });

  test("a batch is all or nothing", async () => {
    const t = setup();
    const [a, b] = [newJob(), newJob()];
    await expectCode(create(t, a, b, { ...a }), "CONFLICT");
    expect(await t.query(internal.containerJobs.getMany, { jobIds: [a.jobId, b.jobId] })).toEqual(
      [],
    );
    await create(t, a, b);
    await expectCode(create(t, newJob(), { ...b }), "CONFLICT");
    expect(await t.query(internal.containerJobs.list, { limit: 10 })).toHaveLength(2);
  });

  test("a batch larger than MAX_BATCH is refused", async () => {
    const t = setup();
    const jobs = Array.from({ length: MAX_BATCH + 1 }, () => newJob());
    await expectCode(create(t, ...jobs), "TOO_LARGE");
  });

  test("validators reject bad arguments", async () => {
    const t = setup();
    await expect(create(t, newJob({ status: "done" as never }))).rejects.toThrow(/Validator/);
    await expect(create(t, newJob({ executorType: "k8s" as never }))).rejects.toThrow(/Validator/);
    await expect(create(t, { ...newJob(), negPriority: 1 } as never)).rejects.toThrow(/Validator/);
    const [id] = await create(t, newJob());
    await expect(move(t, id, "finished")).rejects.toThrow(/Validator/);
    await expect(move(t, id, "queued", { fields: { jobId: "x" } })).rejects.toThrow(/Validator/);
    await expect(move(t, id, "queued", { fields: { exitCode: "0" } })).rejects.toThrow(/Validator/);
    await expect(t.query(internal.containerJobs.list, { limit: "5" } as never)).rejects.toThrow(
      /Validator/,
    );
  });

  test("getMany keeps order and skips missing ids", async () => {
    const t = setup();
    const [a, , c] = await create(t, newJob(), newJob(), newJob());
    const found = await t.query(internal.containerJobs.getMany, { jobIds: [c, "nope", a] });
    expect(found.map((job) => job.jobId)).toEqual([c, a]);
  });

  test("list is newest first and filters", async () => {
    const t = setup();
    const now = Date.now();
    const ids = await create(
      t,
      newJob({ createdAt: now - 3, createdBy: "alice", bulkJobId: "bj" }),
      newJob({ createdAt: now - 2, createdBy: "bob", hostId: "h2" }),
      newJob({ createdAt: now - 1, createdBy: "alice" }),
    );
    await move(t, ids[0], "cancelled");
    const list = async (args: Record<string, unknown>) =>
      (await t.query(internal.containerJobs.list, { limit: 50, ...args })).map((j) => j.jobId);
    expect(await list({})).toEqual([ids[2], ids[1], ids[0]]);
    expect(await list({ limit: 1 })).toEqual([ids[2]]);
    expect(await list({ createdBy: "alice" })).toEqual([ids[2], ids[0]]);
    expect(await list({ hostId: "h2" })).toEqual([ids[1]]);
    expect(await list({ bulkJobId: "bj", status: "cancelled" })).toEqual([ids[0]]);
    expect(await list({ status: "pending", createdBy: "bob" })).toEqual([ids[1]]);
  });
});

describe("claim and leases", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  test("claims by priority then age, each job once", async () => {
    const t = setup();
    const now = Date.now();
    const [low, old, young, high] = await withHost(
      t,
      newJob({ priority: -5, createdAt: now - 9 }),
      newJob({ createdAt: now - 5 }),
      newJob({ createdAt: now - 1 }),
      newJob({ priority: 10 }),
    );
    const claim = async (owner: string, limit: number) =>
      (await t.mutation(internal.containerJobs.claim, { owner, leaseMs: 30_000, limit })).map(
        (job) => [job.jobId, job.leaseOwner],
      );
    expect(await claim("p1", 3)).toEqual([
      [high, "p1"],
      [old, "p1"],
      [young, "p1"],
    ]);
    expect(await claim("p2", 10)).toEqual([[low, "p2"]]);
    expect(await claim("p3", 10)).toEqual([]);
  });

  test("an expired lease is claimable again; the old owner's heartbeat conflicts", async () => {
    const t = setup();
    const [jobId] = await withHost(t, newJob());
    await t.mutation(internal.containerJobs.claim, { owner: "dead", leaseMs: 1000, limit: 1 });
    await move(t, jobId, "launching");
    await move(t, jobId, "running");
    const claim = (owner: string) =>
      t.mutation(internal.containerJobs.claim, { owner, leaseMs: 30_000, limit: 1 });
    expect(await claim("alive")).toEqual([]);
    vi.advanceTimersByTime(1001);
    const [again] = await claim("alive");
    expect(again).toMatchObject({ jobId, status: "running", leaseOwner: "alive" });
    await expectCode(
      t.mutation(internal.containerJobs.heartbeat, { jobId, owner: "dead", leaseMs: 1000 }),
      "CONFLICT",
    );
    expect(await hostCount(t)).toBe(1);
  });

  test("heartbeat extends, release frees, terminal jobs report their status", async () => {
    const t = setup();
    const [jobId] = await withHost(t, newJob());
    await t.mutation(internal.containerJobs.claim, { owner: "p1", leaseMs: 1000, limit: 1 });
    vi.advanceTimersByTime(900);
    const beat = (owner: string) =>
      t.mutation(internal.containerJobs.heartbeat, { jobId, owner, leaseMs: 1000 });
    expect(await beat("p1")).toBe("pending");
    vi.advanceTimersByTime(900);
    const claim = () =>
      t.mutation(internal.containerJobs.claim, { owner: "p2", leaseMs: 1000, limit: 1 });
    expect(await claim()).toEqual([]);
    await t.mutation(internal.containerJobs.release, { jobId, owner: "someone" });
    await t.mutation(internal.containerJobs.release, { jobId, owner: "p1" });
    expect(await claim()).toHaveLength(1);
    await move(t, jobId, "cancelled");
    expect(await beat("anyone")).toBe("cancelled");
    const done = await t.query(internal.containerJobs.get, { jobId });
    expect(done).not.toHaveProperty("leaseOwner");
    expect(done).not.toHaveProperty("leaseExpiresAt");
    await expectCode(
      t.mutation(internal.containerJobs.heartbeat, { jobId: "x", owner: "p", leaseMs: 1 }),
      "NOT_FOUND",
    );
    await expectCode(
      t.mutation(internal.containerJobs.release, { jobId: "x", owner: "p" }),
      "NOT_FOUND",
    );
  });
});

describe("transitions", () => {
  test("legal moves apply fields; illegal ones conflict", async () => {
    const t = setup();
    const [jobId] = await withHost(t, newJob({ exitCode: 3 }));
    await move(t, jobId, "launching");
    const running = await move(t, jobId, "running", {
      fields: { startedAt: 5, executionId: "c1" },
      unset: ["exitCode", "dockerImage"],
    });
    // Only optional fields can be cleared.
    expect(running).toMatchObject({ status: "running", startedAt: 5, executionId: "c1" });
    expect(running.exitCode).toBeUndefined();
    expect(running.dockerImage).toBe("busybox");
    const done = await move(t, jobId, "completed", { fields: { exitCode: 0 } });
    expect(done.completedAt).toBeGreaterThan(0);
    await expectCode(move(t, jobId, "running"), "CONFLICT");
    await expectCode(move(t, "missing", "queued"), "NOT_FOUND");
  });

  test("every pair follows the status table", async () => {
    const t = setup();
    for (const [from, targets] of Object.entries(TRANSITIONS)) {
      for (const to of ["queued", "running", "completed"] as const) {
        const [jobId] = await create(t, newJob({ status: from as NewJob["status"] }));
        const attempt = move(t, jobId, to);
        if (from === to || targets.includes(to)) await attempt;
        else await expectCode(attempt, "CONFLICT");
      }
    }
  });

  test("a report id applies once", async () => {
    const t = setup();
    const [jobId] = await withHost(t, newJob());
    await move(t, jobId, "launching", { reportId: "r1" });
    await move(t, jobId, "running", { reportId: "r2" });
    const again = await move(t, jobId, "launching", { reportId: "r1" });
    expect(again.status).toBe("running");
    expect(await hostCount(t)).toBe(1);
    // A report for a missing job is not recorded, so a retry after creating it applies.
    await expectCode(move(t, "later", "queued", { reportId: "r3" }), "NOT_FOUND");
    const reports = await t.run((ctx) => ctx.db.query("containerReports").collect());
    expect(reports.map((r) => r.reportId).sort()).toEqual(["r1", "r2"]);
  });

  test("host counts follow launching/running jobs across hosts", async () => {
    const t = setup();
    const [a, b] = await withHost(t, newJob(), newJob());
    await t.mutation(internal.executorHosts.create, { host: newHost("h2") });
    await move(t, a, "launching");
    await move(t, a, "running");
    await move(t, b, "launching");
    expect(await hostCount(t)).toBe(2);
    await move(t, b, "running", { fields: { hostId: "h2" } });
    expect([await hostCount(t), await hostCount(t, "h2")]).toEqual([1, 1]);
    await move(t, a, "completed");
    await move(t, b, "timeout");
    expect([await hostCount(t), await hostCount(t, "h2")]).toEqual([0, 0]);
  });

  test("transitionMany applies the legal moves and reports the rest", async () => {
    const t = setup();
    const [pending, done] = await withHost(t, newJob(), newJob());
    await move(t, done, "failed");
    const result = await t.mutation(internal.containerJobs.transitionMany, {
      jobIds: [pending, done, "missing", pending],
      status: "cancelled",
      fields: { statusMessage: "bulk" },
    });
    expect(result.updated.map((j) => [j.jobId, j.status, j.statusMessage])).toEqual([
      [pending, "cancelled", "bulk"],
    ]);
    expect(result.errors.map((e) => e.jobId)).toEqual([done, "missing"]);
    expect(result.errors[1].error).toBe("not found");
    const kept = await t.query(internal.containerJobs.get, { jobId: done });
    expect(kept).toMatchObject({ status: "failed", statusMessage: "" });
  });

  test("migrate moves only unstarted jobs to an existing host", async () => {
    const t = setup();
    const [waiting, active] = await withHost(t, newJob(), newJob());
    await t.mutation(internal.executorHosts.create, { host: newHost("h2") });
    await move(t, active, "launching");
    const result = await t.mutation(internal.containerJobs.migrate, {
      jobIds: [waiting, active, "missing"],
      hostId: "h2",
      executorType: "docker",
    });
    expect(result.moved).toEqual([waiting]);
    expect(result.errors.map((e) => e.jobId)).toEqual([active, "missing"]);
    expect(await t.query(internal.containerJobs.get, { jobId: waiting })).toMatchObject({
      hostId: "h2",
      executorType: "docker",
    });
    await expectCode(
      t.mutation(internal.containerJobs.migrate, {
        jobIds: [waiting],
        hostId: "x",
        executorType: "docker",
      }),
      "NOT_FOUND",
    );
  });
});

describe("the isolation rule", () => {
  const bare = () => newHost("bare", { executorType: "local" });
  const sandbox = () =>
    newHost("sandbox", { executorType: "local", executorConfig: { allow_untrusted_jobs: true } });

  test("a non-admin's job is never written to a host that does not isolate it", async () => {
    const t = setup();
    await t.mutation(internal.executorHosts.create, { host: bare() });
    const users = newJob({ hostId: "bare", executorType: "local", untrusted: true });
    await expectCode(create(t, users), "CONFLICT");
    await expectCode(
      t.mutation(internal.containerJobs.createCopies, { job: users, jobIds: ["c1", "c2"] }),
      "CONFLICT",
    );
    expect(await t.query(internal.containerJobs.getMany, { jobIds: [users.jobId, "c1"] })).toEqual(
      [],
    );
    await create(t, newJob({ hostId: "bare", executorType: "local" })); // an admin's job
  });

  test("migrate and transitions refuse it per job; a sandbox that allows it takes it", async () => {
    const t = setup();
    await t.mutation(internal.executorHosts.create, { host: bare() });
    await t.mutation(internal.executorHosts.create, { host: sandbox() });
    const [users, admins] = await withHost(t, newJob({ untrusted: true }), newJob());
    const result = await t.mutation(internal.containerJobs.migrate, {
      jobIds: [users, admins],
      hostId: "bare",
      executorType: "local",
    });
    expect(result.moved).toEqual([admins]);
    expect(result.errors[0].error).toContain("host host-bare runs commands without isolation");
    await expectCode(move(t, users, "queued", { fields: { hostId: "bare" } }), "CONFLICT");
    expect(await t.query(internal.containerJobs.get, { jobId: users })).toMatchObject({
      hostId: "h1",
      status: "pending",
    });
    const moved = await t.mutation(internal.containerJobs.migrate, {
      jobIds: [users],
      hostId: "sandbox",
      executorType: "local",
    });
    expect(moved.moved).toEqual([users]);
  });
});

describe("removal and counts", () => {
  test("remove takes finished jobs, or any when forced, freeing host slots", async () => {
    const t = setup();
    const [done, active] = await withHost(t, newJob(), newJob());
    await move(t, done, "cancelled");
    await move(t, active, "launching");
    const remove = (jobIds: string[], force: boolean) =>
      t.mutation(internal.containerJobs.remove, { jobIds, force });
    expect(await remove([done, active, "missing"], false)).toEqual([done]);
    expect(await hostCount(t)).toBe(1);
    expect(await remove([active], true)).toEqual([active]);
    expect(await hostCount(t)).toBe(0);
  });

  test("removeFinishedBefore deletes old finished jobs in bounded batches", async () => {
    const t = setup();
    const now = Date.now();
    const old = await create(
      t,
      ...Array.from({ length: 3 }, () => newJob({ createdAt: now - 1000 })),
    );
    const [recent, unfinished] = await create(t, newJob(), newJob({ createdAt: now - 1000 }));
    for (const jobId of [...old, recent]) await move(t, jobId, "failed");
    const sweep = () =>
      t.mutation(internal.containerJobs.removeFinishedBefore, { before: now - 500, limit: 2 });
    expect([await sweep(), await sweep(), await sweep()]).toEqual([2, 1, 0]);
    const left = await t.query(internal.containerJobs.getMany, { jobIds: [recent, unfinished] });
    expect(left).toHaveLength(2);
  });

  test("countByStatus counts per status and says when it capped", async () => {
    const t = setup();
    expect(await t.query(internal.containerJobs.countByStatus, {})).toEqual({
      counts: {},
      truncated: false,
    });
    const [a] = await create(t, newJob(), newJob(), newJob());
    await move(t, a, "queued");
    expect(await t.query(internal.containerJobs.countByStatus, {})).toEqual({
      counts: { pending: 2, queued: 1 },
      truncated: false,
    });
    await t.run(async (ctx) => {
      for (let i = 0; i <= COUNT_CAP; i++) {
        await ctx.db.insert("containerJobs", { ...newJob({ status: "failed" }), negPriority: 0 });
      }
    });
    const capped = await t.query(internal.containerJobs.countByStatus, {});
    expect(capped).toMatchObject({ counts: { failed: COUNT_CAP }, truncated: true });
  });
});

describe("hosts", () => {
  test("ensureDefault inserts only into an empty table", async () => {
    const t = setup();
    const local = newHost("local", { name: "local", executorType: "local" });
    expect(await t.mutation(internal.executorHosts.ensureDefault, { host: local })).toBe(true);
    expect(await t.mutation(internal.executorHosts.ensureDefault, { host: local })).toBe(false);
    expect(await t.query(internal.executorHosts.list, { activeOnly: false })).toHaveLength(1);
  });

  test("create, update, duplicates, list", async () => {
    const t = setup();
    await t.mutation(internal.executorHosts.create, { host: newHost("h1", { costPerHour: 2 }) });
    await t.mutation(internal.executorHosts.create, { host: newHost("h0") });
    await expectCode(
      t.mutation(internal.executorHosts.create, { host: newHost("h9", { name: "host-h1" }) }),
      "CONFLICT",
    );
    await expectCode(
      t.mutation(internal.executorHosts.create, { host: newHost("h1", { name: "x" }) }),
      "CONFLICT",
    );
    const update = (hostId: string, fields: Record<string, unknown>, unset?: string[]) =>
      t.mutation(internal.executorHosts.update, { hostId, fields, unset } as never);
    const updated = await update("h1", { weight: 7, isActive: false }, ["costPerHour"]);
    expect(updated).toMatchObject({ weight: 7, isActive: false });
    expect(updated).not.toHaveProperty("costPerHour");
    expect(await update("h1", { name: "host-h1" })).toMatchObject({ name: "host-h1" });
    await expectCode(update("h1", { name: "host-h0" }), "CONFLICT");
    await expectCode(update("nope", { weight: 1 }), "NOT_FOUND");
    await expect(update("h1", { weight: "heavy" })).rejects.toThrow(/Validator/);
    const byName = await t.query(internal.executorHosts.getByName, { name: "host-h1" });
    expect(byName?.hostId).toBe("h1");
    expect(await t.query(internal.executorHosts.get, { hostId: "nope" })).toBeNull();
    const list = async (activeOnly: boolean) =>
      (await t.query(internal.executorHosts.list, { activeOnly })).map((h) => h.hostId);
    expect(await list(false)).toEqual(["h0", "h1"]);
    expect(await list(true)).toEqual(["h0"]);
  });

  test("recordHealth counts failures and resets on success", async () => {
    const t = setup();
    await t.mutation(internal.executorHosts.create, { host: newHost() });
    const record = (healthy: boolean) =>
      t.mutation(internal.executorHosts.recordHealth, { hostId: "h1", healthy });
    await record(false);
    await record(false);
    expect((await record(false)).healthCheckFailures).toBe(3);
    const healthy = await record(true);
    expect(healthy.healthCheckFailures).toBe(0);
    expect(healthy.lastHealthCheck).toBeGreaterThan(0);
    await expectCode(
      t.mutation(internal.executorHosts.recordHealth, { hostId: "nope", healthy: true }),
      "NOT_FOUND",
    );
  });

  test("recordHealth marks a host unhealthy at the threshold, until a probe passes", async () => {
    const t = setup();
    await t.mutation(internal.executorHosts.create, { host: newHost() });
    const record = (healthy: boolean, extra: object = {}) =>
      t.mutation(internal.executorHosts.recordHealth, {
        hostId: "h1",
        healthy,
        threshold: 2,
        ...extra,
      });
    const probed = await record(false, { error: "refused" });
    expect(probed).toMatchObject({
      healthy: true,
      healthCheckFailures: 1,
      lastHealthError: "refused",
    });
    const launch = await record(false, { error: "launch failed", probe: false });
    expect(launch).toMatchObject({ healthy: false, lastHealthError: "launch failed" });
    expect(launch.lastHealthCheck).toBe(probed.lastHealthCheck); // only probes move it
    const back = await record(true);
    expect(back).toMatchObject({ healthy: true, healthCheckFailures: 0 });
    expect(back.lastHealthError).toBeUndefined();
  });

  test("claimProbes hands each due active host out once per interval", async () => {
    const t = setup();
    await t.mutation(internal.executorHosts.create, { host: newHost("h1") });
    await t.mutation(internal.executorHosts.create, { host: newHost("h2", { isActive: false }) });
    const claim = async () => {
      const args = { intervalMs: 60_000, limit: 10 };
      return (await t.mutation(internal.executorHosts.claimProbes, args)).map((h) => h.hostId);
    };
    expect(await claim()).toEqual(["h1"]);
    expect(await claim()).toEqual([]);
  });
});

describe("host counts", () => {
  test("adjustCount moves by one within 0..maxConcurrentJobs", async () => {
    const t = setup();
    await t.mutation(internal.executorHosts.create, {
      host: { ...newHost(), maxConcurrentJobs: 2 },
    });
    const adjust = async (delta: 1 | -1) =>
      (await t.mutation(internal.executorHosts.adjustCount, { hostId: "h1", delta }))
        .currentJobCount;
    expect([await adjust(1), await adjust(1), await adjust(1)]).toEqual([1, 2, 2]);
    expect([await adjust(-1), await adjust(-1), await adjust(-1)]).toEqual([1, 0, 0]);
    await expectCode(
      t.mutation(internal.executorHosts.adjustCount, { hostId: "nope", delta: 1 }),
      "NOT_FOUND",
    );
  });
});

describe("templates", () => {
  const template = (templateId: string, name: string) => ({
    templateId,
    name,
    description: "",
    environmentVariablesText: "A=1\n",
    supportedExecutors: ["docker" as const],
    createdAt: Date.now(),
    updatedAt: Date.now(),
  });

  test("create, update, get, getByName, list", async () => {
    const t = setup();
    await t.mutation(internal.envTemplates.create, { template: template("t1", "base") });
    await t.mutation(internal.envTemplates.create, { template: template("t0", "a-first") });
    await expectCode(
      t.mutation(internal.envTemplates.create, { template: template("t2", "base") }),
      "CONFLICT",
    );
    await expectCode(
      t.mutation(internal.envTemplates.create, { template: template("t1", "other") }),
      "CONFLICT",
    );
    const update = (templateId: string, fields: Record<string, unknown>) =>
      t.mutation(internal.envTemplates.update, { templateId, fields } as never);
    expect(await update("t1", { environmentVariablesText: "B=2\n" })).toMatchObject({
      environmentVariablesText: "B=2\n",
    });
    await expectCode(update("t1", { name: "a-first" }), "CONFLICT");
    await expectCode(update("nope", { name: "x" }), "NOT_FOUND");
    await expect(update("t1", { supportedExecutors: ["k8s"] })).rejects.toThrow(/Validator/);
    expect(await t.query(internal.envTemplates.get, { templateId: "t1" })).toMatchObject({
      name: "base",
    });
    expect(await t.query(internal.envTemplates.getByName, { name: "nope" })).toBeNull();
    const names = (await t.query(internal.envTemplates.list, {})).map((x) => x.name);
    expect(names).toEqual(["a-first", "base"]);
  });
});

describe("unfinished job quota", () => {
  const alice = (extra: Partial<NewJob> = {}) => newJob({ createdBy: "alice", ...extra });

  test("a batch over the cap is refused whole, naming the figures", async () => {
    const t = setup();
    const quota = { maxUnfinished: 3, hold: 0 };
    await withHost(t, alice({ status: "completed" }));
    await t.mutation(internal.containerJobs.createBatch, { jobs: [alice(), alice()], quota });
    const over = [alice(), alice()];
    await expect(
      t.mutation(internal.containerJobs.createBatch, { jobs: over, quota }),
    ).rejects.toMatchObject({
      data: expect.objectContaining({
        code: "CONTAINER_QUOTA",
        userId: "alice",
        maximum: 3,
        usage: 2,
        requested: 2,
      }),
    });
    const ids = over.map((job) => job.jobId);
    expect(await t.query(internal.containerJobs.getMany, { jobIds: ids })).toEqual([]);
  });

  test("a creator's reservation lapses after HOLD_TTL_MS", async () => {
    vi.useFakeTimers();
    try {
      const t = setup();
      await withHost(t);
      const hold = { maxUnfinished: 4, holdId: "h", hold: 3 };
      const model = alice();
      const first = { job: model, jobIds: ["a"], quota: hold };
      await t.mutation(internal.containerJobs.createCopies, first);
      const other = { job: model, jobIds: ["b", "c"], quota: { maxUnfinished: 4, hold: 0 } };
      await expectCode(t.mutation(internal.containerJobs.createCopies, other), "CONTAINER_QUOTA");
      vi.advanceTimersByTime(HOLD_TTL_MS + 1);
      await t.mutation(internal.containerJobs.createCopies, other);
    } finally {
      vi.useRealTimers();
    }
  });
});
