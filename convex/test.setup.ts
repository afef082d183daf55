import type { NewJob } from "./model/containers";

// The function modules for convex-test; it loads a module only when one of its functions runs.
export const modules = import.meta.glob("./**/*.*s");

// A container job as the service creates it (every field set), for tests to vary.
export function newContainerJob(jobId: string, extra: Partial<NewJob> = {}): NewJob {
  const now = Date.now();
  return {
    jobId,
    status: "pending",
    name: "",
    description: "",
    dockerImage: "busybox",
    command: "",
    workingDirectory: "",
    timeoutSeconds: 3600,
    overrideEnvironment: "",
    networkConfiguration: [],
    executionId: "",
    stdoutLog: "",
    stderrLog: "",
    dockerLog: "",
    createdAt: now,
    updatedAt: now,
    executorType: "mock",
    externalExecutionId: "",
    executorMetadata: {},
    routingReason: "",
    priority: 0,
    maxRetries: 0,
    retryCount: 0,
    statusMessage: "",
    hostId: "h1",
    ...extra,
  };
}
