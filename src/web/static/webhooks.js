// Webhook endpoints (yours; an admin's: everyone's): status and why one was disabled, and
// each endpoint's deliveries, failed ones with their last error. Register one here too (its
// signing secret is shown once).

import { ApiError, get, post, request } from "./api.js";
import { h, labelCells, shortId, time } from "./format.js";

const EVENTS = [
  "job.created", "job.stage_completed", "job.stage_failed", "job.completed", "job.failed",
  "job.cancelled", "export.ready", "container_job.completed", "container_job.failed",
];

// Badge colours of the job statuses, for delivery statuses.
const DELIVERY_LOOK = { pending: "retrying", delivering: "running", delivered: "completed", failed: "failed" };

function table(headings, rows) {
  labelCells(headings, rows);
  return h("table", {},
    h("thead", {}, h("tr", {}, ...headings.map((t) => h("th", {}, t)))),
    h("tbody", {}, ...rows));
}

export class Webhooks {
  constructor(root) {
    this.root = root;
    this.list = h("div");
    this.deliveries = h("section", { className: "deliveries", hidden: true });
    this.notice = h("p", { className: "notice", hidden: true });
    this.selected = null;
    root.replaceChildren(
      h("p", { className: "muted" }, "Signed webhook endpoints (Standard Webhooks), refreshed every few seconds."),
      this.form(), this.notice, this.list, this.deliveries);
  }

  form() {
    const url = h("input", { type: "url", required: true, placeholder: "https://hooks.example.com/bulkjobs", size: 40, name: "url" });
    const boxes = EVENTS.map((event) => h("label", { className: "event" },
      h("input", { type: "checkbox", value: event, checked: event === "job.completed" }), ` ${event}`));
    const form = h("form", { className: "webhook-form" },
      h("label", {}, "URL ", url), h("div", { className: "events" }, ...boxes),
      h("button", { type: "submit" }, "Register endpoint"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const events = boxes.map((box) => box.querySelector("input")).filter((box) => box.checked).map((box) => box.value);
      try {
        const created = await post("/webhooks", { url: url.value, events });
        this.show(`Registered. Its signing secret, shown only now: ${created.secret}`, "ok");
        url.value = "";
      } catch (error) {
        this.show(error instanceof ApiError ? error.message : `Could not register: ${error.message}`, "error");
      }
      await this.refresh();
    });
    return form;
  }

  show(text, kind) {
    this.notice.hidden = false;
    this.notice.className = `notice ${kind}`;
    this.notice.replaceChildren(h("span", { className: "mono" }, text));
  }

  async refresh() {
    const endpoints = await get("/webhooks");
    if (!endpoints.length) {
      this.list.replaceChildren(h("p", { className: "muted" }, "No webhook endpoints yet."));
    } else {
      this.list.replaceChildren(table(["Endpoint", "Events", "Status", "Created", ""],
        endpoints.map((endpoint) => this.row(endpoint))));
    }
    if (this.selected) await this.showDeliveries(this.selected);
  }

  row(endpoint) {
    const actions = [this.button("Deliveries", () => this.showDeliveries(endpoint))];
    if (endpoint.status === "disabled") {
      actions.push(" ", this.button("Enable", () => post(`/webhooks/${endpoint.id}/enable`)));
    }
    actions.push(" ", this.button("Delete", async () => {
      await request("DELETE", `/webhooks/${endpoint.id}`);
      if (this.selected?.id === endpoint.id) this.selected = null;
      this.deliveries.hidden = this.selected === null;
    }, "danger"));
    const state = endpoint.status === "disabled" ? "failed" : endpoint.failing_since ? "retrying" : "completed";
    const why = endpoint.disabled_reason
      ? h("div", { className: "error-text" }, endpoint.disabled_reason)
      : endpoint.failing_since ? h("div", { className: "muted" }, `failing since ${time(endpoint.failing_since)}`) : null;
    return h("tr", { dataset: { webhook: endpoint.id } },
      h("td", {}, h("span", { className: "mono" }, endpoint.url),
        h("div", { className: "muted" }, `${endpoint.description || shortId(endpoint.id)}${endpoint.all_users ? " · all users" : ` · ${endpoint.user_id}`}`)),
      h("td", {}, endpoint.events.join(", ")),
      h("td", {}, h("span", { className: "badge", dataset: { status: state } }, endpoint.status), why),
      h("td", { className: "muted" }, time(endpoint.created_at)),
      h("td", {}, ...actions));
  }

  button(text, action, className = "") {
    const button = h("button", { type: "button", className }, text);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await action();
      } finally {
        await this.refresh();
      }
    });
    return button;
  }

  async showDeliveries(endpoint) {
    this.selected = endpoint;
    const deliveries = await get(`/webhooks/${endpoint.id}/deliveries?limit=50`);
    const rows = deliveries.map((d) => h("tr", { dataset: { delivery: d.id } },
      h("td", { className: "mono" }, d.id),
      h("td", {}, d.event_type),
      h("td", {}, h("span", { className: "badge", dataset: { status: DELIVERY_LOOK[d.status] } }, d.status)),
      h("td", { className: "num" }, d.attempts),
      h("td", {}, d.last_error ? h("span", { className: d.status === "failed" ? "error-text" : "muted" }, d.last_error)
        : d.last_status_code ? `HTTP ${d.last_status_code}` : "—"),
      h("td", { className: "muted" }, d.status === "pending" ? time(d.next_attempt_at) : time(d.delivered_at || d.last_attempt_at)),
      h("td", { className: "muted" }, time(d.created_at))));
    this.deliveries.hidden = false;
    this.deliveries.replaceChildren(
      h("h3", {}, `Deliveries to ${endpoint.url}`),
      rows.length
        ? table(["webhook-id", "Event", "Status", "Attempts", "Last answer", "Next / last attempt", "Created"], rows)
        : h("p", { className: "muted" }, "No deliveries yet."));
  }
}
