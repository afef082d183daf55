// Small formatting and DOM helpers shared by the views.

export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

/** Create an element: h("td", {className: "x", dataset: {id}}, child, "text"). */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(element.dataset, value);
    else if (key.startsWith("aria-") || key === "role" || key === "for") element.setAttribute(key, value);
    else element[key] = value;
  }
  element.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

/** Name each row's cells after their column (`data-label`): narrow screens show a row as a
 * card of labelled lines. */
export function labelCells(headings, rows) {
  for (const row of rows) {
    [...row.children].forEach((cell, index) => {
      if (headings[index]) cell.dataset.label = headings[index];
    });
  }
}

/** Set text only when it changed: cheap, and keeps the browser from re-laying out. */
export function setText(element, text) {
  const value = String(text);
  if (element.textContent !== value) element.textContent = value;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  const hours = Math.floor(s / 3600);
  if (hours < 48) return `${hours} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

export const seconds = (iso) => (iso ? Date.parse(iso) / 1000 : null);
export const now = () => Date.now() / 1000;

export function time(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

/** Seconds the job has been running (or ran). */
export function elapsed(job) {
  const start = seconds(job.started_at);
  if (start === null) return null;
  const end = seconds(job.completed_at) ?? (TERMINAL.has(job.status) ? seconds(job.updated_at) : now());
  return end - start;
}

/**
 * Seconds left: the running stage extrapolated from its own pace, plus the stages still to
 * come at the mean duration of the finished ones. Stages differ too much in length for the
 * job's overall fraction to predict well.
 */
export function eta(job) {
  if (TERMINAL.has(job.status)) return null;
  const current = job.stages.find((stage) => stage.status === "processing");
  const spent = current ? now() - seconds(current.started_at) : null;
  if (!current || !(current.progress > 0) || spent === null) {
    if (!job.estimated_duration_minutes) return null;
    return Math.max(0, job.estimated_duration_minutes * 60 - (elapsed(job) || 0));
  }
  const finished = job.stages.filter((stage) => stage.status === "completed" && stage.started_at && stage.completed_at);
  const mean = finished.length
    ? finished.reduce((sum, stage) => sum + seconds(stage.completed_at) - seconds(stage.started_at), 0) / finished.length
    : 0;
  const waiting = job.stages.filter((stage) => stage.status === "pending").length;
  return (spent * (1 - current.progress)) / current.progress + waiting * mean;
}

export function counts(item) {
  const total = item.items_total ?? "?";
  return `${item.items_completed} / ${item.items_failed} / ${total}`;
}

export const percent = (fraction) => `${Math.round(fraction * 1000) / 10}%`;

export const shortId = (id) => id.slice(0, 8);

export function label(name) {
  return name.replaceAll("_", " ");
}

/** Short stage names for the labels under the list's stage bars. */
const SHORT_STAGES = {
  initialization: "init", validation: "check", content_fetch: "fetch",
  content_processing: "process", audio_extraction: "audio", transcription: "transcribe",
  voice_preparation: "voice", export_preparation: "prepare", export_generation: "export",
  cleanup: "cleanup",
};

export const shortStage = (name) => SHORT_STAGES[name] || label(name);

/** A bar: an outer element with an inner fill whose width follows the fraction. */
export function bar(className = "") {
  const fill = h("span", { className: "fill" });
  const outer = h("span", { className: `bar ${className}`, role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill);
  return outer;
}

export function setBar(outer, fraction, status) {
  const value = Math.round(Math.min(1, Math.max(0, fraction)) * 100);
  if (outer.getAttribute("aria-valuenow") !== String(value)) {
    outer.setAttribute("aria-valuenow", String(value));
    outer.firstChild.style.width = `${value}%`;
  }
  if (status && outer.dataset.status !== status) outer.dataset.status = status;
}

export function badge(status) {
  return h("span", { className: "badge", dataset: { status } }, label(status));
}

export function setBadge(element, status) {
  if (element.dataset.status !== status) {
    element.dataset.status = status;
    element.textContent = label(status);
  }
}
