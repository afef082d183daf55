// TEST-ONLY. Never deploy this file; it lives outside convex/ for that reason.
//
// A small HTTP server that loads the real convex/ functions through convex-test and answers
// the Convex HTTP API as a hosted deployment does, so that ConvexStore and the official
// clients (npm convex/browser ConvexHttpClient, PyPI convex ConvexHttpClient) are tested
// against the same function code that deploys:
//
//   POST /api/query | /api/mutation | /api/action   {path, args, format?}
//   POST /api/function                               {path, args, format?} (any kind)
//   POST /api/run/<module>/<name>                    {args, format?}
//
// What it answers, and where each shape comes from (get-convex/convex-backend, crates/...):
// - 200 `{status: "success", value, logLines?}` for a function that returned;
// - 560 `{status: "error", errorMessage, errorData?, logLines?}` for one that threw, with
//   errorData for a ConvexError (the hosted backend's STATUS_CODE_UDF_FAILED, which
//   convex/browser's http_client.js reads as a normal answer; the open-source backend
//   sends the same body with 200). A missing function, an internal one called without the
//   admin key, and a call of the wrong kind are function errors too, worded as
//   udf/src/validation.rs words them;
// - values in the requested `format`: `convex_encoded_json` (`{"$integer": ...}` etc., what
//   both official clients ask for) or `json` (clean JSON: int64 as a decimal string, NaN and
//   Infinity as strings, bytes as base64; also the default when `format` is absent), per
//   value/src/export.rs;
// - `args` as an object or as a one-element array (legacy positional args; the official JS
//   client sends `[args]`, the official Python client `args`), per udf/src/helpers.rs;
// - 4xx `{code, message}` for requests that never reach a function (common/src/http/mod.rs
//   HttpError): 400 BadJsonBody (not JSON, wrong content type, a missing field), 400
//   BadFormat (unknown format), 400 BadConvexFunctionIdentifier (a malformed path), 401
//   BadAdminKey (a wrong `Convex <key>`), 401 NoAuthProvider (a `Bearer` token: this server
//   has no auth providers), 404 for a route that does not exist.
//
//   npx tsx tests/convex-server/server.ts --port 3210 [--admin-key KEY]
//
// Prints `listening on <url>` when ready (with --port 0, on a free port). POST /reset starts a clean database.
import { readdirSync } from "node:fs";
import { createServer, IncomingMessage, ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { convexTest } from "convex-test";
import { makeFunctionReference } from "convex/server";
import { ConvexError, convexToJson, jsonToConvex, type JSONValue, type Value } from "convex/values";
import schema from "../../convex/schema";

type Kind = "query" | "mutation" | "action";
type Format = "json" | "convex_encoded_json";
type Registered = {
  isQuery?: boolean;
  isMutation?: boolean;
  isAction?: boolean;
  isPublic?: boolean;
  isInternal?: boolean;
};
type Call = { kind: Kind | "any"; path: string; args: unknown; format: Format; admin: boolean };

// What the hosted backend answers for a function that threw (convex/browser http_client.js).
const STATUS_CODE_UDF_FAILED = 560;
const KIND_NAMES: Record<Kind, string> = { query: "Query", mutation: "Mutation", action: "Action" };
// value/src/export.rs ValueFormat::from_str, legacy aliases included.
const FORMATS: Record<string, Format> = {
  json: "json",
  convex_clean_json: "json",
  convex_encoded_json: "convex_encoded_json",
  convex_json: "convex_encoded_json",
};

const here = dirname(fileURLToPath(import.meta.url));
const convexDir = join(here, "..", "..", "convex");

function option(name: string, fallback: string): string {
  const index = process.argv.indexOf(`--${name}`);
  return index > 0 ? process.argv[index + 1] : fallback;
}

const port = Number(option("port", "3210"));
const adminKey = option("admin-key", process.env.CONVEX_DEPLOY_KEY ?? "test-admin-key");

// The modules map convex-test wants, built by hand because import.meta.glob is a Vite feature.
function moduleMap(): Record<string, () => Promise<unknown>> {
  const modules: Record<string, () => Promise<unknown>> = {};
  for (const entry of readdirSync(convexDir, { recursive: true }) as string[]) {
    const isCode = /\.(ts|js)$/.test(entry) && !/\.(test|d)\.ts$/.test(entry);
    if (!isCode || entry.endsWith("test.setup.ts")) continue;
    const absolute = join(convexDir, entry);
    modules[`./${relative(convexDir, absolute)}`] = () => import(pathToFileURL(absolute).href);
  }
  return modules;
}

const modules = moduleMap();
const newDatabase = () => convexTest({ schema, modules, transactionLimits: true });
let t = newDatabase();

/** An answer that never reached a function, shaped as the backend's HttpError. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

async function lookup(path: string): Promise<Registered | undefined> {
  const [file, name = "default"] = path.split(":");
  const module = file.replace(/\.js$/, "");
  const loader = modules[`./${module}.ts`] ?? modules[`./${module}.js`];
  if (!loader) return undefined;
  const exports = (await loader()) as Record<string, Registered | undefined>;
  return exports[name];
}

function kindOf(fn: Registered): Kind | undefined {
  return fn.isQuery ? "query" : fn.isMutation ? "mutation" : fn.isAction ? "action" : undefined;
}

// udf/src/validation.rs: a function that is missing, or internal and called without the admin
// key, reads as missing; one called through the wrong endpoint says what it is.
async function resolve(call: Call): Promise<Kind> {
  const fn = await lookup(call.path);
  const kind = fn && kindOf(fn);
  if (!fn || !kind || !(call.admin || fn.isPublic)) {
    throw new Error(`Could not find public function for '${call.path}'.`);
  }
  if (call.kind !== "any" && call.kind !== kind) {
    throw new Error(
      `Trying to execute ${call.path} as ${KIND_NAMES[call.kind]}, but it is defined as ${KIND_NAMES[kind]}.`,
    );
  }
  return kind;
}

// udf/src/helpers.rs: named args, or the legacy positional form holding exactly one object.
function namedArgs(args: unknown): Record<string, Value> {
  const single = Array.isArray(args) ? (args.length === 1 ? args[0] : undefined) : args;
  const decoded = single === undefined ? undefined : jsonToConvex(single as JSONValue);
  if (decoded === null || typeof decoded !== "object" || Array.isArray(decoded) || decoded instanceof ArrayBuffer) {
    throw new Error(`The arguments to a Convex function must be an object. Received: ${JSON.stringify(args)}`);
  }
  return decoded as Record<string, Value>;
}

async function run(call: Call): Promise<unknown> {
  const kind = await resolve(call);
  const args = namedArgs(call.args);
  if (kind === "query") return t.query(makeFunctionReference<"query">(call.path), args);
  if (kind === "mutation") return t.mutation(makeFunctionReference<"mutation">(call.path), args);
  return t.action(makeFunctionReference<"action">(call.path), args);
}

// value/src/export.rs export_clean: the lossy, readable `json` format.
function cleanJson(value: Value | undefined): JSONValue {
  if (value === undefined || value === null) return null;
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") {
    if (Number.isNaN(value)) return "NaN";
    if (!Number.isFinite(value)) return value > 0 ? "Infinity" : "-Infinity";
    return value;
  }
  if (typeof value === "boolean" || typeof value === "string") return value;
  if (value instanceof ArrayBuffer) return Buffer.from(value).toString("base64");
  if (Array.isArray(value)) return value.map((item) => cleanJson(item));
  const entries = Object.entries(value).filter(([, item]) => item !== undefined);
  return Object.fromEntries(entries.map(([key, item]) => [key, cleanJson(item)]));
}

function exportValue(value: unknown, format: Format): JSONValue {
  const convexValue = (value === undefined ? null : value) as Value;
  return format === "json" ? cleanJson(convexValue) : convexToJson(convexValue);
}

function errorBody(error: unknown, format: Format) {
  const thrown = error as { name?: string; message?: string; data?: unknown };
  const isConvexError = error instanceof ConvexError || thrown?.data !== undefined;
  if (!isConvexError) {
    const message = String(thrown?.message ?? error);
    const uncaught = message.startsWith("Could not find public function") || message.startsWith("Trying to execute");
    return { status: "error", errorMessage: uncaught ? message : `Uncaught Error: ${message}` };
  }
  const data = typeof thrown.data === "string" ? safeParse(thrown.data) : thrown.data;
  return {
    status: "error",
    errorMessage: `Uncaught ConvexError: ${thrown.message}`,
    errorData: exportValue(data, format),
  };
}

function safeParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

// serde_json writes every float64 with a fraction or an exponent (`0.0`, `3.0`, `1e21`), so a
// Python reader gets a float; JSON.stringify writes `0`, which the PyPI client's json_to_convex
// refuses ("Bad JSON value: 0"). Every number in a Convex answer is a float64 (an int64 is
// `{"$integer": ...}` or a string), so each is written the backend's way.
function writeJson(value: unknown): string {
  if (typeof value === "number") return writeFloat(value);
  if (Array.isArray(value)) return `[${value.map(writeJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value).filter(([, item]) => item !== undefined);
    return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${writeJson(item)}`).join(",")}}`;
  }
  return JSON.stringify(value ?? null);
}

function writeFloat(value: number): string {
  if (Object.is(value, -0)) return "-0.0";
  const text = String(value);
  return /[.e]/.test(text) ? text : `${text}.0`;
}

function send(res: ServerResponse, status: number, body: unknown) {
  const text = writeJson(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

// common/src/http/extract.rs Json: the content type, then the JSON, then the fields.
async function parseRequest(req: IncomingMessage): Promise<Record<string, unknown>> {
  if (!(req.headers["content-type"] ?? "").startsWith("application/json")) {
    throw new HttpError(400, "BadJsonBody", "Expected request with `Content-Type: application/json`");
  }
  let body: unknown;
  try {
    body = JSON.parse(await readBody(req));
  } catch (error) {
    throw new HttpError(400, "BadJsonBody", `Failed to parse the request body as JSON: ${(error as Error).message}`);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new HttpError(400, "BadJsonBody", "Failed to deserialize the JSON body into the target type: expected a map");
  }
  return body as Record<string, unknown>;
}

function required(body: Record<string, unknown>, field: string): unknown {
  if (body[field] === undefined) {
    const message = `Failed to deserialize the JSON body into the target type: missing field \`${field}\``;
    throw new HttpError(400, "BadJsonBody", message);
  }
  return body[field];
}

function formatOf(body: Record<string, unknown>): Format {
  if (body.format === undefined) return "json";
  const format = FORMATS[String(body.format)];
  if (!format) throw new HttpError(400, "BadFormat", `format param must be one of [\`json\`]. Got ${String(body.format)}`);
  return format;
}

function checkedPath(path: unknown): string {
  if (typeof path !== "string" || !/^[A-Za-z0-9_\-./]+(\.js)?(:[A-Za-z_][A-Za-z0-9_]*)?$/.test(path)) {
    const message = `${String(path)} is not a valid path to a Convex function.`;
    throw new HttpError(400, "BadConvexFunctionIdentifier", message);
  }
  return path;
}

// authentication: `Convex <admin key>` must be this deployment's; a user's JWT needs an auth
// provider, and this server configures none.
function isAdmin(authorization: string | undefined): boolean {
  if (!authorization) return false;
  if (authorization.startsWith("Bearer ")) {
    throw new HttpError(401, "NoAuthProvider", "No auth provider found matching the given token");
  }
  if (authorization === `Convex ${adminKey}`) return true;
  throw new HttpError(401, "BadAdminKey", "The provided admin key was invalid for this instance");
}

function route(url: string): { kind: Kind | "any"; runPath?: string } | undefined {
  const fixed = url.match(/^\/api\/(query|mutation|action|function)$/)?.[1];
  if (fixed) return { kind: fixed === "function" ? "any" : (fixed as Kind) };
  const run = url.match(/^\/api\/run\/(.+)\/([^/]+)$/);
  if (run) return { kind: "any", runPath: `${decodeURIComponent(run[1])}:${decodeURIComponent(run[2])}` };
  return undefined;
}

async function handle(req: IncomingMessage, res: ServerResponse) {
  const url = req.url ?? "";
  if (req.method === "POST" && url === "/reset") {
    t = newDatabase();
    return send(res, 200, { status: "success", value: null });
  }
  const target = route(url);
  if (req.method !== "POST" || !target) throw new HttpError(404, "NotFound", `No route for ${req.method} ${url}`);
  // The backend's order: the body, the path, then the key (it reads `format` only after the
  // function ran; here a bad format is refused before, so a test never half-runs a mutation).
  const body = await parseRequest(req);
  const path = checkedPath(target.runPath ?? required(body, "path"));
  const args = required(body, "args");
  const format = formatOf(body);
  const admin = isAdmin(req.headers.authorization);
  const call: Call = { kind: target.kind, path, args, format, admin };
  try {
    send(res, 200, { status: "success", value: exportValue(await run(call), format) });
  } catch (error) {
    send(res, STATUS_CODE_UDF_FAILED, errorBody(error, format));
  }
}

const server = createServer((req, res) => {
  handle(req, res).catch((error) => {
    if (error instanceof HttpError) return send(res, error.status, { code: error.code, message: error.message });
    send(res, 500, { code: "InternalServerError", message: String(error) });
  });
});
// --port 0 takes a free port; the line names the one taken.
server.listen(port, "127.0.0.1", () => {
  const { port: taken } = server.address() as AddressInfo;
  console.log(`convex test server listening on http://127.0.0.1:${taken}`);
});
