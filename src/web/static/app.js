// The dashboard: sign-in, routing between views, the live job stream and the 1 s clock.

import { ApiError, get, request, subscribe, token, whenSignedOut } from "./api.js";
import { ContainerJobs, Hosts, Templates } from "./containers.js";
import { JobList, JobPage, SampleForm } from "./jobs.js";
import { Webhooks } from "./webhooks.js";

const $ = (selector) => document.querySelector(selector);
const POLLED_VIEWS_MS = 3000;

/** A `?token=` (what `make run` prints) or `#token=` signs in; it never stays in the URL. */
function takeTokenFromUrl() {
  const url = new URL(location.href);
  const hash = new URLSearchParams(url.hash.startsWith("#token=") ? url.hash.slice(1) : "");
  const found = url.searchParams.get("token") || hash.get("token");
  if (found) {
    url.searchParams.delete("token");
    if (hash.get("token")) url.hash = "";
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  return found;
}

/** Why the server refused a token, as it said (revoked or expired, and when), or "unknown". */
function reason(error) {
  const detail = error.message || "";
  return /revoked|expired/.test(detail) ? detail : "it is unknown or was revoked";
}

const refusal = (error) => `Signed out: ${reason(error)}. Sign in with a new token.`;

class Dashboard {
  constructor() {
    this.list = new JobList($("#job-list"));
    this.form = new SampleForm($("#sample-form"), $("#sample-notice"));
    this.polled = {
      containers: new ContainerJobs($("#view-containers")),
      hosts: new Hosts($("#view-hosts")),
      templates: new Templates($("#view-templates")),
      webhooks: new Webhooks($("#view-webhooks")),
    };
    this.page = null;
    this.stopJobStream = null;
    this.stopStream = null;
    this.timer = 0;
    this.clock = 0;
    $("#sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.signIn($("#token").value.trim());
    });
    $("#sign-out").addEventListener("click", () => this.signOut());
    addEventListener("hashchange", () => this.route());
    // Any request that finds the token refused (revoked or expired meanwhile) ends the
    // session with the server's reason, rather than leaving a page of failed requests.
    whenSignedOut((error) => this.signOut(refusal(error)));
  }

  async boot() {
    const fromUrl = takeTokenFromUrl();
    if (fromUrl) return this.signIn(fromUrl);
    if (token.get()) return this.start();
    return this.showSignIn();
  }

  async signIn(candidate) {
    try {
      await request("GET", "/bulk-jobs?limit=1", undefined, candidate);
    } catch (error) {
      const why = error instanceof ApiError && error.status === 401
        ? `That token was not accepted: ${reason(error)}.`
        : `Could not sign in: ${error.message}`;
      return this.showSignIn(why);
    }
    token.set(candidate);
    $("#token").value = "";
    return this.start();
  }

  signOut(message) {
    token.clear();
    this.stopStream?.();
    this.leavePage();
    clearInterval(this.timer);
    clearInterval(this.clock);
    location.hash = "";
    this.showSignIn(message);
  }

  showSignIn(message) {
    for (const view of document.querySelectorAll("[data-view]")) view.hidden = true;
    $("#tabs").hidden = true;
    $("#sign-out").hidden = true;
    $("#sign-in").hidden = false;
    const error = $("#sign-in-error");
    error.hidden = !message;
    error.textContent = message || "";
    this.setLive("off", "offline");
  }

  async start() {
    $("#sign-in").hidden = true;
    $("#tabs").hidden = false;
    $("#sign-out").hidden = false;
    this.stopStream = subscribe("/bulk-jobs/events", {
      onEvent: (kind, data) => {
        if (kind === "snapshot") this.list.snapshot(data.jobs);
        else if (kind === "job") this.list.update(data);
      },
      onState: (state, error) => this.streamState(state, error),
    });
    this.clock = setInterval(() => {
      this.list.tick();
      this.page?.tick();
    }, 1000);
    try {
      await this.detectAdmin();
    } catch (error) {
      if (!token.get()) return; // refused: already back at the sign-in form
      throw error;
    }
    this.route();
  }

  async detectAdmin() {
    let admin = false;
    try {
      await get("/hosts");
      admin = true;
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 403) throw error;
    }
    for (const tab of document.querySelectorAll("[data-admin]")) tab.hidden = !admin;
    document.body.dataset.admin = String(admin);
  }

  streamState(state, error) {
    if (state === "live") this.setLive("live", "live");
    else if (state === "closed" && error?.status === 401) this.signOut(refusal(error));
    else this.setLive("wait", state);
  }

  setLive(state, text) {
    const live = $("#live");
    live.dataset.state = state;
    live.textContent = text;
  }

  route() {
    if (!token.get()) return;
    const [path, query = ""] = location.hash.split("?");
    const [, view = "jobs", id] = path.split("/");
    this.leavePage();
    clearInterval(this.timer);
    $("#view-error").hidden = true;
    const name = view === "jobs" && id ? "job" : view in this.polled ? view : "jobs";
    for (const section of document.querySelectorAll("[data-view]")) section.hidden = section.dataset.view !== name;
    for (const tab of document.querySelectorAll("[data-tab]")) {
      tab.classList.toggle("active", tab.dataset.tab === (name === "job" ? "jobs" : name));
    }
    if (name === "job") this.openJob(decodeURIComponent(id));
    if (name === "containers") this.polled.containers.setBulkJob(new URLSearchParams(query).get("bulk_job_id"));
    if (name in this.polled) this.poll(this.polled[name]);
  }

  openJob(jobId) {
    this.page = new JobPage($("#view-job"), jobId, (deleted) => {
      this.list.remove(deleted);
      location.hash = "#/jobs";
    });
    const page = this.page;
    this.stopJobStream = subscribe(`/bulk-jobs/${encodeURIComponent(jobId)}/events`, {
      onEvent: (kind, data) => {
        const job = kind === "snapshot" ? data.jobs[0] : data;
        if (job) {
          page.render(job);
          this.list.update(job);
        }
      },
      onState: (state, error) => {
        if (state === "closed" && error?.status === 404) this.showError("No such job, or it is not yours.");
      },
    });
  }

  leavePage() {
    this.stopJobStream?.();
    this.stopJobStream = null;
    this.page = null;
  }

  poll(view) {
    const refresh = () => view.refresh().catch((error) => this.showError(`Could not load: ${error.message}`));
    refresh();
    this.timer = setInterval(() => {
      if (!document.hidden) refresh();
    }, POLLED_VIEWS_MS);
  }

  showError(text) {
    const element = $("#view-error");
    element.hidden = false;
    element.textContent = text;
  }
}

new Dashboard().boot();
