// The progress view of the signed-in user's jobs as an HTML string: what bulkJobs:getUserJobs
// returns, turned into a job list with a progress bar per stage. Pure (no DOM, no clock of its
// own), so that a Node test pins it to the query's real output.
import type { FunctionReturnType } from "convex/server";
import type { api } from "../../../convex/_generated/api";

export type JobProgress = FunctionReturnType<typeof api.bulkJobs.getUserJobs>[number];
type StageProgress = JobProgress["stages"][number];
type ExportInfo = JobProgress["exports"][number];

const TERMINAL = ["completed", "failed", "cancelled"];

const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => ESCAPES[char]);
}

export function percent(progress: number): number {
  // The epsilon keeps 0.29 at 29, not 28.999...; flooring keeps an unfinished job below 100.
  return Math.floor(Math.min(1, Math.max(0, progress)) * 100 + 1e-9);
}

export function formatDuration(ms: number): string {
  const seconds = Math.max(0, Math.round(ms / 1000));
  const pad = (n: number) => String(n).padStart(2, "0");
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${pad(seconds % 60)}s`;
  return `${Math.floor(seconds / 3600)}h ${pad(Math.floor(seconds / 60) % 60)}m`;
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

// Same rule as the service's eta_seconds (src/services/reports.py): extrapolate from progress.
export function etaMs(job: JobProgress, now: number): number | null {
  if (TERMINAL.includes(job.status) || job.startedAt === null || job.progress <= 0) return null;
  return ((now - job.startedAt) * (1 - job.progress)) / job.progress;
}

function bar(progress: number, label: string): string {
  const value = percent(progress);
  return `<progress max="100" value="${value}" aria-label="${escapeHtml(label)}">${value}%</progress>`;
}

function counts(item: { itemsCompleted: number; itemsFailed: number; itemsTotal: number | null }) {
  const total = item.itemsTotal === null ? "?" : String(item.itemsTotal);
  return `${item.itemsCompleted} completed / ${item.itemsFailed} failed / ${total} total`;
}

function timing(job: JobProgress, now: number): string {
  if (job.startedAt === null) return "not started";
  const parts = [`elapsed ${formatDuration((job.completedAt ?? now) - job.startedAt)}`];
  const eta = etaMs(job, now);
  if (eta !== null) parts.push(`about ${formatDuration(eta)} left`);
  if (job.currentStage !== null) parts.push(`stage ${escapeHtml(job.currentStage)}`);
  return parts.join(" · ");
}

function renderStage(stage: StageProgress): string {
  const name = escapeHtml(stage.name);
  const error = stage.errorMessage ? ` <span class="error">${escapeHtml(stage.errorMessage)}</span>` : "";
  return (
    `<li class="stage stage-${stage.status}"><span class="stage-name">${name}</span> ` +
    `${bar(stage.progress, `${stage.name} progress`)} ` +
    `<span class="counts">${counts(stage)}</span> ` +
    `<span class="status">${stage.status}</span>${error}</li>`
  );
}

function renderExport(file: ExportInfo, now: number): string {
  const expiry =
    file.expiresAt <= now ? "expired" : `expires in ${formatDuration(file.expiresAt - now)}`;
  return (
    `<li class="export"><span class="filename">${escapeHtml(file.filename)}</span> ` +
    `(${escapeHtml(file.format)}, ${formatBytes(file.sizeBytes)}) <span class="expiry">${expiry}</span></li>`
  );
}

export function renderJob(job: JobProgress, now: number): string {
  const exports = job.exports.length
    ? `<ul class="exports">${job.exports.map((file) => renderExport(file, now)).join("")}</ul>`
    : "";
  const failedIn = job.failedStage === null ? "" : `${escapeHtml(job.failedStage)}: `;
  const error = job.errorMessage ? `<p class="error">${failedIn}${escapeHtml(job.errorMessage)}</p>` : "";
  return (
    `<li class="job job-${job.status}" data-job-id="${escapeHtml(job.jobId)}">` +
    `<header><strong class="job-type">${escapeHtml(job.jobType)}</strong> ` +
    `<code>${escapeHtml(job.jobId.slice(0, 8))}</code> ` +
    `<span class="status">${job.status}</span></header>` +
    `<div class="overall">${bar(job.progress, "overall progress")} ${percent(job.progress)}%</div>` +
    `<p class="counts">${counts(job)}</p><p class="timing">${timing(job, now)}</p>` +
    `<ol class="stages">${job.stages.map(renderStage).join("")}</ol>${exports}${error}</li>`
  );
}

export function renderJobs(jobs: JobProgress[], now: number): string {
  if (jobs.length === 0) return `<p class="empty">No jobs yet.</p>`;
  return `<ul class="jobs">${jobs.map((job) => renderJob(job, now)).join("")}</ul>`;
}
