import { convexTest } from "convex-test";
import { describe, expect, test } from "vitest";
import { internal } from "./_generated/api";
import schema from "./schema";
import { modules, newContainerJob } from "./test.setup";

// Transaction limits on: a step that read or wrote too much would throw here as it would
// on a deployment.
function setup() {
  return convexTest({ schema, modules, transactionLimits: true });
}
type T = ReturnType<typeof setup>;

const LOG = "x".repeat(256 * 1024); // the longest log the service keeps (MAX_LOG_BYTES)

async function cancelledJob(t: T) {
  const jobId = await t.mutation(internal.bulkJobs.create, {
    jobType: "demo",
    userId: "u1",
    jobData: {},
    stages: ["initialization"],
    priority: "normal",
  } as never);
  await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "cancelled" });
  return jobId;
}

describe("deleteJob", () => {
  test("container jobs with the longest logs go in steps that fit a mutation", async () => {
    const t = setup();
    const jobId = await cancelledJob(t);
    // 40 jobs of 768 KiB: 30 MiB, more than one mutation may read.
    for (let batch = 0; batch < 4; batch++) await addContainerJobs(t, jobId, batch);
    const steps = [];
    for (let step = 0; step < 50; step++) {
      const done = await t.mutation(internal.bulkJobs.deleteJob, { jobId, limit: 500 });
      steps.push(done);
      if (done.done) break;
    }
    expect(steps.at(-1)!.done).toBe(true);
    expect(steps.length).toBeGreaterThan(2);
    expect(steps.reduce((sum, step) => sum + step.containerJobs, 0)).toBe(40);
    expect(await t.query(internal.bulkJobs.getJobInternal, { jobId })).toBeNull();
    const left = await t.run((ctx) => ctx.db.query("containerJobs").collect());
    expect(left).toHaveLength(0);
  });
});

// Ten at a time: each insert batch must itself fit a transaction's writes.
async function addContainerJobs(t: T, bulkJobId: string, batch: number) {
  await t.run(async (ctx) => {
    for (let i = 0; i < 10; i++) {
      const job = newContainerJob(`${bulkJobId}-b${batch}-c${i}`, {
        status: "completed",
        timeoutSeconds: 60,
        stdoutLog: LOG,
        stderrLog: LOG,
        dockerLog: LOG,
        bulkJobId,
      });
      await ctx.db.insert("containerJobs", { ...job, negPriority: 0 } as never);
    }
  });
}

describe("apiTokens", () => {
  test("list never returns hashes and revoke takes the id the list shows", async () => {
    const t = setup();
    const hash = "ab".repeat(32);
    await t.mutation(internal.apiTokens.create, {
      tokenHash: hash,
      userId: "u1",
      isAdmin: false,
      name: "laptop",
    });
    const [listed] = await t.query(internal.apiTokens.list, { limit: 10 });
    expect(JSON.stringify(listed)).not.toContain(hash);
    expect(listed.tokenId).toBe(hash.slice(0, 12));
    const revoked = await t.mutation(internal.apiTokens.revoke, { tokenId: listed.tokenId });
    expect(revoked.revokedAt).toBeTypeOf("number");
    const found = await t.query(internal.apiTokens.getByHash, { tokenHash: hash });
    expect(found!.revokedAt).toBe(revoked.revokedAt);
  });
});
