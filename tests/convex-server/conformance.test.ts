// @vitest-environment node
//
// The official client as the reference for the test Convex server: npm convex/browser's
// ConvexHttpClient calls the real convex/ functions through tests/convex-server/server.ts and
// must get what convex-test gives when it runs the same calls directly. Then the wire itself,
// which a client that accepts both 200 and 560 cannot tell apart: a function's error is a 560,
// both value formats and both argument forms are accepted, and requests that never reach a
// function get the backend's `{code, message}`.
import { spawn, type ChildProcess } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { convexTest } from "convex-test";
import { ConvexHttpClient } from "convex/browser";
import { makeFunctionReference } from "convex/server";
import { ConvexError, type Value } from "convex/values";
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "vitest";
import schema from "../../convex/schema";
import { modules } from "../../convex/test.setup";

const ADMIN_KEY = "conformance-admin-key";
const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const NEW_JOB = {
  jobType: "demo",
  userId: "u1",
  jobData: { n: 1, nested: { ok: true } },
  stages: ["initialization", "content_fetch"],
  priority: "normal" as const,
  maxJobs: 2,
  windowMs: 3_600_000,
  jobId: "conformance-job",
};

let server: ChildProcess;
let url = "";

function listening(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      const found = output.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (found) resolve(found[1]);
    });
    child.on("exit", (code) => reject(new Error(`the test server exited (${code}):\n${output}`)));
  });
}

beforeAll(async () => {
  const tsx = join(root, "node_modules", ".bin", "tsx");
  server = spawn(tsx, ["tests/convex-server/server.ts", "--port", "0", "--admin-key", ADMIN_KEY], {
    cwd: root,
    env: { ...process.env, NODE_NO_WARNINGS: "1" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  url = await listening(server);
}, 60_000);

afterAll(() => {
  server?.kill();
});

beforeEach(async () => {
  await fetch(`${url}/reset`, { method: "POST" });
});

type Args = Record<string, Value>;
/** Calls by name, the way the service calls: over the wire or straight through convex-test. */
type Runner = {
  query(name: string, args: Args): Promise<unknown>;
  mutation(name: string, args: Args): Promise<unknown>;
};

const query = (name: string) => makeFunctionReference<"query", Args>(name);
const mutation = (name: string) => makeFunctionReference<"mutation", Args>(name);

function client(admin: boolean): Runner {
  const convex = new ConvexHttpClient(url, { logger: false });
  // setAdminAuth is how the CLI and dashboard call internal functions (marked @internal).
  if (admin) (convex as unknown as { setAdminAuth(key: string): void }).setAdminAuth(ADMIN_KEY);
  return {
    query: (name, args) => convex.query(query(name), args),
    mutation: (name, args) => convex.mutation(mutation(name), args),
  };
}

function direct(): Runner {
  const t = convexTest({ schema, modules, transactionLimits: true });
  return {
    query: (name, args) => t.query(query(name), args),
    mutation: (name, args) => t.mutation(mutation(name), args),
  };
}

// Times and ids differ between two databases; everything else must be equal.
function comparable(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(comparable);
  if (value === null || typeof value !== "object") return value;
  const entries = Object.entries(value).map(([key, item]) => {
    const volatile = /At$|^_creationTime$|^_id$|^retryAfterS$/.test(key);
    return [key, volatile ? typeof item : comparable(item)];
  });
  return Object.fromEntries(entries);
}

async function thrown(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("the call did not throw");
}

describe("ConvexHttpClient (npm convex/browser) against the test server", () => {
  test("a public query answers what convex-test answers", async () => {
    const t = direct();
    const browser = client(false);
    expect(await browser.query("bulkJobs:getUserJobs", {})).toEqual(await t.query("bulkJobs:getUserJobs", {}));
    const args = { jobId: "missing" };
    expect(await browser.query("bulkJobs:getJob", args)).toEqual(await t.query("bulkJobs:getJob", args));
  });

  test("internal mutations and queries with the admin key answer what convex-test answers", async () => {
    const t = direct();
    const service = client(true);
    const jobId = NEW_JOB.jobId;
    expect(await service.mutation("bulkJobs:create", NEW_JOB)).toBe(await t.mutation("bulkJobs:create", NEW_JOB));
    for (const run of [service, t]) {
      await run.mutation("bulkJobs:updateStatus", { jobId, status: "processing" });
      await run.mutation("bulkJobs:startStage", { jobId, stage: "initialization", itemsTotal: 10 });
      await run.mutation("bulkJobs:updateStageProgress", {
        jobId, stage: "initialization", progress: 0.25, itemsCompleted: 3, metadata: { note: "ok" },
      });
    }
    const overWire = await service.query("bulkJobs:getJobInternal", { jobId });
    const inProcess = await t.query("bulkJobs:getJobInternal", { jobId });
    expect(overWire).toMatchObject({ jobId, status: "initializing", jobData: NEW_JOB.jobData });
    expect(comparable(overWire)).toEqual(comparable(inProcess));
  });

  test("a ConvexError arrives as a ConvexError with its data", async () => {
    const t = direct();
    const service = client(true);
    const args = { jobId: "missing", stage: "initialization" };
    const overWire = await thrown(service.mutation("bulkJobs:startStage", args));
    const inProcess = await thrown(t.mutation("bulkJobs:startStage", args));
    expect(overWire).toBeInstanceOf(ConvexError);
    expect((overWire as ConvexError<Value>).data).toEqual({ code: "NOT_FOUND", message: "job missing not found" });
    expect((overWire as ConvexError<Value>).data).toEqual((inProcess as ConvexError<Value>).data);
  });

  test("the rate limit's ConvexError keeps its number", async () => {
    const t = direct();
    const service = client(true);
    const errors = [];
    for (const run of [service, t]) {
      for (const jobId of ["a", "b"]) await run.mutation("bulkJobs:create", { ...NEW_JOB, jobId });
      errors.push(await thrown(run.mutation("bulkJobs:create", { ...NEW_JOB, jobId: "c" })));
    }
    const [overWire, inProcess] = errors.map((error) => (error as ConvexError<{ retryAfterS: number }>).data);
    expect(overWire).toMatchObject({ code: "RATE_LIMITED", retryAfterS: expect.any(Number) });
    expect(comparable(overWire)).toEqual(comparable(inProcess));
  });

  test("an internal function without the admin key reads as missing, not as a ConvexError", async () => {
    const error = await thrown(client(false).query("bulkJobs:getJobInternal", { jobId: "x" }));
    expect(error).not.toBeInstanceOf(ConvexError);
    expect((error as Error).message).toBe("Could not find public function for 'bulkJobs:getJobInternal'.");
  });
});

async function post(route: string, body: unknown, headers: Record<string, string> = {}) {
  const response = await fetch(`${url}${route}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Convex ${ADMIN_KEY}`, ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: response.status, text: await response.text() };
}

describe("the wire, as the hosted backend answers", () => {
  test("success is 200; a function that threw is 560 with errorData for a ConvexError", async () => {
    const ok = await post("/api/query", { path: "apiTokens:count", args: {}, format: "json" });
    expect(ok).toEqual({ status: 200, text: '{"status":"success","value":0.0}' });
    const failed = await post("/api/mutation", { path: "bulkJobs:startStage", args: { jobId: "x", stage: "s" } });
    expect(failed.status).toBe(560);
    expect(JSON.parse(failed.text)).toEqual({
      status: "error",
      errorMessage: expect.stringContaining("ConvexError"),
      errorData: { code: "NOT_FOUND", message: "job x not found" },
    });
    const uncaught = await post("/api/mutation", { path: "bulkJobs:startStage", args: { jobId: "x" } });
    expect(uncaught.status).toBe(560);
    expect(JSON.parse(uncaught.text)).not.toHaveProperty("errorData");
  });

  test("args as an object or a one-element array; formats json and convex_encoded_json", async () => {
    for (const args of [{}, [{}]]) {
      for (const format of ["json", "convex_encoded_json", undefined]) {
        const answer = await post("/api/query", { path: "apiTokens:count", args, format });
        expect(answer).toEqual({ status: 200, text: '{"status":"success","value":0.0}' });
      }
    }
    const twoArgs = await post("/api/query", { path: "apiTokens:count", args: [{}, {}] });
    expect(twoArgs.status).toBe(560);
  });

  test("values in each format: float64 as the backend writes it, int64, NaN, bytes", async () => {
    const five = { $integer: Buffer.from([5, 0, 0, 0, 0, 0, 0, 0]).toString("base64") };
    const nan = { $float: Buffer.from(new Float64Array([NaN]).buffer).toString("base64") };
    const bytes = { $bytes: Buffer.from("hi").toString("base64") };
    const metadata = { whole: 3, big: 1e21, half: 0.5, five, nan, bytes };
    const jobId = NEW_JOB.jobId;
    await post("/api/mutation", { path: "bulkJobs:create", args: NEW_JOB });
    await post("/api/mutation", { path: "bulkJobs:updateStatus", args: { jobId, status: "processing" } });
    await post("/api/mutation", { path: "bulkJobs:startStage", args: { jobId, stage: "initialization" } });
    const progress = { jobId, stage: "initialization", progress: 0.5, metadata };
    expect((await post("/api/mutation", { path: "bulkJobs:updateStageProgress", args: progress })).status).toBe(200);
    const encoded = await post("/api/query", { path: "bulkJobs:getJobInternal", args: { jobId }, format: "convex_encoded_json" });
    for (const [key, item] of Object.entries({ five, nan, bytes })) {
      expect(encoded.text).toContain(`"${key}":${JSON.stringify(item)}`);
    }
    // serde_json's spelling of float64s, which the PyPI client needs to read them as floats.
    for (const text of ['"whole":3.0', '"big":1e+21', '"half":0.5']) expect(encoded.text).toContain(text);
    const clean = await post("/api/query", { path: "bulkJobs:getJobInternal", args: { jobId }, format: "json" });
    expect(JSON.parse(clean.text).value.stages[0].metadata).toEqual({
      whole: 3, big: 1e21, half: 0.5, five: "5", nan: "NaN", bytes: Buffer.from("hi").toString("base64"),
    });
  });

  test("requests that never reach a function get {code, message}", async () => {
    const cases: [string, unknown, Record<string, string>, number, string][] = [
      ["/api/query", "not json", {}, 400, "BadJsonBody"],
      ["/api/query", { path: "apiTokens:count", args: {} }, { "Content-Type": "text/plain" }, 400, "BadJsonBody"],
      ["/api/query", { path: "apiTokens:count" }, {}, 400, "BadJsonBody"],
      ["/api/query", { path: "apiTokens:count", args: {}, format: "xml" }, {}, 400, "BadFormat"],
      ["/api/query", { path: "no such path!", args: {} }, {}, 400, "BadConvexFunctionIdentifier"],
      ["/api/query", { path: "apiTokens:count", args: {} }, { Authorization: "Convex wrong" }, 401, "BadAdminKey"],
      ["/api/query", { path: "apiTokens:count", args: {} }, { Authorization: "Bearer x.y.z" }, 401, "NoAuthProvider"],
      ["/api/nothing", { path: "apiTokens:count", args: {} }, {}, 404, "NotFound"],
    ];
    for (const [route, body, headers, status, code] of cases) {
      const answer = await post(route, body, headers);
      expect({ route, status: answer.status, body: JSON.parse(answer.text) }).toEqual({
        route, status, body: { code, message: expect.any(String) },
      });
    }
  });

  test("/api/run/<module>/<name> and /api/function call any kind", async () => {
    expect((await post("/api/run/apiTokens/count", { args: {} })).status).toBe(200);
    expect((await post("/api/function", { path: "apiTokens:count", args: {} })).status).toBe(200);
  });
});
