// The dashboard: sign-in, routing between views, the live job stream and the 1 s clock.

import { ApiError, get, request, subscribe, token } from "./api.js";
import { ContainerJobs, Hosts, Templates } from "./containers.js";
import { JobList, JobPage, SampleForm } from "./jobs.js";

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

class Dashboard {
  constructor() {
    this.list = new JobList($("#job-list"));
    this.form = new SampleForm($("#sample-form"), $("#sample-notice"));
    this.polled = {
      containers: new ContainerJobs($("#view-containers")),
      hosts: new Hosts($("#view-hosts")),
      templates: new Templates($("#view-templates")),
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
        ? "That token was not accepted: it is unknown or was revoked."
        : `Could not sign in: ${error.message}`;
      return this.showSignIn(why);
    }
    token.set(candidate);
    $("#token").value = "";
    return this.start();
  }

  signOut(reason) {
    token.clear();
    this.stopStream?.();
    this.leavePage();
    clearInterval(this.timer);
    clearInterval(this.clock);
    location.hash = "";
    this.showSignIn(reason);
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
    await this.detectAdmin();
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
    else if (state === "closed" && error?.status === 401) this.signOut("Your token is no longer accepted; sign in again.");
    else this.setLive("wait", state);
  }

  setLive(state, text) {
    const live = $("#live");
    live.dataset.state = state;
    live.textContent = text;
  }

  route() {
    if (!token.get()) return;
    const [, view = "jobs", id] = location.hash.split("/");
    this.leavePage();
    clearInterval(this.timer);
    $("#view-error").hidden = true;
    const name = view === "jobs" && id ? "job" : view in this.polled ? view : "jobs";
    for (const section of document.querySelectorAll("[data-view]")) section.hidden = section.dataset.view !== name;
    for (const tab of document.querySelectorAll("[data-tab]")) {
      tab.classList.toggle("active", tab.dataset.tab === (name === "job" ? "jobs" : name));
    }
    if (name === "job") this.openJob(decodeURIComponent(id));
    else if (name in this.polled) this.poll(this.polled[name]);
  }

  openJob(jobId) {
    this.page = new JobPage($("#view-job"), jobId);
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
