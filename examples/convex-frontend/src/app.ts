// The example page: subscribes to bulkJobs:getUserJobs with the official browser client and
// redraws the job list on every change Convex pushes (each coalesced progress write).
import { ConvexClient } from "convex/browser";
import { api } from "../../../convex/_generated/api";
import { pickFetchToken } from "./auth";
import { escapeHtml, renderJobs, type JobProgress } from "./render";

const LIST_LIMIT = 50;

// Settings come from <meta> tags the page is served with, never from the query string: a link
// that pointed the page at another deployment would hand that deployment the user's token.
function setting(name: string, fallback = ""): string {
  return document.querySelector<HTMLMetaElement>(`meta[name="${name}"]`)?.content || fallback;
}

function start(root: HTMLElement, status: HTMLElement) {
  const url = setting("convex-url");
  if (!url) {
    status.textContent = 'Set <meta name="convex-url" content="https://<deployment>.convex.cloud">.';
    return;
  }
  const client = new ConvexClient(url);
  let jobs: JobProgress[] | null = null;
  const draw = () => {
    if (jobs !== null) root.innerHTML = renderJobs(jobs, Date.now());
  };
  client.setAuth(pickFetchToken(setting("convex-token-url", "/convex-token")), (signedIn) => {
    status.textContent = signedIn ? "Live" : "Signed out: sign in to see your jobs.";
  });
  client.onUpdate(
    api.bulkJobs.getUserJobs,
    { limit: LIST_LIMIT },
    (result) => {
      jobs = result;
      draw();
    },
    (error) => {
      status.innerHTML = `Subscription failed: ${escapeHtml(error.message)}`;
    },
  );
  // Elapsed time, ETA and export expiry move between updates.
  setInterval(draw, 1000);
}

start(document.getElementById("jobs")!, document.getElementById("status")!);
