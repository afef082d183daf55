// Container jobs (yours; an admin's: everyone's) with logs, and, for admins, hosts and templates.

import { get, post } from "./api.js";
import { TERMINAL, badge, bar, duration, h, labelCells, seconds, setBar, shortId, time } from "./format.js";

const CONTAINER_TERMINAL = new Set([...TERMINAL, "timeout"]);

function table(headings, rows) {
  labelCells(headings, rows);
  return h("table", {},
    h("thead", {}, h("tr", {}, ...headings.map((t) => h("th", {}, t)))),
    h("tbody", {}, ...rows));
}

function ran(job) {
  const start = seconds(job.started_at);
  if (start === null) return null;
  return (seconds(job.completed_at) ?? Date.now() / 1000) - start;
}

export class ContainerJobs {
  constructor(root) {
    this.root = root;
    this.list = h("div");
    this.logs = h("section", { className: "logs", hidden: true });
    this.selected = null;
    this.bulkJobId = null;
    this.intro = h("p", { className: "muted" });
    root.replaceChildren(this.intro, this.list, this.logs);
    this.setBulkJob(null);
  }

  /** Show only the container jobs one bulk job started (null: all of yours). */
  setBulkJob(bulkJobId) {
    this.bulkJobId = bulkJobId;
    this.selected = null;
    this.logs.hidden = true;
    if (!bulkJobId) {
      this.intro.replaceChildren("Your newest 100 container jobs (an admin sees everyone's), refreshed every few seconds.");
      return;
    }
    this.intro.replaceChildren(
      "Container jobs of bulk job ",
      h("a", { href: `#/jobs/${encodeURIComponent(bulkJobId)}`, className: "mono" }, shortId(bulkJobId)),
      ", refreshed every few seconds · ",
      h("a", { href: "#/containers" }, "all container jobs"));
  }

  async refresh() {
    const filter = this.bulkJobId ? `&bulk_job_id=${encodeURIComponent(this.bulkJobId)}` : "";
    const jobs = await get(`/container-jobs?limit=100${filter}`);
    if (!jobs.length) {
      this.list.replaceChildren(h("p", { className: "muted" }, "No container jobs yet."));
      return;
    }
    this.list.replaceChildren(table(
      ["Job", "Image / command", "Executor", "Status", "Exit code", "Ran", "Created", ""],
      jobs.map((job) => this.row(job)),
    ));
    if (this.selected) await this.showLogs(this.selected);
  }

  row(job) {
    const logs = h("button", { type: "button" }, "Logs");
    logs.addEventListener("click", () => this.showLogs(job));
    const actions = [logs];
    if (!CONTAINER_TERMINAL.has(job.status)) {
      const cancel = h("button", { type: "button", className: "danger" }, "Cancel");
      cancel.addEventListener("click", async () => {
        await post(`/container-jobs/${job.id}/cancel`, {});
        await this.refresh();
      });
      actions.push(" ", cancel);
    }
    return h("tr", { dataset: { containerJob: job.id } },
      h("td", {}, job.name || shortId(job.id), " ", h("span", { className: "muted mono" }, shortId(job.id)),
        job.bulk_job_id ? h("div", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.bulk_job_id)}` }, "bulk job")) : null),
      h("td", { className: "mono clip", title: job.command }, `${job.docker_image} · ${job.command}`),
      h("td", {}, `${job.executor_type} @ ${job.host_id || "—"}`),
      h("td", {}, badge(job.status), job.status_message ? h("div", { className: "muted" }, job.status_message) : null),
      h("td", { className: "num" }, job.exit_code ?? "—"),
      h("td", { className: "num" }, duration(ran(job))),
      h("td", { className: "muted" }, time(job.created_at)),
      h("td", {}, ...actions));
  }

  async showLogs(job) {
    this.selected = job;
    const logs = await get(`/container-jobs/${job.id}/logs`);
    this.logs.hidden = false;
    this.logs.replaceChildren(
      h("h3", {}, `Logs of ${job.name || shortId(job.id)} (${logs.status})`),
      h("h4", {}, "stdout"), h("pre", { className: "log" }, logs.stdout || "(empty)"),
      h("h4", {}, "stderr"), h("pre", { className: "log" }, logs.stderr || "(empty)"));
  }
}

export class Hosts {
  constructor(root) {
    this.root = root;
  }

  async refresh() {
    const hosts = await get("/hosts");
    this.root.replaceChildren(
      h("p", { className: "muted" }, "Executor hosts: routing uses active, healthy hosts with free slots."),
      table(["Host", "Executor", "Active", "Health", "Capacity", "Utilization", "Weight", "Cost", ""],
        hosts.map((host) => this.row(host))));
  }

  row(host) {
    const capacity = host.capacity;
    const utilization = bar();
    setBar(utilization, capacity.utilization_percent / 100, capacity.utilization_percent >= 100 ? "failed" : "processing");
    const healthy = host.healthy !== false;
    const check = h("button", { type: "button" }, "Check health");
    check.addEventListener("click", async () => {
      check.disabled = true;
      try {
        await post(`/hosts/${host.id}/health-check`, {});
      } finally {
        await this.refresh();
      }
    });
    const cost = [host.cost_per_hour != null ? `${host.cost_per_hour}/h` : null, host.cost_per_job != null ? `${host.cost_per_job}/job` : null].filter(Boolean).join(", ");
    return h("tr", { dataset: { host: host.id } },
      h("td", {}, host.display_name, h("div", { className: "muted mono" }, host.connection_string || "")),
      h("td", {}, host.executor_type),
      h("td", {}, host.is_active ? "yes" : "no"),
      h("td", {}, badge(healthy ? "healthy" : "unhealthy"),
        h("div", { className: "muted" }, `${host.health_check_failures} failures in a row · probed ${time(host.last_health_check)}`),
        host.last_health_error ? h("div", { className: "muted" }, host.last_health_error) : null),
      h("td", { className: "num" }, `${capacity.current_jobs} / ${capacity.max_jobs} (${capacity.available_slots} free)`),
      h("td", {}, utilization, ` ${Math.round(capacity.utilization_percent)}%`),
      h("td", { className: "num" }, host.weight),
      h("td", {}, cost || "—"),
      h("td", {}, check));
  }
}

export class Templates {
  constructor(root) {
    this.root = root;
  }

  async refresh() {
    const templates = await get("/templates");
    const rows = templates.map((t) => {
      // Names only: values may be secrets, and the page never shows them.
      const names = t.environment_variables_text.split("\n")
        .map((line) => line.trim()).filter((line) => line && !line.startsWith("#"))
        .map((line) => line.split("=")[0].trim());
      return h("tr", {},
        h("td", {}, t.name), h("td", {}, t.description || "—"),
        h("td", { className: "mono" }, names.join(", ") || "—"),
        h("td", {}, t.supported_executors.join(", ") || "any"),
        h("td", { className: "muted" }, time(t.updated_at)));
    });
    this.root.replaceChildren(templates.length
      ? table(["Template", "Description", "Variables", "Executors", "Updated"], rows)
      : h("p", { className: "muted" }, "No environment templates yet (POST /templates)."));
  }
}
