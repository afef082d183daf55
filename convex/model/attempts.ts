// Attempt budgets and fair claiming, shared by the bulk job and container job claims. Mirrors
// src/services/domain/__init__.py (gave_up, take_turns, ClaimRules, Failure); change both
// together.
import { v } from "convex/values";

// Claims of an item before it is failed with its last error (DEFAULT_MAX_ATTEMPTS).
export const DEFAULT_MAX_ATTEMPTS = 5;

// Arguments of a claim: the attempt budget and the per-user cap (absent: no cap).
export const claimRules = {
  maxAttempts: v.optional(v.number()),
  maxRunningPerUser: v.optional(v.number()),
};

// Arguments of a release: a failed attempt (absent: a hand-back that uses no attempt).
export const releaseFailure = {
  error: v.optional(v.string()),
  retryInMs: v.optional(v.number()),
  maxAttempts: v.optional(v.number()),
};

export const gaveUp = (attempts: number, lastError: string) =>
  `gave up after ${attempts} attempts; last error: ${lastError}`;

// What a worker that died holding an item leaves as its error.
export const DIED = "its worker stopped without reporting (a crash?)";

// Round robin over the queues (one per user, in turn order): each round takes the next item
// of every queue that has one, until `limit` items are taken.
export function takeTurns<T>(queues: T[][], limit: number): T[] {
  const taken: T[] = [];
  const depth = Math.max(0, ...queues.map((queue) => queue.length));
  for (let round = 0; round < depth; round++) {
    for (const queue of queues) {
      if (taken.length >= limit) return taken;
      if (round < queue.length) taken.push(queue[round]);
    }
  }
  return taken;
}
