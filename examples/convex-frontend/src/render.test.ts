// Keeps the example page honest: it renders what bulkJobs:getUserJobs really returns (run here
// through convex-test with a signed-in identity), so a change to the query's shape fails here.
import { convexTest } from "convex-test";
import { describe, expect, test } from "vitest";
import { api, internal } from "../../../convex/_generated/api";
import schema from "../../../convex/schema";
import { modules } from "../../../convex/test.setup";
import {
  escapeHtml,
  formatBytes,
  formatDuration,
  percent,
  renderJobs,
  type JobProgress,
} from "./render";

async function aliceJobs(): Promise<JobProgress[]> {
  const t = convexTest({ schema, modules });
  const jobId = await t.mutation(internal.bulkJobs.create, {
    jobType: "content_refresh", userId: "alice", jobData: {}, stages: ["content_fetch", "export_generation"],
    priority: "normal", maxJobs: 10, windowMs: 60_000, jobId: "0123456789abcdef",
  });
  await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "content_fetch", itemsTotal: 10 });
  await t.mutation(internal.bulkJobs.completeStage, { jobId, stage: "content_fetch", itemsCompleted: 9, itemsFailed: 1 });
  await t.mutation(internal.bulkJobs.startStage, { jobId, stage: "export_generation", itemsTotal: 4 });
  await t.mutation(internal.bulkJobs.updateStageProgress, { jobId, stage: "export_generation", progress: 0.5, itemsCompleted: 2 });
  await t.mutation(internal.bulkJobs.addExport, {
    exportId: "e1", jobId, userId: "alice", format: "csv", filename: "pages.csv",
    relativePath: `${jobId}/pages.csv`, contentType: "text/csv", sizeBytes: 2048,
    sha256: "00".repeat(32), createdAt: Date.now(), expiresAt: Date.now() + 3_600_000,
  });
  return t.withIdentity({ subject: "alice" }).query(api.bulkJobs.getUserJobs, { limit: 10 });
}

describe("renderJobs on the real query result", () => {
  test("a job with its overall bar, counts, one bar per stage and its export", async () => {
    const jobs = await aliceJobs();
    const now = jobs[0].startedAt! + 30_000;
    const html = renderJobs(jobs, now);
    // The job is exporting; its numbers are its items (content_fetch's), not a sum over stages.
    expect(html).toContain('<li class="job job-exporting" data-job-id="0123456789abcdef">');
    expect(html).toContain('<strong class="job-type">content_refresh</strong> <code>01234567</code>');
    expect(html).toContain('<progress max="100" value="75" aria-label="overall progress">75%</progress> 75%');
    expect(html).toContain('<p class="counts">9 completed / 1 failed / 10 total</p>');
    expect(html).toContain('<p class="timing">elapsed 30s · about 10s left · stage export_generation</p>');
    expect(html).toContain(
      '<li class="stage stage-completed"><span class="stage-name">content_fetch</span> ' +
        '<progress max="100" value="100" aria-label="content_fetch progress">100%</progress> ' +
        '<span class="counts">9 completed / 1 failed / 10 total</span> <span class="status">completed</span></li>',
    );
    expect(html).toContain('aria-label="export_generation progress">50%</progress> <span class="counts">2 completed / 0 failed / 4 total</span>');
    expect(html.match(/<li class="stage /g)).toHaveLength(2);
    expect(html).toContain('<span class="filename">pages.csv</span> (csv, 2.0 KiB) <span class="expiry">expires in');
    expect(html).not.toContain("relativePath");
  });

  test("an export past its expiry says so", async () => {
    const jobs = await aliceJobs();
    expect(renderJobs(jobs, jobs[0].exports[0].expiresAt + 1)).toContain('<span class="expiry">expired</span>');
  });
});

describe("renderJobs on hand-made results", () => {
  const base: JobProgress = {
    jobId: "j1", jobType: "demo", status: "pending", priority: "normal", progress: 0,
    currentStage: "a", failedStage: null, itemsTotal: null, itemsCompleted: 0, itemsFailed: 0, errorMessage: null,
    estimatedDurationMinutes: null, createdAt: 0, updatedAt: 0, startedAt: null, completedAt: null,
    stages: [{ name: "a", status: "pending", progress: 0, itemsTotal: null, itemsCompleted: 0,
      itemsFailed: 0, startedAt: null, completedAt: null, errorMessage: null, metadata: {} }],
    exports: [],
  };

  test("no jobs", () => {
    expect(renderJobs([], 0)).toBe('<p class="empty">No jobs yet.</p>');
  });

  test("a pending job: unknown totals, not started", () => {
    const html = renderJobs([base], 0);
    expect(html).toContain("0 completed / 0 failed / ? total");
    expect(html).toContain('<p class="timing">not started</p>');
  });

  test("a finished job: elapsed up to completion, no ETA, the error shown", () => {
    const failed = { ...base, status: "failed" as const, startedAt: 0, completedAt: 90_000, progress: 0.5,
      currentStage: null, errorMessage: "upstream <timeout>" };
    const html = renderJobs([failed], 10_000_000);
    expect(html).toContain('<p class="timing">elapsed 1m 30s</p>');
    expect(html).toContain('<p class="error">upstream &lt;timeout&gt;</p>');
  });

  test("a job failed by its stage names the stage before the error", () => {
    const failed = { ...base, status: "failed" as const, currentStage: null, failedStage: "<a>", errorMessage: "down" };
    expect(renderJobs([failed], 0)).toContain('<p class="error">&lt;a&gt;: down</p>');
  });

  test("text from the job is escaped everywhere", () => {
    const hostile = { ...base, jobType: "<img src=x onerror=alert(1)>", jobId: '"><script>',
      stages: [{ ...base.stages[0], name: "<b>", errorMessage: "&" }] };
    const html = renderJobs([hostile], 0);
    expect(html).not.toMatch(/<img|<script|<b>/);
    expect(html).toContain("&lt;img src=x onerror=alert(1)&gt;");
  });
});

test("formatting helpers", () => {
  expect(escapeHtml(`<a href="x">'&'</a>`)).toBe("&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  expect([0.29, 0.999, 1, 1.5, -1].map(percent)).toEqual([29, 99, 100, 100, 0]);
  expect([0, 59_400, 61_000, 3_600_000 + 5 * 60_000].map(formatDuration)).toEqual(["0s", "59s", "1m 01s", "1h 05m"]);
  expect([512, 1536, 5 * 1024 ** 3].map(formatBytes)).toEqual(["512 B", "1.5 KiB", "5.0 GiB"]);
});
