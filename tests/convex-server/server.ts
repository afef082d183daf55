// TEST-ONLY. Never deploy this file; it lives outside convex/ for that reason.
//
// A small HTTP server that loads the real convex/ functions through convex-test and answers
// the Convex HTTP API (POST /api/query, /api/mutation, /api/action with {path, args, format}),
// so that the Python ConvexStore is tested against the same function code that deploys.
//
//   npx tsx tests/convex-server/server.ts --port 3210 [--admin-key KEY]
//
// Prints a line containing "listening" when ready. POST /reset starts a clean database.
import { readdirSync } from "node:fs";
import { createServer, IncomingMessage, ServerResponse } from "node:http";
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { convexTest } from "convex-test";
import { makeFunctionReference } from "convex/server";
import { ConvexError, convexToJson, jsonToConvex } from "convex/values";
import schema from "../../convex/schema";

type Kind = "query" | "mutation" | "action";
type Registered = {
  isQuery?: boolean;
  isMutation?: boolean;
  isAction?: boolean;
  isPublic?: boolean;
  isInternal?: boolean;
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

async function lookup(path: string): Promise<Registered | undefined> {
  const [file, name = "default"] = path.split(":");
  const loader = modules[`./${file}.ts`] ?? modules[`./${file}.js`];
  if (!loader) return undefined;
  const module = (await loader()) as Record<string, Registered | undefined>;
  return module[name];
}

function matchesKind(fn: Registered, kind: Kind): boolean {
  return kind === "query" ? !!fn.isQuery : kind === "mutation" ? !!fn.isMutation : !!fn.isAction;
}

async function call(kind: Kind, path: string, args: unknown, admin: boolean): Promise<unknown> {
  const fn = await lookup(path);
  const visible = fn && matchesKind(fn, kind) && (admin || fn.isPublic);
  if (!visible) {
    // The real backend's wording for a function it cannot find (or may not show).
    throw new Error(
      `Could not find public function for '${path}'. ` +
        "Did you forget to run `npx convex dev` or `npx convex deploy`?",
    );
  }
  const decoded = jsonToConvex(args as never) as Record<string, never>;
  if (kind === "query") return t.query(makeFunctionReference<"query">(path), decoded);
  if (kind === "mutation") return t.mutation(makeFunctionReference<"mutation">(path), decoded);
  return t.action(makeFunctionReference<"action">(path), decoded);
}

function send(res: ServerResponse, status: number, body: unknown) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

function errorBody(error: unknown) {
  if (error instanceof ConvexError || (error as { data?: unknown })?.data !== undefined) {
    const data = (error as { data: unknown }).data;
    const parsed = typeof data === "string" ? safeParse(data) : data;
    return { status: "error", errorMessage: String((error as Error).message), errorData: convexToJson(parsed as never), logLines: [] };
  }
  return { status: "error", errorMessage: String((error as Error)?.message ?? error), logLines: [] };
}

function safeParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

async function handle(req: IncomingMessage, res: ServerResponse) {
  const url = req.url ?? "";
  if (req.method === "POST" && url === "/reset") {
    t = newDatabase();
    return send(res, 200, { status: "success", value: null });
  }
  const kind = url.match(/^\/api\/(query|mutation|action)$/)?.[1] as Kind | undefined;
  if (req.method !== "POST" || !kind) return send(res, 404, { code: "NotFound", message: "no such route" });
  let body: { path?: unknown; args?: unknown; format?: unknown };
  try {
    body = JSON.parse(await readBody(req));
  } catch {
    return send(res, 400, { code: "BadJsonBody", message: "the body is not JSON" });
  }
  if (body.format !== undefined && body.format !== "json") {
    return send(res, 400, { code: "BadConvexFormat", message: `unsupported format ${String(body.format)}` });
  }
  if (typeof body.path !== "string") return send(res, 400, { code: "BadRequest", message: "path is required" });
  const admin = req.headers.authorization === `Convex ${adminKey}`;
  try {
    const value = await call(kind, body.path, body.args ?? {}, admin);
    send(res, 200, { status: "success", value: convexToJson(value as never), logLines: [] });
  } catch (error) {
    send(res, 200, errorBody(error));
  }
}

createServer((req, res) => {
  handle(req, res).catch((error) => send(res, 500, { code: "InternalServerError", message: String(error) }));
}).listen(port, "127.0.0.1", () => {
  console.log(`convex test server listening on http://127.0.0.1:${port}`);
});
