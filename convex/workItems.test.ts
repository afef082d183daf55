import { convexTest } from "convex-test";
import { afterEach, beforeEach, describe, expect, test, vi } from "vitest";
import { internal } from "./_generated/api";
import { MAX_WORK_BATCH } from "./model/workItems";
import schema from "./schema";
import { modules } from "./test.setup";

function setup() {
  return convexTest({ schema, modules, transactionLimits: true });
}
type T = ReturnType<typeof setup>;

const item = (itemId: string, operation = "noop", maxAttempts = 3) => ({
  itemId,
  operation,
  payload: { n: itemId },
  maxAttempts,
});

async function enqueue(t: T, ...ids: string[]) {
  return t.mutation(internal.workItems.enqueueBatch, { items: ids.map((id) => item(id)) });
}

const claim = (t: T, owner: string, limit = 10, operations?: string[]) =>
  t.mutation(internal.workItems.claim, { owner, limit, leaseMs: 1000, operations });

const done = (itemId: string, key: string, owner = "w1") => ({
  itemId,
  owner,
  outcome: "completed" as const,
  key,
  result: { ok: itemId },
});

describe("workItems", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  test("enqueue then claim oldest first, each item once", async () => {
    const t = setup();
    expect(await enqueue(t, "a", "b", "c")).toEqual(["a", "b", "c"]);
    const first = await claim(t, "w1", 2);
    expect(first.map((i) => i.itemId)).toEqual(["a", "b"]);
    expect(first[0]).toMatchObject({ status: "running", leaseOwner: "w1", attempts: 1 });
    expect((await claim(t, "w2", 10)).map((i) => i.itemId)).toEqual(["c"]);
    expect(await claim(t, "w3", 10)).toEqual([]);
  });

  test("an id taken by other content writes nothing of the batch", async () => {
    const t = setup();
    await enqueue(t, "a");
    const other = { ...item("a"), payload: { n: "something else" } };
    await expect(
      t.mutation(internal.workItems.enqueueBatch, { items: [item("b"), other] }),
    ).rejects.toThrow(/exists with other content/);
    expect(await t.query(internal.workItems.get, { itemId: "b" })).toBeNull();
  });

  test("the same batch sent again (a retry after a lost reply) adds nothing", async () => {
    const t = setup();
    await enqueue(t, "a", "b");
    expect(await enqueue(t, "a", "b")).toEqual(["a", "b"]);
    const counts = await t.query(internal.workItems.countByStatus, {});
    expect(counts.pending).toBe(2);
  });

  test("claims only the operations asked for", async () => {
    const t = setup();
    await t.mutation(internal.workItems.enqueueBatch, { items: [item("a", "x"), item("b", "y")] });
    expect((await claim(t, "w1", 10, ["y"])).map((i) => i.itemId)).toEqual(["b"]);
    expect(await claim(t, "w1", 10, [])).toEqual([]);
  });

  test("an expired lease is claimable; a poison item is failed, not claimed", async () => {
    const t = setup();
    await t.mutation(internal.workItems.enqueueBatch, { items: [item("a", "noop", 2)] });
    await claim(t, "w1");
    vi.advanceTimersByTime(1500);
    expect((await claim(t, "w2")).map((i) => i.attempts)).toEqual([2]);
    vi.advanceTimersByTime(1500);
    expect(await claim(t, "w3")).toEqual([]);
    const failed = await t.query(internal.workItems.get, { itemId: "a" });
    expect(failed).toMatchObject({ status: "failed" });
    expect(failed?.error).toMatch(/given up after 2 attempts/);
  });

  test("heartbeat renews held leases and names the lost ones", async () => {
    const t = setup();
    await enqueue(t, "a", "b");
    await claim(t, "w1");
    vi.advanceTimersByTime(800);
    const lost = await t.mutation(internal.workItems.heartbeat, {
      owner: "w1",
      itemIds: ["a", "zzz"],
      leaseMs: 1000,
    });
    expect(lost).toEqual(["zzz"]);
    vi.advanceTimersByTime(500);
    expect((await claim(t, "w2")).map((i) => i.itemId)).toEqual(["b"]);
  });

  test("a report applies once: duplicate, stale and missing are told apart", async () => {
    const t = setup();
    await enqueue(t, "a");
    await claim(t, "w1");
    const report = (reports: ReturnType<typeof done>[]) =>
      t.mutation(internal.workItems.report, { reports });
    expect(await report([done("a", "k1"), done("a", "k1"), done("a", "k2"), done("x", "k3")]))
      .toEqual([
        { key: "k1", state: "applied" },
        { key: "k1", state: "duplicate" },
        { key: "k2", state: "stale" },
        { key: "k3", state: "missing" },
      ]);
    const finished = await t.query(internal.workItems.get, { itemId: "a" });
    expect(finished).toMatchObject({ status: "completed", result: { ok: "a" } });
    expect(finished?.leaseOwner).toBeUndefined();
  });

  test("a report reads its item by the claim's ref; a foreign or stale ref falls back", async () => {
    const t = setup();
    await enqueue(t, "a", "b", "c");
    const [a, b, c] = await claim(t, "w1");
    const report = (reports: (ReturnType<typeof done> & { ref?: string })[]) =>
      t.mutation(internal.workItems.report, { reports });
    expect(await report([{ ...done("a", "k1"), ref: a.ref }])).toEqual([
      { key: "k1", state: "applied" },
    ]);
    // b's report carrying c's ref still finishes b, never c; garbage is ignored too.
    expect(
      await report([
        { ...done("b", "k2"), ref: c.ref },
        { ...done("c", "k3"), ref: "not-an-id" },
      ]),
    ).toEqual([
      { key: "k2", state: "applied" },
      { key: "k3", state: "applied" },
    ]);
    for (const itemId of ["a", "b", "c"]) {
      const finished = await t.query(internal.workItems.get, { itemId });
      expect(finished).toMatchObject({ status: "completed", result: { ok: itemId } });
    }
    expect(b.ref).not.toEqual(c.ref);
  });

  test("release makes an item claimable at once without using an attempt", async () => {
    const t = setup();
    await enqueue(t, "a");
    await claim(t, "w1");
    await t.mutation(internal.workItems.release, { owner: "w2", itemIds: ["a"] });
    expect(await claim(t, "w2")).toEqual([]);
    await t.mutation(internal.workItems.release, { owner: "w1", itemIds: ["a"] });
    expect((await claim(t, "w2")).map((i) => i.attempts)).toEqual([1]);
  });

  test("counts and leases by owner prefix", async () => {
    const t = setup();
    await enqueue(t, "a", "b", "c");
    await claim(t, "host1/p1", 1);
    await claim(t, "host2/p1", 1);
    expect(await t.query(internal.workItems.countByStatus, {})).toEqual({
      pending: 1,
      running: 2,
    });
    const held = await t.query(internal.workItems.listLeases, { ownerPrefix: "host1/", limit: 10 });
    expect(held.map((i) => i.itemId)).toEqual(["a"]);
  });

  test("batches are bounded", async () => {
    const t = setup();
    const ids = Array.from({ length: MAX_WORK_BATCH + 1 }, (_, i) => `i${i}`);
    await expect(enqueue(t, ...ids)).rejects.toThrow(/at most/);
  });
});
