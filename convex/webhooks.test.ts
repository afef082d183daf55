import { convexTest } from "convex-test";
import { afterEach, beforeEach, describe, expect, test, vi } from "vitest";
import { internal } from "./_generated/api";
import schema from "./schema";
import { modules, newContainerJob } from "./test.setup";

const RULES = { retryWindowMs: 86_400_000, disableAfterMs: 86_400_000 };
const ALL_EVENTS = [
  "job.created",
  "job.stage_completed",
  "job.stage_failed",
  "job.completed",
  "job.failed",
  "job.cancelled",
  "export.ready",
  "container_job.completed",
  "container_job.failed",
];

function setup() {
  return convexTest({ schema, modules, transactionLimits: true });
}
type T = ReturnType<typeof setup>;

async function endpoint(t: T, endpointId: string, extra: Record<string, unknown> = {}) {
  await t.mutation(internal.webhooks.create, {
    endpointId,
    userId: "u1",
    allUsers: false,
    url: "https://hooks.example.com/x",
    events: ALL_EVENTS,
    description: "",
    secret: "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
    status: "active",
    createdAt: Date.now(),
    ...extra,
  } as never);
}

const createJob = (t: T, userId = "u1") =>
  t.mutation(internal.bulkJobs.create, {
    jobType: "demo",
    userId,
    jobData: {},
    stages: ["a"],
    priority: "normal",
  });

const deliveries = (t: T, endpointId: string) =>
  t.query(internal.webhooks.listDeliveries, { endpointId, limit: 200 });

const types = async (t: T, endpointId: string) =>
  (await deliveries(t, endpointId)).map((d) => JSON.parse(d.body).type).reverse();

const claim = (t: T, owner: string, rules = RULES) =>
  t.mutation(internal.webhooks.claim, { owner, leaseMs: 1000, limit: 10, ...rules });

describe("webhooks", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  test("events are written in the mutation that makes the change, for the owner", async () => {
    const t = setup();
    await endpoint(t, "mine");
    await endpoint(t, "theirs", { userId: "u2" });
    await endpoint(t, "all", { userId: "root", allUsers: true, events: ["job.completed"] });
    const jobId = await createJob(t);
    await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "a" });
    await t.mutation(internal.bulkJobs.completeStage, { jobId, stage: "a", itemsCompleted: 2 });
    expect(await types(t, "mine")).toEqual(["job.created", "job.stage_completed", "job.completed"]);
    expect(await types(t, "theirs")).toEqual([]);
    expect(await types(t, "all")).toEqual(["job.completed"]);
    const [completed] = await deliveries(t, "mine");
    expect(JSON.parse(completed.body)).toMatchObject({
      type: "job.completed",
      data: { job_id: jobId, user_id: "u1", status: "completed" },
    });
    expect(completed.deliveryId).toMatch(/^msg_[0-9a-f]{32}$/);
  });

  test("a mutation that is refused writes no event", async () => {
    const t = setup();
    await endpoint(t, "mine");
    const jobId = await createJob(t);
    await t.mutation(internal.bulkJobs.updateStatus, { jobId, status: "cancelled" });
    await expect(
      t.mutation(internal.bulkJobs.failStage, { jobId, stage: "a", errorMessage: "late" }),
    ).rejects.toThrow(/cancelled/);
    expect(await types(t, "mine")).toEqual(["job.created", "job.cancelled"]);
  });

  test("a failed attempt is retried later with the same id, then delivered", async () => {
    const t = setup();
    await endpoint(t, "mine", { events: ["job.created"] });
    await createJob(t);
    const [first] = await claim(t, "w1");
    expect(first.delivery).toMatchObject({ status: "delivering", attempts: 1, leaseOwner: "w1" });
    expect(await claim(t, "w2")).toEqual([]);
    const failed = { ok: false, statusCode: 500, error: "HTTP 500", retryInMs: 5000 };
    const args = { deliveryId: first.delivery.deliveryId, owner: "w1", ...RULES };
    expect(await t.mutation(internal.webhooks.report, { ...args, ...failed })).toBe("pending");
    expect(await claim(t, "w2")).toEqual([]);
    vi.advanceTimersByTime(6000);
    const [second] = await claim(t, "w2");
    expect(second.delivery.deliveryId).toBe(first.delivery.deliveryId);
    expect(second.delivery.attempts).toBe(2);
    const ok = { ok: true, statusCode: 204 };
    expect(await t.mutation(internal.webhooks.report, { ...args, owner: "w2", ...ok })).toBe(
      "delivered",
    );
    const stored = await t.query(internal.webhooks.get, { endpointId: "mine" });
    expect(stored?.failingSince).toBeUndefined();
  });

  test("a worker that died leaves its delivery to be claimed again", async () => {
    const t = setup();
    await endpoint(t, "mine", { events: ["job.created"] });
    await createJob(t);
    const [first] = await claim(t, "w1");
    vi.advanceTimersByTime(1500);
    const [again] = await claim(t, "w2");
    expect(again.delivery.deliveryId).toBe(first.delivery.deliveryId);
    await expect(
      t.mutation(internal.webhooks.heartbeat, {
        deliveryId: first.delivery.deliveryId,
        owner: "w1",
        leaseMs: 1000,
      }),
    ).rejects.toThrow(/lost/);
  });

  test("an endpoint failing past disableAfterMs is disabled with its reason", async () => {
    const t = setup();
    await endpoint(t, "mine", { events: ["job.created"] });
    await createJob(t);
    const strict = { retryWindowMs: 86_400_000, disableAfterMs: 0 };
    const [first] = await claim(t, "w1", strict);
    const status = await t.mutation(internal.webhooks.report, {
      deliveryId: first.delivery.deliveryId,
      owner: "w1",
      ok: false,
      error: "ConnectError: refused",
      retryInMs: 10,
      ...strict,
    });
    expect(status).toBe("failed");
    const disabled = await t.query(internal.webhooks.get, { endpointId: "mine" });
    expect(disabled?.status).toBe("disabled");
    expect(disabled?.disabledReason).toMatch(/every delivery failed .*ConnectError: refused/);
    await createJob(t);
    expect((await deliveries(t, "mine")).length).toBe(1); // no new event for a disabled one
  });

  test("a container job that ends sends its event", async () => {
    const t = setup();
    await endpoint(t, "mine", { events: ["container_job.completed", "container_job.failed"] });
    const job = newContainerJob("c1", { createdBy: "u1" });
    await t.mutation(internal.containerJobs.create, { job });
    await t.mutation(internal.containerJobs.transition, { jobId: "c1", status: "cancelled" });
    expect(await deliveries(t, "mine")).toEqual([]); // cancelled: no event asked for
    await t.mutation(internal.containerJobs.create, { job: { ...job, jobId: "c2" } } as never);
    await t.mutation(internal.containerJobs.transition, {
      jobId: "c2",
      status: "failed",
      fields: { exitCode: 3 },
    } as never);
    const [sent] = await deliveries(t, "mine");
    expect(JSON.parse(sent.body)).toMatchObject({
      type: "container_job.failed",
      data: { container_job_id: "c2", exit_code: 3, user_id: "u1", status: "failed" },
    });
  });
});
