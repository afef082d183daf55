// The service's HTTP API as the dashboard uses it: bearer token, JSON, downloads, live events.

const TOKEN_KEY = "bulkjobs.token";

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super((body && body.detail && String(body.detail)) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
    // Seconds, from the Retry-After header of a 429 (or the body's retry_after_s).
    this.retryAfter = retryAfter;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

function headers(extra = {}) {
  return { Authorization: `Bearer ${token.get()}`, ...extra };
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = { detail: response.statusText };
  }
  const header = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  const retryAfter = Number.isFinite(header) ? header : body && body.retry_after_s;
  return new ApiError(response.status, body, retryAfter ?? null);
}

let onSignedOut = () => {};

/**
 * `handler(error)` runs when the server refuses the signed-in token (401: revoked, expired or
 * unknown), whichever request found out; the error's message is the server's reason.
 */
export function whenSignedOut(handler) {
  onSignedOut = handler;
}

/** The failure of a request; a 401 for the stored token also signs out. */
async function refused(response, withStoredToken) {
  const error = await failure(response);
  if (error.status === 401 && withStoredToken && token.get()) onSignedOut(error);
  return error;
}

export async function request(method, path, body, authToken) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (authToken) init.headers.Authorization = `Bearer ${authToken}`;
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await refused(response, !authToken);
  return response.status === 204 ? null : response.json();
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body ?? {});
export const del = (path) => request("DELETE", path);

/** Download a file that needs the Authorization header: fetch it as a blob, then save it. */
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await refused(response, true);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function parseBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return data.length ? { event, data: JSON.parse(data.join("\n")) } : null;
}

/**
 * Read a server-sent event stream with fetch, so the token travels in the header and never
 * in a URL. Reconnects with backoff; each connection starts with a `snapshot` event, so
 * nothing is replayed. Returns a function that stops it.
 */
export function subscribe(path, { onEvent, onState = () => {} }) {
  const controller = new AbortController();
  let delay = 500;
  const run = async () => {
    while (!controller.signal.aborted) {
      try {
        onState("connecting");
        const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal: controller.signal });
        if (!response.ok) throw await failure(response);
        onState("live");
        delay = 500;
        await readEvents(response.body, onEvent);
      } catch (error) {
        if (controller.signal.aborted) return;
        if (error instanceof ApiError && (error.status === 401 || error.status === 404)) {
          onState("closed", error);
          return;
        }
      }
      if (controller.signal.aborted) return;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  };
  run();
  return () => controller.abort();
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = parseBlock(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (message) onEvent(message.event, message.data);
    }
  }
}
