// Bulk jobs: the live list (keyed rows, batched updates), the job page and the sample form.

import { ApiError, del, download, post } from "./api.js";
import {
  TERMINAL, badge, bar, bytes, counts, duration, elapsed, eta, h, label, percent, seconds,
  labelCells, setBadge, setBar, setText, shortId, shortStage, time,
} from "./format.js";

/** The list API returns at most this many jobs; the event stream's snapshot the same. */
export const PAGE = 200;
/** The list's columns, as its table head names them (labels of the cells on narrow screens). */
const JOB_COLUMNS = ["Job", "Status", "Stages", "Items (done / failed / total)", "Elapsed", "Time left", "Created"];

const EXPORT_COLUMNS = ["File", "Format", "Size", "Created", "Expires"];

const FILTERS = {
  all: () => true,
  active: (job) => !TERMINAL.has(job.status),
  completed: (job) => job.status === "completed",
  failed: (job) => job.status === "failed",
  cancelled: (job) => job.status === "cancelled",
};

export class JobList {
  constructor(root) {
    this.tbody = root.querySelector("tbody");
    this.summary = root.querySelector("[data-role=summary]");
    this.empty = root.querySelector("[data-role=empty]");
    this.filterSelect = root.querySelector("[data-role=filter]");
    this.jobs = new Map();
    this.rows = new Map();
    // Each row's cells, so an update touches only what changed.
    this.cells = new WeakMap();
    // Newest first: [created seconds, id], kept sorted so a new row finds its place fast.
    this.order = [];
    this.pending = new Map();
    this.frame = 0;
    this.capped = false;
    this.filter = "all";
    this.filterSelect.addEventListener("change", () => this.setFilter(this.filterSelect.value));
  }

  /** A stream's snapshot: the newest jobs; jobs seen earlier that fell off it stay. */
  snapshot(jobs) {
    this.capped = jobs.length >= PAGE;
    for (const job of jobs) this.pending.set(job.job_id, job);
    this.schedule();
  }

  update(job) {
    this.pending.set(job.job_id, job);
    this.schedule();
  }

  /** A job that was deleted: its row goes (the stream says nothing of jobs that are gone). */
  remove(jobId) {
    this.pending.delete(jobId);
    this.jobs.delete(jobId);
    this.rows.get(jobId)?.remove();
    this.rows.delete(jobId);
    this.order = this.order.filter(([, id]) => id !== jobId);
    this.renderSummary();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    for (const job of this.pending.values()) {
      this.jobs.set(job.job_id, job);
      const row = this.rows.get(job.job_id) || this.insert(job);
      this.fill(row, job);
    }
    this.pending.clear();
    this.renderSummary();
  }

  insert(job) {
    const cells = {
      link: h("a", { href: `#/jobs/${job.job_id}` }, label(job.job_type)),
      id: h("span", { className: "muted mono" }, shortId(job.job_id)),
      retryOf: job.retry_of
        ? h("span", { className: "muted", dataset: { role: "retry-of" } }, " retry of ",
          h("a", { href: `#/jobs/${encodeURIComponent(job.retry_of)}`, className: "mono" }, shortId(job.retry_of)))
        : null,
      status: badge(job.status),
      stages: h("span", { className: "stages" }),
      items: h("td", { className: "num" }),
      elapsed: h("td", { className: "num" }),
      eta: h("td", { className: "num" }),
      created: h("td", { className: "muted" }, time(job.created_at)),
      stageBars: [],
    };
    const row = h(
      "tr", { dataset: { jobId: job.job_id } },
      h("td", {}, cells.link, " ", cells.id, cells.retryOf),
      h("td", {}, cells.status),
      h("td", {}, cells.stages),
      cells.items, cells.elapsed, cells.eta, cells.created,
    );
    this.cells.set(row, cells);
    labelCells(JOB_COLUMNS, [row]);
    const key = [seconds(job.created_at), job.job_id];
    const at = this.position(key);
    const next = this.order[at];
    this.order.splice(at, 0, key);
    this.tbody.insertBefore(row, next ? this.rows.get(next[1]) : null);
    this.rows.set(job.job_id, row);
    return row;
  }

  position([created, id]) {
    let low = 0;
    let high = this.order.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      const [c, i] = this.order[mid];
      if (c > created || (c === created && i > id)) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  fill(row, job) {
    const cells = this.cells.get(row);
    setBadge(cells.status, job.status);
    if (cells.stageBars.length !== job.stages.length) {
      cells.stageBars = job.stages.map(() => bar("mini"));
      cells.stageLabels = job.stages.map(() => h("span", { className: "stage-label" }));
      cells.stages.replaceChildren(...job.stages.map((stage, index) => h(
        "span", { className: "stage-mini", dataset: { stage: stage.name } },
        cells.stageBars[index], cells.stageLabels[index],
      )));
    }
    job.stages.forEach((stage, index) => {
      const stageBar = cells.stageBars[index];
      const done = stage.status === "completed" || stage.status === "skipped";
      const fraction = percent(done ? 1 : stage.progress);
      setBar(stageBar, done ? 1 : stage.progress, stage.status);
      // A visible label (name and percent) under each bar; the tooltip adds the counts.
      setText(cells.stageLabels[index], `${shortStage(stage.name)} ${fraction}`);
      const title = `${label(stage.name)}: ${label(stage.status)}, ${fraction}, ${counts(stage)}`;
      if (stageBar.parentElement.title !== title) stageBar.parentElement.title = title;
    });
    setText(cells.items, counts(job));
    this.tickRow(row, job);
    row.hidden = !FILTERS[this.filter](job);
  }

  tickRow(row, job) {
    const cells = this.cells.get(row);
    setText(cells.elapsed, duration(elapsed(job)));
    setText(cells.eta, duration(eta(job)));
  }

  /** Elapsed time and estimates move every second, for the running jobs only. */
  tick() {
    for (const job of this.jobs.values()) {
      if (!TERMINAL.has(job.status)) this.tickRow(this.rows.get(job.job_id), job);
    }
  }

  setFilter(name) {
    this.filter = name;
    for (const [id, row] of this.rows) row.hidden = !FILTERS[name](this.jobs.get(id));
    this.renderSummary();
  }

  renderSummary() {
    const tally = { active: 0, completed: 0, failed: 0, cancelled: 0 };
    for (const job of this.jobs.values()) tally[TERMINAL.has(job.status) ? job.status : "active"] += 1;
    const parts = Object.entries(tally).map(([name, n]) => `${n} ${name}`);
    const note = this.capped ? ` (your newest ${PAGE} when the page opened, and every job since)` : "";
    setText(this.summary, `${this.jobs.size} jobs${note}: ${parts.join(", ")}`);
    this.empty.hidden = this.jobs.size > 0;
  }
}

/** The form that starts the built-in `sample` job; a 429 is explained with a countdown. */
export class SampleForm {
  constructor(form, notice, { onStarted = () => {} } = {}) {
    this.form = form;
    this.notice = notice;
    this.onStarted = onStarted;
    this.countdown = 0;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  async submit() {
    const data = new FormData(this.form);
    const jobData = {
      items: Number(data.get("items")),
      delay_ms: Number(data.get("delay_ms")),
      fail_every: Number(data.get("fail_every")),
      export_format: data.get("export_format"),
    };
    const button = this.form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const started = await post("/bulk-jobs", { job_type: "sample", job_data: jobData });
      this.show("ok", `Started job ${shortId(started.job_id)}.`);
      this.onStarted(started.job_id);
    } catch (error) {
      this.explain(error);
    } finally {
      button.disabled = false;
    }
  }

  explain(error) {
    if (!(error instanceof ApiError)) return this.show("error", `Could not reach the service: ${error.message}`);
    if (error.status === 429) return this.rateLimited(error.retryAfter);
    const field = error.body && error.body.field ? ` (${error.body.field})` : "";
    return this.show("error", `The job was refused${field}: ${error.message}`);
  }

  rateLimited(retryAfter) {
    clearInterval(this.countdown);
    const until = Date.now() + (retryAfter ?? 0) * 1000;
    const text = () => {
      const left = Math.max(0, Math.round((until - Date.now()) / 1000));
      return "Rate limit reached: you have started as many jobs as one window allows. " +
        `You can start another in ${duration(left)} (the server sent Retry-After: ${retryAfter} s).`;
    };
    this.show("warn", text(), "rate-limit");
    this.countdown = setInterval(() => {
      if (Date.now() >= until) {
        clearInterval(this.countdown);
        this.show("ok", "You can start a job again.");
      } else setText(this.notice, text());
    }, 1000);
  }

  show(kind, text, role = kind) {
    if (role !== "rate-limit") clearInterval(this.countdown);
    this.notice.hidden = false;
    this.notice.className = `notice ${kind}`;
    this.notice.dataset.role = role;
    setText(this.notice, text);
  }
}

/** One job: stage timeline, errors, cancel, delete, exports with downloads; fed by its own
 * stream. `onDeleted(jobId)` runs once the job was deleted from this page. */
export class JobPage {
  constructor(root, jobId, onDeleted = () => {}) {
    this.root = root;
    this.jobId = jobId;
    this.onDeleted = onDeleted;
    this.job = null;
    this.exportKey = "";
    this.parts = new WeakMap();
    this.build();
  }

  build() {
    this.title = h("h2", {}, `Job ${shortId(this.jobId)}`);
    this.status = badge("pending");
    this.meta = h("dl", { className: "meta" });
    this.overall = bar("big");
    this.overallText = h("span", { className: "num" });
    this.error = h("p", { className: "notice error", hidden: true, dataset: { role: "job-error" } });
    this.cancel = h("button", { type: "button", className: "danger", dataset: { role: "cancel" } }, "Cancel job");
    this.cancel.addEventListener("click", () => this.cancelJob());
    this.remove = h("button", { type: "button", className: "danger", hidden: true, dataset: { role: "delete" } }, "Delete job");
    this.remove.addEventListener("click", () => this.deleteJob());
    this.retry = h("button", { type: "button", hidden: true, dataset: { role: "retry" } }, "Retry failed items");
    this.retry.addEventListener("click", () => this.retryFailed());
    this.retryOf = h("p", { hidden: true, dataset: { role: "retry-of" } },
      "Retries the failed items of job ", h("a", { className: "mono" }));
    this.message = h("p", { className: "notice", hidden: true });
    this.timeline = h("ol", { className: "timeline" });
    this.exports = h("tbody");
    this.exportsEmpty = h("p", { className: "muted" }, "No exports yet: the last stage writes one.");
    this.details = h("pre", { className: "json" });
    this.containers = h("p", { hidden: true, dataset: { role: "container-jobs" } },
      h("a", { href: `#/containers?bulk_job_id=${encodeURIComponent(this.jobId)}` },
        "Container jobs of this job →"));
    this.root.replaceChildren(
      h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
      h("div", { className: "job-head" }, this.title, this.status, this.cancel, this.retry, this.remove),
      h("div", { className: "overall" }, this.overall, this.overallText),
      this.error, this.message, this.retryOf, this.meta, this.containers,
      h("h3", {}, "Stages"), this.timeline,
      h("h3", {}, "Exports"), this.exportsEmpty,
      this.exportsTable = h("table", { className: "exports" },
        h("thead", {}, h("tr", {}, ...[...EXPORT_COLUMNS, ""].map((t) => h("th", {}, t)))),
        this.exports),
      h("details", {}, h("summary", {}, "Job data and results"), this.details),
    );
  }

  render(job) {
    this.job = job;
    setText(this.title, `${label(job.job_type)} job ${shortId(job.job_id)}`);
    setBadge(this.status, job.status);
    setBar(this.overall, job.progress, job.status);
    setText(this.overallText, `${percent(job.progress)} · items ${counts(job)} (completed / failed / total)`);
    this.cancel.hidden = TERMINAL.has(job.status);
    this.remove.hidden = !TERMINAL.has(job.status);
    // The server's rule: an ended job, some stage of which counted failed items.
    this.retry.hidden = !TERMINAL.has(job.status) || !job.stages.some((stage) => stage.items_failed > 0);
    this.renderRetryOf(job);
    // Its items run as container jobs: a link to them (the link already names the full id).
    this.containers.hidden = job.job_type !== "container_batch";
    this.containers.firstChild.href = `#/containers?bulk_job_id=${encodeURIComponent(job.job_id)}`;
    this.error.hidden = !job.error_message;
    setText(this.error, job.error_message || "");
    this.renderStages(job);
    this.renderExports(job);
    setText(this.details, JSON.stringify({ job_data: job.job_data, results: job.results }, null, 2));
    this.tick();
  }

  tick() {
    const job = this.job;
    if (!job) return;
    const rows = [
      ["Job id", job.job_id], ["Priority", job.priority], ["Created", time(job.created_at)],
      ["Started", time(job.started_at)], ["Finished", time(job.completed_at)],
      ["Elapsed", duration(elapsed(job))], ["Time left (estimate)", duration(eta(job))],
    ];
    if (this.meta.childElementCount !== rows.length * 2) {
      this.meta.replaceChildren(...rows.flatMap(([k]) => [h("dt", {}, k), h("dd", {})]));
    }
    rows.forEach(([, value], index) => setText(this.meta.children[index * 2 + 1], value));
  }

  renderRetryOf(job) {
    this.retryOf.hidden = !job.retry_of;
    if (!job.retry_of) return;
    const link = this.retryOf.querySelector("a");
    link.href = `#/jobs/${encodeURIComponent(job.retry_of)}`;
    setText(link, shortId(job.retry_of));
  }

  renderStages(job) {
    if (this.timeline.childElementCount !== job.stages.length) {
      this.timeline.replaceChildren(...job.stages.map((stage) => {
        const item = h("li", { dataset: { stage: stage.name } });
        this.parts.set(item, {
          badge: badge(stage.status), bar: bar(), counts: h("span", { className: "num" }),
          when: h("span", { className: "muted" }), error: h("p", { className: "stage-error" }),
        });
        const p = this.parts.get(item);
        item.append(h("div", { className: "stage-head" }, h("strong", {}, label(stage.name)), p.badge, p.when),
          h("div", { className: "stage-progress" }, p.bar, p.counts), p.error);
        return item;
      }));
    }
    job.stages.forEach((stage, index) => {
      const item = this.timeline.children[index];
      const p = this.parts.get(item);
      const done = stage.status === "completed" || stage.status === "skipped";
      item.dataset.status = stage.status;
      setBadge(p.badge, stage.status);
      setBar(p.bar, done ? 1 : stage.progress, stage.status);
      setText(p.counts, `${percent(done ? 1 : stage.progress)} · ${counts(stage)}`);
      const took = stage.started_at ? (seconds(stage.completed_at) ?? Date.now() / 1000) - seconds(stage.started_at) : null;
      setText(p.when, stage.started_at ? `started ${time(stage.started_at)} · ${duration(took)}` : "not started");
      setText(p.error, stage.error_message || "");
      p.error.hidden = !stage.error_message;
    });
  }

  renderExports(job) {
    const key = job.exports.map((e) => `${e.export_id}:${e.expired}`).join(",");
    this.exportsEmpty.hidden = job.exports.length > 0;
    this.exportsTable.hidden = job.exports.length === 0;
    if (key === this.exportKey) return;
    this.exportKey = key;
    this.exports.replaceChildren(...job.exports.map((e) => {
      const button = h("button", { type: "button", disabled: e.expired, dataset: { role: "download" } }, e.expired ? "Expired" : "Download");
      button.addEventListener("click", () => this.download(e));
      const row = h("tr", {},
        h("td", { className: "mono" }, e.filename), h("td", {}, e.format), h("td", { className: "num" }, bytes(e.size_bytes)),
        h("td", {}, time(e.created_at)),
        h("td", { title: e.expires_at }, e.expired ? "expired" : `${time(e.expires_at)} (in ${duration(seconds(e.expires_at) - Date.now() / 1000)})`),
        h("td", {}, button));
      labelCells(EXPORT_COLUMNS, [row]);
      return row;
    }));
  }

  async download(exported) {
    try {
      await download(`/bulk-jobs/${this.jobId}/export/${exported.export_id}`, exported.filename);
      this.say("ok", `Downloaded ${exported.filename}.`);
    } catch (error) {
      this.say("error", `Download failed: ${error.message}`);
    }
  }

  async cancelJob() {
    this.cancel.disabled = true;
    try {
      await post(`/bulk-jobs/${this.jobId}/cancel`, { reason: "cancelled from the dashboard" });
      this.say("ok", "Cancelled; the runner stops at its next progress write.");
    } catch (error) {
      this.say("error", `Could not cancel: ${error.message}`);
    } finally {
      this.cancel.disabled = false;
    }
  }

  async deleteJob() {
    if (!confirm("Delete this job with its exports and files? This cannot be undone.")) return;
    this.remove.disabled = true;
    try {
      await del(`/bulk-jobs/${this.jobId}`);
      this.onDeleted(this.job?.job_id ?? this.jobId);
    } catch (error) {
      this.say("error", `Could not delete: ${error.message}`);
      this.remove.disabled = false;
    }
  }

  async retryFailed() {
    this.retry.disabled = true;
    try {
      const started = await post(`/bulk-jobs/${encodeURIComponent(this.jobId)}/retry`);
      location.hash = `#/jobs/${encodeURIComponent(started.job_id)}`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 429) {
        this.say("warn", "Rate limit reached: a retry is a new job, and you have started as many as one " +
          `window allows. You can retry in ${duration(error.retryAfter)}.`);
      } else this.say("error", `Could not retry: ${error.message}`);
    } finally {
      this.retry.disabled = false;
    }
  }

  say(kind, text) {
    this.message.hidden = false;
    this.message.className = `notice ${kind}`;
    setText(this.message, text);
  }
}
